"""When to learn what, and how fast: pure functions of the step (no tensors, no state).

Three-phase dynamic distillation (our design; the paper's exact recipe is not public):

    phase 1  deep      match the teacher's deep stage outputs (latent and 2x resolution)
    phase 2  middle    match the middle stage outputs; the deep term fades to a floor
    phase 3  shallow   match the shallow stage outputs and the teacher's pixels (L1, L2, SSIM);
                       the deep and middle terms fade to their floors

"Dynamic" means the weights move inside a phase: a term that comes in rises over the first `blend` of its
phase with a half-cosine from 0 to 1, a term that goes out falls the same way from 1 to `keep` (not to 0:
a floor keeps the stages trained earlier from drifting while later ones move). Every step therefore has
one weight vector, `loss_weights(step, total, schedule)`, and the loop multiplies it with the loss terms.

The learning rate is one linear warmup then a cosine to `min_ratio * lr` over the whole run (`lr_at`);
the phase switches change what is learned, not how fast, so the LR does not restart at them.
"""

from __future__ import annotations

import math

from .config import PhaseSchedule

PHASE_NAMES = {1: "deep", 2: "middle", 3: "shallow+pixels"}

# the names of the weighted loss terms, in the order they are logged
TERMS = ("feat_deep", "feat_middle", "feat_shallow", "l1", "l2", "ssim", "gt_l1")


def phase_spans(total: int, fractions: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """[(phase, first_step, end_step)] for phases 1, 2, 3; the spans tile range(total) in order.

    Boundaries are rounded cumulative fractions, so a phase with a zero fraction is empty (0 steps).
    """
    if total < 0:
        raise ValueError(f"total steps must be >= 0, got {total}")
    norm = sum(fractions)
    bounds = [0]
    acc = 0.0
    for f in fractions:
        acc += f / norm
        bounds.append(min(total, round(acc * total)))
    bounds[-1] = total
    return [(p + 1, bounds[p], bounds[p + 1]) for p in range(3)]


def phase_at(step: int, total: int, fractions: tuple[float, float, float]) -> int:
    """The phase (1, 2 or 3) that step `step` (0-based) belongs to."""
    for phase, first, end in phase_spans(total, fractions):
        if first <= step < end:
            return phase
    return 3


def _ramp(u: float, blend: float) -> float:
    """0 -> 1 along a half cosine over the first `blend` of a phase (u = progress in the phase, 0..1)."""
    if blend <= 0 or u >= blend:
        return 1.0
    return 0.5 - 0.5 * math.cos(math.pi * max(u, 0.0) / blend)


def loss_weights(step: int, total: int, schedule: PhaseSchedule) -> dict[str, float]:
    """The weight of every term in `TERMS` at step `step` of `total`."""
    s = schedule
    phase = phase_at(step, total, s.fractions)
    first, end = next((a, b) for p, a, b in phase_spans(total, s.fractions) if p == phase)
    u = (step - first) / max(1, end - first)
    rise = _ramp(u, s.blend)
    fall = 1.0 - (1.0 - s.keep) * rise  # 1 -> keep
    w = dict.fromkeys(TERMS, 0.0)
    if phase == 1:
        w["feat_deep"] = 1.0
    elif phase == 2:
        w["feat_deep"] = fall
        w["feat_middle"] = rise
    else:
        w["feat_deep"] = s.keep
        w["feat_middle"] = fall
        w["feat_shallow"] = rise
        w["l1"], w["l2"], w["ssim"], w["gt_l1"] = (rise * v for v in (s.w_l1, s.w_l2, s.w_ssim, s.w_gt))
    for k in ("feat_deep", "feat_middle", "feat_shallow"):
        w[k] *= s.w_feat
    return w


def lr_at(step: int, total: int, base_lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup over `warmup` steps (from base_lr/warmup), then cosine down to min_ratio * base_lr
    at the last step."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup - 1)
    u = min(1.0, max(0.0, (step - warmup) / decay_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * u)))
