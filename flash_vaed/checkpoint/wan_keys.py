"""Wan key layouts: diffusers names -> the original (ComfyUI) names, and a decoder spec read off shapes."""

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


def diffusers_wan_to_original(keys: list[str], wan22: bool) -> dict[str, str]:
    """Map each decoder key of a diffusers AutoencoderKLWan to the original name (unmapped keys dropped)."""
    out: dict[str, str] = {}
    for k in keys:
        new = None
        if k.startswith("post_quant_conv."):
            new = "conv2." + k.split(".", 1)[1]
        elif k.startswith("decoder.conv_in."):
            new = "decoder.conv1." + k.split(".", 2)[2]
        elif k.startswith("decoder.norm_out."):
            new = "decoder.head.0." + k.split(".", 2)[2]
        elif k.startswith("decoder.conv_out."):
            new = "decoder.head.2." + k.split(".", 2)[2]
        elif m := re.match(r"decoder\.mid_block\.resnets\.(\d)\.(.+)", k):
            new = f"decoder.middle.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"decoder\.mid_block\.attentions\.0\.(.+)", k):
            new = f"decoder.middle.1.{m[1]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            i, j = int(m[1]), int(m[2])
            new = (
                f"decoder.upsamples.{i}.upsamples.{j}.{_resnet(m[3])}"
                if wan22
                else f"decoder.upsamples.{4 * i + j}.{_resnet(m[3])}"
            )
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers?\.(?:0\.)?(.+)", k):
            i = int(m[1])
            new = (
                f"decoder.upsamples.{i}.upsamples.3.{m[2]}"
                if wan22
                else f"decoder.upsamples.{4 * i + 3}.{m[2]}"
            )
        if new is not None:
            out[k] = new
    return out


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
