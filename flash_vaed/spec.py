"""What a decoder is, independent of its weights: the latent family it decodes and, for Wan-family
decoders, the per-stage layout that one builder turns into modules.

A *stage* is the run of residual blocks at one resolution, followed by an optional 2x upsample.
Stages are listed deep (low resolution) to shallow (high resolution), as the decoder runs them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass

from .jsontext import field_problem
from .jsontext import parse as parse_json


class Family(str, enum.Enum):
    """The latent space a decoder reads. The value is what ComfyUI users and files call it.

    LTX-Video 0.9 (LTXV) and LTX-2 (LTX2: LTX-2.0, 2.3, the LTX-2.5 conv VAE) latents have the same shape
    and convention (128 normalized channels, 8x time, 32x space) but are different latent spaces: a decoder
    of one turns the other's latents into garbage. ComfyUI's LATENT carries no family, so the shape cannot
    tell them apart; the family travels with every decoder, student file and distillation instead.
    """

    WAN21 = "wan21"
    WAN22 = "wan22"
    LTXV = "ltxv"
    LTX2 = "ltx2"

    @property
    def is_ltx(self) -> bool:
        """An LTX VAE's latent space: normalized latents, non-causal decoders, 8x time, 32x space."""
        return self in (Family.LTXV, Family.LTX2)

    @property
    def title(self) -> str:
        """The name people know the model family by."""
        return {"wan21": "Wan 2.1", "wan22": "Wan 2.2", "ltxv": "LTX-Video 0.9", "ltx2": "LTX-2"}[self.value]

    @property
    def latent_channels(self) -> int:
        return {"wan21": 16, "wan22": 48, "ltxv": 128, "ltx2": 128}[self.value]

    @property
    def time_stride(self) -> int:
        return 8 if self.is_ltx else 4

    @property
    def space_stride(self) -> int:
        return {"wan21": 8, "wan22": 16, "ltxv": 32, "ltx2": 32}[self.value]

    def frames_out(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames (the first latent frame is one frame)."""
        return 0 if latent_frames <= 0 else self.time_stride * (latent_frames - 1) + 1


SHORTCUTS = (None, "dup", "proj")  # StageSpec.shortcut


class Op(str, enum.Enum):
    """How a stage mixes space and time."""

    FULL_3D = "full3d"  # causal 3x3x3 conv: the teacher's operator
    DEPTHWISE_3D = "dw3d"  # causal depthwise 3x3x3 + pointwise 1x1x1: keeps temporal context cheaply
    FRAME_2D = "frame2d"  # 3x3 conv on each frame alone: no temporal context, no state


@dataclass(frozen=True)
class StageSpec:
    """One resolution level of a Wan-family decoder.

    width:    channels of the stage's residual blocks.
    op:       operator of those blocks.
    blocks:   number of residual blocks.
    up_out:   channels after the 2x spatial upsample that ends the stage; None for the last stage.
    up_time:  the upsample also doubles time (causal, first frame kept single), as Wan's 'upsample3d'.
    shortcut: a residual path around the whole stage, from its input to its upsampled output (Wan 2.2):
              "dup" spreads channels into the 2x2 (x2 time) positions with no weights, Wan 2.2's own
              shortcut; "proj" is a 1x1x1 conv to those positions, what a pruned Wan 2.2 stage keeps
              where the channel sets no longer line up; None (Wan 2.1 and its students): none.
    """

    width: int
    op: Op
    blocks: int = 3
    up_out: int | None = None
    up_time: bool = False
    shortcut: str | None = None


@dataclass(frozen=True)
class DecoderSpec:
    """A whole Wan-family decoder: teacher (all FULL_3D) or any Flash-VAED student.

    middle_width/middle_op: the bottleneck (two residual blocks around one per-frame attention block).
    head_time:  the output conv is a causal 3x3x3 conv (True) or a per-frame 3x3 conv (False).
    out_patch:  1 for RGB heads; 2 for Wan 2.2's head, which emits 12 channels unpatchified 2x2.
    """

    family: Family
    middle_width: int
    middle_op: Op
    stages: tuple[StageSpec, ...]
    head_time: bool = True
    out_patch: int = 1
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a decoder needs at least one stage")
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            if last != (stage.up_out is None):
                raise ValueError(f"stage {i}: only the last stage has no upsample (up_out=None)")
            if stage.width <= 0 or stage.blocks <= 0:
                raise ValueError(f"stage {i}: width and blocks must be positive, got {stage}")
            if stage.shortcut not in SHORTCUTS:
                raise ValueError(f"stage {i}: shortcut must be one of {SHORTCUTS}, got {stage.shortcut!r}")
            if stage.shortcut is not None and stage.up_out is None:
                raise ValueError(
                    f"stage {i}: a stage shortcut goes around an upsample; the last stage has none"
                )
        if self.out_patch not in (1, 2):
            raise ValueError(f"out_patch must be 1 or 2, got {self.out_patch}")

    @property
    def latent_channels(self) -> int:
        return self.family.latent_channels

    @property
    def time_upsamples(self) -> int:
        return sum(s.up_time for s in self.stages)

    @property
    def time_stride(self) -> int:
        return 2**self.time_upsamples

    @property
    def space_stride(self) -> int:
        return 2 ** (len(self.stages) - 1) * self.out_patch

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        for stage in raw["stages"]:  # specs without stage shortcuts keep the JSON they always had
            if stage["shortcut"] is None:
                del stage["shortcut"]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DecoderSpec:
        """A spec from `to_json`'s text; ValueError naming the problem (never quoting the text) otherwise."""
        raw = parse_json(text, "the decoder spec")
        try:
            stages = tuple(StageSpec(**{**s, "op": Op(s["op"])}) for s in raw.pop("stages"))
            return cls(
                **{
                    **raw,
                    "family": Family(raw["family"]),
                    "middle_op": Op(raw["middle_op"]),
                    "stages": stages,
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a valid decoder spec: {field_problem(err)}") from None

    # ---- the layouts that exist in the wild -------------------------------------------------

    @classmethod
    def wan21_teacher(cls, dim: int = 96) -> DecoderSpec:
        """Wan 2.1 VAE decoder (dim 96 in the released file); widths follow dim * [4, 4, 2, 1]."""
        return cls(
            family=Family.WAN21,
            middle_width=4 * dim,
            middle_op=Op.FULL_3D,
            stages=(
                StageSpec(4 * dim, Op.FULL_3D, 3, up_out=2 * dim, up_time=True),
                StageSpec(4 * dim, Op.FULL_3D, 3, up_out=2 * dim, up_time=True),
                StageSpec(2 * dim, Op.FULL_3D, 3, up_out=dim, up_time=False),
                StageSpec(dim, Op.FULL_3D, 3),
            ),
            name=f"wan21-teacher-dim{dim}",
        )

    @classmethod
    def flashvaed_wan21(cls) -> DecoderSpec:
        """The official Flash-VAED Wan 2.1 student (Flash_VAED_Wan.pth): deep stages depthwise-separable
        at full width, shallow stages per-frame 2D at 12.5% width."""
        return cls(
            family=Family.WAN21,
            middle_width=384,
            middle_op=Op.DEPTHWISE_3D,
            stages=(
                StageSpec(384, Op.DEPTHWISE_3D, 3, up_out=192, up_time=True),
                StageSpec(384, Op.DEPTHWISE_3D, 3, up_out=24, up_time=True),
                StageSpec(24, Op.FRAME_2D, 3, up_out=12, up_time=False),
                StageSpec(12, Op.FRAME_2D, 3),
            ),
            name="flashvaed-wan21-official",
        )

    @classmethod
    def tiny(
        cls, family: Family = Family.WAN21, op_deep: Op = Op.DEPTHWISE_3D, op_shallow: Op = Op.FRAME_2D
    ) -> DecoderSpec:
        """A two-upsample, 8-channel decoder that runs in milliseconds on CPU (tests)."""
        return cls(
            family=family,
            middle_width=16,
            middle_op=op_deep,
            stages=(
                StageSpec(16, op_deep, 1, up_out=8, up_time=True),
                StageSpec(8, op_deep, 1, up_out=8, up_time=True),
                StageSpec(8, op_shallow, 1, up_out=8, up_time=False),
                StageSpec(8, op_shallow, 1),
            ),
            out_patch=2 if family is Family.WAN22 else 1,
            name=f"tiny-{family.value}",
        )
