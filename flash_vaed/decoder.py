"""`FlashDecoder`: a loaded decoder (teacher or student) with the one decode call everybody uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .engine.decode import DecodePlan, ProgressFn, frames_of_latents, run_decode
from .engine.limits import check_output_fits
from .engine.state import DecodeState
from .engine.tiles import Tile
from .latents import LatentNorm, check_latents
from .spec import Family

log = logging.getLogger(__name__)

# ComfyUI's LTX-Video decode defaults (0.9.1+ decoders are timestep-conditioned)
LTX_DECODE_TIMESTEP = 0.05
LTX_DECODE_NOISE_SCALE = 0.025


class RunsOnModule:
    """Device and dtype of a wrapper's `module` (decoders and encoders alike)."""

    module: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


@dataclass
class FlashDecoder(RunsOnModule):
    """A decoder ready to run.

    family:  the latent space it reads ("wan21" | "wan22" | "ltxv").
    role:    "teacher" (an original VAE decoder) or "student" (a Flash-VAED decoder).
    module:  the torch module; raw latents in, frames out.
    latent_norm: converts ComfyUI-space latents to the module's raw latents (LTX), or None (Wan).
    layout:  name of the checkpoint layout it was loaded from.
    """

    family: Family
    role: str
    module: nn.Module
    latent_norm: LatentNorm | None = None
    layout: str = "unknown"
    info: dict = field(default_factory=dict)

    @property
    def causal(self) -> bool:
        return bool(getattr(self.module, "causal", False))

    @property
    def timestep_conditioned(self) -> bool:
        return bool(getattr(self.module, "timestep_conditioned", False))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FlashDecoder:
        self.module.to(device=device, dtype=dtype)
        if self.latent_norm is not None:
            self.latent_norm = LatentNorm(
                self.latent_norm.mean.to(device or "cpu"), self.latent_norm.std.to(device or "cpu")
            )
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @torch.inference_mode()
    def decode(
        self,
        latents: torch.Tensor,
        chunk_frames: int | None = None,
        tile_px: int | None = None,
        overlap_px: int | None = None,
        on_progress: ProgressFn | None = None,
        *,
        timestep: float = LTX_DECODE_TIMESTEP,
        noise_scale: float = LTX_DECODE_NOISE_SCALE,
        generator: torch.Generator | None = None,
        out_device: torch.device | str | None = None,
        available_bytes: int | None = None,
    ) -> torch.Tensor:
        """Decode ComfyUI latents.

        latents: (B, C, T, H, W) exactly as ComfyUI's LATENT["samples"] holds them for this family
                 (Wan: raw; LTX: normalized).
        chunk_frames: latent frames per streaming step (None: whole clip).
        tile_px, overlap_px: spatial tiles in output pixels (None: no tiling).
        on_progress(done, total): called after each chunk of each tile; raise from it to stop.
        timestep, noise_scale, generator: LTX 0.9.1+ only, ComfyUI's decode noise; noise_scale=0 is
                 deterministic, a seeded generator reproduces a seeded ComfyUI decode.
        available_bytes: free memory on the output device (default: measured); a decode whose output
                 alone exceeds it is refused with `OutputTooLargeError` before anything is allocated.
        Returns float32 (B, 3, T_out, H_out, W_out) in about [-1, 1] (not clamped).
        """
        check_latents(latents, self.family)
        plan = DecodePlan(chunk_frames, tile_px, overlap_px)
        check_output_fits(self._output_shape(latents.shape), out_device or self.device, available_bytes)
        z = latents.to(device=self.device, dtype=torch.float32)
        region = self._region(z, timestep, noise_scale, generator)
        return run_decode(region, region.prepare(z), plan, on_progress, out_device=out_device or self.device)

    def _output_shape(self, latent_shape: torch.Size) -> tuple[int, int, int, int, int]:
        b, _, t, h, w = latent_shape
        s = int(getattr(self.module, "space_stride", self.family.space_stride))
        ts = int(getattr(self.module, "time_stride", self.family.time_stride))
        return (b, 3, frames_of_latents(0, t, ts)[1], h * s, w * s)

    def _region(
        self, z: torch.Tensor, timestep: float, noise_scale: float, generator: torch.Generator | None
    ):
        if self.causal:
            return _CausalRegion(self.module, self.dtype)
        return _WindowedRegion(
            self.module, self.dtype, self.latent_norm, z.shape, timestep, noise_scale, generator
        )


class _CausalRegion:
    """Wan family: chunks flow through one DecodeState per tile."""

    causal = True
    temporal_halo = 0

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.module, self.dtype = module, dtype
        self.time_stride = module.family.time_stride
        self.space_stride = module.family.space_stride

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def new_stream(self) -> DecodeState:
        return DecodeState(self.module)

    def __call__(self, z: torch.Tensor, stream: DecodeState | None, tile: Tile) -> torch.Tensor:
        return self.module(z.to(self.dtype), stream)


class _WindowedRegion:
    """LTX-Video: the whole latent is un-normalized and noised once (as ComfyUI does), then windows and
    tiles see crops of it; the decoder's injected spatial noise is drawn once and cropped per tile."""

    causal = False

    def __init__(self, module, dtype, latent_norm, shape, timestep, noise_scale, generator):
        self.module, self.dtype, self.latent_norm = module, dtype, latent_norm
        self.time_stride = module.time_stride
        self.space_stride = module.space_stride
        self.temporal_halo = module.temporal_halo
        self.temporal_context = tuple(getattr(module, "temporal_context", (module.temporal_halo,) * 2))
        self.conditioned = bool(getattr(module, "timestep_conditioned", False))
        self.timestep = timestep if self.conditioned else None
        self.noise_scale = noise_scale if self.conditioned else 0.0
        self.generator = generator
        self.spatial_noise = None
        self.latent_hw = tuple(shape[-2:])

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        from .arch.ltx import mix_decode_noise

        # ComfyUI draws the latent noise even at scale 0, then un-normalizes, then the decoder draws its
        # injected noise: same order here, so a seeded generator reproduces a seeded ComfyUI decode
        if self.conditioned:
            z = mix_decode_noise(z, self.noise_scale, self.generator)
        if self.latent_norm is not None:
            z = self.latent_norm.to_raw(z)
        if getattr(self.module, "injects_noise", False):
            # drawn once for the whole latent, so every window and tile sees the same noise
            self.spatial_noise = self.module.draw_spatial_noise(
                self.latent_hw, self.generator, z.device, self.dtype
            )
        return z

    def new_stream(self) -> None:
        return None

    def __call__(self, z: torch.Tensor, stream: None, tile: Tile) -> torch.Tensor:
        kwargs = {}
        if self.conditioned:
            kwargs["timestep"] = self.timestep
        if self.spatial_noise is not None:
            kwargs["spatial_noise"] = self.module.crop_spatial_noise(
                self.spatial_noise, tile.y0, tile.y1, tile.x0, tile.x1
            )
        return self.module(z.to(self.dtype), **kwargs)
