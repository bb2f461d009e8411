"""Pruning a teacher into a student: each pure step alone (select, fold, operator inits, surgery), then
whole decoders (identity pruning is exact, the student streams, saves and reloads, prune_ = build).

The teacher is the tiny all-FULL_3D Wan decoder with seeded random weights made redundant on purpose
(`make_redundant_`: half the channels of every space are noisy copies), since on plain random weights
all activations are full rank and no selection rule can matter.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flash_vaed import DecoderSpec, Family, FlashDecoder, Op, load_decoder, save_student
from flash_vaed.arch.layers import CausalConv3d, CausalSeparableConv3d
from flash_vaed.arch.ltx_student import LTXStudentSpec
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.engine.state import DecodeState, LayerState
from flash_vaed.presets import PRESETS, format_spec, parse_spec, resolve_spec, tiny_half
from flash_vaed.prune import (
    Fold,
    PruneConfig,
    build_student_from_teacher,
    collect_inputs,
    collect_patches,
    filter_l1,
    fold_into_weight,
    fold_reconstruction,
    init_depthwise,
    init_frame2d,
    prune_,
    refit_norm_gamma,
    replace_conv,
    select_by_magnitude,
    select_channels,
    select_random,
)
from flash_vaed.prune.calibrate import PatchRequest
from flash_vaed.prune.surgery import causal_conv, frame_conv, separable_conv
from flash_vaed.prune.synthetic import make_redundant_

TEACHER = DecoderSpec.tiny(Family.WAN21, Op.FULL_3D, Op.FULL_3D)
# tiny_half with the teacher's operators: pruning alone, no operator replacement
HALF_FULL = parse_spec(
    "mid=8:full3d/8:full3d:1:4/4:full3d:1:4/4:full3d:1:4/4:full3d:1", name="tiny-half-full"
)
FAST = PruneConfig(rows=256, patch_rows=256)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.fixture(scope="module")
def teacher() -> WanFamilyDecoder:
    torch.manual_seed(0)
    dec = WanFamilyDecoder(TEACHER).eval().requires_grad_(False)
    make_redundant_(dec, originals=0.5, noise=0.05, seed=0)
    return dec


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    """Four clips (three to fit, one held out): 2 latent frames of 2x2 -> 5 frames of 16x16."""
    return torch.randn(4, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def captured(teacher, latents) -> dict[str, torch.Tensor]:
    """Whole inputs of a few teacher convs on the first clip (one decode)."""
    names = [
        "decoder.middle.0.residual.6",
        "decoder.upsamples.0.residual.2",
        "decoder.upsamples.4.residual.6",
    ]
    got: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            got[name] = args[0].clone()

        return hook

    hooks = [teacher.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            teacher(latents[:1], DecodeState(teacher))
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.fixture(scope="module")
def pruned(teacher, latents) -> tuple[FlashDecoder, object]:
    """tiny-half (DW deep, 2D shallow, half width) pruned from the teacher."""
    return build_student_from_teacher(teacher, tiny_half(), latents, FAST)


# ---- select ---------------------------------------------------------------------------------------


def _redundant_matrix(rows: int = 400, originals: int = 6, channels: int = 12, noise: float = 0.01):
    """Activations whose channels 6..11 are near-copies of channels 0..5, and L1 scores that (like the
    filters of a redundant layer) rate copies as highly as originals."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(rows, originals, generator=gen) * torch.linspace(1, 3, originals)
    src = torch.arange(channels) % originals
    acts = base[:, src] + noise * torch.randn(rows, channels, generator=gen)
    return acts, acts.abs().mean(dim=0)


def test_select_channels_keeps_one_of_each_copy():
    acts, _ = _redundant_matrix()
    kept = select_channels(acts, 6)
    assert sorted((kept % 6).tolist()) == list(range(6))
    assert fold_reconstruction(acts, kept).error < 0.01


def test_independence_beats_magnitude_and_random_on_the_same_fold():
    acts, scores = _redundant_matrix()
    errors = {
        "qr": fold_reconstruction(acts, select_channels(acts, 6)).error,
        "l1": fold_reconstruction(acts, select_by_magnitude(scores, 6)).error,
        # a lucky draw can pick one of each pair too: compare with the average draw
        "random": sum(
            fold_reconstruction(acts, select_random(12, 6, torch.Generator().manual_seed(s))).error
            for s in range(10)
        )
        / 10,
    }
    assert errors["qr"] < 0.2 * min(errors["l1"], errors["random"]), errors


