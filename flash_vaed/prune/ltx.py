"""Prune an LTX teacher (LTX-Video 0.9's `LTXTeacherDecoder`, or an LTX-2 `LTX2TeacherDecoder` with pixel
norm) into a Flash-VAED LTX student (`LTXStudentSpec`).

What is pruned where (docs/pruning.md, "LTX-Video", has the reasoning and measurements):

- Layout. Both decoders are read as one sequence of resnets and 2x upsamples in execution order (the
  teacher's `res_x` stacks and `res_x_y` blocks, the student's mid block, stage `conv_in` resnets and stage
  resnets) and cut at the upsamples into segments. The segments pair up one to one; inside a segment the
  student's resnets take the teacher's in order. A student segment with fewer resnets takes the teacher's
  width-changing resnet (it must) and the first others; the teacher resnets left over are dropped, i.e.
  treated as the identity they are closest to (resnets are residual), and the consumers after them are
  fitted from the stream the student will have there (`Tap.view`) to what the teacher's read. More
  student resnets than teacher ones, a different number of upsamples or a student wider than the teacher
  raise.
- Channels live in *sites*, as in wan.py: the residual stream along a run of student resnets with an
  identity shortcut, the inside of every resnet (after conv1), the output of every upsample. A site keeps
  `select_channels` of all its consumers' teacher inputs, stacked.
- The student's resnets normalise with a parameter-free RMS norm over their own (kept) channels and have
  no timestep modulation; the teacher's pixel norm runs over all channels and, in 0.9.1/0.9.5+, is
  followed by AdaLN at the decode timestep. So a norm-fed consumer (conv1, conv2, conv_out) does not see a
  column subset of the teacher's input: its weights come from `fit_input_map`, the least-squares map from
  what the student computes (SiLU of the RMS norm of the kept channels) to the teacher conv's input, at
  the same calibration pixels: the fold (`fold_reconstruction`) generalised. Where the two inputs agree
  (full width, no modulation) the teacher's weights are kept. Upsample convs read the raw stream and get
  the plain fold.
- Shortcuts: the student's LayerNorm + 1x1 conv is fitted by least squares to the teacher's shortcut
  output (its projection, or the identity) on the kept channels: a LayerNorm over fewer channels cannot be
  undone exactly, so this is the best a 1x1 conv can do.
- Upsamples: the teacher's residual term (0.9.1/0.9.5+ add the depth-to-spaced input) is folded into the
  conv's centre tap, exactly; the student's upsample has no residual.
- Operators: a resnet conv that becomes depthwise-separable or per-frame 2D is initialised with
  `init_depthwise` / `init_frame2d` on patches of the student's own input (RMS norm + SiLU of the kept
  channels, laid out as the student pads them) against the teacher conv's outputs. The student's
  depthwise convs pad time causally while the teacher's are centred, so the weight-space prior moves the
  teacher's future tap onto the current frame (exact on static video).

Calibration runs the teacher as training does (`arch.protocol.decode_raw`): ComfyUI's decode timestep and
zero injected noise, so the target is the teacher's noise-free output. Spatial padding: the student pads
with zeros; a reflect-padded teacher differs at the borders, which the fits ignore.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.ltx import DepthToSpaceUp, LTXTeacherDecoder, ResStack, TeacherResBlock, pad_time
from ..arch.ltx2 import LTX2TeacherDecoder
from ..arch.ltx_student import (
    FrameConv2d,
    LTXStudentDecoder,
    LTXStudentSpec,
    SeparableConv3d,
    StudentResBlock,
    rms_norm,
)
from ..decoder import FlashDecoder
from ..spec import Op
from .calibrate import decode_clips
from .fold import (
    Fold,
    InputMap,
    fit_input_map,
    fold_into_weight,
    fold_reconstruction,
    map_into_weight,
    ridge_lstsq,
)
from .report import LayerReport, PruneReport, build_report, psnr_db
from .select import filter_l1, select_by_magnitude, select_channels, select_random, split_calibration
from .surgery import fill_conv, init_depthwise, init_frame2d
from .wan import PruneConfig

log = logging.getLogger(__name__)

__all__ = ["LTX_TEACHERS", "build_ltx_student", "pair_layouts", "upsample_weight"]

# the teacher decoders this pruner reads: ComfyUI's LTX decoder blocks, from a version or from a config
LTX_TEACHERS = (LTXTeacherDecoder, LTX2TeacherDecoder)


# ---- pairing the two layouts ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A student module initialised from a teacher module: kind "res" (resnets) or "up" (upsamples)."""

    kind: str
    teacher: str
    student: str


