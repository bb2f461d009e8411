"""Prune a teacher decoder into a Flash-VAED student, initialised from the teacher's weights.

    from flash_vaed.prune import PruneConfig, build_student_from_teacher
    student, report = build_student_from_teacher(teacher, DecoderSpec.flashvaed_wan21(), latents)
    print(report.to_markdown())

Three pure steps, each usable alone: `select_channels` (which channels, from an activation matrix),
`fold_reconstruction` + `fold_into_weight` (least squares folded into the next conv) and `replace_conv`
(module surgery, with `init_depthwise` / `init_frame2d` for the cheaper operators). `prune_` and
`build_student_from_teacher` chain them over a whole Wan-family decoder (see wan.py for what is pruned
where, and docs/pruning.md for why and how well).
"""

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
from .report import LayerReport, PruneReport, psnr_db
from .select import filter_l1, select_by_magnitude, select_channels, select_random
from .surgery import DepthwiseInit, init_depthwise, init_frame2d, replace_conv
from .wan import PruneConfig, build_student_from_teacher, prune_

__all__ = [
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
]