@pytest.mark.parametrize(
    "consumer,producer",
    [
        ("decoder.middle.0.residual.6", "decoder.middle.0.residual.2"),
        ("decoder.upsamples.0.residual.6", "decoder.upsamples.0.residual.2"),
        ("decoder.upsamples.1.resample.1", "decoder.upsamples.0.residual.6"),
    ],
)
def test_independence_beats_l1_and_random_on_teacher_layers(teacher, latents, consumer, producer):
    acts = collect_inputs(teacher, latents[:2], [consumer], rows=512)[consumer]
    c = acts.shape[1]
    k = c // 2
    err = {
        "qr": fold_reconstruction(acts, select_channels(acts, k)).error,
        "l1": fold_reconstruction(
            acts, select_by_magnitude(filter_l1(teacher.get_submodule(producer).weight), k)
        ).error,
        "random": sum(
            fold_reconstruction(acts, select_random(c, k, torch.Generator().manual_seed(s))).error
            for s in range(10)
        )
        / 10,
    }
    assert err["qr"] < 0.5 * err["l1"] and err["qr"] < 0.5 * err["random"], err


def test_select_validates_k():
    with pytest.raises(ValueError, match="keep"):
        select_channels(torch.randn(10, 4), 5)


# ---- fold ------------------------------------------------------------------------------------------


def test_fold_is_exact_for_affine_redundancy():
    gen = torch.Generator().manual_seed(0)
    kept_acts = torch.randn(300, 3, generator=gen)
    dropped = kept_acts @ torch.randn(3, 2, generator=gen) + torch.tensor([0.5, -1.0])
    acts = torch.cat([kept_acts, dropped], dim=1)
    fold = fold_reconstruction(acts, torch.tensor([0, 1, 2]), ridge=1e-9)
    assert fold.error < 1e-5
    # a 1x1 conv on the folded weights equals the teacher's on all five channels
    w, b = torch.randn(4, 5, 1, 1, generator=gen), torch.randn(4, generator=gen)
    wf, bf = fold_into_weight(w, b, fold)
    torch.testing.assert_close(
        kept_acts @ wf[:, :, 0, 0].T + bf, acts @ w[:, :, 0, 0].T + b, atol=1e-4, rtol=0
    )


def test_fold_lowers_conv_output_error_vs_dropping(teacher, latents, captured):
    name = "decoder.middle.0.residual.6"
    conv = teacher.get_submodule(name)
    x = captured[name]
    acts = collect_inputs(teacher, latents[:3], [name], rows=512)[name]
    kept = select_channels(acts, 8)
    want = conv(x, LayerState("t"))
    errors = {}
    for label, fold in [("fold", fold_reconstruction(acts, kept)), ("drop", Fold.drop(acts, kept))]:
        w, b = fold_into_weight(conv.weight, conv.bias, fold)
        errors[label] = _rel(causal_conv(w, b)(x[:, kept], LayerState("s")), want)
    assert errors["fold"] < 0.5 * errors["drop"], errors


def test_refit_gamma_matches_the_teacher_norm_better():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=gen) * torch.linspace(0.2, 2, 8)
    gamma = torch.rand(8, generator=gen) + 0.5
    kept = torch.tensor([1, 3, 4, 7])
    teacher = (F.normalize(x, dim=1) * 8**0.5 * gamma)[:, kept]
    unit = F.normalize(x[:, kept], dim=1) * 4**0.5
    refit = refit_norm_gamma(x, gamma, kept)
    assert _rel(unit * refit, teacher) < _rel(unit * gamma[kept], teacher)
    torch.testing.assert_close(refit_norm_gamma(x, gamma, torch.arange(8)), gamma)


# ---- operator replacement ----------------------------------------------------------------------------


def _patches(teacher, latents, name):
    c_in = teacher.get_submodule(name).in_channels
    c_out = teacher.get_submodule(name).out_channels
    req = {name: PatchRequest(torch.arange(c_in), torch.arange(c_out))}
    return collect_patches(teacher, latents[:3], req, rows=512)[name]


