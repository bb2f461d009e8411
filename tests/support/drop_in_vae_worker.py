"""Build the pack's drop-in `FlashVAE` inside a real ComfyUI and write what it answers (subprocess worker;
never imported by pytest).

    python drop_in_vae_worker.py --comfy ROOT --pack REPO --out OUT.json [--python-only]

Imports ComfyUI from ROOT (CPU), loads the pack from REPO as ComfyUI loads a custom node (a package under
its own name), saves a tiny seeded Wan 2.1 student into a temporary models/flash_vaed, loads it with the
Load Flash-VAED code path and writes, as JSON: the class's methods with their parameters, the instance's
attributes, and the results of the calls a newer ComfyUI makes (decode and decode_tiled with an unknown
keyword, prepare_decode, _tile_bounded_shape, is_dynamic, vae_output_dtype, clone, str, the free-memory
call), so that tests/test_drop_in_vae_contract.py can hold them against the recorded VAE surfaces.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import tempfile
from pathlib import Path


def _params(fn) -> list[dict]:
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.VAR_POSITIONAL: "var_positional",
        inspect.Parameter.KEYWORD_ONLY: "keyword_only",
        inspect.Parameter.VAR_KEYWORD: "var_keyword",
    }
    out = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:  # without self
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        out.append({"name": p.name, "kind": kinds[p.kind], "default": default})
    return out


def _load_pack(repo: Path):
    spec = importlib.util.spec_from_file_location(
        "flash_vaed_pack", repo / "__init__.py", submodule_search_locations=[str(repo)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["flash_vaed_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True, type=Path)
    ap.add_argument("--pack", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(a.comfy))
    # ComfyUI's own utils package first, as main.py does: a comfy.* import later puts comfy/ on sys.path,
    # where comfy/utils.py would shadow it for server.py (which the pack's Prune & Distill glue imports)
    import utils.install_util  # noqa: F401
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management as mm
    import comfy.sd
    import folder_paths
    import torch

    _load_pack(a.pack)
    from flash_vaed_pack.flash_vaed.arch.wan import WanFamilyDecoder
    from flash_vaed_pack.flash_vaed.checkpoint.load import save_student
    from flash_vaed_pack.flash_vaed.decoder import FlashDecoder
    from flash_vaed_pack.flash_vaed.spec import DecoderSpec, Family
    from flash_vaed_pack.nodes import _glue
    from flash_vaed_pack.nodes.drop_in_vae import FlashVAE, TeacherVAEMissing

    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "flash_vaed"
        models.mkdir()
        torch.manual_seed(0)
        module = WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21)).eval()
        save_student(
            FlashDecoder(Family.WAN21, "student", module, None, "flash-vaed:tiny"),
            models / "tiny.safetensors",
        )
        folder_paths.folder_names_and_paths["flash_vaed"][0].insert(0, str(models))
        model = _glue.load_flash_model("tiny.safetensors", "fp32")
        vae = FlashVAE(model)

        cls_methods = {
            name: _params(getattr(FlashVAE, name))
            for name in dir(FlashVAE)
            if callable(getattr(FlashVAE, name, None))
            and (not name.startswith("__") or name in ("__init__", "__str__"))
            and inspect.isfunction(getattr(FlashVAE, name))
        }
        report["methods"] = cls_methods
        report["attributes"] = sorted(vars(vae))
        report["base_is_comfy_vae"] = isinstance(vae, comfy.sd.VAE)

        z = torch.randn(1, 16, 3, 6, 6)
        whole = vae.decode(z, vae_options={}, keyword_of_a_later_release=True)
        tiled = vae.decode_tiled(
            z, tile_x=8, tile_y=8, overlap=2, tile_t=1, overlap_t=1, keyword_of_a_later_release=1
        )
        report["decode"] = {
            "shape": list(whole.shape),
            "dtype": str(whole.dtype),
            "device": str(whole.device),
        }
        report["decode_tiled_vs_decode_max_abs"] = float((tiled - whole).abs().max())
        report["clone_vs_decode_max_abs"] = float((vae.clone().decode(z) - whole).abs().max())
        report["prepare_decode"] = vae.prepare_decode(tuple(z.shape))
        report["tile_bounded_shape"] = list(vae._tile_bounded_shape((1, 16, 5, 20, 30), 8, 12, 2))
        report["is_dynamic"] = vae.is_dynamic()
        report["vae_output_dtype"] = str(vae.vae_output_dtype())
        report["intermediate_dtype_exists"] = hasattr(mm, "intermediate_dtype")
        report["free_memory_bytes"] = _glue.free_memory(model.patcher, model.patcher.load_device)
        report["patcher_has_get_free_memory"] = hasattr(model.patcher, "get_free_memory")
        report["str"] = str(vae)
        try:
            vae.encode(torch.rand(5, 48, 48, 3))
            report["encode_without_teacher"] = "no error"
        except TeacherVAEMissing as err:
            report["encode_without_teacher"] = str(err)
    a.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