def _teacher_sequence(teacher: LTXTeacherDecoder) -> list[tuple[str, str]]:
    seq = []
    for i, block in enumerate(teacher.decoder.up_blocks):
        name = f"decoder.up_blocks.{i}"
        if isinstance(block, ResStack):
            seq += [("res", f"{name}.res_blocks.{j}") for j in range(len(block.res_blocks))]
        elif isinstance(block, TeacherResBlock):
            seq.append(("res", name))
        else:
            seq.append(("up", name))
    return seq


def _student_sequence(student: LTXStudentDecoder) -> list[tuple[str, str]]:
    body = student.decoder
    seq = [("res", f"decoder.mid_block.resnets.{j}") for j in range(len(body.mid_block.resnets))]
    for i, block in enumerate(body.up_blocks):
        name = f"decoder.up_blocks.{i}"
        if block.conv_in is not None:
            seq.append(("res", f"{name}.conv_in"))
        if block.upsamplers is not None:
            seq.append(("up", f"{name}.upsamplers.0"))
        seq += [("res", f"{name}.resnets.{j}") for j in range(len(block.resnets))]
    return seq


def _segments(seq: list[tuple[str, str]]) -> tuple[list[list[str]], list[str]]:
    """Resnet names between upsamples (one more list than upsamples), and the upsample names."""
    segments: list[list[str]] = [[]]
    ups = []
    for kind, name in seq:
        if kind == "up":
            ups.append(name)
            segments.append([])
        else:
            segments[-1].append(name)
    return segments, ups


def pair_layouts(teacher: LTXTeacherDecoder, student: LTXStudentDecoder) -> tuple[list[Pair], list[str]]:
    """Which teacher module initialises each student resnet and upsample, in execution order, and which
    teacher resnets have no student counterpart (they are dropped). Raises ValueError where no pairing
    exists (another number of upsamples, more student resnets in a segment than the teacher has)."""
    t_segments, t_ups = _segments(_teacher_sequence(teacher))
    s_segments, s_ups = _segments(_student_sequence(student))
    t_strides = [teacher.get_submodule(n).stride for n in t_ups]
    s_strides = [student.get_submodule(n).stride for n in s_ups]
    if t_strides != s_strides:
        raise ValueError(
            f"the student's upsamples (time, height, width factors {s_strides}) are not the teacher's "
            f"({t_strides}): the strides differ"
        )
    pairs: list[Pair] = []
    dropped: list[str] = []
    for i, (t_res, s_res) in enumerate(zip(t_segments, s_segments, strict=True)):
        chosen = _pick_teacher_resnets(teacher, t_res, len(s_res), i)
        dropped += [name for name in t_res if name not in chosen]
        pairs += [Pair("res", t, s) for t, s in zip(chosen, s_res, strict=True)]
        if i < len(t_ups):
            pairs.append(Pair("up", t_ups[i], s_ups[i]))
    return pairs, dropped


def _pick_teacher_resnets(teacher: LTXTeacherDecoder, names: list[str], n: int, segment: int) -> list[str]:
    if n > len(names):
        raise ValueError(
            f"segment {segment} (between 2x upsamples): the student has {n} resnets, the teacher only "
            f"{len(names)}; give the student at most as many"
        )
    # the width-changing resnet has to be kept: no other teacher block maps between those channel spaces
    reshaping = [name for name in names if teacher.get_submodule(name).reshapes]
    if len(reshaping) > n:
        raise ValueError(
            f"segment {segment}: {len(reshaping)} width-changing teacher resnets for {n} student ones"
        )
    others = [name for name in names if name not in reshaping][: n - len(reshaping)]
    chosen = set(reshaping + others)
    return [name for name in names if name in chosen]


