"""The LTX-2 decoder against decodes made by upstream ComfyUI (tests/data/ltx2, see its README).

Each reference file holds a normalized latent and ComfyUI's raw decoder output; its metadata holds the
VAE config exactly as a real file carries it and the manifest the weights were generated from. The
weights are regenerated here from the manifest (seed 0), so the files stay small.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flash_vaed import Family
from flash_vaed.arch.ltx2 import LTX2TeacherDecoder, load_ltx2_decoder, vae_config_from_metadata
from flash_vaed.decoder import FlashDecoder
from flash_vaed.latents import LatentNorm
from support.reference_weights import check_generator, generate, load_manifest

DATA = Path(__file__).resolve().parent / "data" / "ltx2"
TOL = 5e-5
FAST = [
    "ltx20_reduced",
    "ltx20_tc_reduced_seeded",
    "ltx23_reduced",
    "groupnorm_causal_seeded",
    "layernorm_circular",
]
FULL = {"ltx20_full": "ltx2_comfy", "ltx20_tc_full": "ltx2_comfy_tc", "ltx23_full": "ltx23_comfy"}


def reference(name: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(file metadata, tensors, manifest) of one stored reference decode."""
    path = DATA / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    manifest = (
        load_manifest(meta["manifest"]) if meta["manifest"] else {"keys": json.loads(meta["manifest_keys"])}
    )
    return meta, load_file(str(path)), manifest


def build(name: str) -> tuple[LTX2TeacherDecoder, LatentNorm, dict, dict[str, torch.Tensor]]:
    meta, ref, manifest = reference(name)
    weights = generate(manifest, seed=0, include=("decoder.", "per_channel_statistics."))
    module, norm = load_ltx2_decoder(vae_config_from_metadata(meta), weights, f"{name} reference")
    return module, norm, meta, ref


def decode_like_reference(
    module: LTX2TeacherDecoder, norm: LatentNorm, meta: dict, latent: torch.Tensor, seed: int | None = None
) -> torch.Tensor:
    """The public decode with ComfyUI's settings for the reference's mode (see tests/data/ltx2/README.md)."""
    mode = meta["mode"]
    if seed is None and mode == "seeded":
        seed = int(meta["noise_seed"])
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    dec = FlashDecoder(Family.LTXV, "teacher", module, norm, "ltx2")
    noise = 0.0 if mode == "noise_off" else module.decode_noise_scale
    return dec.decode(latent, timestep=module.decode_timestep, noise_scale=noise, generator=gen)


def check(name: str) -> None:
    check_generator()
    module, norm, meta, ref = build(name)
    ours = decode_like_reference(module, norm, meta, ref["latent"])
    assert ours.shape == ref["video"].shape
    err = (ours - ref["video"]).abs().max().item()
    assert err <= TOL, f"{name}: max abs error {err:.3g} vs ComfyUI"


@pytest.mark.parametrize("name", FAST)
def test_reduced_decoders_equal_comfyui(name):
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL))
def test_full_size_decoders_equal_comfyui(name):
    check(name)


@pytest.mark.parametrize("name", list(FULL))
def test_full_references_use_the_real_configs(name):
    """The stored full-size decodes were made from the manifests' configs, i.e. the real files' ones."""
    meta, ref, _ = reference(name)
    assert meta["manifest"] == FULL[name]
    assert vae_config_from_metadata(meta) == load_manifest(FULL[name])["comfy_config"]
    assert ref["video"].shape[3:] == (ref["latent"].shape[3] * 32, ref["latent"].shape[4] * 32)


def test_seeded_references_depend_on_the_seed():
    """Matching a seeded reference checks ComfyUI's noise draws, not a decode the noise barely moves."""
    module, norm, meta, ref = build("groupnorm_causal_seeded")
    other = decode_like_reference(module, norm, meta, ref["latent"], seed=int(meta["noise_seed"]) + 1)
    assert (other - ref["video"]).abs().max().item() > 1e-3