def test_depthwise_init_beats_random_init(teacher, latents, captured):
    name = "decoder.upsamples.0.residual.2"
    conv = teacher.get_submodule(name)
    x = captured[name]
    want = conv(x, LayerState("t"))
    init = init_depthwise(conv.weight, conv.bias, *_patches(teacher, latents, name))
    ours = _rel(separable_conv(init)(x, LayerState("s")), want)
    torch.manual_seed(0)
    random = _rel(CausalSeparableConv3d(conv.in_channels, conv.out_channels)(x, LayerState("r")), want)
    assert ours < 0.9 and ours < 0.5 * random, (ours, random)


def test_frame2d_init_beats_random_init_and_the_sliced_kernel(teacher, latents, captured):
    name = "decoder.upsamples.4.residual.6"
    conv = teacher.get_submodule(name)
    x = captured[name]
    want = conv(x, LayerState("t"))
    frames = x.transpose(1, 2).flatten(0, 1)  # (T, C, H, W), batch 1

    def err(layer: nn.Conv2d) -> float:
        return _rel(layer(frames).unflatten(0, (1, -1)).transpose(1, 2), want)

    w2, b2, fit_err = init_frame2d(conv.weight, conv.bias, *_patches(teacher, latents, name))
    ours = err(frame_conv(w2, b2))
    torch.manual_seed(0)
    random = err(nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1))
    current_frame_only = err(frame_conv(conv.weight[:, :, -1], conv.bias))
    assert ours < 0.5 * random and ours <= current_frame_only + 1e-6, (ours, random, current_frame_only)
    assert 0 <= fit_err < 1


def test_replace_conv_swaps_list_entries_and_attributes(teacher):
    dec = copy.deepcopy(teacher)
    block, conv1 = dec.decoder.upsamples[1], dec.decoder.conv1
    new_block, new_conv = nn.Identity(), CausalConv3d(16, 16)
    assert replace_conv(dec, "decoder.upsamples.1", new_block) is block
    assert replace_conv(dec, "decoder.conv1", new_conv) is conv1
    assert dec.decoder.upsamples[1] is new_block and dec.decoder.conv1 is new_conv
    with pytest.raises(AttributeError):
        replace_conv(dec, "decoder.nothing", new_conv)


# ---- whole decoders ------------------------------------------------------------------------------------


def test_pruning_into_the_teachers_own_layout_is_exact(teacher, latents):
    student, report = build_student_from_teacher(teacher, TEACHER, latents, FAST)
    z = latents[-1:]
    with torch.no_grad():
        want = teacher(z, DecodeState(teacher))
        got = student.module(z, DecodeState(student.module))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert report.psnr_db > 90 and report.channel_error() == 0


def test_pruned_student_is_a_streaming_wan_decoder(pruned, latents):
    student, report = pruned
    assert isinstance(student.module, WanFamilyDecoder) and student.role == "student"
    assert student.module.spec == tiny_half()
    assert report.student_parameters < report.teacher_parameters
    z = torch.randn(1, 16, 4, 2, 3, generator=torch.Generator().manual_seed(5))
    whole = student.decode(z)
    assert whole.shape == (1, 3, 13, 16, 24)
    torch.testing.assert_close(student.decode(z, chunk_frames=1), whole, atol=1e-5, rtol=0)


def test_pruned_student_saves_and_reloads(pruned, tmp_path):
    student, _ = pruned
    path = save_student(student, tmp_path / "tiny_half.safetensors")
    again = load_decoder(path)
    assert again.role == "student" and again.module.spec == student.module.spec
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(again.decode(z), student.decode(z), atol=0, rtol=0)


def test_report_lists_sites_and_replaced_operators(pruned):
    _, report = pruned
    md = report.to_markdown()
    assert "| `decoder.middle.0.mid` | channels | 8/16 |" in md
    assert "full3d->dw3d" in md and "full3d->frame2d" in md
    assert report.psnr_db is not None and report.psnr_db > 5
    kept = {r.name: r.kept for r in report.layers if r.kind == "channels"}
    assert len(kept["decoder.conv1"]) == 8


