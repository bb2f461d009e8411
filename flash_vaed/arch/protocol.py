"""What every decoder module offers: one base class for teachers and students, Wan and LTX alike.

The engine, the pruners and the distillation loop read these attributes and make this one call; none of
them needs to know which architecture it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..engine.state import DecodeState
from ..spec import Family


class DecoderModule(nn.Module):
    """Raw latents (B, C, T, H, W) -> video (B, 3, T_out, H * space_stride, W * space_stride), about [-1, 1].

    family:           the latent space it reads; latent_channels is C.
    causal:           True: decodes a stream chunk by chunk, its past carried in a `DecodeState` (Wan).
                      False: every frame looks both ways, so the engine decodes overlapping windows (LTX).
    time_stride:      frames per latent frame after the first, which gives one frame.
    space_stride:     pixels per latent pixel, each way.
    temporal_context: latent frames (before, after) a window needs beyond what `state` carries for its
                      frames to be exact: (0, 0) for causal decoders.
    timestep_conditioned: `timestep` changes the output (LTX 0.9.1+ teachers).
    noise_scales:     spatial scale, relative to the latent, of each noise draw the decoder injects, in
                      draw order (LTX 0.9.1); empty for decoders that inject none.
    decode_timestep, decode_noise_scale: what ComfyUI decodes this decoder with when it is timestep-
                      conditioned (its defaults 0.05 / 0.025; LTX-2 files may set their own in the config).
    """

    family: Family
    latent_channels: int
    causal: bool = False
    time_stride: int
    space_stride: int
    temporal_context: tuple[int, int] = (0, 0)
    timestep_conditioned: bool = False
    noise_scales: tuple[int, ...] = ()
    decode_timestep: float = 0.05
    decode_noise_scale: float = 0.025

    @property
    def temporal_halo(self) -> int:
        return max(self.temporal_context)

    @property
    def injects_noise(self) -> bool:
        return bool(self.noise_scales)

    def forward(
        self,
        z_raw: Tensor,
        state: DecodeState | None = None,
        *,
        timestep: float | None = None,
        spatial_noise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Decode z_raw: the next chunk of the stream `state` (causal decoders; None: a whole clip).

        timestep: for timestep-conditioned decoders, default ComfyUI's decode timestep; ignored by others.
        spatial_noise: the injected noise, from `draw_spatial_noise` (cropped for tiles); decoders that
        inject noise draw it from the global RNG when it is None. Raises ValueError for latents of another
        layout, a state given to a decoder that is not causal, or noise that does not fit the decoder.
        """
        name = type(self).__name__
        if z_raw.ndim != 5 or z_raw.shape[1] != self.latent_channels:
            raise ValueError(
                f"{name} expects (B, {self.latent_channels}, T, H, W) latents, got {tuple(z_raw.shape)}"
            )
        if state is not None and not self.causal:
            raise ValueError(f"{name} is not causal: it decodes windows, without a DecodeState")
        if state is None and self.causal:
            state = DecodeState(self)
        if spatial_noise is None:
            spatial_noise = self.draw_spatial_noise(tuple(z_raw.shape[-2:]), None, z_raw.device, z_raw.dtype)
        noise = list(spatial_noise or [])
        if len(noise) != len(self.noise_scales):
            raise ValueError(
                f"{name} injects {len(self.noise_scales)} spatial noise tensors, got {len(noise)}"
            )
        return self._decode(z_raw, state, timestep, noise)

    def _decode(
        self, z_raw: Tensor, state: DecodeState | None, timestep: float | None, noise: list[Tensor]
    ) -> Tensor:
        """The architecture's own decode, after `forward` checked and completed its inputs."""
        raise NotImplementedError

    def draw_spatial_noise(
        self,
        latent_hw: tuple[int, int],
        generator: torch.Generator | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor] | None:
        """The injected noise for a whole (H, W) latent: one (s*H, s*W) tensor per draw, in draw order.

        generator=None draws from the global RNG, as ComfyUI does. None for decoders without injection.
        """
        if not self.noise_scales:
            return None
        h, w = latent_hw
        return [
            torch.randn((s * h, s * w), generator=generator, device=device, dtype=dtype)
            for s in self.noise_scales
        ]

    def crop_spatial_noise(
        self, noise: Sequence[Tensor] | None, y0: int, y1: int, x0: int, x1: int
    ) -> list[Tensor] | None:
        """The part of whole-latent noise under latent rows y0:y1 and columns x0:x1 (for spatial tiles)."""
        if noise is None:
            return None
        return [n[s * y0 : s * y1, s * x0 : s * x1] for n, s in zip(noise, self.noise_scales, strict=True)]


def decode_raw(module: DecoderModule, z_raw: Tensor) -> Tensor:
    """Run any decoder module on raw latents (B, C, T, H, W), whole clip, with grad where enabled.

    Wan: a fresh `DecodeState`. LTX: ComfyUI's decode timestep and zero injected noise, so a teacher gives
    its noise-free output (what students learn and pruning fits). z_raw must already be on the module's
    device and in its dtype; the output is in that dtype.
    """
    h, w = z_raw.shape[-2:]
    noise = [z_raw.new_zeros((s * h, s * w)) for s in module.noise_scales] or None
    return module(z_raw, spatial_noise=noise)
