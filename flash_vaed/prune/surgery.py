"""Module surgery: swap a submodule (`replace_conv`), and build the cheaper operators of the students
from a teacher's full causal 3x3x3 conv, initialised from it rather than at random.

- FULL_3D -> DEPTHWISE_3D (`init_depthwise`): each input channel's filter bank W[:, i] (C_out x 27) is
  replaced by a rank-1 product p_i d_i^T (pointwise column x depthwise kernel). The rank-1 factor is the
  best one under the input's own patch statistics (SVD of W_i L_i with Sigma_i = L_i L_i^T, so errors are
  weighted by how the channel's 27 taps co-vary, not uniformly); then the pointwise weights and bias are
  refitted by least squares on the teacher conv's actual outputs, which also absorbs what the rank-1
  step lost across channels.
- FULL_3D -> FRAME_2D (`init_frame2d`): the 3x3 kernel that best predicts the teacher's output from the
  current frame alone, by least squares on calibration patches, regularised towards the teacher kernel
  summed over time (exact on static video, where the past frames equal the current one).

Patches are (rows, C_in, k^3) as `calibrate.causal_patches` lays them out; targets (rows, C_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch.layers import CausalConv3d, CausalSeparableConv3d
from .fold import ridge_lstsq


def replace_conv(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where the submodule `name` (dotted, ModuleList indices allowed) of `root` is; return
    the old one. `root` is changed in place; forward hooks of the old module do not move over."""
    parent_name, _, leaf = name.rpartition(".")
    if not leaf:
        raise ValueError("name the submodule to replace, e.g. 'decoder.upsamples.3'")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = parent.get_submodule(leaf)
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    return old


def _rel(pred: torch.Tensor, target: torch.Tensor) -> float:
    den = float(target.double().pow(2).sum().sqrt())
    return float((pred.double() - target.double()).pow(2).sum().sqrt()) / den if den > 0 else 0.0


@dataclass(frozen=True)
class DepthwiseInit:
    """Weights of a CausalSeparableConv3d. depthwise (C_in, 1, k, k, k), pointwise (C_out, C_in, 1, 1, 1),
    bias (C_out,); error: relative output error vs the teacher on the calibration patches."""

    depthwise: torch.Tensor
    pointwise: torch.Tensor
    bias: torch.Tensor
    error: float


def init_depthwise(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patches: torch.Tensor,
    targets: torch.Tensor,
    ridge: float = 1e-3,
) -> DepthwiseInit:
    """Depthwise-separable weights that approximate a full causal conv (see the module docstring).

    weight (C_out, C_in, k, k, k), bias (C_out,) or None: the teacher conv, already restricted to the
    kept channels and with dropped inputs folded in. patches (R, C_in, k^3): the conv's input at R
    sampled positions; targets (R, C_out): the teacher's output there.
    """
    c_out, c_in, k = weight.shape[:3]
    taps = k**3
    w = weight.detach().double().reshape(c_out, c_in, taps)
    p = patches.detach().double()
    cov = torch.einsum("rip,riq->ipq", p, p) / max(1, p.shape[0])
    # a small relative jitter keeps the Cholesky defined for channels that are constant or all zero
    scale = cov.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
    cov = cov + 1e-4 * scale[:, None, None] * torch.eye(taps, dtype=cov.dtype, device=cov.device)
    chol = torch.linalg.cholesky(cov)  # (C_in, taps, taps), lower
    wl = torch.einsum("oip,ipq->ioq", w, chol)  # (C_in, C_out, taps)
    u, s, vh = torch.linalg.svd(wl, full_matrices=False)
    v1 = vh[:, 0, :].unsqueeze(-1)  # (C_in, taps, 1)
    # d^T L = v1^T  <=>  L^T d = v1
    d = torch.linalg.solve_triangular(chol.transpose(1, 2), v1, upper=True).squeeze(-1)
    pw = u[:, :, 0] * s[:, :1]  # (C_in, C_out)
    norm = d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d, pw = d / norm, pw * norm
    features = torch.einsum("riq,iq->ri", p, d)
    # refit pointwise + bias on the teacher's real outputs, pulled towards the weight-space solution
    a, b = ridge_lstsq(features, targets, ridge, prior=pw)
    pred = features.float() @ a + b
    return DepthwiseInit(
        depthwise=d.reshape(c_in, 1, k, k, k).to(weight.dtype),
        pointwise=a.T.reshape(c_out, c_in, 1, 1, 1).to(weight.dtype),
        bias=b.to(weight.dtype),
        error=_rel(pred, targets),
    )


def init_frame2d(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patches: torch.Tensor,
    targets: torch.Tensor,
    ridge: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A per-frame k x k conv that approximates a causal k x k x k conv (see the module docstring).

    Same arguments as `init_depthwise`; patches may also be per-frame (R, C_in, k^2). Returns (weight
    (C_out, C_in, k, k), bias (C_out,), relative output error on the calibration patches).
    """
    c_out, c_in, k = weight.shape[:3]
    prior = weight.detach().double().sum(dim=2).reshape(c_out, c_in * k * k).T
    # the current frame is the last time tap of a causal 3D patch (and all of a 2D one)
    current = patches.detach().reshape(patches.shape[0], c_in, -1)[:, :, -k * k :].reshape(-1, c_in * k * k)
    a, b = ridge_lstsq(current, targets, ridge, prior=prior)
    pred = current.float() @ a + b
    return a.T.reshape(c_out, c_in, k, k).to(weight.dtype), b.to(weight.dtype), _rel(pred, targets)


def causal_conv(weight: torch.Tensor, bias: torch.Tensor | None) -> CausalConv3d:
    """A CausalConv3d holding `weight` (C_out, C_in, k, k, k) and `bias` (zeros if None)."""
    c_out, c_in, k = weight.shape[:3]
    conv = CausalConv3d(c_in, c_out, k).to(weight)
    fill_conv(conv, weight, bias)
    return conv


def separable_conv(init: DepthwiseInit) -> CausalSeparableConv3d:
    c_in, _, k = init.depthwise.shape[:3]
    conv = CausalSeparableConv3d(c_in, init.pointwise.shape[0], k).to(init.pointwise)
    fill_conv(conv.depthwise_conv, init.depthwise, None)
    fill_conv(conv.pointwise_conv, init.pointwise, init.bias)
    return conv


def frame_conv(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A per-frame nn.Conv2d (zero 'same' padding) holding weight (C_out, C_in, k, k)."""
    c_out, c_in, k = weight.shape[:3]
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2).to(weight)
    fill_conv(conv, weight, bias)
    return conv


@torch.no_grad()
def fill_conv(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Copy weight (same shape as conv.weight) and bias (any shape with C_out elements; None: zeros)."""
    if conv.weight.shape != weight.shape:
        raise ValueError(
            f"{type(conv).__name__}: weight {tuple(weight.shape)} for {tuple(conv.weight.shape)}"
        )
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.copy_(torch.zeros_like(conv.bias) if bias is None else bias.reshape(conv.bias.shape))
