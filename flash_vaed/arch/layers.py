"""Building blocks shared by the Wan-family teachers and the Flash-VAED students.

Tensors are (B, C, T, H, W) unless a block is `frame_wise`, in which case it takes frames folded into
the batch, (B*T, C, H, W). Temporal layers take their `LayerState` explicitly (see engine/state.py).
Attribute names follow the real checkpoints, so state dicts load with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..engine.state import DecodeState, LayerState, TemporalLayer


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frames as batch entries."""
    return rearrange(x, "b c t h w -> (b t) c h w")


def unfold_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    return rearrange(x, "(b t) c h w -> b c t h w", b=batch)


def _take_left_context(state: LayerState, x: torch.Tensor, frames: int, space_pad: int = 0) -> torch.Tensor:
    """x with the frames this layer saw last prepended (zeros at the stream start) and `space_pad` zeros
    around each frame, built in one copy; the new tail is remembered in `state`.

    Zeros, not a repeated first frame: the Wan decoders were trained with zero causal padding. Padding
    here instead of in the conv keeps PyTorch on its fast (mkldnn/cudnn) conv path.
    """
    b, c, t, h, w = x.shape
    p = space_pad
    padded = x.new_zeros(b, c, frames + t, h + 2 * p, w + 2 * p)
    inner = padded[:, :, :, p : p + h, p : p + w]
    if state.past is not None:
        inner[:, :, :frames] = state.past
    inner[:, :, frames:] = x
    # clone: a view would pin the whole padded chunk in memory until the next one arrives
    state.past = inner[:, :, t:].clone()
    state.frames_seen += t
    return padded


class RMSNorm(nn.Module):
    """Channel RMS norm: x / ||x||_C * sqrt(C) * gamma. `gamma_shape` matches the checkpoint's."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma.to(x)


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 conv (Wan's conv2 and 3D shortcuts): no temporal context, no state."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 1)


class CausalConv3d(nn.Conv3d, TemporalLayer):
    """k x k x k conv, causal in time (left context from the state), zero padded in space."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3):
        super().__init__(in_ch, out_ch, kernel, padding=0)
        self.context = kernel - 1
        self.space_pad = kernel // 2

    def forward(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:  # type: ignore[override]
        return F.conv3d(_take_left_context(state, x, self.context, self.space_pad), self.weight, self.bias)


class SeparableConv3d(nn.Module):
    """Depthwise k x k x k then pointwise 1x1x1; with k=1 it is a cheap channel map (shortcuts)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1):
        super().__init__()
        self.depthwise_conv = nn.Conv3d(in_ch, in_ch, kernel, groups=in_ch)
        self.pointwise_conv = nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class CausalSeparableConv3d(SeparableConv3d, TemporalLayer):
    """Depthwise-separable causal 3x3x3 conv: the deep-stage operator of the Flash-VAED students."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3):
        super().__init__(in_ch, out_ch, kernel)
        self.context = kernel - 1
        self.space_pad = kernel // 2

    def forward(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:  # type: ignore[override]
        padded = _take_left_context(state, x, self.context, self.space_pad)
        return self.pointwise_conv(self.depthwise_conv(padded))


class ResidualBlock3D(nn.Module):
    """norm-SiLU-conv-norm-SiLU-conv plus shortcut; conv is full or depthwise-separable causal 3D.

    `residual` keeps the checkpoint's indices (0 norm, 2 conv, 3 norm, 6 conv).
    """

    frame_wise = False

    def __init__(self, in_ch: int, out_ch: int, separable: bool):
        super().__init__()
        conv = CausalSeparableConv3d if separable else CausalConv3d
        self.residual = nn.ModuleList(
            [
                RMSNorm(in_ch, 3),
                nn.SiLU(),
                conv(in_ch, out_ch),
                RMSNorm(out_ch, 3),
                nn.SiLU(),
                nn.Identity(),
                conv(out_ch, out_ch),
            ]
        )
        if in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = SeparableConv3d(in_ch, out_ch, 1) if separable else PointwiseConv3d(in_ch, out_ch)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        r = self.residual
        h = r[2](F.silu(r[0](x)), state[r[2]])
        h = r[6](F.silu(r[3](h)), state[r[6]])
        return h + self.shortcut(x)


class ResidualBlock2D(nn.Module):
    """The per-frame residual block of the students' shallow stages: no temporal context at all.

    Its 1x1 shortcut exists even when widths match (the official layout has one).
    """

    frame_wise = True

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.residual = nn.ModuleList(
            [
                RMSNorm(in_ch, 2),
                nn.SiLU(),
                nn.Conv2d(in_ch, out_ch, 3, padding=1),
                RMSNorm(out_ch, 2),
                nn.SiLU(),
                nn.Identity(),
                nn.Conv2d(out_ch, out_ch, 3, padding=1),
            ]
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        r = self.residual
        h = r[2](F.silu(r[0](x)))
        h = r[6](F.silu(r[3](h)))
        return h + self.shortcut(x)


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (the Wan bottleneck)."""

    frame_wise = True

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(n, 1, c, h * w).transpose(2, 3) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(2, 3).reshape(n, c, h, w)) + x


class Upsample(TemporalLayer):
    """2x nearest spatial upsample + 3x3 conv, optionally preceded by Wan's causal 2x time upsample.

    Time upsample rule (Wan's 'upsample3d'): the stream's first frame passes through once; every
    later frame becomes two, made by a causal (3,1,1) conv over the frames after the first, with zero
    left padding. The first frame is never part of that conv's context.
    """

    def __init__(self, in_ch: int, out_ch: int, time: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.time_conv = nn.Conv3d(in_ch, in_ch * 2, (3, 1, 1)) if time else None

    @property
    def frame_wise(self) -> bool:
        return self.time_conv is None

    @property
    def needs_state(self) -> bool:
        return self.time_conv is not None

    def upsample_time(self, x: torch.Tensor, state: LayerState) -> torch.Tensor:
        head = None
        if not state.started:
            head, x = x[:, :, :1], x[:, :, 1:]
            state.frames_seen = 1
        if x.shape[2] == 0:
            return head if head is not None else x
        b, c, t, h, w = x.shape
        y = F.conv3d(_take_left_context(state, x, 2), self.time_conv.weight, self.time_conv.bias)
        # output channel group g at time i becomes frame 2i+g
        y = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return y if head is None else torch.cat([head, y], dim=2)

    def upsample_space(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, C, H, W) -> (N, C_out, 2H, 2W)."""
        return self.resample[1](F.interpolate(frames, scale_factor=2.0, mode="nearest-exact"))

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        if self.time_conv is None:
            return self.upsample_space(x)
        b = x.shape[0]
        x = self.upsample_time(x, state[self])
        return unfold_frames(self.upsample_space(fold_frames(x)), b)


class DupUpShortcut(TemporalLayer):
    """Wan 2.2's parameter-free upsampling shortcut: channels spread into 2x2 space (and 2x time).

    With time upsampling, the stream's first frame yields one frame, like the main path.
    """

    frame_wise = False

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_ch, self.factor_t, self.factor_s = out_ch, factor_t, factor_s
        self.repeats = out_ch * factor_t * factor_s * factor_s // in_ch

    @property
    def needs_state(self) -> bool:
        return self.factor_t > 1

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        b, _, t, h, w = x.shape
        ft, fs = self.factor_t, self.factor_s
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.out_ch, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_ch, t * ft, h * fs, w * fs)
        if ft > 1:
            s = state[self]
            if not s.started:
                x = x[:, :, ft - 1 :]
            s.frames_seen += t
        return x
