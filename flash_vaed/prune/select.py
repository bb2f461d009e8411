"""Which channels of a layer to keep: pure functions on activation matrices and weight scores.

`select_channels` is the independence-aware choice (Flash-VAED's criterion): keep the channels that
span the layer's activations best, so the dropped ones are (nearly) linear combinations of the kept
ones and `fold.fold_reconstruction` can hand their contribution to the next conv. The other two are the
baselines it is measured against in docs/pruning.md. `split_calibration` picks the clips the selection
is fitted on and the ones its result is measured on.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _check_k(k: int, channels: int) -> None:
    if not 0 < k <= channels:
        raise ValueError(f"cannot keep {k} of {channels} channels: need 0 < k <= {channels}")


def select_channels(acts: torch.Tensor, k: int, center: bool = True) -> torch.Tensor:
    """The `k` most linearly independent columns of `acts`, by greedy column-pivoted Gram-Schmidt.

    acts:   (rows, channels) activations, one row per sampled pixel (any scale; float32 is used).
    center: subtract each column's mean first. The fold is affine (it has a constant column), so a
            channel that differs from a kept one only by an offset costs nothing and must not be kept.
    Returns the kept channel indices, (k,) int64, ascending.

    Each step keeps the column with the largest residual norm and projects it out of all others: this
    is QR with column pivoting (Businger-Golub), the rank-revealing order that torch.linalg.qr lacks.
    The residual norm of a column is exactly its least-squares reconstruction error from the columns
    already kept, so each pick removes the channel the kept set explains worst.
    """
    rows, channels = acts.shape
    _check_k(k, channels)
    x = acts.detach().to(torch.float64)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    residual = x.clone()
    kept: list[int] = []
    taken = torch.zeros(channels, dtype=torch.bool, device=x.device)
    for _ in range(k):
        norms = residual.pow(2).sum(dim=0).masked_fill(taken, -1.0)
        j = int(norms.argmax())
        kept.append(j)
        taken[j] = True
        norm = norms[j].sqrt()
        if norm <= 1e-12 * max(1.0, float(x.pow(2).sum().sqrt())):
            # everything left is already in the span (rank < k): any further pick reconstructs exactly, so
            # stop projecting and let argmax take the rest in a deterministic order
            continue
        q = residual[:, j] / norm
        residual -= torch.outer(q, q @ residual)
    return torch.tensor(sorted(kept), dtype=torch.long)


def select_by_magnitude(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Baseline: the `k` channels with the largest score, e.g. the L1 norm of the producing conv's filter
    (`filter_l1`). scores (channels,). Returns kept indices (k,) int64, ascending."""
    _check_k(k, scores.numel())
    return scores.flatten().topk(k).indices.sort().values.cpu()


def select_random(channels: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Baseline: `k` channels uniformly at random. Returns kept indices (k,) int64, ascending."""
    _check_k(k, channels)
    return torch.randperm(channels, generator=generator)[:k].sort().values


def filter_l1(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter of a conv weight (C_out, C_in, ...) -> (C_out,)."""
    return weight.detach().abs().flatten(1).sum(dim=1)


def split_calibration(calib: torch.Tensor, holdout: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(fit, held): calibration latents (N, C, T, H, W) split into the clips the pruning is fitted on and
    the last `holdout` clips, on which its PSNR is measured (None when holdout is 0; the fitted clips
    themselves, with a warning, when there are no more than `holdout`)."""
    if calib.ndim != 5:
        raise ValueError(f"calibration latents must be (N, C, T, H, W), got shape {tuple(calib.shape)}")
    n = calib.shape[0]
    if holdout == 0:
        return calib, None
    if n <= holdout:
        log.warning("only %d calibration clips: the PSNR is measured on the clips used for fitting", n)
        return calib, calib
    return calib[: n - holdout], calib[n - holdout :]
