"""`FlashDecoder`: a loaded decoder (teacher or student) with the one decode call everybody uses."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from torch import nn

from .arch.ltx import DECODE_NOISE_SCALE as LTX_DECODE_NOISE_SCALE  # noqa: F401 (flash_vaed.quality)
from .arch.ltx import DECODE_TIMESTEP as LTX_DECODE_TIMESTEP  # noqa: F401
from .arch.ltx import mix_decode_noise
from .arch.protocol import DecoderModule
from .engine.decode import DecodePlan, ProgressFn, frames_of_latents, run_decode
from .engine.limits import check_output_fits
from .engine.memory import DecoderProfile, profile_module
from .engine.state import DecodeState
from .engine.tiles import Tile
from .latents import LatentNorm, check_latents
from .policy import decode_with_fallback, useful_plan
from .spec import Family

Wrapper = TypeVar("Wrapper", bound="RunsOnModule")


class RunsOnModule:
    """Device, dtype and moves of a wrapper's `module` and its latent statistics (decoders and encoders)."""

    module: nn.Module
    latent_norm: LatentNorm | None

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def to(
        self: Wrapper, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Wrapper:
        self.module.to(device=device, dtype=dtype)
        if self.latent_norm is not None and device is not None:
            self.latent_norm = self.latent_norm.to(device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@dataclass
class FlashDecoder(RunsOnModule):
    """A decoder ready to run.

    family:  the latent space it reads ("wan21" | "wan22" | "ltxv" | "ltx2").
    role:    "teacher" (an original VAE decoder) or "student" (a Flash-VAED decoder).
    module:  the decoder module (`arch.protocol.DecoderModule`); raw latents in, frames out.
    latent_norm: converts ComfyUI-space latents to the module's raw latents (LTX), or None (Wan).
    layout:  name of the checkpoint layout it was loaded from (for people: nothing dispatches on it).
    """

    family: Family
    role: str
    module: DecoderModule
    latent_norm: LatentNorm | None = None
    layout: str = "unknown"
    info: dict = field(default_factory=dict)

    @property
    def causal(self) -> bool:
        return self.module.causal

    @property
    def timestep_conditioned(self) -> bool:
        return self.module.timestep_conditioned

    @functools.cached_property
    def memory_profile(self) -> DecoderProfile:
        """What the decoder needs per output pixel, measured once without running it for real (see
        `engine.memory`); `del decoder.memory_profile` after changing the module in place."""
        return profile_module(self.module)

    @torch.inference_mode()
    def decode(
        self,
        latents: torch.Tensor,
        plan: DecodePlan | Literal["auto"] | None = None,
        *,
        chunk_frames: int | None = None,
        tile_px: int | None = None,
        overlap_px: int | None = None,
        on_progress: ProgressFn | None = None,
        timestep: float | None = None,
        noise_scale: float | None = None,
        generator: torch.Generator | None = None,
        out_device: torch.device | str | None = None,
        available_bytes: int | None = None,
    ) -> torch.Tensor:
        """Decode ComfyUI latents.

        latents: (B, C, T, H, W) exactly as ComfyUI's LATENT["samples"] holds them for this family
                 (Wan: raw; LTX: normalized).
        plan:    a `DecodePlan` (chunks and tiles), or "auto": the fastest plan that fits in the memory
                 free on the decoder's device, made leaner on out-of-memory (`flash_vaed.policy`).
                 None: the plan of chunk_frames / tile_px / overlap_px, which default to the whole clip
                 at once (chunk_frames: latent frames per streaming step; tile_px, overlap_px: spatial
                 tiles in output pixels).
        on_progress(done, total): called after each chunk of each tile; raise from it to stop.
        timestep, noise_scale, generator: timestep-conditioned LTX decoders only (LTX-Video 0.9.1+, LTX-2
                 variants), ComfyUI's decode noise; default the decoder's own values (ComfyUI's 0.05 / 0.025
                 unless an LTX-2 config sets others). noise_scale=0 is deterministic, a seeded generator
                 reproduces a seeded ComfyUI decode.
        available_bytes: free memory on the output device (default: measured); a decode whose output
                 alone exceeds it is refused with `OutputTooLargeError` before anything is allocated.
        Returns float32 (B, 3, T_out, H_out, W_out) in about [-1, 1] (not clamped).
        """
        timestep = self.module.decode_timestep if timestep is None else timestep
        noise_scale = self.module.decode_noise_scale if noise_scale is None else noise_scale
        keywords = (chunk_frames, tile_px, overlap_px)
        if plan is not None and keywords != (None, None, None):
            raise TypeError("give decode() either a plan or chunk_frames / tile_px / overlap_px, not both")
        options = dict(timestep=timestep, noise_scale=noise_scale, generator=generator, out_device=out_device)
        if plan == "auto":
            check_latents(latents, self.family)
            return decode_with_fallback(
                self, latents, "auto", on_progress, available_bytes=available_bytes, **options
            ).frames
        check_latents(latents, self.family)
        plan = useful_plan(DecodePlan(*keywords) if plan is None else plan, self.module, latents.shape[2])
        check_output_fits(self._output_shape(latents.shape), out_device or self.device, available_bytes)
        z = latents.to(device=self.device, dtype=torch.float32)
        region = _Region(self, timestep, noise_scale, generator)
        return run_decode(region, region.prepare(z), plan, on_progress, out_device=out_device or self.device)

    def _output_shape(self, latent_shape: torch.Size) -> tuple[int, int, int, int, int]:
        b, _, t, h, w = latent_shape
        s, ts = self.module.space_stride, self.module.time_stride
        return (b, 3, frames_of_latents(0, t, ts)[1], h * s, w * s)


class _Region:
    """Latent crops -> frames, the way ComfyUI decodes. Causal decoders (Wan) get chunks and a stream state
    per tile. For LTX-Video the whole latent is noised (timestep-conditioned versions) and un-normalized
    once, as ComfyUI does, before windows and tiles see crops of it; the decoder's injected spatial noise
    is drawn once for the whole latent and cropped per tile, so every window and tile sees the same noise."""

    def __init__(self, decoder: FlashDecoder, timestep: float, noise_scale: float, generator):
        self.module, self.dtype, self.latent_norm = decoder.module, decoder.dtype, decoder.latent_norm
        self.timestep, self.noise_scale, self.generator = timestep, noise_scale, generator
        self.spatial_noise = None

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        # ComfyUI draws the latent noise even at scale 0, then un-normalizes, then the decoder draws its
        # injected noise: same order here, so a seeded generator reproduces a seeded ComfyUI decode
        if self.module.timestep_conditioned:
            z = mix_decode_noise(z, self.noise_scale, self.generator)
        if self.latent_norm is not None:
            z = self.latent_norm.to_raw(z)
        self.spatial_noise = self.module.draw_spatial_noise(
            tuple(z.shape[-2:]), self.generator, z.device, self.dtype
        )
        return z

    def __call__(self, z: torch.Tensor, stream: DecodeState | None, tile: Tile) -> torch.Tensor:
        noise = self.module.crop_spatial_noise(self.spatial_noise, tile.y0, tile.y1, tile.x0, tile.x1)
        return self.module(z.to(self.dtype), stream, timestep=self.timestep, spatial_noise=noise)
