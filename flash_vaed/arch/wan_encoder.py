"""The Wan 2.1 and Wan 2.2 VAE encoders (the teachers' encoders, for distillation and a drop-in VAE).

frames (B, 3, T, H, W) in [-1, 1] -> the latent mean `mu` (B, z, 1 + (T-1)//4, H/s, W/s), raw (no mean/std:
ComfyUI's LATENT["samples"] convention for Wan); s = 8 for Wan 2.1, 16 for Wan 2.2 (2x2 patchify first).

Parameter names follow the real files (`encoder.conv1`, `encoder.downsamples.N[.downsamples.M]`,
`encoder.middle.N`, `encoder.head.N`, top-level `conv1`), so their encoder keys load with strict=True.

Time is causal and streamed through one `DecodeState`, exactly like the decoders: every layer that looks
back is a `TemporalLayer` that keeps its own context, so encoding a clip whole equals encoding it in any
chunks. ComfyUI feeds chunks of 1, 4, 4, ... frames; what its cache does for that chunking is, per layer:

- 3x3x3 causal convs: zero left padding at the stream start, then the previous two frames.
- 'downsample3d' (spatial 2x first, then a (3,1,1) time conv of stride 2): the stream's first frame passes
  through unchanged; output k >= 1 is the conv over frames 2k-2, 2k-1, 2k.
- Wan 2.2's AvgDown3D shortcut with 2x time: one zero frame before the stream's first frame, then frames
  averaged in pairs (2k-1, 2k).

A chunk may end mid-pair; the pending frame then waits in the state and the chunk emits fewer frames
(possibly none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..engine.state import DecodeState, LayerState, TemporalLayer
from ..spec import Family
from .layers import CausalConv3d, FrameAttention, PointwiseConv3d, ResidualBlock3D, fold_frames, unfold_frames
from .wan import Head

# What ComfyUI builds for every Wan VAE (comfy.sd.VAE passes these for 2.1 and 2.2 alike).
DIM_MULT = (1, 2, 4, 4)
RES_BLOCKS = 2
TIME_DOWN = (False, True, True)


class Downsample(TemporalLayer):
    """Wan's 'downsample2d' / 'downsample3d': zero-pad right and bottom by one, 3x3 conv of stride 2 on
    each frame, then (3d only) a causal (3,1,1) time conv of stride 2 (see the module docstring)."""

    def __init__(self, ch: int, time: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(ch, ch, 3, stride=2))
        self.time_conv = nn.Conv3d(ch, ch, (3, 1, 1), stride=(2, 1, 1)) if time else None

    @property
    def needs_state(self) -> bool:
        return self.time_conv is not None

    def downsample_time(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        head = None
        if not state.started:
            if x.shape[2] == 0:
                return x
            # the first frame is emitted as is and is also the left context of output 1
            head, x = x[:, :, :1], x[:, :, 1:]
            state.past = head.clone()
            state.frames_seen = 1
        buf = torch.cat([state.past, x], dim=2)
        n = (buf.shape[2] - 1) // 2
        # clone: a view would pin the whole chunk in memory until the next one arrives
        state.past = buf[:, :, 2 * n :].clone()
        state.frames_seen += x.shape[2]
        y = (
            F.conv3d(buf[:, :, : 2 * n + 1], self.time_conv.weight, self.time_conv.bias, stride=(2, 1, 1))
            if n > 0
            else buf[:, :, :0]
        )
        return y if head is None else torch.cat([head, y], dim=2)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        x = unfold_frames(self.resample(fold_frames(x)), x.shape[0])
        return x if self.time_conv is None else self.downsample_time(x, state[self])


class AvgDownShortcut(TemporalLayer):
    """Wan 2.2's parameter-free downsampling shortcut (AvgDown3D): space (and time) folded into channels,
    then groups of channels averaged down to `out_ch`."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        super().__init__()
        factor = factor_t * factor_s * factor_s
        if (in_ch * factor) % out_ch:
            raise ValueError(f"AvgDown3D: {in_ch} x {factor} channels do not split into {out_ch} groups")
        self.out_ch, self.factor_t, self.factor_s = out_ch, factor_t, factor_s
        self.group = in_ch * factor // out_ch

    @property
    def needs_state(self) -> bool:
        return self.factor_t > 1

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        if ft > 1:
            s = state[self]
            b, c, _, h, w = x.shape
            # zeros before the stream's first frame: ComfyUI pads its 1-frame first chunk in front
            before = s.past if s.started else x.new_zeros(b, c, ft - 1, h, w)
            buf = torch.cat([before, x], dim=2)
            n = buf.shape[2] // ft
            s.past = buf[:, :, n * ft :].clone()
            s.frames_seen += x.shape[2]
            x = buf[:, :, : n * ft]
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.out_ch, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class DownStage(nn.Module):
    """Wan 2.2's `Down_ResidualBlock`: residual blocks and an optional downsample, plus the AvgDown3D
    shortcut of the stage input (added even where it is the identity: the last stage adds its input)."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, down: bool, down_time: bool):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for _ in range(blocks):
            layers.append(ResidualBlock3D(ch, out_ch, separable=False))
            ch = out_ch
        if down:
            layers.append(Downsample(out_ch, time=down_time))
        self.downsamples = nn.ModuleList(layers)
        self.avg_shortcut = AvgDownShortcut(in_ch, out_ch, 2 if down_time else 1, 2 if down else 1)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        h = x
        for layer in self.downsamples:
            h = layer(h, state)
        return h + self.avg_shortcut(x, state)


class WanEncoderBody(nn.Module):
    """The `encoder` submodule: conv1 -> downsampling stages -> middle (block, attention, block) -> head."""

    def __init__(self, dim: int, in_ch: int, out_ch: int, wan22: bool):
        super().__init__()
        dims = [dim * m for m in (1, *DIM_MULT)]
        self.out_channels = out_ch
        self.conv1 = CausalConv3d(in_ch, dims[0], 3)
        layers: list[nn.Module] = []
        for i in range(len(DIM_MULT)):
            down = i < len(DIM_MULT) - 1
            down_time = down and TIME_DOWN[i]
            if wan22:
                layers.append(DownStage(dims[i], dims[i + 1], RES_BLOCKS, down, down_time))
                continue
            ch = dims[i]
            for _ in range(RES_BLOCKS):
                layers.append(ResidualBlock3D(ch, dims[i + 1], separable=False))
                ch = dims[i + 1]
            if down:
                layers.append(Downsample(ch, time=down_time))
        self.downsamples = nn.ModuleList(layers)
        mid = dims[-1]
        self.middle = nn.ModuleList(
            [
                ResidualBlock3D(mid, mid, False),
                FrameAttention(mid),
                ResidualBlock3D(mid, mid, False),
            ]
        )
        self.head = Head(mid, out_ch, time=True)
        self.space_stride = 2 ** (len(DIM_MULT) - 1)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        b, _, _, h, w = x.shape
        x = self.conv1(x, state[self.conv1])
        for layer in self.downsamples:
            x = layer(x, state)
            if x.shape[2] == 0:  # a chunk that ended mid-pair: nothing new below this layer
                s = self.space_stride
                return x.new_zeros(b, self.out_channels, 0, h // s, w // s)
        x = self.middle[0](x, state)
        x = unfold_frames(self.middle[1](fold_frames(x), state), b)
        x = self.middle[2](x, state)
        return self.head(x, state)


class WanEncoder(nn.Module):
    """Wan 2.1 (`wan22=False`, RGB in, any `dim`) or Wan 2.2 (2x2 patchify to 12 channels) VAE encoder.

    `forward(frames, state)` encodes the next chunk of a stream, frames (B, 3, t, H, W) in [-1, 1], and
    returns the raw latent mean of the latent frames this chunk completes; a fresh `DecodeState`
    starts a new clip. A whole clip of T = 4k+1 frames gives k+1 latent frames.
    """

    def __init__(self, dim: int = 96, z_dim: int = 16, wan22: bool = False):
        super().__init__()
        self.family = Family.WAN22 if wan22 else Family.WAN21
        self.z_dim = z_dim
        self.patch = 2 if wan22 else 1
        self.encoder = WanEncoderBody(dim, 3 * self.patch**2, 2 * z_dim, wan22)
        self.conv1 = PointwiseConv3d(2 * z_dim, 2 * z_dim)
        self.time_stride = 4
        self.space_stride = self.encoder.space_stride * self.patch

    @property
    def causal(self) -> bool:
        return True

    def forward(self, frames: torch.Tensor, state: DecodeState) -> torch.Tensor:
        x = frames
        if self.patch > 1:
            # the order ComfyUI's patchify uses: channel c*p*p + pw*p + ph
            x = rearrange(x, "b c t (h q) (w r) -> b (c r q) t h w", q=self.patch, r=self.patch)
        h = self.encoder(x, state)
        # conv1 maps to (mu, log_var); only mu is returned, so only its half is computed
        z = self.z_dim
        if h.shape[2] == 0:
            return h[:, :z]
        return F.conv3d(h, self.conv1.weight[:z], self.conv1.bias[:z])
