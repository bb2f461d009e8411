"""Decode LTX-Video latents with the REAL ComfyUI code, in its own process (tests compare our teacher to it).

    python comfy_ltx_reference.py JOBS.json
    python comfy_ltx_reference.py -        (jobs read from stdin once ComfyUI is imported, so a caller can
                                            prepare them while the slow import runs)

JOBS is a JSON list of jobs; each one writes a safetensors file with
`images` (what comfy.sd.VAE.decode returns: (B, F, H, W, 3), clamped to [0, 1]) and
`raw` (what VideoVAE.decode returned inside it: (B, 3, F, H, W), unclamped), plus `vae_dtype` in
the header. Job keys:

    weights:        safetensors file loaded with comfy.utils.load_torch_file (ComfyUI's loader), or
    generate:       {"manifest": name-or-path, "seed": 0, "include": [...], "zero": [...]}: weights made
                    in-process by reference_weights.generate (for the full-size layouts, to skip a 3 GB file)
    config:         optional ComfyUI VAE config, handed over as safetensors metadata {"config": {"vae": ...}}
                    (the path the checkpoint loaders take); without it ComfyUI guesses the version from keys
    base_channels:  optional decoder width; ComfyUI's VideoVAE always builds 128, so its Decoder class is
                    wrapped with this width while the VAE is built (everything else is ComfyUI's own code)
    latent:         safetensors file holding `latent` (normalized, ComfyUI's LATENT["samples"])
    seed:           optional; torch.manual_seed(seed) right before VAE.decode
    vae_options:    optional dict passed as VAE.decode(vae_options=...) (timestep, noise_scale)
    out:            output path

The ComfyUI root is the harness's (`harness.server.comfy_root`: $FLASH_VAED_COMFYUI, else
<repo>/.cache/comfyui). It replaces this script's folder as sys.path[0]: the repository's `nodes/`
package must not shadow ComfyUI's `nodes.py`.
"""

import functools
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _setup_comfy() -> None:
    root = _load(HERE.parent / "harness" / "server.py").comfy_root()
    if not (root / "comfy").is_dir():
        raise SystemExit(f"no ComfyUI at {root} (set FLASH_VAED_COMFYUI)")
    sys.path[0] = str(root)
    # comfy.model_management picks its device at import time; keep it off CUDA.
    from comfy.cli_args import args

    args.cpu = True


def _load(path: Path):
    """A helper module of the tests by file, without putting tests/ on sys.path before ComfyUI."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _state_dict(job: dict) -> dict:
    import comfy.utils

    if "weights" in job:
        return comfy.utils.load_torch_file(job["weights"])
    gen = job["generate"]
    rw = _load(HERE / "reference_weights.py")
    return rw.generate(
        rw.load_manifest(gen["manifest"]),
        seed=gen.get("seed", 0),
        include=gen.get("include"),
        zero=gen.get("zero", ()),
    )


def _build_vae(sd: dict, config: dict | None, base_channels: int | None):
    import comfy.ldm.lightricks.vae.causal_video_autoencoder as cva
    import comfy.sd

    metadata = None if config is None else {"config": json.dumps({"vae": config})}
    original = cva.Decoder
    if base_channels is not None:
        cva.Decoder = functools.partial(original, base_channels=base_channels)
    try:
        vae = comfy.sd.VAE(sd=sd, metadata=metadata)
    finally:
        cva.Decoder = original
    vae.throw_exception_if_invalid()
    return vae


def _run(job: dict) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    vae = _build_vae(_state_dict(job), job.get("config"), job.get("base_channels"))
    model = vae.first_stage_model
    inner = model.decode
    raw = []

    def capture(*args, **kwargs):
        out = inner(*args, **kwargs)
        raw.append(out.detach().float().cpu())
        return out

    model.decode = capture
    latent = load_file(job["latent"])["latent"]
    if job.get("seed") is not None:
        torch.manual_seed(job["seed"])
    with torch.inference_mode():
        images = vae.decode(latent, vae_options=job.get("vae_options", {}))
    out = {"images": images.float().contiguous()}
    if len(raw) == 1:  # more than one call: ComfyUI split the batch or tiled
        out["raw"] = raw[0].contiguous()
    save_file(out, job["out"], metadata={"vae_dtype": str(vae.vae_dtype)})
    del vae, model


def main() -> None:
    _setup_comfy()
    import comfy.sd  # noqa: F401  (seconds: transformers and every model family)

    source = sys.stdin.read() if sys.argv[1] == "-" else Path(sys.argv[1]).read_text()
    for job in json.loads(source):
        _run(job)


if __name__ == "__main__":
    main()
