"""Distillation losses: pixels (L1, L2, SSIM, PSNR for reports) and stage-feature alignment.

Layouts: videos (B, C, T, H, W) in about [-1, 1] (data range 2); stage features (B, C, T, H, W).
Every loss here is a pure function of its tensors (the adapters are passed in); `StageRecorder` at the end
is the one piece with state: forward hooks that collect the stage outputs the alignment terms compare.

Feature alignment, and why it looks like this:
- Which features: the output of the last block at each resolution ("stage output"), recorded by hooks,
  keyed by its (T, H, W). Teacher and student are paired by that key, so the pairing does not depend on
  module names, block counts or operators, only on where the resolution changes (which pruning and
  operator replacement keep).
- Widths differ (a pruned stage has fewer channels), so each pair has a learned 1x1x1 `adapter` from the
  student's width to the teacher's, trained with the student and thrown away after. A channel subset would
  need the pruner's kept-channel indices, and it stops being meaningful once the student moves away from
  its pruned init; an adapter works for any init (prune, random, a released student). The adapters start
  at the least-squares map on the first batch (`FeatureAdapters.fit`), so the first feature losses measure
  what the student's features can express, not a random projection.
- Scale: the squared error is divided by the teacher feature's variance, so a term is 1 when the adapter
  outputs the teacher's mean and 0 for a perfect match, at every depth, whatever the activations' scale.
- Depth groups: the paired resolutions, deep to shallow, are split into three contiguous groups (deep,
  middle, shallow; the deep group gets the extra one when they do not divide evenly: 4 resolutions ->
  2, 1, 1). Phase 1 weights the deep group, phase 2 the middle one, phase 3 the shallow one (schedule.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

Resolution = tuple[int, int, int]  # (T, H, W) of a stage output
GROUPS = ("deep", "middle", "shallow")

# ---- pixels -------------------------------------------------------------------------------------


def pixel_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).abs().mean()


def pixel_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).pow(2).mean()


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean SSIM of two videos (B, C, T, H, W) (or images (N, C, H, W)), frame by frame and per channel.

    Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid filtering (no padding). Frames
    smaller than the window use the largest odd window that fits. Differentiable; 1.0 for equal inputs.
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 5:
        a, b = (x.transpose(1, 2).flatten(0, 1) for x in (a, b))  # (B*T, C, H, W)
    a, b = a.float(), b.float()
    channels, h, w = a.shape[1:]
    size = min(window, h, w)
    size -= 1 - size % 2
    g = _gaussian_window(size, sigma, a.device)
    gx = g.view(1, 1, 1, size).expand(channels, 1, 1, size)
    gy = g.view(1, 1, size, 1).expand(channels, 1, size, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=channels), gy, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - ssim(pred, target)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB of two videos in [-1, 1] (both clamped first), averaged over the batch."""
    p, t = pred.float().clamp(-1, 1), target.float().clamp(-1, 1)
    mse = (p - t).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return float((10 * torch.log10(data_range**2 / mse)).mean())


# ---- stage features -----------------------------------------------------------------------------


def pair_resolutions(student: Iterable[Resolution], teacher: Iterable[Resolution]) -> list[Resolution]:
    """The resolutions both decoders have a stage output at, deep (small) to shallow (large)."""
    common = set(student) & set(teacher)
    return sorted(common, key=lambda r: (r[1] * r[2], r[0]))


def depth_groups(resolutions: list[Resolution]) -> dict[Resolution, str]:
    """Split resolutions (deep to shallow) into three contiguous groups, deep ones first when uneven."""
    n = len(resolutions)
    sizes = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    out: dict[Resolution, str] = {}
    i = 0
    for group, size in zip(GROUPS, sizes, strict=True):
        for r in resolutions[i : i + size]:
            out[r] = group
        i += size
    return out


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """mean((adapter(student) - teacher)^2) / var(teacher): 1 for an output at the teacher's mean, 0 when equal.

    student (B, Cs, T, H, W), teacher (B, Ct, T, H, W) (no gradient needed); adapter maps Cs -> Ct.
    """
    t = teacher.detach().float()
    s = adapter(student.float())
    return (s - t).pow(2).mean() / (t.var() + 1e-6)


def resolution_key(r: Resolution) -> str:
    """(T, H, W) -> "TxHxW": the adapters' module names, and how the log names a resolution."""
    return "x".join(str(v) for v in r)


