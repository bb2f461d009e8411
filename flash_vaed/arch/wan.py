"""Wan-family decoders built from a `DecoderSpec`: the Wan 2.1 teacher and every Flash-VAED student.

Module and parameter names follow the real files (`conv2.*`, `decoder.conv1`, `decoder.middle.N`,
`decoder.upsamples.N`, `decoder.head.N`), so the Wan 2.1 VAE and the official Flash_VAED_Wan.pth load
with strict=True. Latents are raw (ComfyUI's LATENT["samples"] for Wan): no mean/std is applied here.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from ..engine.state import DecodeState
from ..spec import DecoderSpec, Op
from .layers import (
    CausalConv3d,
    FrameAttention,
    PointwiseConv3d,
    ResidualBlock2D,
    ResidualBlock3D,
    RMSNorm,
    Upsample,
    fold_frames,
    unfold_frames,
)
from .protocol import DecoderModule
from .stage_shortcut import stage_shortcut


def residual_block(in_ch: int, out_ch: int, op: Op) -> nn.Module:
    if op is Op.FRAME_2D:
        return ResidualBlock2D(in_ch, out_ch)
    return ResidualBlock3D(in_ch, out_ch, separable=op is Op.DEPTHWISE_3D)


class Head(nn.ModuleList):
    """RMS norm, SiLU and the output conv (causal 3D or per-frame 2D); indexed like the checkpoint."""

    def __init__(self, in_ch: int, out_ch: int, time: bool):
        conv = CausalConv3d(in_ch, out_ch, 3) if time else nn.Conv2d(in_ch, out_ch, 3, padding=1)
        super().__init__([RMSNorm(in_ch, 3 if time else 2), nn.SiLU(), conv])
        self.frame_wise = not time

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        norm, _, conv = self
        h = torch.nn.functional.silu(norm(x))
        return conv(h, state[conv]) if isinstance(conv, CausalConv3d) else conv(h)


class WanDecoderBody(nn.Module):
    """conv1 -> middle (block, attention, block) -> stages of blocks and upsamples -> head.

    Runs frame-wise modules on frames folded into the batch and folds only when the layout changes,
    so a student whose shallow stages are 2D pays for one rearrange, not one per block.
    """

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        mid = spec.middle_width
        self.conv1 = CausalConv3d(spec.latent_channels, mid, 3)
        self.middle = nn.ModuleList(
            [
                residual_block(mid, mid, spec.middle_op),
                FrameAttention(mid),
                residual_block(mid, mid, spec.middle_op),
            ]
        )
        ups: list[nn.Module] = []
        shortcuts: dict[str, nn.Module] = {}
        self._shortcut_spans: list[tuple[int, int, str]] = []  # (first, last) index in upsamples, key
        in_ch = mid
        for i, stage in enumerate(spec.stages):
            first, stage_in = len(ups), in_ch
            for _ in range(stage.blocks):
                ups.append(residual_block(in_ch, stage.width, stage.op))
                in_ch = stage.width
            if stage.up_out is not None:
                ups.append(Upsample(stage.width, stage.up_out, time=stage.up_time))
                in_ch = stage.up_out
            if stage.shortcut is not None:
                shortcuts[str(i)] = stage_shortcut(stage.shortcut, stage_in, in_ch, stage.up_time)
                self._shortcut_spans.append((first, len(ups) - 1, str(i)))
        self.upsamples = nn.ModuleList(ups)
        if shortcuts:
            self.shortcuts = nn.ModuleDict(shortcuts)
        self.head = Head(in_ch, 3 * spec.out_patch**2, spec.head_time)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        batch = x.shape[0]
        x = self.conv1(x, state[self.conv1])
        folded = False
        skip = len(self.middle)
        starts = {skip + first: key for first, _, key in self._shortcut_spans}
        ends = {skip + last: key for _, last, key in self._shortcut_spans}
        stage_inputs: dict[str, torch.Tensor] = {}
        for i, module in enumerate([*self.middle, *self.upsamples, self.head]):
            if i in starts:
                stage_inputs[starts[i]] = unfold_frames(x, batch) if folded else x
            want_folded = bool(module.frame_wise)
            if want_folded != folded:
                x = fold_frames(x) if want_folded else unfold_frames(x, batch)
                folded = want_folded
            x = module(x, state)
            if i in ends:
                key = ends[i]
                around = self.shortcuts[key](stage_inputs.pop(key), state)
                x = x + (fold_frames(around) if folded else around)
        return unfold_frames(x, batch) if folded else x


class WanDecoderBase(DecoderModule):
    """conv2, a body of causal stages, and the head's unpatchify: what every Wan-family layout shares."""

    causal = True
    out_patch = 1
    conv2: PointwiseConv3d
    decoder: nn.Module

    def _decode(
        self, z_raw: Tensor, state: DecodeState | None, timestep: float | None, noise: list[Tensor]
    ) -> Tensor:
        out = self.decoder(self.conv2(z_raw), state)
        state.latent_frames_seen += z_raw.shape[2]
        if self.out_patch > 1:
            p = self.out_patch
            out = rearrange(out, "b (c r q) t h w -> b c t (h q) (w r)", q=p, r=p)
        return out


class WanFamilyDecoder(WanDecoderBase):
    """Raw Wan latents (B, C, T, H, W) -> video (B, 3, 4T-3, s*H, s*W), about [-1, 1], unclamped: the Wan 2.1
    teacher and every student, built from a `DecoderSpec`.

    `forward(z, state)` decodes the next chunk of a stream; without a state it decodes a whole clip.
    """

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        self.family = spec.family
        self.latent_channels = spec.latent_channels
        self.time_stride = spec.time_stride
        self.space_stride = spec.space_stride
        self.out_patch = spec.out_patch
        self.conv2 = PointwiseConv3d(spec.latent_channels, spec.latent_channels)
        self.decoder = WanDecoderBody(spec)
