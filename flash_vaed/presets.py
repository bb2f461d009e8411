"""Named student layouts, and a one-line format for custom ones.

    resolve_spec("wan21-official")                                   # the released student
    resolve_spec("384:dw3d:3/384:dw3d:3/24:frame2d:3/12:frame2d:3")  # the same, written out

Custom format: stages deep to shallow, separated by "/", each `width:op[:blocks[:up_out[:shortcut]]]` with
op one of full3d | dw3d | frame2d (blocks default 3) and shortcut dup | proj (Wan 2.2's stage shortcut). An optional first part `mid=width:op` sets the bottleneck;
without it the bottleneck takes the first stage's width and op. Without an explicit up_out a stage's
upsample emits min(next stage's width, width // 2) channels, the rule both the Wan 2.1 VAE and the
official student follow; the upsamples of all but the last two stages also double time (Wan's 4x).
"""

from __future__ import annotations

from collections.abc import Callable

from .arch.ltx2 import LTX2DecoderConfig, LTX2TeacherDecoder, released_decoder_config
from .arch.ltx_student import LTXStudentSpec, StudentStage
from .spec import DecoderSpec, Family, Op, StageSpec

AnySpec = DecoderSpec | LTXStudentSpec


def _wan21(
    name: str, middle: int, widths: tuple[int, int, int, int], up_outs: tuple[int, int, int]
) -> DecoderSpec:
    ops = (Op.DEPTHWISE_3D, Op.DEPTHWISE_3D, Op.FRAME_2D, Op.FRAME_2D)
    ups = (*up_outs, None)
    times = (True, True, False, False)
    stages = tuple(
        StageSpec(w, op, 3, up_out=u, up_time=t) for w, op, u, t in zip(widths, ops, ups, times, strict=True)
    )
    return DecoderSpec(Family.WAN21, middle, Op.DEPTHWISE_3D, stages, name=name)


def wan21_wide() -> DecoderSpec:
    """Official operators, shallow stages at 25% of the teacher's width (48, 24) instead of 12.5%."""
    return _wan21("wan21-wide", 384, (384, 384, 48, 24), (192, 48, 24))


def wan21_narrow() -> DecoderSpec:
    """Deep stages and bottleneck also halved (192), shallow stages as the official student (24, 12)."""
    return _wan21("wan21-narrow", 192, (192, 192, 24, 12), (96, 24, 12))