class FeatureAdapters(nn.Module):
    """One 1x1x1 conv per paired resolution, student width -> teacher width (trained, then discarded)."""

    def __init__(self, widths: Mapping[Resolution, tuple[int, int]]):
        super().__init__()
        self.maps = nn.ModuleDict(
            {resolution_key(r): nn.Conv3d(cs, ct, 1) for r, (cs, ct) in sorted(widths.items())}
        )

    def __getitem__(self, r: Resolution) -> nn.Module:
        return self.maps[resolution_key(r)]

    @torch.no_grad()
    def fit(
        self, student: Mapping[Resolution, torch.Tensor], teacher: Mapping[Resolution, torch.Tensor]
    ) -> None:
        """Set each adapter to the ridge least-squares map from student to teacher features (one batch),
        shrunk towards the identity when the widths match (a stage pruned at full width keeps the teacher's
        channels in order) and towards zero otherwise. The ridge grows with width / rows: the deepest
        stages of a calibration batch have few pixels, and an unshrunk fit of 384 channels on 192 rows
        would overfit that batch and make the first training losses worse than no adapter at all."""
        for r in student:
            if resolution_key(r) not in self.maps:
                continue
            conv = self.maps[resolution_key(r)]
            x = student[r].detach().double().transpose(0, 1).flatten(1).T  # (N, Cs)
            y = teacher[r].detach().double().transpose(0, 1).flatten(1).T  # (N, Ct)
            stride = max(1, x.shape[0] // 65536)
            x, y = x[::stride], y[::stride]
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
            cs, ct = x.shape[1], y.shape[1]
            prior = torch.zeros(cs + 1, ct, dtype=x.dtype, device=x.device)
            if cs == ct:
                prior[:cs] = torch.eye(cs, dtype=x.dtype, device=x.device)
            gram = x1.T @ x1
            ridge = gram.diagonal().mean().clamp_min(1e-12) * (1e-4 + cs / x.shape[0])
            eye = torch.eye(cs + 1, dtype=x.dtype, device=x.device)
            sol = torch.linalg.solve(gram + ridge * eye, x1.T @ y + ridge * prior)
            conv.weight.copy_(sol[:-1].T.reshape(conv.weight.shape).to(conv.weight.dtype))
            conv.bias.copy_(sol[-1].to(conv.bias.dtype))


def feature_terms(
    student: Mapping[Resolution, torch.Tensor],
    teacher: Mapping[Resolution, torch.Tensor],
    groups: Mapping[Resolution, str],
    adapters: FeatureAdapters,
) -> dict[str, torch.Tensor]:
    """{"feat_deep", "feat_middle", "feat_shallow"}: the mean `feature_loss` over each group's resolutions
    (a group without resolutions gives a zero that still depends on the adapters, so every parameter
    takes part in every step, which DDP needs)."""
    out = {}
    anchor = sum(p.sum() for p in adapters.parameters()) * 0.0
    for group in GROUPS:
        rs = [r for r, g in groups.items() if g == group]
        terms = [feature_loss(student[r], teacher[r], adapters[r]) for r in rs]
        out[f"feat_{group}"] = (torch.stack(terms).mean() if terms else 0.0) + anchor
    return out


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum(weights[k] * terms[k]); a term is multiplied even at weight 0, so every parameter gets a (zero)
    gradient and the same graph runs every step."""
    return sum(float(weights.get(k, 0.0)) * v for k, v in terms.items())


def pixel_terms(
    pred: torch.Tensor, target: torch.Tensor, real: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """{"l1", "l2", "ssim"} of the student's video `pred` against the teacher's `target` (same latents), and
    "gt_l1" against the `real` frames the latents were encoded from (0 when None); all (B, 3, T, H, W)."""
    return {
        "l1": pixel_l1(pred, target),
        "l2": pixel_l2(pred, target),
        "ssim": ssim_loss(pred, target),
        "gt_l1": pixel_l1(pred, real) if real is not None else pred.sum() * 0.0,
    }


# ---- where features come from -------------------------------------------------------------------


def stage_modules(module: nn.Module) -> list[nn.Module]:
    """Modules whose outputs may be stage outputs, in the order the decoder runs them.

    Wan family (`WanFamilyDecoder`): the middle blocks and every entry of `decoder.upsamples`; Wan 2.2
    teacher: the middle blocks and the layers inside each up stage; LTX teacher and students: the mid block
    (students) and the up blocks. Anything else: none (pixel terms only).
    """
    body = getattr(module, "decoder", None)
    if body is None:
        return []
    mods: list[nn.Module] = []
    if hasattr(body, "middle"):
        mods += list(body.middle)
    if hasattr(body, "mid_block"):
        mods.append(body.mid_block)
    for entry in getattr(body, "upsamples", []):
        inner = getattr(entry, "upsamples", None)  # Wan 2.2 UpStage: its blocks and upsample
        mods += list(inner) if isinstance(inner, nn.ModuleList) else [entry]
    mods += list(getattr(body, "up_blocks", []))
    return mods


class StageRecorder:
    """Forward hooks that keep the last output at each resolution: {(T, H, W): (B, C, T, H, W)}.

    Frame-wise modules output frames folded into the batch, (B*T, C, H, W); they are unfolded with the
    batch size given to `start`. Use as `with StageRecorder(module) as rec: rec.start(B); module(...)`.
    """

    def __init__(self, module: nn.Module):
        self.modules = stage_modules(module)
        self.features: dict[Resolution, torch.Tensor] = {}
        self._batch = 1
        self._handles: list = []

    def start(self, batch: int) -> StageRecorder:
        self.features = {}
        self._batch = batch
        return self

    def _hook(self, _module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            return
        if output.dim() == 4:
            n, c, h, w = output.shape
            output = output.view(self._batch, n // self._batch, c, h, w).transpose(1, 2)
        if output.dim() == 5:
            self.features[tuple(output.shape[2:])] = output

    def __enter__(self) -> StageRecorder:
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
