"""Prune a Wan-family teacher into a student of any `DecoderSpec` with the same stage layout.

What is pruned where (docs/pruning.md has the reasoning and measurements):

- Channels live in *sites*: the residual stream between identity shortcuts, the inside of each residual
  block (after its first conv), an attention block's values, an upsample's output. A run of blocks whose
  STUDENT shortcut is the identity shares one site, so the stream keeps one channel set all along it;
  a block with a projection shortcut (widths change, or a per-frame 2D block, which always has one)
  starts a new site.
- A site keeps `select_channels` of its consumers' inputs, stacked: every conv that reads the site,
  measured where it reads it (after RMSNorm and SiLU for a block's first conv and the head, raw for
  shortcuts and upsamples). Those activations are where the consumers are linear, so the fold is exact
  in the limit of a perfect reconstruction.
- Every consumer conv is then pruned to the kept input channels with its own `fold_reconstruction`
  (measured on its own input), and every producer keeps only the rows of the kept output channels.
- Each RMSNorm now normalises over the kept channels only: its gamma is refitted per channel to match
  the teacher's norm on them (`refit_norm_gamma`).
- Attention: values are a site (kept by independence of the attention output, folded into `proj`, which
  is exact here because softmax rows sum to one); queries and keys are replaced by the best rank-k
  factorisation of the teacher's (bias-augmented) bilinear form q^T k, rescaled for the narrower head's
  1/sqrt(k) softmax temperature.
- Operators: a stage whose op changes gets its convs from `surgery.init_depthwise` / `init_frame2d`,
  fitted on patches of the teacher's own inputs and outputs; shortcuts change exactly (1x1 kernels).

- Wan 2.2 stage shortcuts (stage input spread into the upsampled positions, no weights): a student stage
  with a "dup" shortcut keeps the teacher's spread, which copies each channel to every new position, so
  the stage's input and output share one site; a "proj" shortcut is a 1x1x1 conv to every position, filled
  with the teacher's spread folded over the input site, the rows of the kept output channels.

The teacher must be all FULL_3D with a causal head: the Wan 2.1 VAE, any `WanFamilyDecoder` built so, or
the Wan 2.2 VAE (`Wan22Decoder`, pruned through `wan22_teacher_view`, which shares its modules); the student
must have the same family, stage count, blocks per stage, time upsamples and head patch, and a shortcut on
every stage where the teacher has one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch.layers import (
    CausalConv3d,
    CausalSeparableConv3d,
    DupUpShortcut,
    FrameAttention,
    PointwiseConv3d,
    ResidualBlock2D,
    ResidualBlock3D,
    RMSNorm,
    SeparableConv3d,
    Upsample,
)
from ..arch.stage_shortcut import ProjectedUpShortcut
from ..arch.wan import WanFamilyDecoder
from ..arch.wan22 import Wan22Decoder
from ..decoder import FlashDecoder
from ..spec import DecoderSpec, Family, Op, StageSpec
from .calibrate import PatchRequest, collect_inputs, collect_patches, decode_clips
from .fold import (
    Fold,
    fit_input_map,
    fold_into_weight,
    fold_reconstruction,
    map_into_weight,
    refit_norm_gamma,
)
from .report import LayerReport, PruneReport, build_report, psnr_db
from .select import filter_l1, select_by_magnitude, select_channels, select_random, split_calibration
from .surgery import fill_conv, init_depthwise, init_frame2d, replace_conv

log = logging.getLogger(__name__)

SELECTIONS = ("qr", "l1", "random")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune.

    target:      the student layout (None only for `build_student_from_teacher`, which takes it apart).
    selection:   "qr" (independence-aware, pivoted QR on activations), "l1" (largest L1 norm of the
                 producing filters) or "random": the last two are baselines.
    fold:        fold dropped channels into the consumer convs (False: plain dropping, a baseline).
    refit_norms: refit the RMSNorm gammas for the narrower norms (False: keep the teacher's gamma).
    ridge:       relative ridge of every least-squares fit (see fold.ridge_lstsq).
    rows:        sampled pixel rows per layer for selection and folds.
    patch_rows:  sampled patch rows per replaced conv for the operator fits.
    sequential:  after the one-shot pass (every layer fitted on the teacher's activations), refit each
                 layer in forward order on the student's own inputs (one student decode per step), so
                 each layer also corrects the error of those before it. About 10x the time; it helps
                 operator replacement a little and plain pruning not at all (docs/pruning.md).
    holdout:     calibration clips held out (the last ones) for the report's PSNR, not used for fitting.
    batch:       clips per teacher forward pass during calibration.
    seed:        seeds row sampling and random selection.
    """

    target: DecoderSpec | None = None
    selection: str = "qr"
    fold: bool = True
    refit_norms: bool = True
    ridge: float = 1e-3
    rows: int = 4096
    patch_rows: int = 2048
    sequential: bool = False
    holdout: int = 1
    batch: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.rows < 2 or self.patch_rows < 2 or self.holdout < 0 or self.batch < 1:
            raise ValueError(f"rows, patch_rows and batch must be positive, holdout >= 0: {self}")


