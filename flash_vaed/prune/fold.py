"""Least squares that carry a pruned layer's job over to what is kept: pure tensor functions.

- `fold_reconstruction`: dropped channels ~ kept channels @ M + offset, fitted on a consumer's input.
- `fold_into_weight`: the consumer conv absorbs that map, so it still "sees" the dropped channels.
- `fit_input_map` + `map_into_weight`: the general form, teacher input ~ student input @ B + c, for a
  student whose inputs already differ from the teacher's (sequential refits, see prune/wan.py).
- `refit_norm_gamma`: an RMS norm over fewer channels, rescaled per channel to match the teacher's.
- `ridge_lstsq`: the one regularised affine solver all fits use (also the operator inits in surgery.py).

Activation matrices are (rows, channels): one row per sampled pixel (and frame), float32 or float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fold:
    """dropped ~ kept @ matrix + offset, over the input channels of one consumer.

    kept:    (k,) indices into the teacher's channels, ascending.
    dropped: (d,) the other indices, ascending.
    matrix:  (k, d)  M.
    offset:  (d,)    the affine term (the fit has a constant column).
    error:   ||X - X_hat||_F / ||X||_F on the activations it was fitted to, where X_hat is X with the
             dropped columns replaced by their reconstruction (0 = lossless, 1 = as bad as zeros).
    """

    kept: torch.Tensor
    dropped: torch.Tensor
    matrix: torch.Tensor
    offset: torch.Tensor
    error: float

    @classmethod
    def drop(cls, acts: torch.Tensor, kept: torch.Tensor) -> Fold:
        """No reconstruction: the dropped channels are taken as zero (plain pruning, the baseline)."""
        kept, dropped = _split(kept, acts.shape[1])
        x = acts.detach().double()
        err = _rel(x[:, dropped], x)
        z = x.new_zeros(len(kept), len(dropped))
        return cls(kept, dropped, z.float(), x.new_zeros(len(dropped)).float(), err)


def _split(kept: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    kept = kept.to(torch.long).cpu().sort().values
    mask = torch.ones(channels, dtype=torch.bool)
    mask[kept] = False
    return kept, mask.nonzero().flatten()


def _rel(residual: torch.Tensor, whole: torch.Tensor) -> float:
    den = float(whole.pow(2).sum().sqrt())
    return float(residual.pow(2).sum().sqrt()) / den if den > 0 else 0.0


def ridge_lstsq(
    x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3, prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine ridge regression: argmin_A,b ||x A + b - y||^2 + lam ||A - prior||^2.

    x (rows, n), y (rows, m); prior (n, m) or None (= zeros); lam = ridge * mean diagonal of the
    centred Gram matrix, so `ridge` is relative and independent of the activations' scale. The offset b
    (m,) is not penalised (fitted through the means). Returns (A (n, m), b (m,)) in float32.
    """
    xd, yd = x.detach().double(), y.detach().double()
    mx, my = xd.mean(dim=0), yd.mean(dim=0)
    xc, yc = xd - mx, yd - my
    gram = xc.T @ xc
    n = gram.shape[0]
    lam = ridge * float(gram.diagonal().mean()) if n else 0.0
    lam = max(lam, 1e-12)
    rhs = xc.T @ yc
    if prior is not None:
        rhs = rhs + lam * prior.detach().double()
    a = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device), rhs)
    b = my - mx @ a
    return a.float(), b.float()


def fold_reconstruction(acts: torch.Tensor, kept: torch.Tensor, ridge: float = 1e-3) -> Fold:
    """Fit the dropped channels of `acts` from the kept ones (ridge-regularised affine least squares).

    acts: (rows, channels) a consumer conv's input as the teacher computes it (after any norm and SiLU:
          the fold is linear, so it must be measured where the conv is linear in its input).
    kept: (k,) channel indices to keep.
    """
    kept, dropped = _split(kept, acts.shape[1])
    x = acts.detach().double()
    if len(dropped) == 0:
        return Fold(kept, dropped, x.new_zeros(len(kept), 0).float(), x.new_zeros(0).float(), 0.0)
    m, off = ridge_lstsq(x[:, kept], x[:, dropped], ridge)
    recon = x[:, kept] @ m.double() + off.double()
    return Fold(kept, dropped, m, off, _rel(x[:, dropped] - recon, x))