def test_prune_in_place_equals_build(teacher, latents, pruned):
    student, _ = pruned
    dec = FlashDecoder(Family.WAN21, "teacher", copy.deepcopy(teacher), layout="test")
    module = dec.module
    report = prune_(dec, PruneConfig(target=tiny_half(), rows=FAST.rows, patch_rows=FAST.patch_rows), latents)
    assert dec.module is module and module.spec == tiny_half() and dec.role == "student"
    assert module.state_dict().keys() == student.module.state_dict().keys()
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, student.module.state_dict()[k], atol=0, rtol=0)
    assert report.psnr_db == pytest.approx(pruned[1].psnr_db)


def test_incompatible_targets_are_refused(teacher, latents):
    wider = parse_spec("mid=32:full3d/16:full3d:1/8:full3d:1/8:full3d:1:8/8:full3d:1")
    with pytest.raises(ValueError, match="exceeds"):
        build_student_from_teacher(teacher, wider, latents, FAST)
    three_blocks = parse_spec("8:dw3d:3/4:dw3d:1/4:frame2d:1/4:frame2d:1")
    with pytest.raises(ValueError, match="blocks"):
        build_student_from_teacher(teacher, three_blocks, latents, FAST)
    with pytest.raises(NotImplementedError, match="FULL_3D"):
        build_student_from_teacher(WanFamilyDecoder(tiny_half()), tiny_half(), latents, FAST)
    with pytest.raises(ValueError, match="selection"):
        PruneConfig(selection="magic")


@pytest.mark.slow
def test_independence_and_fold_give_the_best_untrained_student(teacher, latents):
    """Whole-decoder PSNR (held-out clip) at the same widths: qr+fold > l1+fold, random+fold, qr alone."""
    psnr = {}
    for sel, fold in [("qr", True), ("l1", True), ("random", True), ("qr", False)]:
        cfg = PruneConfig(selection=sel, fold=fold, rows=256, patch_rows=256)
        psnr[(sel, fold)] = build_student_from_teacher(teacher, HALF_FULL, latents, cfg)[1].psnr_db
    best = psnr[("qr", True)]
    assert all(best > v + 3 for k, v in psnr.items() if k != ("qr", True)), psnr


# ---- presets ---------------------------------------------------------------------------------------


def test_presets_resolve():
    assert resolve_spec("wan21-official") == DecoderSpec.flashvaed_wan21()
    assert resolve_spec("ltx-official") == LTXStudentSpec.official()
    assert resolve_spec("tiny") == DecoderSpec.tiny()
    wide, narrow = resolve_spec("wan21-wide"), resolve_spec("wan21-narrow")
    assert [s.width for s in wide.stages] == [384, 384, 48, 24]
    assert narrow.middle_width == 192 and narrow.stages[-1].width == 12
    assert {"wan21-official", "wan21-wide", "wan21-narrow", "tiny", "ltx-official"} <= PRESETS.keys()
    with pytest.raises(KeyError, match="unknown preset"):
        resolve_spec("wan99")


def test_custom_spec_strings():
    official = parse_spec("384:dw3d:3/384:dw3d:3/24:frame2d:3/12:frame2d:3", name="flashvaed-wan21-official")
    assert official == DecoderSpec.flashvaed_wan21()
    teacher = DecoderSpec.wan21_teacher()
    assert parse_spec(format_spec(teacher), name=teacher.name) == teacher
    assert parse_spec("16:full3d:1/8:frame2d:1", family=Family.WAN22).out_patch == 2
    for bad in ["", "384:conv:3", "384:dw3d:3/12:frame2d:3:6", "mid=3/8:dw3d", "x:dw3d"]:
        with pytest.raises(ValueError):
            parse_spec(bad)


@pytest.mark.slow
def test_sequential_refit_builds_a_valid_student(teacher, latents):
    cfg = PruneConfig(rows=256, patch_rows=256, sequential=True)
    student, report = build_student_from_teacher(teacher, tiny_half(), latents[:2], cfg)
    z = latents[-1:]
    torch.testing.assert_close(student.decode(z, chunk_frames=1), student.decode(z), atol=1e-5, rtol=0)
    assert report.psnr_db > 5
