"""Wan key layouts: diffusers names -> the original (ComfyUI) names for both halves, and a decoder spec read
off shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import CheckpointError
from ..spec import DecoderSpec, Family, Op, StageSpec

_RESNET_PARTS = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _resnet(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_RESNET_PARTS.get(part, part)}.{tail}" if tail else _RESNET_PARTS.get(part, part)


# diffusers' names for the 1x1 conv beside each half: post_quant_conv feeds the decoder, quant_conv ends
# the encoder
_QUANT = {"decoder": ("post_quant_conv.", "conv2."), "encoder": ("quant_conv.", "conv1.")}
_ENDS = (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2."))


def _shared_part(key: str, part: str) -> str | None:
    """The original name of a key both halves ("decoder" / "encoder") name alike: the quant conv, the
    input conv, the head, the middle block. None for the others."""
    old, new = _QUANT[part]
    if key.startswith(old):
        return new + key[len(old) :]
    for old, new in _ENDS:
        if key.startswith(f"{part}.{old}"):
            return f"{part}.{new}{key[len(part) + 1 + len(old) :]}"
    if m := re.match(rf"{part}\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{part}.middle.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(rf"{part}\.mid_block\.attentions\.0\.(.+)", key):
        return f"{part}.middle.1.{m[1]}"
    return None


def _up_block(key: str, wan22: bool) -> str | None:
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        i, j = int(m[1]), int(m[2])
        index = f"{i}.upsamples.{j}" if wan22 else f"{4 * i + j}"
        return f"decoder.upsamples.{index}.{_resnet(m[3])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers?\.(?:0\.)?(.+)", key):
        i = int(m[1])
        index = f"{i}.upsamples.3" if wan22 else f"{4 * i + 3}"
        return f"decoder.upsamples.{index}.{m[2]}"
    return None


def _down_block(key: str, wan22: bool, resnets: dict[int, set[int]]) -> str | None:
    if not wan22:
        m = re.match(r"encoder\.down_blocks\.(\d+)\.(.+)", key)
        return f"encoder.downsamples.{m[1]}.{_resnet(m[2])}" if m else None
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.downsamples.{m[1]}.downsamples.{m[2]}.{_resnet(m[3])}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsampler\.(.+)", key):
        # the downsample follows the stage's resnets in the original numbering
        return f"encoder.downsamples.{m[1]}.downsamples.{len(resnets.get(int(m[1]), ()))}.{m[2]}"
    return None


def _mapped(names: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in names.items() if v is not None}


def diffusers_wan_to_original(keys: list[str], wan22: bool) -> dict[str, str]:
    """Map each decoder key of a diffusers AutoencoderKLWan to the original name (unmapped keys dropped)."""
    return _mapped({k: _shared_part(k, "decoder") or _up_block(k, wan22) for k in keys})


def diffusers_wan_encoder_to_original(keys: list[str], wan22: bool) -> dict[str, str]:
    """Map each encoder key of a diffusers AutoencoderKLWan to the original name (others dropped)."""
    resnets: dict[int, set[int]] = {}
    for k in keys:
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", k):
            resnets.setdefault(int(m[1]), set()).add(int(m[2]))
    return _mapped({k: _shared_part(k, "encoder") or _down_block(k, wan22, resnets) for k in keys})


def _block_op(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> tuple[Op, int]:
    """Operator and output width of the residual block whose keys start with prefix."""
    if f"{prefix}.residual.2.depthwise_conv.weight" in shapes:
        return Op.DEPTHWISE_3D, shapes[f"{prefix}.residual.2.pointwise_conv.weight"][0]
    w = shapes.get(f"{prefix}.residual.2.weight")
    if w is None:
        raise CheckpointError(
            f"expected a residual block at '{prefix}' (key {prefix}.residual.2.weight is missing)"
        )
    return (Op.FULL_3D if len(w) == 5 else Op.FRAME_2D), w[0]


def spec_from_wan_shapes(shapes: Mapping[str, tuple[int, ...]], name: str) -> DecoderSpec:
    """Read a Wan-family DecoderSpec (teacher 2.1, official student or ours) off the original key layout."""
    conv1 = shapes["decoder.conv1.weight"]
    family = {16: Family.WAN21, 48: Family.WAN22}.get(conv1[1])
    if family is None:
        raise CheckpointError(f"decoder.conv1 reads {conv1[1]} latent channels; Wan decoders read 16 or 48")
    middle_op, _ = _block_op(shapes, "decoder.middle.0")
    stages: list[StageSpec] = []
    width, op, blocks = None, None, 0
    n = 0
    while any(k.startswith(f"decoder.upsamples.{n}.") for k in shapes):
        prefix = f"decoder.upsamples.{n}"
        if f"{prefix}.resample.1.weight" in shapes:
            if width is None:
                raise CheckpointError(f"upsample at {prefix} follows no residual block")
            stages.append(
                StageSpec(
                    width,
                    op,
                    blocks,
                    up_out=shapes[f"{prefix}.resample.1.weight"][0],
                    up_time=f"{prefix}.time_conv.weight" in shapes,
                )
            )
            width, op, blocks = None, None, 0
        else:
            block_op, block_width = _block_op(shapes, prefix)
            if op is not None and block_op is not op:
                raise CheckpointError(f"{prefix}: a stage mixes operators ({op.value} and {block_op.value})")
            width, op, blocks = block_width, block_op, blocks + 1
        n += 1
    if width is None:
        raise CheckpointError("the decoder's last stage has no residual blocks")
    stages.append(StageSpec(width, op, blocks))
    head = shapes["decoder.head.2.weight"]
    return DecoderSpec(
        family=family,
        middle_width=conv1[0],
        middle_op=middle_op,
        stages=tuple(stages),
        head_time=len(head) == 5,
        out_patch=2 if head[0] == 12 else 1,
        name=name,
    )
