"""Seeded random-weight model files, under the names the shipped workflows use, for running them in tests.

    models = write_models(tmp / "models")      # models/vae/wan_2.1_vae.safetensors, models/flash_vaed/...

Real key layouts, small sizes: the Wan 2.1 teacher at dim 8 (ComfyUI's own layout, 0.9 M values), the
official Flash-VAED Wan student (the layout of Flash_VAED_Wan.pth, 5.9 M values), the LTX-2.3 all-in-one
checkpoint's VAE at 1/8 width (`write_ltx2_vae`; the checkpoint holds nothing else). For LTX-Video either a
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
WAN22_VAE = "wan2.2_vae.safetensors"
# ComfyUI 0.3.75's VAELoader builds the Wan 2.2 VAE at its released size only, whatever the file holds
WAN22_DETECTION_KEYS = {
    "decoder.middle.0.residual.0.gamma": [1024, 1, 1, 1],
    "decoder.upsamples.0.upsamples.0.residual.2.weight": [1024, 1024, 3, 3, 3],
}
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
    write_wan22_vae(models_dir)
    write_ltx2_vae(models_dir / "checkpoints" / LTX2_CHECKPOINT, all_in_one=True)
    return models_dir


def write_wan22_vae(models_dir: Path, dec_dim: int = 16) -> None:
    """`wan2.2_vae.safetensors` twice, for the Wan 2.2 workflow's two loaders.

    models/flash_vaed/: the Wan 2.2 decoder at width `dec_dim` in the real key layout, for Load Flash-VAED
    (which looks in models/flash_vaed before models/vae, and reads any width). models/vae/: for ComfyUI's
    VAELoader, which builds the full-size model (700 M values, allocated but never touched) and loads what
    the file has with strict=False: only the two tensors it detects Wan 2.2 by, in bf16 (57 MB). The
    workflow's decode part never runs that VAE (Wan22 Image To Video Latent encodes only a start image).
    """
    from flash_vaed.arch.wan22 import Wan22Decoder

    torch.manual_seed(3)
    module = Wan22Decoder(dec_dim=dec_dim)
    tensors = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(models_dir / "flash_vaed" / WAN22_VAE))
    stub = {k: torch.zeros(shape, dtype=torch.bfloat16) for k, shape in WAN22_DETECTION_KEYS.items()}
    save_file(stub, str(models_dir / "vae" / WAN22_VAE))


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


LTX2_VAE = "ltx-2.3-video-vae-tiny.safetensors"
_TINY_LTX2_RES = {"num_layers": 1}
# the LTX-2.3 VAE's block kinds and options (decoder and encoder), one resnet per stack, 1/8 of its widths
TINY_LTX2_CONFIG = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "encoder_blocks": [
        ["res_x", _TINY_LTX2_RES],
        ["compress_space_res", {"multiplier": 2}],
        ["res_x", _TINY_LTX2_RES],
        ["compress_time_res", {"multiplier": 2}],
        ["res_x", _TINY_LTX2_RES],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", _TINY_LTX2_RES],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", _TINY_LTX2_RES],
    ],
    "decoder_blocks": [
        ["res_x", _TINY_LTX2_RES],
        ["compress_space", {"multiplier": 2}],
        ["res_x", _TINY_LTX2_RES],
        ["compress_time", {"multiplier": 2}],
        ["res_x", _TINY_LTX2_RES],
        ["compress_all", {"multiplier": 1}],
        ["res_x", _TINY_LTX2_RES],
        ["compress_all", {"multiplier": 2}],
        ["res_x", _TINY_LTX2_RES],
    ],
    "scaling_factor": 1.0,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "causal_decoder": False,
    "timestep_conditioning": False,
    "normalize_latent_channels": False,
    "encoder_base_channels": 16,
    "decoder_base_channels": 16,
    "spatial_padding_mode": "zeros",
}


LTX2_CHECKPOINT = "ltx-2.3-22b-dev-fp8.safetensors"  # the all-in-one file ComfyUI's LTX-2.3 templates load


def write_ltx2_vae(path: Path, config: dict | None = None, seed: int = 4, all_in_one: bool = False) -> Path:
    """An LTX-2 video VAE file as released (encoder, decoder, statistics; the VAE config in the safetensors
    metadata), seeded, at reduced width (TINY_LTX2_CONFIG: LTX-2.3's layout at 1/8 width, 7.3 M values).

    all_in_one: as inside an all-in-one LTX-2 checkpoint instead: the VAE under `vae.`, a stand-in diffusion
    model tensor beside it, the config among the transformer's in the metadata."""
    import json

    from flash_vaed.arch.ltx2 import LTX2TeacherDecoder
    from flash_vaed.arch.ltx_encoder import LTXTeacherEncoder

    config = config or TINY_LTX2_CONFIG
    with torch.device("meta"):
        decoder = LTX2TeacherDecoder.from_comfy_config(config)
        encoder = LTXTeacherEncoder.from_comfy_config(config, base_channels=config["encoder_base_channels"])
    shapes = {k: list(v.shape) for m in (decoder, encoder) for k, v in m.state_dict().items()}
    tensors = generate(shapes, seed=seed)
    stats = generate({"mean": [128], "std": [128]}, seed=seed)
    tensors["per_channel_statistics.mean-of-means"] = 0.1 * stats["mean"]
    tensors["per_channel_statistics.std-of-means"] = torch.exp(0.25 * stats["std"])
    metadata = {"vae": config}
    if all_in_one:
        tensors = {f"vae.{k}": v for k, v in tensors.items()}
        tensors["model.diffusion_model.patchify_proj.weight"] = torch.zeros(8, 128)
        metadata["transformer"] = {"num_layers": 48, "cross_attention_dim": 4096}
    save_file(tensors, str(path), metadata={"config": json.dumps(metadata)})
    return Path(path)