@dataclass(eq=False)
class _Site:
    """A channel space of the teacher and the subset of it the student keeps."""

    name: str
    teacher: int
    student: int
    consumers: list[str] = field(default_factory=list)  # modules whose input is in this space
    producers: list[torch.Tensor] = field(default_factory=list)  # weights whose rows are this space
    kept: torch.Tensor | None = None
    errors: list[float] = field(default_factory=list)


def _width(norm: RMSNorm) -> int:
    return norm.gamma.numel()


def wan22_teacher_spec(teacher: Wan22Decoder) -> DecoderSpec:
    """The `DecoderSpec` a Wan 2.2 VAE decoder is, read off its modules: all FULL_3D, "dup" stage shortcuts."""
    body = teacher.decoder
    stages = []
    for stage in body.upsamples:
        blocks = [m for m in stage.upsamples if isinstance(m, ResidualBlock3D)]
        ups = [m for m in stage.upsamples if isinstance(m, Upsample)]
        width = blocks[-1].residual[6].out_channels
        up = ups[0] if ups else None
        stages.append(
            StageSpec(
                width,
                Op.FULL_3D,
                len(blocks),
                up_out=None if up is None else up.resample[1].out_channels,
                up_time=up is not None and up.time_conv is not None,
                shortcut=None if stage.avg_shortcut is None else "dup",
            )
        )
    dim = body.head[0].gamma.numel()
    return DecoderSpec(
        Family.WAN22,
        body.conv1.out_channels,
        Op.FULL_3D,
        tuple(stages),
        out_patch=2,
        name=f"wan22-teacher-dim{dim}",
    )


def wan22_teacher_view(teacher: Wan22Decoder) -> WanFamilyDecoder:
    """The Wan 2.2 decoder as a `WanFamilyDecoder` of `wan22_teacher_spec`, made of the SAME module objects
    (nothing is copied; it decodes exactly as `teacher`): stage i's blocks and upsample become consecutive
    entries of `decoder.upsamples`, its shortcut `decoder.shortcuts[i]`."""
    spec = wan22_teacher_spec(teacher)
    with torch.device("meta"):
        view = WanFamilyDecoder(spec)
    body, flat = teacher.decoder, []
    view.conv2 = teacher.conv2
    view.decoder.conv1, view.decoder.middle, view.decoder.head = body.conv1, body.middle, body.head
    for i, stage in enumerate(body.upsamples):
        flat += list(stage.upsamples)
        if stage.avg_shortcut is not None:
            view.decoder.shortcuts[str(i)] = stage.avg_shortcut
    view.decoder.upsamples = nn.ModuleList(flat)
    return view.train(teacher.training)


def _as_wan_family(teacher: nn.Module) -> nn.Module:
    return wan22_teacher_view(teacher) if isinstance(teacher, Wan22Decoder) else teacher


