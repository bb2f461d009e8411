"""Flash-VAED LTX-Video students: the decoder of the official `Flash_VAED_LTX.pth` and narrower variants.

Parameter names are the official file's diffusers-style ones (`decoder.conv_in.conv.weight`,
`decoder.mid_block.resnets.N...`, `decoder.up_blocks.N.{conv_in,upsamplers.0,resnets.M}...`,
`decoder.conv_out.conv.weight`), so its `decoder.*` tensors load with strict=True.

The math, as the official code runs it (facts from models/ltx/ltx_prune_1_4.py):

* Inputs are RAW latents (no mean/std inside; `scaling_factor` 1.0). ComfyUI's LATENT holds normalized
  LTX latents, so un-normalize with the teacher's statistics first; no decode noise, no timestep.
* All spatial padding is zeros (ComfyUI's LTX teacher pads with reflect).
* Full 3x3x3 convs (conv_in, conv_out, upsamplers, full resnets) pad time non-causally by repeating
  the first and last frame once; depthwise-separable convs pad time causally (first frame twice) even
  though the decoder is non-causal; per-frame 2D resnets have no temporal context at all.
* Resnet norms are parameter-free RMS norms over channels (eps 1e-8, computed in float32); the shortcut
  norm `norm3` is a LayerNorm with weight and bias (eps 1e-6).
* An up block runs: conv_in (a resnet changing width, or forced) -> 2x depth-to-space upsample in time
  and space (first output frame dropped) -> its resnets. Then RMS norm, SiLU, conv_out, 4x4 unpatchify.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..engine.state import DecodeState
from ..jsontext import field_problem
from ..jsontext import parse as parse_json
from ..spec import Family, Op
from .ltx import DepthToSpaceUp, ReplicateTimeConv3d, pad_time, temporal_context, time_reach, unpatchify
from .protocol import DecoderModule

__all__ = ["LTXStudentSpec", "StudentStage", "LTXStudentDecoder"]


@dataclass(frozen=True)
class StudentStage:
    """One up block of the student.

    width:     channels of the block (its conv_in maps the previous width to this one).
    layers:    resnets after the upsample.
    op:        operator of those resnets; conv_in is depthwise-separable for DEPTHWISE_3D, else full 3D.
    upsample:  a depth-to-space upsample after conv_in.
    shortcut:  every resnet of the block (conv_in included) has the norm3 + 1x1 shortcut, even at equal width.
    up_stride: (time, height, width) factors of the upsample: 2x in all three (LTX-Video 0.9's), or the
               space-only / time-only upsamples of LTX-2.3.
    up_narrows: the upsample itself narrows the previous width to `width`, with no conv_in resnet (LTX-2's
               upsamplers with a channel multiplier); the previous width must be a multiple of `width`.
    """

    width: int
    layers: int
    op: Op
    upsample: bool = True
    shortcut: bool = False
    up_stride: tuple[int, int, int] = (2, 2, 2)
    up_narrows: bool = False


@dataclass(frozen=True)
class LTXStudentSpec:
    """A whole LTX student decoder: conv_in, mid block, up blocks (deep to shallow), conv_out."""

    mid_width: int
    mid_layers: int
    mid_op: Op
    stages: tuple[StudentStage, ...]
    latent_channels: int = 128
    out_channels: int = 3
    patch_size: int = 4
    name: str = "custom"
    family: Family = Family.LTXV  # the latent space it decodes (LTX-2 students: Family.LTX2)

    def __post_init__(self) -> None:
        widths = [self.mid_width] + [s.width for s in self.stages]
        if min(widths) <= 0 or self.mid_layers < 0 or any(s.layers < 0 for s in self.stages):
            raise ValueError(f"widths must be positive and layer counts non-negative: {self}")
        if self.mid_op is Op.FRAME_2D:
            raise ValueError("the mid block needs temporal context: use DEPTHWISE_3D or FULL_3D")
        if not self.family.is_ltx:
            raise ValueError(f"an LTX student decodes LTX latents, not {self.family.value}")
        for i, (stage, before) in enumerate(zip(self.stages, widths, strict=False)):
            if not stage.upsample:
                if stage.up_narrows:
                    raise ValueError(f"stage {i}: up_narrows needs an upsample")
                continue
            if len(stage.up_stride) != 3 or set(stage.up_stride) - {1, 2} or max(stage.up_stride) != 2:
                raise ValueError(f"stage {i}: up_stride must be 1s and 2s with a 2, got {stage.up_stride}")
            if stage.up_stride[1] != stage.up_stride[2]:
                raise ValueError(f"stage {i}: the upsample must scale height and width alike")
            if stage.up_narrows and before % stage.width:
                raise ValueError(f"stage {i}: an upsample cannot narrow {before} channels to {stage.width}")

    @classmethod
    def official(cls) -> LTXStudentSpec:
        """The released Flash_VAED_LTX.pth: the LTX 0.9.0 decoder with depthwise-separable deep stages and
        the two shallow stages cut to a quarter width (512, 512, 64, 32), the last one per-frame 2D."""
        return cls(
            mid_width=512,
            mid_layers=4,
            mid_op=Op.DEPTHWISE_3D,
            stages=(
                StudentStage(512, 3, Op.DEPTHWISE_3D, upsample=False),
                StudentStage(512, 3, Op.DEPTHWISE_3D),
                StudentStage(64, 3, Op.FULL_3D, shortcut=True),
                StudentStage(32, 4, Op.FRAME_2D, shortcut=True),
            ),
            name="flashvaed-ltx-official",
        )

    @classmethod
    def tiny(cls) -> LTXStudentSpec:
        """Same operators and strides (8x time, 32x space), 8-16 channels: runs in milliseconds (tests)."""
        return cls(
            mid_width=16,
            mid_layers=1,
            mid_op=Op.DEPTHWISE_3D,
            stages=(
                StudentStage(16, 1, Op.DEPTHWISE_3D),
                StudentStage(8, 1, Op.FULL_3D, shortcut=True),
                StudentStage(8, 1, Op.FRAME_2D, shortcut=True),
            ),
            name="tiny-ltx-student",
        )

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        # LTX-Video 0.9 students keep the JSON they always had: fields at their defaults are left out
        if self.family is Family.LTXV:
            del raw["family"]
        for stage in raw["stages"]:
            if tuple(stage["up_stride"]) == (2, 2, 2):
                del stage["up_stride"]
            if not stage["up_narrows"]:
                del stage["up_narrows"]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LTXStudentSpec:
        """A spec from `to_json`'s text; ValueError naming the problem (never quoting the text) otherwise."""
        raw = parse_json(text, "the LTX student spec")
        try:
            stages = tuple(
                StudentStage(**{**s, "op": Op(s["op"]), "up_stride": tuple(s.get("up_stride", (2, 2, 2)))})
                for s in raw.pop("stages")
            )
            family = Family(raw.pop("family", Family.LTXV.value))
            return cls(**{**raw, "mid_op": Op(raw["mid_op"]), "stages": stages, "family": family})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a valid LTX student spec: {field_problem(err)}") from None


# ---- layers --------------------------------------------------------------------------------------


def rms_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Parameter-free RMS norm over channels of (B, C, ...), computed in at least float32."""
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(dim=1, keepdim=True) + eps)
    return h.to(x.dtype)


def channel_layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return norm(x.movedim(1, -1)).movedim(-1, 1)


class SeparableConv3d(nn.Module):
    """Depthwise kxkxk conv (time padded causally: first frame repeated) then pointwise 1x1x1."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.kernel_size = kernel_size
        self.depthwise = nn.Conv3d(in_ch, in_ch, kernel_size, padding=(0, pad, pad), groups=in_ch)
        self.pointwise = nn.Conv3d(in_ch, out_ch, 1)

    @property
    def time_reach(self) -> tuple[int, int]:
        return time_reach(self.kernel_size, causal=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(pad_time(x, self.kernel_size, causal=True)))


class FrameConv2d(nn.Conv2d):
    """kxk conv applied to every frame of (B, C, T, H, W) on its own."""

    time_reach = (0, 0)

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _conv(op: Op, in_ch: int, out_ch: int, kernel_size: int) -> nn.Module:
    if op is Op.DEPTHWISE_3D:
        return SeparableConv3d(in_ch, out_ch, kernel_size)
    if op is Op.FRAME_2D:
        return FrameConv2d(in_ch, out_ch, kernel_size)
    return ReplicateTimeConv3d(in_ch, out_ch, "zeros", causal=False, kernel_size=kernel_size)


class StudentResBlock(nn.Module):
    """RMS norm -> SiLU -> conv -> RMS norm -> SiLU -> conv, plus an identity or LayerNorm+1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, op: Op, shortcut: bool = False):
        super().__init__()
        self.conv1 = _conv(op, in_ch, out_ch, 3)
        self.conv2 = _conv(op, out_ch, out_ch, 3)
        self.has_shortcut = shortcut or in_ch != out_ch
        if self.has_shortcut:
            self.norm3 = nn.LayerNorm(in_ch, eps=1e-6)
            self.conv_shortcut = _conv(op, in_ch, out_ch, 1)

    def time_ops(self) -> list[tuple[int, int]]:
        return [self.conv1.time_reach, self.conv2.time_reach]

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(rms_norm(x)))
        h = self.conv2(F.silu(rms_norm(h)))
        if self.has_shortcut:
            x = self.conv_shortcut(channel_layer_norm(self.norm3, x))
        return h + x


class MidBlock(nn.Module):
    def __init__(self, width: int, layers: int, op: Op):
        super().__init__()
        self.resnets = nn.ModuleList(StudentResBlock(width, width, op) for _ in range(layers))

    def time_ops(self) -> list:
        return [op for r in self.resnets for op in r.time_ops()]

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x


class StudentUpBlock(nn.Module):
    def __init__(self, in_ch: int, stage: StudentStage):
        super().__init__()
        if not stage.up_narrows and (in_ch != stage.width or stage.shortcut):
            conv_in_op = Op.DEPTHWISE_3D if stage.op is Op.DEPTHWISE_3D else Op.FULL_3D
            self.conv_in = StudentResBlock(in_ch, stage.width, conv_in_op, stage.shortcut)
        else:
            self.conv_in = None
        if stage.upsample:
            up_in = in_ch if stage.up_narrows else stage.width
            up = DepthToSpaceUp(up_in, stage.up_stride, "zeros", reduction=up_in // stage.width)
            self.upsamplers = nn.ModuleList([up])
        else:
            self.upsamplers = None
        self.resnets = nn.ModuleList(
            StudentResBlock(stage.width, stage.width, stage.op, stage.shortcut) for _ in range(stage.layers)
        )

    def time_ops(self) -> list:
        ops = self.conv_in.time_ops() if self.conv_in is not None else []
        if self.upsamplers is not None:
            ops += self.upsamplers[0].time_ops()
        return ops + [op for r in self.resnets for op in r.time_ops()]

    def forward(self, x: Tensor) -> Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        for resnet in self.resnets:
            x = resnet(x)
        return x


class StudentBody(nn.Module):
    """The `decoder` submodule (diffusers-style names)."""

    def __init__(self, spec: LTXStudentSpec):
        super().__init__()
        self.patch_size = spec.patch_size
        self.conv_in = ReplicateTimeConv3d(spec.latent_channels, spec.mid_width, "zeros")
        self.mid_block = MidBlock(spec.mid_width, spec.mid_layers, spec.mid_op)
        self.up_blocks = nn.ModuleList()
        width = spec.mid_width
        for stage in spec.stages:
            self.up_blocks.append(StudentUpBlock(width, stage))
            width = stage.width
        self.conv_out = ReplicateTimeConv3d(width, spec.out_channels * spec.patch_size**2, "zeros")

    def time_ops(self) -> list:
        ops = [self.conv_in.time_reach, *self.mid_block.time_ops()]
        for block in self.up_blocks:
            ops += block.time_ops()
        return ops + [self.conv_out.time_reach]

    def forward(self, x: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        x = self.conv_out(F.silu(rms_norm(x)))
        return unpatchify(x, self.patch_size)


class LTXStudentDecoder(DecoderModule):
    """A Flash-VAED LTX student: not causal, not timestep-conditioned, no injected noise."""

    family = Family.LTXV

    def __init__(self, spec: LTXStudentSpec | None = None):
        super().__init__()
        self.spec = spec or LTXStudentSpec.official()
        self.family = self.spec.family
        self.decoder = StudentBody(self.spec)
        self.latent_channels = self.spec.latent_channels
        ups = [stage.up_stride for stage in self.spec.stages if stage.upsample]
        self.time_stride = math.prod(t for t, _, _ in ups)
        self.space_stride = self.spec.patch_size * math.prod(h for _, h, _ in ups)
        self.temporal_context = temporal_context(self.decoder.time_ops())

    def _decode(
        self, z_raw: Tensor, state: DecodeState | None, timestep: float | None, noise: list[Tensor]
    ) -> Tensor:
        """z_raw (B, 128, T, H, W) RAW latents -> video (B, 3, 8T-7, 32H, 32W), roughly [-1, 1], unclamped."""
        return self.decoder(z_raw)