@dataclass(frozen=True)
class InputMap:
    """teacher input (C channels) ~ student input (k channels) @ matrix + offset, per pixel.

    matrix (k, C), offset (C,); error: ||X - X_hat||_F / ||X||_F on the rows it was fitted to.
    A `Fold` is the special case whose kept columns are the identity.
    """

    matrix: torch.Tensor
    offset: torch.Tensor
    error: float

    @classmethod
    def from_fold(cls, fold: Fold) -> InputMap:
        k, d = len(fold.kept), len(fold.dropped)
        matrix = torch.zeros(k, k + d, dtype=torch.float64)
        matrix[torch.arange(k), fold.kept] = 1.0
        matrix[:, fold.dropped] = fold.matrix.double().cpu()
        offset = torch.zeros(k + d, dtype=torch.float64)
        offset[fold.dropped] = fold.offset.double().cpu()
        return cls(matrix, offset, fold.error)


def fit_input_map(student: torch.Tensor, teacher: torch.Tensor, ridge: float = 1e-3) -> InputMap:
    """Fit the teacher's input from the student's at the same pixels (ridge-regularised affine LS).

    student (rows, k), teacher (rows, C): the same sampled positions of one consumer's input in the
    student being built and in the teacher. Fitting to the student's own inputs lets each layer correct
    what the layers before it got wrong, instead of assuming they were exact.
    """
    b, c = ridge_lstsq(student, teacher, ridge)
    pred = student.double() @ b.double() + c.double()
    return InputMap(b, c, _rel(teacher.double() - pred, teacher.double()))


def map_into_weight(
    weight: torch.Tensor, bias: torch.Tensor | None, input_map: InputMap
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A conv on the student's input equal to `weight` on the mapped (teacher) input.

    weight (C_out, C, *kernel), bias (C_out,) or None -> weight (C_out, k, *kernel), bias (C_out,).
    Since x_c = sum_j x~_j B[j, c] + o_c at every pixel, W_c * x_c (any kernel) = sum_j B[j, c] W_c * x~_j
    + o_c sum(W_c). (Exact away from the zero padding, where the teacher saw zeros, not o_c.)
    """
    w = weight.detach().double()
    matrix = input_map.matrix.double().to(w.device)
    new_w = torch.einsum("jc,oc...->oj...", matrix, w)
    new_bias = None if bias is None else bias.detach().double().clone()
    offset = input_map.offset.double().to(w.device)
    if offset.abs().max() > 0:
        shift = torch.einsum("c,oc->o", offset, w.flatten(2).sum(2))
        new_bias = shift if new_bias is None else new_bias + shift
    return new_w.to(weight.dtype), None if new_bias is None else new_bias.to(weight.dtype)


def fold_into_weight(
    weight: torch.Tensor, bias: torch.Tensor | None, fold: Fold
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prune a conv's INPUT channels to `fold.kept`, folding the dropped ones in.

    weight (C_out, C_in, *kernel), bias (C_out,) or None. Returns weight (C_out, k, *kernel) and bias.
    Since x_d = sum_k x_k M[k, d] + c_d at every pixel, W_d * x_d (any kernel) = sum_k M[k, d] W_d * x_k
    + c_d sum(W_d): the kept filters gain M-weighted dropped filters, the bias gains each offset times
    the dropped filter's sum.
    """
    return map_into_weight(weight, bias, InputMap.from_fold(fold))


def refit_norm_gamma(
    acts: torch.Tensor, gamma: torch.Tensor, kept: torch.Tensor, student_acts: torch.Tensor | None = None
) -> torch.Tensor:
    """The gamma of an RMS norm over `kept` channels that best matches the teacher's norm on them.

    acts (rows, C): the teacher norm's input; gamma (C,). The teacher divides by the RMS over all C
    channels, the student only over the kept k, so x_j sqrt(C)/||x|| g_j becomes x_j sqrt(k)/||x_kept||
    g'_j; the ratio of the two norms varies per pixel, so g'_j is the per-channel least-squares scale over
    the calibration rows (the only free parameter there, so this is the best the norm can do).
    student_acts (rows, k): the student norm's own input at the same pixels, if it differs from
    acts[:, kept] (sequential refits). Returns (k,).
    """
    x = acts.detach().double().cpu()
    kept = kept.to(torch.long).cpu()
    gamma = gamma.detach().flatten()
    c, k = x.shape[1], len(kept)
    eps = 1e-12
    xs = x[:, kept] if student_acts is None else student_acts.detach().double().cpu()
    teacher = x[:, kept] * (c**0.5) / x.norm(dim=1, keepdim=True).clamp_min(eps) * gamma.double().cpu()[kept]
    unit = xs * (k**0.5) / xs.norm(dim=1, keepdim=True).clamp_min(eps)
    den = unit.pow(2).sum(dim=0)
    g = (unit * teacher).sum(dim=0) / den.clamp_min(eps)
    # a channel that is zero on every calibration row has no evidence: keep the teacher's gamma
    g = torch.where(den > eps, g, gamma.double().cpu()[kept])
    return g.to(gamma.dtype)
