"""The Wan 2.2 VAE decoder (TI2V-5B, 48 latent channels, 16x spatial).

Differs from Wan 2.1 in three ways: each stage is wrapped with a parameter-free upsampling shortcut
(`DupUpShortcut`), upsample convs keep the width, and the head emits 12 channels that are unpatchified
2x2 into RGB. Parameter names follow the real file (`decoder.upsamples.N.upsamples.M.*`).
Latents are raw (ComfyUI's LATENT["samples"] for Wan 2.2).
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.state import DecodeState
from ..spec import Family
from .layers import (
    CausalConv3d,
    DupUpShortcut,
    FrameAttention,
    PointwiseConv3d,
    ResidualBlock3D,
    Upsample,
    fold_frames,
    unfold_frames,
)
from .wan import Head, WanDecoderBase


class UpStage(nn.Module):
    """Residual blocks and an optional upsample, plus the shortcut that upsamples the stage input."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, up: bool, up_time: bool):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for _ in range(blocks):
            layers.append(ResidualBlock3D(ch, out_ch, separable=False))
            ch = out_ch
        if up:
            layers.append(Upsample(out_ch, out_ch, time=up_time))
        self.upsamples = nn.ModuleList(layers)
        self.avg_shortcut = DupUpShortcut(in_ch, out_ch, 2 if up_time else 1, 2) if up else None

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        h = x
        for layer in self.upsamples:
            if isinstance(layer, Upsample) and layer.frame_wise:
                h = unfold_frames(layer(fold_frames(h), state), h.shape[0])
            else:
                h = layer(h, state)
        return h if self.avg_shortcut is None else h + self.avg_shortcut(x, state)


class Wan22Decoder(WanDecoderBase):
    """Raw Wan 2.2 latents (B, 48, T, H, W) -> video (B, 3, 4T-3, 16H, 16W), about [-1, 1], unclamped."""

    family = Family.WAN22
    time_stride = 4
    space_stride = 16
    out_patch = 2

    def __init__(self, dec_dim: int = 256, z_dim: int = 48, blocks: int = 3):
        super().__init__()
        self.latent_channels = z_dim
        self.conv2 = PointwiseConv3d(z_dim, z_dim)
        self.decoder = Wan22Body(dec_dim, z_dim, blocks)


class Wan22Body(nn.Module):
    def __init__(self, dim: int, z_dim: int, blocks: int):
        super().__init__()
        widths = [4 * dim, 4 * dim, 4 * dim, 2 * dim, dim]
        self.conv1 = CausalConv3d(z_dim, widths[0], 3)
        self.middle = nn.ModuleList(
            [
                ResidualBlock3D(widths[0], widths[0], False),
                FrameAttention(widths[0]),
                ResidualBlock3D(widths[0], widths[0], False),
            ]
        )
        time_ups = (True, True, False, False)
        self.upsamples = nn.ModuleList(
            [UpStage(widths[i], widths[i + 1], blocks, up=i < 3, up_time=time_ups[i]) for i in range(4)]
        )
        self.head = Head(dim, 12, time=True)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        x = self.conv1(x, state[self.conv1])
        x = self.middle[0](x, state)
        x = unfold_frames(self.middle[1](fold_frames(x), state), x.shape[0])
        x = self.middle[2](x, state)
        for stage in self.upsamples:
            x = stage(x, state)
        return self.head(x, state)