def wan22_recipe(dim: int = 256) -> DecoderSpec:
    """A Wan 2.2 student by the paper's recipe, no released layout existing: the Wan 2.2 VAE's bottleneck and
    deep stages kept at full width as depthwise-separable causal 3D, the shallow stages per-frame 2D at 12.5%
    of the teacher's widths, as in the official Wan 2.1 student. Wan 2.2's stage shortcuts stay: a weightless
    copy where the stage keeps its width, a 1x1x1 projection where pruning changes it. `dim` is the
    teacher's decoder width (256 in the released VAE; smaller in tests)."""
    deep, shallow = Op.DEPTHWISE_3D, Op.FRAME_2D
    stages = (
        StageSpec(4 * dim, deep, 3, up_out=4 * dim, up_time=True, shortcut="dup"),
        StageSpec(4 * dim, deep, 3, up_out=dim // 2, up_time=True, shortcut="proj"),
        StageSpec(dim // 4, shallow, 3, up_out=dim // 4, up_time=False, shortcut="proj"),
        StageSpec(dim // 8, shallow, 3),
    )
    name = "wan22-recipe" if dim == 256 else f"wan22-recipe-dim{dim}"
    return DecoderSpec(Family.WAN22, 4 * dim, deep, stages, out_patch=2, name=name)


def tiny_half() -> DecoderSpec:
    """`DecoderSpec.tiny()` at half its widths: a student that both prunes and replaces operators of the
    tiny all-FULL_3D teacher (tests)."""
    op_d, op_s = Op.DEPTHWISE_3D, Op.FRAME_2D
    stages = (
        StageSpec(8, op_d, 1, up_out=4, up_time=True),
        StageSpec(4, op_d, 1, up_out=4, up_time=True),
        StageSpec(4, op_s, 1, up_out=4, up_time=False),
        StageSpec(4, op_s, 1),
    )
    return DecoderSpec(Family.WAN21, 8, op_d, stages, name="tiny-half")


def ltx2_recipe(teacher: LTX2TeacherDecoder | LTX2DecoderConfig | None = None) -> LTXStudentSpec:
    """An LTX-2 student by the paper's LTX recipe, as the official LTX-Video student applies it to its
    teacher: the decoder's segments (the resnets between two upsamples) below half the output resolution
    at the teacher's full width as depthwise-separable 3D; the half-resolution segments at a quarter of the
    teacher's width as full 3D, and the full-resolution segment at a quarter as per-frame 2D, both with
    LayerNorm + 1x1 shortcuts (the official student's 64 of 256 and 32 of 128 channels). Resnets per
    segment and upsamples (strides, and the narrowing of LTX-2's channel multipliers) are the teacher's, so
    that every student module is pruned from its teacher counterpart.

    teacher: the LTX-2 teacher (or its config) to follow; None: the LTX-2.3 layout (also the LTX-2.5 conv
    VAE's). Raises ValueError for a teacher whose width changes inside a segment (res_x_y blocks).
    """
    if teacher is None:
        cfg = LTX2DecoderConfig.from_comfy_config(released_decoder_config("ltx-2.3"))
    else:
        cfg = teacher.config if isinstance(teacher, LTX2TeacherDecoder) else teacher
    segments: list[list[int]] = [[0, cfg.first_channels]]  # resnets, width
    ups: list[tuple[tuple[int, int, int], int]] = []  # stride, space scale after it
    width, scale = cfg.first_channels, 1
    for block in reversed(cfg.blocks):
        if block.kind == "res_x":
            segments[-1][0] += block.layers
        elif block.kind == "res_x_y":
            raise ValueError(
                "the LTX-2 recipe follows teachers whose width changes at their upsamples; this one has a "
                "res_x_y block (an LTX-Video 0.9 layout: use ltx-official)"
            )
        else:
            width //= block.multiplier
            scale *= block.stride[1]
            ups.append((block.stride, scale))
            segments.append([0, width])

    def fraction(i: int) -> float:  # the segment's spatial resolution over the output's (before the patch)
        return (ups[i - 1][1] if i else 1) / scale

    stages = []
    for i in range(1, len(segments)):
        layers, teacher_width = segments[i]
        deep = fraction(i) < 0.5
        op = Op.DEPTHWISE_3D if deep else Op.FULL_3D if fraction(i) < 1 else Op.FRAME_2D
        stage_width = teacher_width if deep else max(1, teacher_width // 4)
        stages.append(
            StudentStage(stage_width, layers, op, shortcut=not deep, up_stride=ups[i - 1][0], up_narrows=True)
        )
    variant = cfg.variant
    name = {"ltx-2.3": "ltx2-recipe", "ltx-2.0": "ltx20-recipe"}.get(variant or "", "ltx2-recipe-derived")
    return LTXStudentSpec(
        mid_width=cfg.first_channels,
        mid_layers=segments[0][0],
        mid_op=Op.DEPTHWISE_3D,
        stages=tuple(stages),
        latent_channels=cfg.latent_channels,
        out_channels=cfg.out_channels,
        patch_size=cfg.patch_size,
        name=name,
        family=Family.LTX2,
    )


def ltx20_recipe() -> LTXStudentSpec:
    """`ltx2_recipe` for the LTX-2.0 video VAE's layout."""
    return ltx2_recipe(LTX2DecoderConfig.from_comfy_config(released_decoder_config("ltx-2.0")))


PRESETS: dict[str, Callable[[], AnySpec]] = {
    "wan21-official": DecoderSpec.flashvaed_wan21,
    "wan21-wide": wan21_wide,
    "wan21-narrow": wan21_narrow,
    "wan21-teacher": DecoderSpec.wan21_teacher,
    "wan22-recipe": wan22_recipe,
    "tiny": DecoderSpec.tiny,
    "tiny-half": tiny_half,
    "ltx-official": LTXStudentSpec.official,
    "ltx-tiny": LTXStudentSpec.tiny,
    "ltx2-recipe": ltx2_recipe,
    "ltx20-recipe": ltx20_recipe,
}


def parse_spec(text: str, family: Family = Family.WAN21, name: str = "custom") -> DecoderSpec:
    """A Wan-family DecoderSpec from the custom format (module docstring). Raises ValueError with the
    offending part on bad input."""
    parts = [p.strip() for p in text.strip().split("/") if p.strip()]
    middle: tuple[int, Op] | None = None
    if parts and parts[0].startswith("mid="):
        fields = parts.pop(0)[4:].split(":")
        if len(fields) != 2:
            raise ValueError(f"bottleneck part must be mid=width:op, got {text!r}")
        middle = (_int(fields[0], text), _op(fields[1], text))
    if not parts:
        raise ValueError(
            f"no stages in {text!r}: expected e.g. '384:dw3d:3/384:dw3d:3/24:frame2d:3/12:frame2d:3'"
        )
    raw = []
    for part in parts:
        fields = part.split(":")
        if not 2 <= len(fields) <= 5:
            raise ValueError(f"stage {part!r} of {text!r}: expected width:op[:blocks[:up_out[:shortcut]]]")
        width, op = _int(fields[0], text), _op(fields[1], text)
        blocks = _int(fields[2], text) if len(fields) > 2 else 3
        up = _int(fields[3], text) if len(fields) > 3 else None
        shortcut = fields[4].strip() if len(fields) > 4 else None
        if shortcut not in (None, "dup", "proj"):
            raise ValueError(f"{shortcut!r} in {text!r}: a stage shortcut is dup or proj")
        raw.append((width, op, blocks, up, shortcut))
    stages = []
    for i, (width, op, blocks, up, shortcut) in enumerate(raw):
        last = i == len(raw) - 1
        if last and up is not None:
            raise ValueError(f"{text!r}: the last stage has no upsample, so no up_out")
        if not last and up is None:
            up = min(raw[i + 1][0], max(1, width // 2))
        stages.append(StageSpec(width, op, blocks, up_out=up, up_time=i < len(raw) - 2, shortcut=shortcut))
    mid_width, mid_op = middle or (raw[0][0], raw[0][1])
    return DecoderSpec(
        family,
        mid_width,
        mid_op,
        tuple(stages),
        out_patch=2 if family is Family.WAN22 else 1,
        name=name,
    )


def format_spec(spec: DecoderSpec) -> str:
    """The custom-format line that `parse_spec` reads back as `spec` (up_out always written out)."""
    parts = [f"mid={spec.middle_width}:{spec.middle_op.value}"]
    for s in spec.stages:
        up = "" if s.up_out is None else f":{s.up_out}"
        shortcut = "" if s.shortcut is None else f":{s.shortcut}"
        parts.append(f"{s.width}:{s.op.value}:{s.blocks}{up}{shortcut}")
    return "/".join(parts)


# What "auto" (and "official") means for a family without a released student: a recipe, given the teacher
AUTO: dict[Family, Callable[[object], AnySpec]] = {
    Family.WAN22: lambda teacher: wan22_recipe(),
    Family.LTX2: lambda teacher: ltx2_recipe(teacher if isinstance(teacher, LTX2TeacherDecoder) else None),
}


def resolve_spec(preset: str, family: Family = Family.WAN21, teacher: object = None) -> AnySpec:
    """A preset name from PRESETS, "auto" for a family in AUTO, or a custom Wan-family layout line.

    teacher: the teacher's decoder module, which "auto" follows where the recipe depends on its layout
    (LTX-2: 2.0 and 2.3 differ); None: the recipe's default layout."""
    key = preset.strip()
    if key in ("auto", "official") and family in AUTO:
        return AUTO[family](teacher)
    if key in PRESETS:
        return PRESETS[key]()
    if ":" in key:
        return parse_spec(key, family)
    raise KeyError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)} or a custom layout line")


def _int(field: str, text: str) -> int:
    try:
        value = int(field)
    except ValueError:
        raise ValueError(f"{field!r} in {text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{field!r} in {text!r} must be positive")
    return value


def _op(field: str, text: str) -> Op:
    try:
        return Op(field.strip().lower())
    except ValueError:
        raise ValueError(
            f"{field!r} in {text!r}: op must be one of {', '.join(o.value for o in Op)}"
        ) from None
