"""Runs the REAL ComfyUI's VAE code in its own process; driven by ``comfy_subprocess.py``.

    python comfy_vae_worker.py --comfy ROOT decode --vae FILE --latent IN.safetensors --out OUT.safetensors
           [--metadata JSON|file] [--seed N] [--vae-options JSON]
    python comfy_vae_worker.py --comfy ROOT encode --vae FILE --images IN.safetensors --out OUT.safetensors
    python comfy_vae_worker.py --comfy ROOT shapes --family wan21 --dim 8 --out MANIFEST.json

It must never see the repository root on sys.path: our ``nodes/`` package would shadow ComfyUI's
``nodes.py``. So the script's own folder is swapped for the ComfyUI root before anything is imported.
"""

import argparse
import json
import re
import sys
from pathlib import Path


def _setup_comfy(root: Path) -> None:
    sys.path[0] = str(root)
    # Must happen before anything imports comfy.model_management, which picks the device at import time
    # and would ask CUDA for one.
    from comfy.cli_args import args

    args.cpu = True


def _load_vae(path: Path, metadata_arg: str | None):
    """Load a VAE file the way ComfyUI's VAELoader node does (no metadata unless asked for)."""
    import comfy.sd
    import comfy.utils

    if metadata_arg == "file":  # what the checkpoint loaders do: hand the file's own header on
        sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    else:
        sd = comfy.utils.load_torch_file(str(path))
        metadata = json.loads(metadata_arg) if metadata_arg else None
    vae = comfy.sd.VAE(sd=sd, metadata=metadata)
    vae.throw_exception_if_invalid()
    return vae


def _capture_raw(vae) -> list:
    """Record what first_stage_model.decode returns (before ComfyUI's clamp) during vae.decode."""
    model = vae.first_stage_model
    inner = model.decode
    seen = []

    def decode(*args, **kwargs):
        out = inner(*args, **kwargs)
        seen.append(out.detach().float().cpu())
        return out

    model.decode = decode
    return seen


def cmd_decode(a: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    latent = load_file(a.latent)["latent"]
    vae = _load_vae(Path(a.vae), a.metadata)
    raw = _capture_raw(vae)
    options = json.loads(a.vae_options) if a.vae_options else {}
    if a.seed is not None:
        torch.manual_seed(a.seed)
    with torch.inference_mode():
        images = vae.decode(latent, vae_options=options)
    out = {"images": images.float().contiguous()}
    # More than one call means ComfyUI split the batch or fell back to tiling: no single raw tensor then.
    if len(raw) == 1:
        out["raw"] = raw[0].contiguous()
    save_file(out, a.out)


def cmd_encode(a: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    images = load_file(a.images)["images"]
    vae = _load_vae(Path(a.vae), a.metadata)
    with torch.inference_mode():
        latent = vae.encode(images)
    save_file({"latent": latent.float().contiguous()}, a.out)


def cmd_shapes(a: argparse.Namespace) -> None:
    """Key manifest of a ComfyUI VAE built at a chosen width, in the format of tests/data/manifests."""
    if a.family != "wan21":
        raise SystemExit(f"unknown family {a.family!r}; only wan21 can be built at another width by ComfyUI")
    import comfy.ldm.wan.vae

    config = {
        "dim": a.dim,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
    }
    model = comfy.ldm.wan.vae.WanVAE(**config)
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    manifest = {
        "name": f"wan21_comfy_dim{a.dim}",
        "constructor": f"comfy.ldm.wan.vae.WanVAE(**{config!r})",
        "notes": [
            "Made by tests/support/comfy_vae_worker.py shapes from ComfyUI 0.3.75: the Wan 2.1 layout at "
            f"dim={a.dim}. ComfyUI reads dim from decoder.head.0.gamma, so VAELoader loads it as Wan 2.1."
        ],
        "num_tensors": len(keys),
        "num_values": sum(v.numel() for v in model.state_dict().values()),
        "keys": keys,
    }
    text = json.dumps(manifest, indent=1)
    # One shape per line, like the reference manifests: "key": [8, 3, 3, 3, 3]
    text = re.sub(
        r"\[\s*(\d[\d,\s]*?)\s*\]",
        lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]",
        text,
    )
    Path(a.out).write_text(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, type=Path, help="ComfyUI root (has main.py and comfy/)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    dec = sub.add_parser("decode")
    dec.add_argument("--vae", required=True)
    dec.add_argument("--latent", required=True, help="safetensors holding 'latent'")
    dec.add_argument("--out", required=True)
    dec.add_argument("--metadata", help="JSON object passed as VAE(metadata=...), or 'file' for the header's")
    dec.add_argument("--seed", type=int, help="torch.manual_seed right before decode (LTX 0.9.1+ draw noise)")
    dec.add_argument("--vae-options", help="JSON object passed as VAE.decode(vae_options=...)")
    enc = sub.add_parser("encode")
    enc.add_argument("--vae", required=True)
    enc.add_argument("--images", required=True, help="safetensors holding 'images' (T, H, W, 3) in [0, 1]")
    enc.add_argument("--out", required=True)
    enc.add_argument("--metadata")
    shp = sub.add_parser("shapes")
    shp.add_argument("--family", default="wan21")
    shp.add_argument("--dim", type=int, required=True)
    shp.add_argument("--out", required=True)
    a = ap.parse_args()
    _setup_comfy(a.comfy.resolve())
    {"decode": cmd_decode, "encode": cmd_encode, "shapes": cmd_shapes}[a.cmd](a)


if __name__ == "__main__":
    main()
