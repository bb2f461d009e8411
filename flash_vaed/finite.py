"""NaN and Inf in weights: one cheap test for many tensors, and which tensor it was when it fails.

A NaN weight makes every decoded frame NaN without an error; a training step fed a NaN optimizer state
makes a NaN student. Loading, resuming, each training step and saving check with these.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# dtypes torch's isfinite and sum take; others (fp8) are checked as float32
_NATIVE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _checkable(t: torch.Tensor) -> torch.Tensor:
    return t.detach() if t.dtype in _NATIVE else t.detach().float()


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite, with one device sync: a NaN or Inf anywhere makes
    the sum of the per-tensor sums NaN or Inf (finite float32 weights do not add up to 3e38)."""
    sums = [_checkable(t).sum(dtype=torch.float32) for t in tensors if t.is_floating_point() and t.numel()]
    return not sums or bool(torch.isfinite(torch.stack([s.to(sums[0].device) for s in sums]).sum()))


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int] | None:
    """(name, count of NaN/Inf values) of the first floating-point tensor that has any, else None."""
    for name, t in named:
        finite = torch.isfinite(_checkable(t)) if t.is_floating_point() and t.numel() else None
        if finite is not None and not bool(finite.all()):
            return name, int((~finite).sum())
    return None
