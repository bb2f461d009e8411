"""Residual paths around a whole upsampling stage (Wan 2.2): stage input -> the stage's upsampled output.

Wan 2.2 adds to each upsampling stage's output its input spread into the new positions: channel groups
become the 2x2 (and, with time upsampling, 2x time) sub-positions, with no weights (`DupUpShortcut`).
A pruned student keeps that path; where its kept channels no longer line up with the spread pattern, the
path becomes a 1x1x1 conv to every sub-position followed by the same spread (`ProjectedUpShortcut`),
which the pruner fills exactly from the teacher's spread and its channel folds.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.state import DecodeState
from .layers import DupUpShortcut, PointwiseConv3d


class ProjectedUpShortcut(nn.Module):
    """(B, C_in, T, H, W) -> (B, C_out, T', 2H, 2W): a 1x1x1 conv to C_out x (sub-positions), then spread."""

    frame_wise = False

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        super().__init__()
        positions = factor_t * factor_s * factor_s
        self.conv = PointwiseConv3d(in_ch, out_ch * positions)
        self.spread = DupUpShortcut(out_ch * positions, out_ch, factor_t, factor_s)

    def forward(self, x: torch.Tensor, state: DecodeState) -> torch.Tensor:
        return self.spread(self.conv(x), state)


def stage_shortcut(kind: str, in_ch: int, out_ch: int, up_time: bool) -> nn.Module:
    """The module for `StageSpec.shortcut` `kind` ("dup" or "proj") of a stage from in_ch to out_ch."""
    factor_t = 2 if up_time else 1
    if kind == "dup":
        if (out_ch * factor_t * 4) % in_ch:
            raise ValueError(
                f"a 'dup' stage shortcut spreads {in_ch} channels over {out_ch} x {factor_t * 4} positions: "
                f"{out_ch * factor_t * 4} is no multiple of {in_ch}; use 'proj'"
            )
        return DupUpShortcut(in_ch, out_ch, factor_t, 2)
    if kind == "proj":
        return ProjectedUpShortcut(in_ch, out_ch, factor_t, 2)
    raise ValueError(f"unknown stage shortcut {kind!r}")
