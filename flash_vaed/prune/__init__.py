"""Prune a teacher decoder into a Flash-VAED student, initialised from the teacher's weights.

    from flash_vaed.prune import PruneConfig, build_student_from_teacher
    student, report = build_student_from_teacher(teacher, DecoderSpec.flashvaed_wan21(), latents)
    print(report.to_markdown())

Three pure steps, each usable alone: `select_channels` (which channels, from an activation matrix),
`fold_reconstruction` + `fold_into_weight` (least squares folded into the next conv) and `replace_conv`
(module surgery, with `init_depthwise` / `init_frame2d` for the cheaper operators).
`build_student_from_teacher` chains them over a whole decoder, Wan family (wan.py) or LTX-Video (ltx.py,
into an `LTXStudentSpec`); `prune_` does it in place, Wan family only. Those modules say what is pruned
where, docs/pruning.md why and how well.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch.ltx_student import LTXStudentSpec
from ..decoder import FlashDecoder
from ..spec import DecoderSpec
from .calibrate import collect_inputs, collect_patches
from .fold import (
    Fold,
    InputMap,
    fit_input_map,
    fold_into_weight,
    fold_reconstruction,
    map_into_weight,
    refit_norm_gamma,
    ridge_lstsq,
)
from .ltx import LTX_TEACHERS, build_ltx_student
from .report import LayerReport, PruneReport, psnr_db
from .select import filter_l1, select_by_magnitude, select_channels, select_random, split_calibration
from .surgery import DepthwiseInit, init_depthwise, init_frame2d, replace_conv
from .wan import PruneConfig, prune_
from .wan import build_student_from_teacher as build_wan_student

__all__ = [
    "build_ltx_student",
    "build_wan_student",
    "DepthwiseInit",
    "Fold",
    "InputMap",
    "LayerReport",
    "PruneConfig",
    "PruneReport",
    "build_student_from_teacher",
    "collect_inputs",
    "collect_patches",
    "filter_l1",
    "fit_input_map",
    "fold_into_weight",
    "fold_reconstruction",
    "init_depthwise",
    "init_frame2d",
    "map_into_weight",
    "prune_",
    "psnr_db",
    "refit_norm_gamma",
    "replace_conv",
    "ridge_lstsq",
    "select_by_magnitude",
    "select_channels",
    "select_random",
    "split_calibration",
]


def build_student_from_teacher(
    teacher_decoder: FlashDecoder | nn.Module,
    target_spec: DecoderSpec | LTXStudentSpec,
    calib_latents: torch.Tensor,
    config: PruneConfig | None = None,
) -> tuple[FlashDecoder, PruneReport]:
    """A new student of `target_spec` initialised from the teacher: `build_ltx_student` for an LTX-Video
    teacher or an `LTXStudentSpec` (a mismatched pair raises TypeError there), else `build_wan_student`.

    calib_latents: (N, C, T, H, W) RAW latents of the teacher's family. Returns (student FlashDecoder,
    PruneReport); the teacher is not modified."""
    teacher = getattr(teacher_decoder, "module", teacher_decoder)
    if isinstance(target_spec, LTXStudentSpec) or isinstance(teacher, LTX_TEACHERS):
        return build_ltx_student(teacher_decoder, target_spec, calib_latents, config)
    return build_wan_student(teacher_decoder, target_spec, calib_latents, config)