def _check_pair(teacher: nn.Module, spec: DecoderSpec) -> DecoderSpec:
    if not isinstance(teacher, WanFamilyDecoder):
        raise TypeError(
            f"pruning needs a Wan-family teacher (WanFamilyDecoder: the Wan 2.1 VAE), got {type(teacher).__name__}"
        )
    t = teacher.spec
    if any(op is not Op.FULL_3D for op in [t.middle_op, *(s.op for s in t.stages)]) or not t.head_time:
        raise NotImplementedError(f"the teacher {t.name} must be all FULL_3D with a causal head")
    problems = []
    if spec.family is not t.family or spec.out_patch != t.out_patch:
        problems.append(
            f"family/out_patch {spec.family.value}/{spec.out_patch} vs {t.family.value}/{t.out_patch}"
        )
    if len(spec.stages) != len(t.stages):
        raise ValueError(
            f"cannot prune {t.name} into {spec.name}: {len(spec.stages)} stages vs the teacher's {len(t.stages)}"
        )
    stages = list(zip(spec.stages, t.stages, strict=True))
    for i, (s, ts) in enumerate(stages):
        if s.blocks != ts.blocks or s.up_time != ts.up_time:
            problems.append(f"stage {i}: blocks/up_time {s.blocks}/{s.up_time} vs {ts.blocks}/{ts.up_time}")
    pairs = [(spec.middle_width, t.middle_width)] + [(s.width, ts.width) for s, ts in stages]
    pairs += [(s.up_out or 0, ts.up_out or 0) for s, ts in stages]
    if any(a > b for a, b in pairs):
        problems.append(f"a student width exceeds the teacher's (student, teacher): {pairs}")
    stage_in = [spec.middle_width] + [s.up_out or 0 for s in spec.stages]
    teacher_in = [t.middle_width] + [s.up_out or 0 for s in t.stages]
    for i, (s, ts) in enumerate(stages):
        if ts.shortcut is not None and s.shortcut is None:
            problems.append(
                f"stage {i}: the teacher's stage shortcut needs one in the student ('dup' or 'proj')"
            )
        if ts.shortcut not in (None, "dup") or (s.shortcut is not None and ts.shortcut is None):
            problems.append(
                f"stage {i}: shortcut {s.shortcut!r} cannot come from the teacher's {ts.shortcut!r}"
            )
        copies = stage_in[i] == s.up_out and teacher_in[i] == ts.up_out
        whole = stage_in[i] == teacher_in[i] and s.up_out == ts.up_out
        if s.shortcut == "dup" and not (copies or whole):
            problems.append(
                f"stage {i}: a 'dup' shortcut needs as many channels in as out (student {stage_in[i]}->"
                f"{s.up_out}, teacher {teacher_in[i]}->{ts.up_out}) or the teacher's widths; use 'proj'"
            )
    if problems:
        raise ValueError(f"cannot prune {t.name} into {spec.name}: " + "; ".join(problems))
    return t


