"""A student layout checked before it is built: stage count, widths, blocks, and what training it costs.

A layout line or spec file can ask for anything: width 12000 would allocate 15.5 GB before the first step,
blocks=10**8 would build modules until a MemoryError, a line with one stage too few would train until
the student's frames and the teacher's differ in size. `check_layout` refuses each first, naming the
limit. Parameters and activations are counted on the meta device (nothing is allocated): the student
built there, and one forward pass of a training batch through it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from ..arch.protocol import decode_raw
from ..arch.wan import WanFamilyDecoder
from ..engine.limits import available_bytes
from ..spec import DecoderSpec, Family
from .config import ConfigError

MAX_WIDTH = 4096  # channels of a stage (the widest teacher, LTX-Video's, has 1024)
MAX_BLOCKS = 32  # residual blocks of one stage or bottleneck (the teachers have 2 to 6)
MAX_PARAMETERS = 1_000_000_000  # 16 GB of weights, gradients and AdamW state in float32
# float32 bytes of training state per parameter: the weight, its gradient, AdamW's two moments
STATE_BYTES_PER_PARAMETER = 16
# bytes per activation element of the forward pass, float32, times 2: a low estimate of what the backward
# pass keeps (measured on CPU: 2.6x (Wan) to 4x (LTX) the forward sum), so a layout that fits is never refused
BYTES_PER_ACTIVATION = 8


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _strides(spec: DecoderSpec | LTXStudentSpec) -> tuple[int, int, int]:
    """(stages, time stride, space stride) of a layout."""
    if isinstance(spec, DecoderSpec):
        return len(spec.stages), spec.time_stride, spec.space_stride
    ups = [s.up_stride for s in spec.stages if s.upsample]
    return (
        len(spec.stages),
        math.prod(t for t, _, _ in ups),
        spec.patch_size * math.prod(h for _, h, _ in ups),
    )


def structure_problem(spec: DecoderSpec | LTXStudentSpec, family: Family) -> str | None:
    """Why `spec` cannot be a student of `family` (strides, widths, blocks), or None."""
    stages, time_stride, space_stride = _strides(spec)
    if (time_stride, space_stride) != (family.time_stride, family.space_stride):
        return (
            f"its {stages} stages upsample {time_stride}x in time and {space_stride}x in space, a {family.value} "
            f"decoder {family.time_stride}x and {family.space_stride}x: give it as many stages (and time "
            "upsamples) as the family's layouts have"
        )
    if isinstance(spec, DecoderSpec):
        widths = [spec.middle_width, *(s.width for s in spec.stages), *(s.up_out or 1 for s in spec.stages)]
        blocks = [s.blocks for s in spec.stages]
    else:
        widths = [spec.mid_width, *(s.width for s in spec.stages)]
        blocks = [spec.mid_layers, *(s.layers for s in spec.stages)]
    if max(widths) > MAX_WIDTH:
        return f"a width of {max(widths)} channels; the limit is {MAX_WIDTH}"
    if max(blocks) > MAX_BLOCKS:
        return f"{max(blocks)} blocks in one stage; the limit is {MAX_BLOCKS}"
    return None


def training_need(
    spec: DecoderSpec | LTXStudentSpec, batch: int, clip_frames: int, crop_px: int
) -> tuple[int, int]:
    """(parameters, activation elements of one training batch) of a student, counted on the meta device:
    the sum of every leaf module's output for a (batch, C, T, crop/s, crop/s) latent."""
    with torch.device("meta"):
        module: nn.Module = (
            WanFamilyDecoder(spec) if isinstance(spec, DecoderSpec) else LTXStudentDecoder(spec)
        )
    params = sum(p.numel() for p in module.parameters())
    _, time_stride, space_stride = _strides(spec)
    side = max(1, crop_px // space_stride)
    frames = max(1, (clip_frames - 1) // time_stride + 1)
    z = torch.zeros(batch, module.latent_channels, frames, side, side, device="meta")
    elements = 0

    def count(_module, _inputs, output) -> None:
        nonlocal elements
        if isinstance(output, torch.Tensor):
            elements += output.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            decode_raw(module, z)
    finally:
        for h in hooks:
            h.remove()
    return params, elements


def check_layout(
    spec: DecoderSpec | LTXStudentSpec,
    family: Family,
    *,
    batch: int,
    clip_frames: int,
    crop_px: int,
    device: torch.device | str,
    preset: str,
    available: int | None = None,
) -> int:
    """Raise ConfigError when `spec` is no student of `family`, exceeds a limit (MAX_WIDTH, MAX_BLOCKS,
    MAX_PARAMETERS), or its training needs more memory than is free on `device` (`available`: bytes,
    default measured; unknown: not checked). Returns the estimated bytes."""
    problem = structure_problem(spec, family)
    if problem is None:
        params, elements = training_need(spec, batch, clip_frames, crop_px)
        need = params * STATE_BYTES_PER_PARAMETER + elements * BYTES_PER_ACTIVATION
        free = available_bytes(device) if available is None else available
        if params > MAX_PARAMETERS:
            problem = f"{params / 1e6:.0f} M parameters; the limit is {MAX_PARAMETERS / 1e6:.0f} M"
        elif free is not None and need > free:
            problem = (
                f"training it needs at least {_gib(need)} ({params / 1e6:.1f} M parameters: "
                f"{_gib(params * STATE_BYTES_PER_PARAMETER)} with gradients and optimizer state; "
                f"{_gib(elements * BYTES_PER_ACTIVATION)} of activations for a batch of {batch} "
                f"{clip_frames}-frame {crop_px} px clips), {_gib(free)} is free on {torch.device(device)}; "
                "lower crop_px, clip_frames or the batch size, or pick a narrower layout"
            )
        else:
            return need
    raise ConfigError(
        f"the student layout of preset {preset[:200]!r} is refused before it is built: {problem}"
    )
