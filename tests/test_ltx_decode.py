"""LTX-Video through the public API: load_decoder + FlashDecoder.decode on ComfyUI's normalized latents.

Module-level equality with ComfyUI is in test_ltx_teacher.py; here the whole user path is checked:
latent statistics, ComfyUI's seeded decode noise, temporal windows and tiles.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from flash_vaed import Family, load_decoder
from flash_vaed.arch.ltx import LTXTeacherDecoder
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from flash_vaed.decoder import FlashDecoder
from flash_vaed.latents import LatentNorm
from support.comfy_subprocess import comfy_vae_decode, load_outputs
from support.reference_weights import generate, load_manifest
from test_ltx_teacher import reduced_config

TOL = 5e-5


def _z(t: int, h: int = 2, w: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(1, 128, t, h, w, generator=torch.Generator().manual_seed(seed))


def _norm() -> LatentNorm:
    g = torch.Generator().manual_seed(9)
    return LatentNorm(0.1 * torch.randn(128, generator=g), torch.exp(0.25 * torch.randn(128, generator=g)))


def _flash(module, role="teacher") -> FlashDecoder:
    torch.manual_seed(0)
    for p in module.parameters():
        p.data.normal_(0, 0.3 / max(1, p[0].numel()) ** 0.5) if p.dim() > 1 else p.data.normal_(0, 0.02)
    return FlashDecoder(Family.LTXV, role, module.eval(), _norm())


@pytest.mark.comfy
@pytest.mark.slow
@pytest.mark.parametrize("manifest", ["ltx_comfy_v0", "ltx_comfy_v1"])
def test_full_size_ltx_equals_comfyui_seeded(tmp_path, manifest):
    """VAELoader + VAEDecode with torch.manual_seed(s) == load_decoder + decode(generator seeded s)."""
    weights = generate(load_manifest(manifest), seed=0)
    path = tmp_path / "ltx_vae.safetensors"
    save_file(weights, str(path))
    latent = _z(2, 2, 2)
    comfy_vae_decode(path, latent, out_path=tmp_path / "o.safetensors", seed=123)
    theirs = load_outputs(tmp_path / "o.safetensors")["raw"]
    del weights
    dec = load_decoder(path)
    assert dec.family is Family.LTXV and dec.role == "teacher"
    ours = dec.decode(latent, generator=torch.Generator().manual_seed(123))
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_student_windows_equal_whole_clip(chunk):
    dec = _flash(LTXStudentDecoder(LTXStudentSpec.tiny()), "student")
    z = _z(7)
    whole = dec.decode(z)
    assert whole.shape[2] == 8 * 7 - 7
    torch.testing.assert_close(dec.decode(z, chunk_frames=chunk), whole, rtol=0, atol=1e-5)


def test_teacher_with_injected_noise_windows_and_tiles_share_noise():
    """0.9.1-style noise is drawn once per decode: windows give the whole-clip frames exactly, and a
    seeded decode is reproducible."""
    module = LTXTeacherDecoder.from_comfy_config(reduced_config(1, "zeros"), base_channels=4)
    dec = _flash(module)
    z = _z(4, 2, 2)
    whole = dec.decode(z, generator=torch.Generator().manual_seed(1))
    again = dec.decode(z, generator=torch.Generator().manual_seed(1))
    assert torch.equal(whole, again)
    windows = dec.decode(z, chunk_frames=1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(windows, whole, rtol=0, atol=1e-5)
    assert not torch.equal(dec.decode(z, generator=torch.Generator().manual_seed(2)), whole)


def test_noise_scale_zero_is_deterministic_without_generator():
    module = LTXTeacherDecoder.from_comfy_config(reduced_config(2, "zeros"), base_channels=4)
    dec = _flash(module)
    z = _z(2, 2, 2)
    torch.manual_seed(1)
    a = dec.decode(z, noise_scale=0.0)
    torch.manual_seed(2)
    b = dec.decode(z, noise_scale=0.0)
    assert torch.equal(a, b)


def test_tiled_ltx_decode_is_close():
    dec = _flash(LTXStudentDecoder(LTXStudentSpec.tiny()), "student")
    z = _z(2, 8, 8)
    whole = dec.decode(z)

    def psnr(tile_px, overlap_px):
        tiled = dec.decode(z, tile_px=tile_px, overlap_px=overlap_px)
        return 10 * torch.log10(4.0 / ((tiled - whole) ** 2).mean()).item()

    feathered = psnr(192, 96)
    assert feathered > 30, feathered
    assert feathered > psnr(192, 0) + 3  # the cross-fade, not luck, is what hides the tile borders


def test_ltx_latents_are_unnormalized_with_the_file_statistics(tmp_path):
    """The official LTX student file carries mean_of_means/std_of_means: ComfyUI latents pass through them."""
    weights = generate(load_manifest("flashvaed_ltx_official"), seed=0)
    norm = _norm()
    weights["mean_of_means"], weights["std_of_means"] = norm.mean, norm.std
    torch.save(weights, tmp_path / "Flash_VAED_LTX.pth")
    dec = load_decoder(tmp_path / "Flash_VAED_LTX.pth")
    assert dec.layout == "flashvaed-ltx-official" and dec.role == "student"
    z = _z(2, 1, 1)
    with torch.no_grad():
        direct = dec.module(norm.to_raw(z))
    torch.testing.assert_close(dec.decode(z), direct, rtol=0, atol=1e-5)