class _WanPruner:
    """One pruning run: walk the teacher, calibrate, select, build the student's weights."""

    def __init__(self, teacher: WanFamilyDecoder, config: PruneConfig):
        if config.target is None:
            raise ValueError("PruneConfig.target is required: the DecoderSpec to prune into")
        self.cfg = config
        self.spec = config.target
        _check_pair(teacher, self.spec)
        p = next(teacher.parameters())
        self.teacher = teacher
        self.student = WanFamilyDecoder(self.spec).to(device=p.device, dtype=p.dtype).eval()
        self.sites: list[_Site] = []
        self.norms: list[str] = []
        self.op_lines: dict[str, LayerReport] = {}
        self._walk()

    # ---- structure -----------------------------------------------------------------------------

    def _site(self, name: str, teacher: int, student: int) -> _Site:
        site = _Site(name, teacher, student)
        self.sites.append(site)
        return site

    def _walk(self) -> None:
        """Assign every conv's input and output to a site; list the units to build, in forward order."""
        t, s = self.teacher.decoder, self.student.decoder
        cur = self._site("decoder.conv1", t.conv1.out_channels, s.conv1.out_channels)
        cur.producers.append(t.conv1.weight)
        self.units: list[tuple[str, tuple[_Site, ...]]] = [("decoder.conv1", (cur,))]
        names = [f"decoder.middle.{i}" for i in range(len(t.middle))]
        names += [f"decoder.upsamples.{i}" for i in range(len(t.upsamples))]
        starts = {f"decoder.upsamples.{first}": key for first, _, key in s._shortcut_spans}
        ends = {f"decoder.upsamples.{last}": key for _, last, key in s._shortcut_spans}
        stage_input: dict[str, _Site] = {}
        for name in names:
            if name in starts:
                stage_input[starts[name]] = cur
            tm, sm = self.teacher.get_submodule(name), self.student.get_submodule(name)
            if isinstance(tm, ResidualBlock3D):
                s_identity = isinstance(sm.shortcut, nn.Identity)
                t_identity = isinstance(tm.shortcut, nn.Identity)
                if s_identity and not t_identity:
                    raise ValueError(
                        f"{name}: the student keeps an identity shortcut where the teacher projects "
                        f"({_width(tm.residual[0])} -> {_width(tm.residual[3])} channels); give the student "
                        "different in/out widths there"
                    )
                mid = self._site(f"{name}.mid", _width(tm.residual[3]), _width(sm.residual[3]))
                mid.producers.append(tm.residual[2].weight)
                mid.consumers.append(f"{name}.residual.6")
                cur.consumers.append(f"{name}.residual.2")
                if not s_identity:
                    cur.consumers.append(f"{name}.residual.0")  # raw stream = the shortcut conv's input
                out = cur if s_identity else self._site(f"{name}.out", mid.teacher, mid.student)
                out.producers.append(tm.residual[6].weight)
                if not t_identity:
                    out.producers.append(tm.shortcut.weight)
                self.norms += [f"{name}.residual.0", f"{name}.residual.3"]
                self.units.append((name, (cur, mid, out)))
                cur = out
            elif isinstance(tm, FrameAttention):
                v = self._site(f"{name}.v", tm.proj.in_channels, sm.proj.in_channels)
                v.producers.append(tm.to_qkv.weight[2 * v.teacher :])
                v.consumers.append(f"{name}.proj")
                cur.consumers.append(f"{name}.to_qkv")
                cur.producers.append(tm.proj.weight)
                self.norms.append(f"{name}.norm")
                self.units.append((name, (cur, v)))
            elif isinstance(tm, Upsample):
                conv = tm.resample[1]
                key = ends.get(name)
                dup = key is not None and isinstance(s.shortcuts[key], DupUpShortcut)
                spread = s.shortcuts[key] if dup else None
                # a copying spread (as many channels in as out) adds the stage input channel for channel:
                # the output is in the input's site; any other "dup" is kept whole (checked in _check_pair)
                copy = dup and spread.repeats == spread.factor_t * spread.factor_s**2
                out = (
                    stage_input[key]
                    if copy
                    else self._site(f"{name}.out", conv.out_channels, sm.resample[1].out_channels)
                )
                out.producers.append(conv.weight)
                cur.consumers.append(f"{name}.resample.1")
                if tm.time_conv is not None:
                    cur.consumers.append(name)  # the time conv reads the Upsample's input
                self.units.append((name, (cur, out)))
                if key is not None and not dup:
                    src = stage_input[key]
                    src.consumers.append(f"decoder.shortcuts.{key}")  # the raw stage input
                    self.units.append((f"decoder.shortcuts.{key}", (src, out)))
                cur = out
            else:
                raise TypeError(f"{name}: unexpected teacher module {type(tm).__name__}")
        cur.consumers.append("decoder.head.2")
        self.norms.append("decoder.head.0")
        self.units.append(("decoder.head", (cur,)))

    # ---- channel selection ---------------------------------------------------------------------

    def _select(self, site: _Site, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if site.student == site.teacher:
            return torch.arange(site.teacher)
        if self.cfg.selection == "l1":
            return select_by_magnitude(sum(filter_l1(w).cpu() for w in site.producers), site.student)
        if self.cfg.selection == "random":
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + zlib.crc32(site.name.encode()))
            return select_random(site.teacher, site.student, gen)
        # every consumer weighs the same: each one's rows scaled to unit mean energy
        blocks = []
        for name in site.consumers:
            x = inputs[name].double()
            blocks.append(x / x.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12))
        return select_channels(torch.cat(blocks), site.student)

    # ---- weights -------------------------------------------------------------------------------

    def _fold(self, consumer: str, site: _Site) -> Fold:
        if consumer not in self._folds:
            acts = self.inputs[consumer]
            fold = (
                fold_reconstruction(acts, site.kept, self.cfg.ridge)
                if self.cfg.fold
                else Fold.drop(acts, site.kept)
            )
            site.errors.append(fold.error)
            self._folds[consumer] = fold
        return self._folds[consumer]

    def _folded(
        self, weight: torch.Tensor, bias: torch.Tensor | None, consumer: str, site: _Site, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """weight (C_out, C_in, ...) with input channels pruned to site.kept (folded) and rows kept.

        In the sequential pass (the student's own input to this conv was sampled, `self.own`), the map
        from the student's input to the teacher's is refitted instead: the same fold plus whatever
        correction the upstream layers need."""
        if consumer in self.own:
            imap = fit_input_map(self.own[consumer], self.inputs[consumer], self.cfg.ridge)
            w, b = map_into_weight(weight, bias, imap)
        else:
            w, b = fold_into_weight(weight, bias, self._fold(consumer, site))
        rows = rows.to(w.device)
        return w[rows], None if b is None else b[rows]

    def _gamma(self, norm_name: str, student_norm: RMSNorm, site: _Site) -> None:
        teacher_gamma = self.teacher.get_submodule(norm_name).gamma.detach().flatten()
        if self.cfg.refit_norms:
            g = refit_norm_gamma(self.inputs[norm_name], teacher_gamma, site.kept, self.own.get(norm_name))
        else:
            g = teacher_gamma[site.kept.to(teacher_gamma.device)]
        with torch.no_grad():
            student_norm.gamma.copy_(g.reshape(student_norm.gamma.shape))

    def _conv(self, name: str, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Fill a student conv of any op from an equivalent full causal 3D weight (C_out, C_in, k, k, k)."""
        if isinstance(conv, CausalConv3d):
            fill_conv(conv, weight, bias)
            return
        patches, targets = self.patches[name]
        if name in self.own_patches:  # the student's own inputs, same positions, teacher outputs
            patches = self.own_patches[name][0]
        if isinstance(conv, CausalSeparableConv3d):
            init = init_depthwise(weight, bias, patches, targets, self.cfg.ridge)
            fill_conv(conv.depthwise_conv, init.depthwise, None)
            fill_conv(conv.pointwise_conv, init.pointwise, init.bias)
            op, err = Op.DEPTHWISE_3D, init.error
        elif isinstance(conv, nn.Conv2d):
            w2, b2, err = init_frame2d(weight, bias, patches, targets, self.cfg.ridge)
            fill_conv(conv, w2, b2)
            op = Op.FRAME_2D
        else:
            raise TypeError(f"{name}: cannot initialise a {type(conv).__name__}")
        c_out = weight.shape[0]
        self.op_lines[name] = LayerReport(name, "operator", c_out, c_out, err, f"full3d->{op.value}")

    def _needs_patches(self) -> dict[str, PatchRequest]:
        requests = {}
        for name, sites in self.units:
            sm = self.student.get_submodule(name)
            if isinstance(sm, (ResidualBlock2D, ResidualBlock3D)) and not isinstance(
                sm.residual[2], CausalConv3d
            ):
                cur, mid, out = sites
                requests[f"{name}.residual.2"] = PatchRequest(cur.kept, mid.kept)
                requests[f"{name}.residual.6"] = PatchRequest(mid.kept, out.kept)
            elif name == "decoder.head" and not isinstance(sm[2], CausalConv3d):
                requests["decoder.head.2"] = PatchRequest(sites[0].kept, torch.arange(sm[2].out_channels))
        return requests

    # ---- the units, as ordered steps: (inputs each step reads, what it fills) ---------------------

    def _steps(self, name: str, sites: tuple[_Site, ...]) -> list[tuple[tuple[str, ...], Callable[[], None]]]:
        module = self.teacher.get_submodule(name)
        if name == "decoder.conv1":
            return [((), lambda: self._conv1(sites[0]))]
        if name == "decoder.head":
            return [
                (
                    ("decoder.head.0",),
                    lambda: self._gamma("decoder.head.0", self.student.decoder.head[0], sites[0]),
                ),
                (("decoder.head.2",), lambda: self._head_conv(sites[0])),
            ]
        if isinstance(module, ResidualBlock3D):
            cur, mid, out = sites
            sr = self.student.get_submodule(name).residual
            return [
                (
                    (f"{name}.residual.0",),
                    lambda: (self._gamma(f"{name}.residual.0", sr[0], cur), self._shortcut(name, cur, out)),
                ),
                ((f"{name}.residual.2",), lambda: self._block_conv(name, 2, cur, mid)),
                ((f"{name}.residual.3",), lambda: self._gamma(f"{name}.residual.3", sr[3], mid)),
                ((f"{name}.residual.6",), lambda: self._block_conv(name, 6, mid, out)),
            ]
        if isinstance(module, FrameAttention):
            cur, v = sites
            sa = self.student.get_submodule(name)
            return [
                ((f"{name}.norm",), lambda: self._gamma(f"{name}.norm", sa.norm, cur)),
                ((f"{name}.to_qkv",), lambda: self._qkv(name, cur, v)),
                ((f"{name}.proj",), lambda: self._proj(name, cur, v)),
            ]
        cur, out = sites
        if isinstance(module, DupUpShortcut):
            return [((name,), lambda: self._stage_shortcut(name, cur, out))]
        return [
            ((name,), lambda: self._time_conv(name, cur)),
            ((f"{name}.resample.1",), lambda: self._resample(name, cur, out)),
        ]

    def _conv1(self, site: _Site) -> None:
        t, s = self.teacher.decoder.conv1, self.student.decoder.conv1
        rows = site.kept.to(t.weight.device)
        fill_conv(s, t.weight[rows], t.bias[rows])

    def _block_conv(self, name: str, index: int, src: _Site, dst: _Site) -> None:
        conv = self.teacher.get_submodule(name).residual[index]
        w, b = self._folded(conv.weight, conv.bias, f"{name}.residual.{index}", src, dst.kept)
        self._conv(f"{name}.residual.{index}", self.student.get_submodule(name).residual[index], w, b)

    def _shortcut(self, name: str, cur: _Site, out: _Site) -> None:
        tb, sb = self.teacher.get_submodule(name), self.student.get_submodule(name)
        if isinstance(sb.shortcut, nn.Identity):
            return
        if isinstance(tb.shortcut, nn.Identity):
            ref = tb.residual[2].weight
            tw, tbias = (
                torch.eye(cur.teacher, dtype=ref.dtype, device=ref.device)[:, :, None, None, None],
                None,
            )
        else:
            tw, tbias = tb.shortcut.weight, tb.shortcut.bias
        # the shortcut reads the raw stream, which is exactly the first norm's input
        w, b = self._folded(tw, tbias, f"{name}.residual.0", cur, out.kept)  # (k_out, k_in, 1, 1, 1)
        sc = sb.shortcut
        if isinstance(sc, PointwiseConv3d):
            fill_conv(sc, w, b)
        elif isinstance(sc, SeparableConv3d):
            fill_conv(sc.depthwise_conv, torch.ones_like(sc.depthwise_conv.weight), None)
            fill_conv(sc.pointwise_conv, w, b)
        else:
            fill_conv(sc, w.flatten(2).unsqueeze(-1), b)

    def _qkv(self, name: str, cur: _Site, v: _Site) -> None:
        ta, sa = self.teacher.get_submodule(name), self.student.get_submodule(name)
        c, k = cur.teacher, cur.student
        w, b = self._folded(ta.to_qkv.weight, ta.to_qkv.bias, f"{name}.to_qkv", cur, torch.arange(3 * c))
        w, b = w.flatten(1).double(), b.double()
        if k == c:
            wq, wk, bq, bk = w[:c], w[c : 2 * c], b[:c], b[c : 2 * c]
        else:
            # q.k over c channels at temperature 1/sqrt(c) -> over k channels at 1/sqrt(k): factor the
            # bias-augmented bilinear form [W_q b_q]^T [W_k b_k] at rank k (the best in Frobenius norm)
            qa = torch.cat([w[:c], b[:c, None]], dim=1)
            ka = torch.cat([w[c : 2 * c], b[c : 2 * c, None]], dim=1)
            u, s, vh = torch.linalg.svd(qa.T @ ka * math.sqrt(k / c))
            root = s[:k].sqrt()
            qn, kn = (u[:, :k] * root).T, (vh[:k].T * root).T  # (k, k + 1) each
            wq, bq, wk, bk = qn[:, :k], qn[:, k], kn[:, :k], kn[:, k]
        vk = v.kept.to(w.device)
        wv, bv = w[2 * c :][vk], b[2 * c :][vk]
        qkv_w = torch.cat([wq, wk, wv]).reshape(sa.to_qkv.weight.shape)
        fill_conv(sa.to_qkv, qkv_w, torch.cat([bq, bk, bv]))

    def _proj(self, name: str, cur: _Site, v: _Site) -> None:
        ta, sa = self.teacher.get_submodule(name), self.student.get_submodule(name)
        w, b = self._folded(ta.proj.weight, ta.proj.bias, f"{name}.proj", v, cur.kept)
        fill_conv(sa.proj, w, b)

    def _time_conv(self, name: str, cur: _Site) -> None:
        tu, su = self.teacher.get_submodule(name), self.student.get_submodule(name)
        if tu.time_conv is None:
            return
        # the time conv's two output groups are frames 2i and 2i+1 in the SAME channel space as its
        # input (the stream's first frame passes through unconverted), so both keep cur.kept
        rows = torch.cat([cur.kept, cur.kept + cur.teacher])
        w, b = self._folded(tu.time_conv.weight, tu.time_conv.bias, name, cur, rows)
        fill_conv(su.time_conv, w, b)

    def _resample(self, name: str, cur: _Site, out: _Site) -> None:
        conv = self.teacher.get_submodule(name).resample[1]
        w, b = self._folded(conv.weight, conv.bias, f"{name}.resample.1", cur, out.kept)
        fill_conv(self.student.get_submodule(name).resample[1], w, b)

    def _stage_shortcut(self, name: str, src: _Site, out: _Site) -> None:
        """A "proj" student shortcut from the teacher's spread: output channel o at sub-position p is input
        channel (o * P + p) // repeats, a 0/1 matrix that is folded over the input site like any conv."""
        spread, student = self.teacher.get_submodule(name), self.student.get_submodule(name)
        if not isinstance(student, ProjectedUpShortcut):
            raise TypeError(
                f"{name}: a student shortcut to fill is a ProjectedUpShortcut, got {type(student).__name__}"
            )
        positions = spread.factor_t * spread.factor_s**2
        rows = torch.arange(spread.out_ch * positions)
        ref = self.teacher.decoder.conv1.weight
        weight = torch.zeros(rows.numel(), src.teacher, dtype=ref.dtype, device=ref.device)
        weight[rows, rows // spread.repeats] = 1.0
        keep = (out.kept[:, None] * positions + torch.arange(positions)).flatten()
        w, b = self._folded(weight[:, :, None, None, None], None, name, src, keep)
        fill_conv(student.conv, w, b)

    def _head_conv(self, cur: _Site) -> None:
        th, sh = self.teacher.decoder.head, self.student.decoder.head
        rows = torch.arange(th[2].out_channels)
        w, b = self._folded(th[2].weight, th[2].bias, "decoder.head.2", cur, rows)
        self._conv("decoder.head.2", sh[2], w, b)

    # ---- the run -------------------------------------------------------------------------------

    def run(self, calib: torch.Tensor) -> PruneReport:
        cfg = self.cfg
        fit, held = split_calibration(calib, cfg.holdout)
        names = [c for s in self.sites for c in s.consumers] + self.norms
        log.info("calibrating %s on %d clips (%d layers)", self.teacher.spec.name, fit.shape[0], len(names))
        self.inputs = collect_inputs(self.teacher, fit, names, cfg.rows, cfg.seed, cfg.batch)
        for site in self.sites:
            site.kept = self._select(site, self.inputs).cpu()
        requests = self._needs_patches()
        self.patches = (
            collect_patches(self.teacher, fit, requests, cfg.patch_rows, cfg.seed, cfg.batch)
            if requests
            else {}
        )
        self._folds: dict[str, Fold] = {}
        self.own: dict[str, torch.Tensor] = {}
        self.own_patches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            self.student.conv2.load_state_dict(self.teacher.conv2.state_dict())
        steps = [step for name, sites in self.units for step in self._steps(name, sites)]
        # one pass on the teacher's activations: every layer assumes the layers before it are exact
        for _, fill in steps:
            fill()
        if cfg.sequential:
            # then in forward order, each layer refitted on what the (already refitted) student before it
            # really feeds it: same pixels as the teacher's samples, so the pairs line up
            for reads, fill in steps:
                if not reads:
                    continue
                self.own = collect_inputs(self.student, fit, reads, cfg.rows, cfg.seed, cfg.batch)
                wanted = {n: self._own_request(n) for n in reads if n in self.patches}
                self.own_patches = (
                    collect_patches(self.student, fit, wanted, cfg.patch_rows, cfg.seed, cfg.batch)
                    if wanted
                    else {}
                )
                fill()
            self.own, self.own_patches = {}, {}
        psnr = None
        if held is not None:
            psnr = psnr_db(
                decode_clips(self.student, held, cfg.batch), decode_clips(self.teacher, held, cfg.batch)
            )
        return build_report(
            self.teacher.spec.name,
            self.spec.name,
            cfg,
            self.sites,
            self.op_lines.values(),
            psnr,
            self.teacher,
            self.student,
        )

    def _own_request(self, name: str) -> PatchRequest:
        conv = self.student.get_submodule(name)
        inner = getattr(conv, "pointwise_conv", conv)
        return PatchRequest(torch.arange(inner.in_channels), torch.arange(inner.out_channels))


def _module(decoder: FlashDecoder | nn.Module) -> nn.Module:
    return decoder.module if isinstance(decoder, FlashDecoder) else decoder


@torch.no_grad()
def build_student_from_teacher(
    teacher_decoder: FlashDecoder | WanFamilyDecoder | Wan22Decoder,
    target_spec: DecoderSpec,
    calib_latents: torch.Tensor,
    config: PruneConfig | None = None,
) -> tuple[FlashDecoder, PruneReport]:
    """A new student of `target_spec` whose weights all come from the teacher (select, fold, replace).

    calib_latents: (N, C, T, H, W) raw Wan latents (random latents work for tests; encoded videos
    for real students); the last `config.holdout` clips only measure the report's PSNR.
    The teacher is not modified. Returns the student (role "student") and the report.
    """
    config = dataclasses.replace(config or PruneConfig(), target=target_spec)
    teacher = _as_wan_family(_module(teacher_decoder))
    pruner = _WanPruner(teacher, config)
    report = pruner.run(calib_latents)
    origin = teacher_decoder.layout if isinstance(teacher_decoder, FlashDecoder) else teacher.spec.name
    info = {"parameters": report.student_parameters, "pruned_from": origin}
    student = FlashDecoder(
        target_spec.family, "student", pruner.student, None, f"flash-vaed:{target_spec.name}", info
    )
    return student, report


@torch.no_grad()
def prune_(decoder: FlashDecoder | WanFamilyDecoder, config: PruneConfig, calib: torch.Tensor) -> PruneReport:
    """Turn a Wan-family teacher into the student `config.target`, in place (as torchao's quantize_).

    Every unit of the decoder (decoder.conv1, each middle and upsamples entry, the head) is swapped
    for its pruned, operator-replaced counterpart with `replace_conv`; conv2 is kept; `spec` becomes
    the target. A FlashDecoder also becomes role "student". calib: (N, 16, T, H, W) raw latents.
    """
    module = _module(decoder)
    if isinstance(module, Wan22Decoder):
        raise TypeError(
            "prune_ works in place on a WanFamilyDecoder; a Wan 2.2 VAE (Wan22Decoder) has other modules: "
            "use build_student_from_teacher, which returns the student as a new decoder"
        )
    pruner = _WanPruner(module, config)
    report = pruner.run(calib)
    for name, _ in pruner.units:
        replace_conv(module, name, pruner.student.get_submodule(name))
    module.spec = config.target
    if isinstance(decoder, FlashDecoder):
        decoder.role = "student"
        decoder.layout = f"flash-vaed:{config.target.name}"
        decoder.info = {**decoder.info, "parameters": report.student_parameters}
        vars(decoder).pop("memory_profile", None)  # measured on the teacher: measure the student anew
    return report