def upsample_weight(up: DepthToSpaceUp) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv weight (G*C_out, C_in, k, k, k) and bias of a teacher upsample with its residual folded in.

    The residual adds depth_to_space(x) tiled along channels: output channel o at sub-position s (channel
    o*G + s before depth-to-space, G = prod(stride)) gains input channel (o mod C_in/G)*G + s at the same
    position, which is the centre tap of the conv. So the upsample equals its conv with that weight."""
    conv = up.conv.conv
    weight = conv.weight.detach().clone()
    bias = conv.bias.detach().clone()
    if up.residual:
        groups = math.prod(up.stride)
        c_in, c_out = weight.shape[1], weight.shape[0] // groups
        centre = up.conv.kernel_size // 2
        out = torch.arange(c_out, device=weight.device)
        for s in range(groups):
            weight[out * groups + s, (out % (c_in // groups)) * groups + s, centre, centre, centre] += 1
    return weight, bias


# ---- calibration taps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tap:
    """What one probed teacher conv saw during a calibration decode (whole tensors, (B, C, T, H, W)).

    view:   the pre-norm tensor as the student will see it, in the one-shot assumption that every student
            module upstream reproduces its teacher module: for a stream consumer, the output of the last
            teacher module that has a student counterpart. It differs from `source` only after dropped
            teacher resnets.
    source: the teacher's actual pre-norm tensor (the stream, or conv1's output for conv2).
    inputs: the conv's input (after the teacher's norm, modulation and SiLU; the raw stream for upsamples).
    out:    the conv's output.
    """

    view: torch.Tensor
    source: torch.Tensor
    inputs: torch.Tensor
    out: torch.Tensor


@contextmanager
def _taps(
    teacher: LTXTeacherDecoder, pairs: list[Pair], record: Callable[[str, Tap], None]
) -> Iterator[None]:
    """Hooks that hand `record(probe, Tap)` for every probed conv during a teacher decode.

    Probes: "<resnet>.conv1" (source: the resnet's input), "<resnet>.conv2" (source: conv1's output;
    injected noise is zero in calibration), "<upsample>.conv" (source: its raw input) and
    "decoder.conv_out" (source: the final stream)."""
    stash: dict[str, torch.Tensor] = {}
    handles = []

    def keep_input(key: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            stash[key] = args[0]

        return hook

    def keep_output(key: str):
        def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            stash[key] = out

        return hook

    def probe(name: str, view_key: str, source_key: str | None):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            source = args[0] if source_key is None else stash[source_key]
            record(name, Tap(stash[view_key], source, args[0], out))

        return hook

    def add(module: nn.Module, hook, pre: bool = False) -> None:
        handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))

    try:
        body = teacher.decoder
        add(body.conv_in, keep_output("view"))
        for pair in pairs:
            block = teacher.get_submodule(pair.teacher)
            if pair.kind == "up":
                add(block.conv, probe(f"{pair.teacher}.conv", "view", None))
            else:
                add(block, keep_input(pair.teacher), pre=True)
                add(block.conv1, keep_output(f"{pair.teacher}.conv1"))
                add(block.conv1, probe(f"{pair.teacher}.conv1", "view", pair.teacher))
                mid = f"{pair.teacher}.conv1"
                add(block.conv2, probe(f"{pair.teacher}.conv2", mid, mid))
            add(block, keep_output("view"))  # registered last: runs after the probes inside the block
        final = body.up_blocks[-1] if len(body.up_blocks) else body.conv_in
        add(final, keep_output("final"))
        add(body.conv_out, probe("decoder.conv_out", "view", "final"))
        yield
    finally:
        for h in handles:
            h.remove()
        stash.clear()


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _positions(out: torch.Tensor, count: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """`count` uniformly drawn (b, t, h, w) positions of a (B, C, T, H, W) tensor, on its device."""
    grid = (out.shape[0], *out.shape[2:])
    flat = torch.randperm(math.prod(grid), generator=gen)[: min(count, math.prod(grid))]
    return tuple(i.to(out.device) for i in torch.unravel_index(flat, grid))


def _rows(
    x: torch.Tensor, index: tuple[torch.Tensor, ...], channels: torch.Tensor | None = None
) -> torch.Tensor:
    rows = x.detach().movedim(1, -1)[index]
    return (rows if channels is None else rows[:, channels.to(x.device)]).float()


def _student_patches(
    x: torch.Tensor, kept: torch.Tensor, index: tuple[torch.Tensor, ...], op: Op
) -> torch.Tensor:
    """The 3x3(x3) neighbourhoods of channels `kept` of x (B, C, T, H, W) at `index`, padded as the student
    pads: zeros in space; depthwise (causal) convs repeat the first frame twice, per-frame 2D convs see
    one frame. Returns (R, k, 27) in the (t, h, w) tap order of the weight, or (R, k, 9)."""
    x = x.detach()[:, kept.to(x.device)]
    frames = 3 if op is Op.DEPTHWISE_3D else 1
    if frames > 1:
        x = pad_time(x, 3, causal=True)
    padded = F.pad(x, (1, 1, 1, 1))
    b, t, h, w = index
    taps = [
        padded[b, :, t + dt, h + dh, w + dw] for dt in range(frames) for dh in range(3) for dw in range(3)
    ]
    return torch.stack(taps, dim=-1).float()


@dataclass(frozen=True)
class Rows:
    """Calibration rows of one probe at the same pixels, each (rows, C) float32 (see `Tap`).

    exact: the view was the source at every record (no dropped teacher resnet upstream)."""

    view: torch.Tensor
    source: torch.Tensor
    inputs: torch.Tensor
    exact: bool


@dataclass(frozen=True)
class _PatchRequest:
    op: Op
    kept_in: torch.Tensor
    kept_out: torch.Tensor


# ---- the pruner -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Site:
    """A channel space of the teacher and the subset of it the student keeps."""

    name: str
    teacher: int
    student: int
    consumers: list[str] = field(default_factory=list)  # probe names whose teacher input is this space
    scores: list[torch.Tensor] = field(default_factory=list)  # L1 of the producing filters, per channel
    kept: torch.Tensor | None = None
    errors: list[float] = field(default_factory=list)


def _out_channels(conv: nn.Module) -> int:
    inner = getattr(conv, "pointwise", getattr(conv, "conv", conv))
    return inner.out_channels


def _op(conv: nn.Module) -> Op:
    if isinstance(conv, SeparableConv3d):
        return Op.DEPTHWISE_3D
    if isinstance(conv, FrameConv2d):
        return Op.FRAME_2D
    return Op.FULL_3D


def _student_input(pre: torch.Tensor) -> torch.Tensor:
    """What a student resnet conv or conv_out reads: SiLU of the RMS norm over its own channels (dim 1)."""
    return F.silu(rms_norm(pre))


def _check_pair(teacher: nn.Module, spec: object) -> None:
    if not isinstance(teacher, LTX_TEACHERS):
        raise TypeError(f"LTX pruning needs an LTX teacher decoder, got {type(teacher).__name__}")
    if not isinstance(spec, LTXStudentSpec):
        raise TypeError(f"an LTX teacher prunes into an LTXStudentSpec, got {type(spec).__name__}")
    if isinstance(teacher, LTX2TeacherDecoder) and teacher.config.norm_layer != "pixel_norm":
        raise ValueError(
            f"the teacher's resnets use {teacher.config.norm_layer} (no released LTX VAE does); the student's "
            "RMS-normed resnets are fitted to pixel-norm teachers only"
        )
    if spec.family is not teacher.family:
        raise ValueError(
            f"{spec.name} is a student of {spec.family.title} latents, the teacher decodes "
            f"{teacher.family.title} latents: another latent space"
        )
    body = teacher.decoder
    mine = (spec.latent_channels, spec.out_channels * spec.patch_size**2, spec.patch_size)
    theirs = (teacher.latent_channels, body.conv_out.conv.out_channels, body.patch_size)
    if mine != theirs:
        raise ValueError(
            f"cannot prune into {spec.name}: latent channels / conv_out channels / patch {mine} vs the teacher's {theirs}"
        )


class _LTXPruner:
    """One pruning run: pair the layouts, calibrate, select, build the student's weights."""

    def __init__(self, teacher: LTXTeacherDecoder, config: PruneConfig):
        if config.sequential:
            raise NotImplementedError("the sequential refit exists for Wan-family teachers only")
        _check_pair(teacher, config.target)
        self.cfg = config
        self.spec: LTXStudentSpec = config.target
        p = next(teacher.parameters())
        self.teacher = teacher
        self.student = LTXStudentDecoder(self.spec).to(device=p.device, dtype=p.dtype).eval()
        self.pairs, self.dropped = pair_layouts(teacher, self.student)
        self.sites: list[_Site] = []
        self.units: list[tuple[Pair, tuple[_Site, ...]]] = []
        self.op_lines: list[LayerReport] = []
        self._walk()

    # ---- structure -----------------------------------------------------------------------------

    def _site(self, name: str, teacher: int, student: int) -> _Site:
        if student > teacher:
            raise ValueError(
                f"cannot prune into {self.spec.name}: {name} has {student} channels, more than the teacher's {teacher}"
            )
        site = _Site(name, teacher, student)
        self.sites.append(site)
        return site

    def _walk(self) -> None:
        t, s = self.teacher.decoder, self.student.decoder
        cur = self._site("decoder.conv_in", t.conv_in.conv.out_channels, s.conv_in.conv.out_channels)
        cur.scores.append(filter_l1(t.conv_in.conv.weight))
        self.first = cur
        for pair in self.pairs:
            cur = self._walk_up(pair, cur) if pair.kind == "up" else self._walk_resnet(pair, cur)
        cur.consumers.append("decoder.conv_out")
        self.last = cur

    def _walk_resnet(self, pair: Pair, cur: _Site) -> _Site:
        tb: TeacherResBlock = self.teacher.get_submodule(pair.teacher)
        sb: StudentResBlock = self.student.get_submodule(pair.student)
        if tb.reshapes and not sb.has_shortcut:
            raise ValueError(
                f"{pair.student}: the student keeps an identity shortcut where the teacher's {pair.teacher} "
                "projects; give the student block a shortcut (different widths or shortcut=True)"
            )
        mid = self._site(f"{pair.student}.mid", tb.conv1.conv.out_channels, _out_channels(sb.conv1))
        mid.scores.append(filter_l1(tb.conv1.conv.weight))
        mid.consumers.append(f"{pair.teacher}.conv2")
        cur.consumers.append(f"{pair.teacher}.conv1")
        if sb.has_shortcut:
            cur.consumers.append(f"{pair.teacher}.stream")  # the raw stream, read by the shortcut
            out = self._site(f"{pair.student}.out", tb.conv2.conv.out_channels, _out_channels(sb.conv2))
        else:
            out = cur
        out.scores.append(filter_l1(tb.conv2.conv.weight))
        if tb.reshapes:
            out.scores.append(filter_l1(tb.conv_shortcut.weight))
        self.units.append((pair, (cur, mid, out)))
        return out

    def _walk_up(self, pair: Pair, cur: _Site) -> _Site:
        tu: DepthToSpaceUp = self.teacher.get_submodule(pair.teacher)
        su: DepthToSpaceUp = self.student.get_submodule(pair.student)
        groups = math.prod(tu.stride)
        weight, _ = upsample_weight(tu)
        out = self._site(f"{pair.student}.out", weight.shape[0] // groups, _out_channels(su.conv) // groups)
        out.scores.append(filter_l1(weight).view(-1, groups).sum(dim=1))
        cur.consumers.append(f"{pair.teacher}.conv")
        self.units.append((pair, (cur, out)))
        return out

    # ---- calibration ---------------------------------------------------------------------------

    def _calibrate_rows(self, latents: torch.Tensor) -> dict[str, Rows]:
        clips = latents.split(max(1, self.cfg.batch))
        quota = math.ceil(self.cfg.rows / len(clips))
        gens: dict[str, torch.Generator] = {}
        got: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]] = {}

        def record(name: str, tap: Tap) -> None:
            index = _positions(tap.out, quota, gens.setdefault(name, _generator(self.cfg.seed, name)))
            source = _rows(tap.source, index)
            # aliases where the tensors are the same one: most probes, and memory is the limit at full width
            view = source if tap.view is tap.source else _rows(tap.view, index)
            inputs = source if tap.inputs is tap.source else _rows(tap.inputs, index)
            got.setdefault(name, []).append((view, source, inputs, tap.view is tap.source))

        with _taps(self.teacher, self.pairs, record):
            decode_clips(self.teacher, latents, self.cfg.batch)
        n = self.cfg.rows
        return {
            name: Rows(
                *(torch.cat([part[i] for part in parts])[:n] for i in range(3)), all(p[3] for p in parts)
            )
            for name, parts in got.items()
        }

    def _calibrate_patches(
        self, latents: torch.Tensor, requests: dict[str, _PatchRequest]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{probe: (student-input patches (rows, k_in, taps), teacher outputs (rows, k_out))}."""
        clips = latents.split(max(1, self.cfg.batch))
        quota = math.ceil(self.cfg.patch_rows / len(clips))
        gens: dict[str, torch.Generator] = {}
        got: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def record(name: str, tap: Tap) -> None:
            req = requests.get(name)
            if req is None:
                return
            index = _positions(tap.out, quota, gens.setdefault(name, _generator(self.cfg.seed + 1, name)))
            patches = _student_input(_student_patches(tap.view, req.kept_in, index, req.op))
            got.setdefault(name, []).append((patches, _rows(tap.out, index, req.kept_out)))

        with _taps(self.teacher, self.pairs, record):
            decode_clips(self.teacher, latents, self.cfg.batch)
        rows = self.cfg.patch_rows
        return {
            n: (torch.cat([p for p, _ in parts])[:rows], torch.cat([t for _, t in parts])[:rows])
            for n, parts in got.items()
        }

    def _patch_requests(self) -> dict[str, _PatchRequest]:
        requests = {}
        for pair, sites in self.units:
            if pair.kind != "res":
                continue
            cur, mid, out = sites
            sb = self.student.get_submodule(pair.student)
            for conv, src, dst in (("conv1", cur, mid), ("conv2", mid, out)):
                op = _op(getattr(sb, conv))
                if op is not Op.FULL_3D:
                    requests[f"{pair.teacher}.{conv}"] = _PatchRequest(op, src.kept, dst.kept)
        return requests

    # ---- channel selection ---------------------------------------------------------------------

    def _consumer_acts(self, probe: str) -> torch.Tensor:
        if probe.endswith(".stream"):
            return self.rows[probe.removesuffix(".stream") + ".conv1"].source
        return self.rows[probe].inputs

    def _select(self, site: _Site) -> torch.Tensor:
        if site.student == site.teacher:
            return torch.arange(site.teacher)
        if self.cfg.selection == "l1":
            return select_by_magnitude(sum(s.cpu() for s in site.scores), site.student)
        if self.cfg.selection == "random":
            gen = _generator(self.cfg.seed, site.name)
            return select_random(site.teacher, site.student, gen)
        # every consumer weighs the same: each one's rows scaled to unit mean energy
        blocks = []
        for probe in site.consumers:
            x = self._consumer_acts(probe).double()
            blocks.append(x / x.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12))
        return select_channels(torch.cat(blocks), site.student)

    # ---- weights -------------------------------------------------------------------------------

    def _norm_fed(
        self, probe: str, weight: torch.Tensor, bias: torch.Tensor | None, src: _Site, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A conv that reads SiLU(norm(src)), with its inputs mapped from what the student computes on
        src.kept to what the teacher computes on all of src, and its output rows cut to `rows`."""
        r = self.rows[probe]
        same_input = src.student == src.teacher and r.exact and not self.teacher.timestep_conditioned
        if self.cfg.fold and not same_input:
            imap = fit_input_map(_student_input(r.view[:, src.kept]), r.inputs, self.cfg.ridge)
        else:
            imap = InputMap.from_fold(Fold.drop(r.inputs, src.kept))
        src.errors.append(imap.error)
        w, b = map_into_weight(weight, bias, imap)
        rows = rows.to(w.device)
        return w[rows], None if b is None else b[rows]

    def _fill_resnet_conv(
        self, name: str, probe: str, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """Fill the student resnet conv `name` of any op from the equivalent full centred 3x3x3 weight."""
        op = _op(conv)
        if op is Op.FULL_3D:
            fill_conv(conv.conv, weight, bias)
            return
        patches, targets = self.patches[probe]
        if op is Op.DEPTHWISE_3D:
            init = init_depthwise(_causal_prior(weight), bias, patches, targets, self.cfg.ridge)
            fill_conv(conv.depthwise, init.depthwise, None)
            fill_conv(conv.pointwise, init.pointwise, init.bias)
            err = init.error
        else:
            w2, b2, err = init_frame2d(weight, bias, patches, targets, self.cfg.ridge)
            fill_conv(conv, w2, b2)
        c_out = weight.shape[0]
        self.op_lines.append(LayerReport(name, "operator", c_out, c_out, err, f"full3d->{op.value}"))

    def _conv_in(self) -> None:
        t, s = self.teacher.decoder.conv_in.conv, self.student.decoder.conv_in.conv
        rows = self.first.kept.to(t.weight.device)
        fill_conv(s, t.weight[rows], t.bias[rows])

    def _resnet(self, pair: Pair, cur: _Site, mid: _Site, out: _Site) -> None:
        tb: TeacherResBlock = self.teacher.get_submodule(pair.teacher)
        sb: StudentResBlock = self.student.get_submodule(pair.student)
        for conv, src, dst in (("conv1", cur, mid), ("conv2", mid, out)):
            probe, teacher_conv = f"{pair.teacher}.{conv}", getattr(tb, conv).conv
            w, b = self._norm_fed(probe, teacher_conv.weight, teacher_conv.bias, src, dst.kept)
            self._fill_resnet_conv(f"{pair.student}.{conv}", probe, getattr(sb, conv), w, b)
        if sb.has_shortcut:
            self._shortcut(pair, tb, sb, cur, out)

    def _shortcut(self, pair: Pair, tb: TeacherResBlock, sb: StudentResBlock, cur: _Site, out: _Site) -> None:
        """The student's LayerNorm + 1x1 conv, fitted to the teacher's shortcut output on the kept channels."""
        r = self.rows[f"{pair.teacher}.conv1"]
        stream, view = r.source.to(sb.norm3.weight), r.view.to(sb.norm3.weight)
        kin, kout = cur.kept.to(stream.device), out.kept.to(stream.device)
        with torch.no_grad():
            if tb.reshapes:
                sb.norm3.weight.copy_(tb.norm3.norm.weight[kin])
                sb.norm3.bias.copy_(tb.norm3.norm.bias[kin])
                w_t = tb.conv_shortcut.weight.flatten(1)
                target = F.linear(tb.norm3.norm(stream), w_t, tb.conv_shortcut.bias)[:, kout]
                prior, prior_bias = w_t[kout][:, kin].T, tb.conv_shortcut.bias[kout]
            else:
                sb.norm3.weight.fill_(1.0)
                sb.norm3.bias.zero_()
                target = stream[:, kout]
                prior = (kin[:, None] == kout[None, :]).to(stream)  # the identity, on channels both keep
                prior_bias = torch.zeros(len(kout)).to(stream)
            features = sb.norm3(view[:, kin])
        if self.cfg.fold:
            a, bias = ridge_lstsq(features, target, self.cfg.ridge, prior=prior)
        else:
            a, bias = prior.float(), prior_bias.float()
        pred = features.double() @ a.double() + bias.double()
        err = float((pred - target.double()).norm() / target.double().norm().clamp_min(1e-12))
        weight = a.T.to(stream)
        sc = sb.conv_shortcut
        if isinstance(sc, SeparableConv3d):
            fill_conv(sc.depthwise, torch.ones_like(sc.depthwise.weight), None)
            fill_conv(sc.pointwise, weight.reshape(sc.pointwise.weight.shape), bias)
        elif isinstance(sc, FrameConv2d):
            fill_conv(sc, weight.reshape(sc.weight.shape), bias)
        else:
            fill_conv(sc.conv, weight.reshape(sc.conv.weight.shape), bias)
        note = ("projection" if tb.reshapes else "identity") + "->layernorm+1x1"
        self.op_lines.append(
            LayerReport(f"{pair.student}.conv_shortcut", "operator", len(kout), len(kout), err, note)
        )

    def _upsample(self, pair: Pair, cur: _Site, out: _Site) -> None:
        tu: DepthToSpaceUp = self.teacher.get_submodule(pair.teacher)
        su: DepthToSpaceUp = self.student.get_submodule(pair.student)
        r = self.rows[f"{pair.teacher}.conv"]
        weight, bias = upsample_weight(tu)
        if not self.cfg.fold:
            fold = Fold.drop(r.inputs, cur.kept)
            w, b, err = *fold_into_weight(weight, bias, fold), fold.error
        elif r.exact:
            # the upsample reads the raw stream: the student's input is a column subset of the teacher's
            fold = fold_reconstruction(r.inputs, cur.kept, self.cfg.ridge)
            w, b, err = *fold_into_weight(weight, bias, fold), fold.error
        else:  # after dropped resnets: map what the student has to what the teacher's upsample reads
            imap = fit_input_map(r.view[:, cur.kept], r.inputs, self.cfg.ridge)
            w, b, err = *map_into_weight(weight, bias, imap), imap.error
        cur.errors.append(err)
        groups = math.prod(tu.stride)
        rows = (out.kept[:, None] * groups + torch.arange(groups)).flatten().to(w.device)
        fill_conv(su.conv.conv, w[rows], b[rows])

    def _conv_out(self) -> None:
        t = self.teacher.decoder.conv_out.conv
        w, b = self._norm_fed("decoder.conv_out", t.weight, t.bias, self.last, torch.arange(t.out_channels))
        fill_conv(self.student.decoder.conv_out.conv, w, b)

    # ---- the run -------------------------------------------------------------------------------

    def run(self, calib: torch.Tensor) -> PruneReport:
        cfg = self.cfg
        fit, held = split_calibration(calib, cfg.holdout)
        log.info("calibrating the LTX teacher on %d clips (%d sites)", fit.shape[0], len(self.sites))
        for name in self.dropped:
            log.warning("teacher resnet %s has no student counterpart in %s: dropped", name, self.spec.name)
        self.rows = self._calibrate_rows(fit)
        for site in self.sites:
            site.kept = self._select(site).cpu()
        requests = self._patch_requests()
        self.patches = self._calibrate_patches(fit, requests) if requests else {}
        self._conv_in()
        for pair, sites in self.units:
            if pair.kind == "up":
                self._upsample(pair, *sites)
            else:
                self._resnet(pair, *sites)
        self._conv_out()
        psnr = None
        if held is not None:
            psnr = psnr_db(
                decode_clips(self.student, held, cfg.batch), decode_clips(self.teacher, held, cfg.batch)
            )
        return build_report(
            type(self.teacher).__name__,
            self.spec.name,
            cfg,
            self.sites,
            self.op_lines,
            psnr,
            self.teacher,
            self.student,
        )


def _causal_prior(weight: torch.Tensor) -> torch.Tensor:
    """A centred 3-tap time kernel (t-1, t, t+1) as the causal one (t-2, t-1, t) the student's depthwise
    convs run: the future tap can only go to the current frame (exact where the video is static)."""
    causal = torch.zeros_like(weight)
    causal[:, :, 1] = weight[:, :, 0]
    causal[:, :, 2] = weight[:, :, 1] + weight[:, :, 2]
    return causal


@torch.no_grad()
def build_ltx_student(
    teacher_decoder: FlashDecoder | LTXTeacherDecoder,
    target_spec: LTXStudentSpec,
    calib_latents: torch.Tensor,
    config: PruneConfig | None = None,
) -> tuple[FlashDecoder, PruneReport]:
    """A new LTX student of `target_spec` whose weights all come from the teacher (select, fit, replace).

    calib_latents: (N, 128, T, H, W) RAW latents (un-normalized: `FlashDecoder.latent_norm.to_raw` of
    ComfyUI's LATENT; random latents work for tests). The last `config.holdout` clips only measure the
    report's PSNR. The teacher is not modified. Returns the student (role "student", the teacher's
    latent_norm) and the report.
    """
    config = dataclasses.replace(config or PruneConfig(), target=target_spec)
    is_flash = isinstance(teacher_decoder, FlashDecoder)
    teacher = teacher_decoder.module if is_flash else teacher_decoder
    pruner = _LTXPruner(teacher, config)
    report = pruner.run(calib_latents)
    origin = teacher_decoder.layout if is_flash else type(teacher).__name__
    info = {"parameters": report.student_parameters, "pruned_from": origin}
    norm = teacher_decoder.latent_norm if is_flash else None
    student = FlashDecoder(
        teacher.family, "student", pruner.student, norm, f"flash-vaed:{target_spec.name}", info
    )
    return student, report
