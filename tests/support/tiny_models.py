"""Seeded random-weight model files, under the names the shipped workflows use, for running them in tests.

    models = write_models(tmp / "models")      # models/vae/wan_2.1_vae.safetensors, models/flash_vaed/...

Real key layouts, small sizes: the Wan 2.1 teacher at dim 8 (ComfyUI's own layout, 0.9 M values), the
official Flash-VAED Wan student (the layout of Flash_VAED_Wan.pth, 5.9 M values). For LTX-Video either a
tiny student in this pack's own format (`ltx="tiny"`, milliseconds) or the official Flash_VAED_LTX.pth
layout (`ltx="official"`: its decoder tensors, 67 M values, 0.27 GB, seconds to write and load). The
diffusion models and text encoders are never needed: tests run the decode part of each workflow.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from flash_vaed import Family, FlashDecoder, save_student
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from flash_vaed.latents import LatentNorm
from support.reference_weights import generate, load_manifest

MODEL_SUBDIRS = ("vae", "vae_approx", "checkpoints", "flash_vaed")
WAN_TEACHER = "wan_2.1_vae.safetensors"
WAN_STUDENT = "Flash_VAED_Wan.pth"
LTX_STUDENT = "Flash_VAED_LTX.pth"


def write_models(models_dir: Path, ltx: str = "tiny") -> Path:
    """Fill ``models_dir`` (ComfyUI's models/ layout) with the files the workflows name; returns it."""
    models_dir = Path(models_dir)
    for sub in MODEL_SUBDIRS:
        (models_dir / sub).mkdir(parents=True, exist_ok=True)
    save_file(generate(load_manifest("wan21_comfy_dim8"), seed=0), str(models_dir / "vae" / WAN_TEACHER))
    # a flat state dict saved with torch.save, as the official .pth is
    torch.save(
        generate(load_manifest("flashvaed_wan_official"), seed=1), models_dir / "flash_vaed" / WAN_STUDENT
    )
    write_ltx_student(models_dir / "flash_vaed" / LTX_STUDENT, ltx)
    return models_dir


def write_ltx_student(path: Path, kind: str = "tiny") -> Path:
    if kind == "official":
        tensors = generate(load_manifest("flashvaed_ltx_official"), seed=2, include=["decoder.", "latents_"])
        torch.save(tensors, path)
        return path
    if kind != "tiny":
        raise ValueError(f"ltx must be 'tiny' or 'official', got {kind!r}")
    module = LTXStudentDecoder(LTXStudentSpec.tiny())
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(generate(shapes, seed=2), strict=True)
    stats = generate({"mean": [128], "std": [128]}, seed=2)
    norm = LatentNorm(0.1 * stats["mean"], torch.exp(0.25 * stats["std"]))
    # this pack's own format (safetensors with metadata), under the official file's name: the loader
    # detects formats by content, not by name
    return Path(save_student(FlashDecoder(Family.LTXV, "student", module.eval(), norm, "tiny"), path))
