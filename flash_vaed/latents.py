"""Latent conventions per family, and the checks that catch a latent from the wrong model.

ComfyUI's LATENT["samples"] holds raw latents for Wan 2.1/2.2 and per-channel *normalized* latents for
LTX-Video (its VAE un-normalizes inside). Decoders in `arch/` take raw latents; `LatentNorm` is the
one place that converts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import LatentError
from .spec import Family

# What a latent with this many channels most likely came from, for error messages.
_CHANNEL_GUESSES = {
    4: "an SD 1.x/SDXL-style image VAE",
    8: "a Cosmos/Mochi-style video VAE",
    12: "a Mochi or Cosmos video VAE",
    16: "Wan 2.1 (or an image model with 16 channels such as Flux/SD3, or HunyuanVideo)",
    32: "HunyuanVideo 1.5 or a DC-AE image VAE",
    48: "Wan 2.2 TI2V-5B",
    64: "Flux 2 / Qwen-Image (packed)",
    128: "LTX-Video 0.9 or LTX-2",
}


def guess_source(channels: int) -> str:
    return _CHANNEL_GUESSES.get(channels, f"an unknown model with {channels} latent channels")


def check_latents(z: torch.Tensor, family: Family) -> None:
    """Raise `LatentError` unless z is a (B, C, T, H, W) latent of `family` with finite values."""
    want = family.latent_channels
    if not isinstance(z, torch.Tensor):
        raise LatentError(f"latents must be a torch.Tensor, got {type(z).__name__}")
    if z.is_nested:
        raise LatentError(
            "latents are a nested tensor (latents of different sizes in one); decode each latent on its own"
        )
    if z.layout is not torch.strided:
        raise LatentError(f"latents are a {z.layout} tensor; pass a dense one (latents.to_dense())")
    if z.is_meta:
        raise LatentError("latents are on the meta device: they have a shape but no values to decode")
    if z.dim() == 4:
        raise LatentError(
            f"got a 4-D latent {tuple(z.shape)}, i.e. an image latent (B, C, H, W) from {guess_source(z.shape[1])}; "
            f"this {family.value} decoder needs a video latent (B, {want}, T, H, W). Use the VAE of the model that "
            "made the latent, or an empty video latent node for this family."
        )
    if z.dim() != 5:
        raise LatentError(f"latents must be 5-D (B, {want}, T, H, W), got shape {tuple(z.shape)}")
    b, c, t, h, w = z.shape
    if c != want:
        raise LatentError(
            f"this {family.value} decoder needs {want} latent channels, got {c}: the latent looks like it came "
            f"from {guess_source(c)}. Decode it with that model's VAE, or load the Flash-VAED decoder for "
            f"{guess_source(c).split(' (')[0]}."
        )
    if min(b, t, h, w) == 0:
        raise LatentError(f"latents have an empty dimension {tuple(z.shape)}: nothing to decode")
    if z.is_floating_point() and not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).sum())
        raise LatentError(
            f"latents contain {bad} NaN/Inf values: the sampler diverged or a node upstream overflowed "
            "(try fp32/bf16 instead of fp16 for the diffusion model)"
        )
    if not z.is_floating_point():
        raise LatentError(f"latents must be floating point, got {z.dtype}")


@dataclass
class LatentNorm:
    """Per-channel statistics that turn ComfyUI-space latents into a decoder's raw latents.

    raw = comfy * std + mean. For LTX these are the file's mean-of-means / std-of-means.
    """

    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)

    def to(self, device: torch.device | str) -> LatentNorm:
        return LatentNorm(self.mean.to(device), self.std.to(device))

    def to_raw(self, z: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        return z * self.std.view(shape).to(z) + self.mean.view(shape).to(z)

    def to_comfy(self, raw: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        return (raw - self.mean.view(shape).to(raw)) / self.std.view(shape).to(raw)
