"""Pruning an LTX-Video teacher into an `LTXStudentSpec` student (flash_vaed/prune/ltx.py).

Teachers are reduced ComfyUI LTX decoders with seeded random weights: the 0.9.0 block kinds (the layout
the official student was cut from) at base width 8 (32/32/16/8 channels, one resnet per stack), and a
0.9.1-style one (timestep-conditioned, injected noise, residual upsamples). For the selection comparison
the 0.9.0 teacher is made redundant on purpose, as tests/test_prune.py does for Wan: on plain random
weights all activations are full rank and no selection rule can matter.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from flash_vaed import DecoderSpec, Family, FlashDecoder, Op, load_decoder, save_student
from flash_vaed.arch.ltx import DepthToSpaceUp, LTXTeacherDecoder, depth_to_space, pad_time
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec, StudentStage
from flash_vaed.distill.student import init_student
from flash_vaed.latents import LatentNorm
from flash_vaed.prune import PruneConfig, build_student_from_teacher, psnr_db
from flash_vaed.prune.calibrate import decode_clips
from flash_vaed.prune.ltx import pair_layouts, upsample_weight
from flash_vaed.prune.synthetic import make_redundant_

V0_BLOCKS = [
    ["res_x", 1],
    ["compress_all", 1],
    ["res_x_y", 1],
    ["res_x", 1],
    ["compress_all", 1],
    ["res_x_y", 1],
    ["res_x", 1],
    ["compress_all", 1],
    ["res_x", 1],
]
# three resnets where the student has one: the first stack after the first upsample (lists are deep-last)
DEEP_BLOCKS = [*V0_BLOCKS[:6], ["res_x", 3], *V0_BLOCKS[7:]]
FAST = PruneConfig(rows=512, patch_rows=512)
TINY = LTXStudentSpec.tiny()
# the 0.9.0 teacher's layout and operators at half its widths: pruning alone, no operator replacement
HALF_FULL = LTXStudentSpec(
    16,
    1,
    Op.FULL_3D,
    (StudentStage(16, 1, Op.FULL_3D), StudentStage(8, 1, Op.FULL_3D), StudentStage(4, 1, Op.FULL_3D)),
    name="ltx-half-full",
)


def _config(blocks: list, conditioned: bool) -> dict:
    return {
        "dims": 3,
        "norm_layer": "pixel_norm",
        "latent_channels": 128,
        "patch_size": 4,
        "decoder_blocks": blocks,
        "timestep_conditioning": conditioned,
        "spatial_padding_mode": "zeros",
    }


def v0_teacher(blocks: list = V0_BLOCKS) -> LTXTeacherDecoder:
    torch.manual_seed(0)
    return LTXTeacherDecoder.from_comfy_config(_config(blocks, False), base_channels=8).eval()


def v1_teacher() -> LTXTeacherDecoder:
    """0.9.1 block kinds, with segment lengths the tiny student can take (1, 2, 2, 1 resnets)."""
    res = [["res_x", {"num_layers": n, "inject_noise": True}] for n in (1, 2, 2, 1)]
    up = ["compress_all", {"residual": True, "multiplier": 2}]
    torch.manual_seed(0)
    teacher = LTXTeacherDecoder.from_comfy_config(
        _config([res[0], up, res[1], up, res[2], up, res[3]], True), base_channels=8
    ).eval()
    with torch.no_grad():  # the files' modulation and noise scales are not zero; a fresh module's are
        for name, p in teacher.named_parameters():
            if "scale_shift_table" in name or "per_channel_scale" in name:
                p.normal_(0, 0.3)
    return teacher


@torch.no_grad()
def make_ltx_redundant_(teacher: LTXTeacherDecoder, noise: float = 0.05, seed: int = 0) -> None:
    """`make_redundant_` for an LTX decoder: its copy maps for every conv, and for each upsample conv the
    same map applied to whole depth-to-space groups (rows c*8 .. c*8+7 are output channel c)."""
    ups = [n for n, m in teacher.named_modules() if isinstance(m, DepthToSpaceUp)]
    skip = ("decoder.conv_out.conv", *(f"{n}.conv.conv" for n in ups))
    maps = make_redundant_(teacher, originals=0.5, noise=noise, seed=seed, skip=skip)
    gen = torch.Generator().manual_seed(seed + 1)
    for name in ups:
        conv = teacher.get_submodule(name).conv.conv
        rows = (maps[conv.out_channels // 8][:, None] * 8 + torch.arange(8)).flatten()
        for p in (conv.weight, conv.bias):
            p.copy_(p[rows] + torch.randn(p.shape, generator=gen) * noise * float(p.std()))


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    """Four raw latent clips (three to fit, one held out): 2 frames of 2x2 -> 9 frames of 64x64."""
    return torch.randn(4, 128, 2, 2, 2, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def teacher() -> LTXTeacherDecoder:
    return v0_teacher()


@pytest.fixture(scope="module")
def redundant() -> LTXTeacherDecoder:
    dec = v0_teacher()
    make_ltx_redundant_(dec)
    return dec


def _random_student_psnr(spec: LTXStudentSpec, teacher: LTXTeacherDecoder, z: torch.Tensor) -> float:
    """The best of three seeded random inits: the baseline a pruned init has to beat."""
    target = decode_clips(teacher, z)
    best = -float("inf")
    for seed in range(3):
        torch.manual_seed(seed)
        best = max(best, psnr_db(decode_clips(LTXStudentDecoder(spec).eval(), z), target))
    return best


# ---- pieces -----------------------------------------------------------------------------------------


def test_layouts_pair_by_upsample_segments(teacher):
    pairs, dropped = pair_layouts(teacher, LTXStudentDecoder(TINY))
    assert dropped == []
    assert [(p.kind, p.teacher, p.student) for p in pairs[:4]] == [
        ("res", "decoder.up_blocks.0.res_blocks.0", "decoder.mid_block.resnets.0"),
        ("up", "decoder.up_blocks.1", "decoder.up_blocks.0.upsamplers.0"),
        ("res", "decoder.up_blocks.2.res_blocks.0", "decoder.up_blocks.0.resnets.0"),
        ("res", "decoder.up_blocks.3", "decoder.up_blocks.1.conv_in"),  # res_x_y -> the width change
    ]
    # a deeper teacher: the student takes the width-changing resnet and the first others of a segment
    deep = v0_teacher(DEEP_BLOCKS)
    pairs, dropped = pair_layouts(deep, LTXStudentDecoder(TINY))
    assert dropped == ["decoder.up_blocks.2.res_blocks.1", "decoder.up_blocks.2.res_blocks.2"]
    assert ("decoder.up_blocks.2.res_blocks.0", "decoder.up_blocks.0.resnets.0") in [
        (p.teacher, p.student) for p in pairs
    ]


def test_upsample_residual_folds_into_the_centre_tap():
    up = v1_teacher().decoder.up_blocks[1]
    assert up.residual
    x = torch.randn(1, up.conv.conv.in_channels, 3, 3, 4)
    weight, bias = upsample_weight(up)
    folded = depth_to_space(
        F.conv3d(pad_time(x, 3, causal=False), weight, bias, padding=(0, 1, 1)), up.stride
    )
    with torch.no_grad():
        torch.testing.assert_close(folded, up(x), rtol=0, atol=1e-5)


def test_identity_pruning_is_exact(teacher, latents):
    """A student with the teacher's widths and operators (and zero padding, as this teacher) decodes
    the same video: pairing, folds and the projection shortcut fit lose nothing."""
    full = LTXStudentSpec(
        32,
        1,
        Op.FULL_3D,
        (StudentStage(32, 1, Op.FULL_3D), StudentStage(16, 1, Op.FULL_3D), StudentStage(8, 1, Op.FULL_3D)),
        name="ltx-full",
    )
    student, report = build_student_from_teacher(teacher, full, latents, FAST)
    z = latents[-1:]
    torch.testing.assert_close(decode_clips(student.module, z), decode_clips(teacher, z), rtol=0, atol=1e-4)
    assert report.channel_error() == 0


def test_mismatched_layouts_are_refused(teacher, latents):
    wide_stages = (StudentStage(64, 1, Op.DEPTHWISE_3D), *TINY.stages[1:])
    wider = LTXStudentSpec(64, 1, Op.FULL_3D, wide_stages, name="wide")
    more = LTXStudentSpec(16, 2, Op.DEPTHWISE_3D, TINY.stages, name="two-mid-resnets")
    fewer_ups = LTXStudentSpec(16, 1, Op.DEPTHWISE_3D, TINY.stages[:2], name="two-ups")
    for spec, message in [(wider, "more than the teacher"), (more, "resnets"), (fewer_ups, "upsamples")]:
        with pytest.raises(ValueError, match=message):
            build_student_from_teacher(teacher, spec, latents, FAST)
    with pytest.raises(TypeError, match="LTXStudentSpec"):
        build_student_from_teacher(teacher, DecoderSpec.tiny(), latents, FAST)
    with pytest.raises(NotImplementedError, match="sequential"):
        build_student_from_teacher(teacher, TINY, latents, PruneConfig(sequential=True))


# ---- whole decoders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, margin_db", [("ltx-0.9.0", 2.0), ("ltx-0.9.1", 1.0)])
def test_pruned_init_is_closer_to_the_teacher_than_random_init(kind, margin_db, latents):
    """Held-out PSNR of the untrained tiny student (depthwise, full 3D and per-frame 2D stages, half to a
    quarter of the widths) against the best of three random inits. Measured: 16.7 vs 13.5 dB (0.9.0),
    13.1 vs 11.4 dB (0.9.1, whose AdaLN the student cannot represent)."""
    teacher = v0_teacher() if kind == "ltx-0.9.0" else v1_teacher()
    student, report = build_student_from_teacher(teacher, TINY, latents, FAST)
    assert student.role == "student" and student.family is Family.LTXV
    assert report.psnr_db > _random_student_psnr(TINY, teacher, latents[-1:]) + margin_db, (
        report.to_markdown()
    )
    ops = {r.name: r.note for r in report.layers if r.kind == "operator"}
    assert ops["decoder.mid_block.resnets.0.conv1"] == "full3d->dw3d"
    assert ops["decoder.up_blocks.2.resnets.0.conv1"] == "full3d->frame2d"
    assert all(r.error < 1 for r in report.layers), report.to_markdown()


def test_dropped_teacher_resnets_still_give_a_useful_student(latents, caplog):
    deep = v0_teacher(DEEP_BLOCKS)
    with caplog.at_level(logging.WARNING, logger="flash_vaed"):
        _, report = build_student_from_teacher(deep, TINY, latents, FAST)
    assert "decoder.up_blocks.2.res_blocks.1" in caplog.text and "dropped" in caplog.text
    # measured 14.0 vs 12.4 dB
    assert report.psnr_db > _random_student_psnr(TINY, deep, latents[-1:]) + 1.0


def test_independence_and_fold_beat_magnitude_and_random_selection(redundant, latents):
    """Same widths (half the teacher's everywhere), same operators: only the kept channels and the fold
    differ. Held-out whole-decoder PSNR and the mean channel reconstruction error. Measured: qr+fold 23.8 dB
    (error 0.09), l1+fold 18.5 (0.51), random+fold 16.6 (0.38), qr without the fold 16.8 (0.67)."""
    results = {}
    for selection, fold in [("qr", True), ("l1", True), ("random", True), ("qr", False)]:
        cfg = PruneConfig(selection=selection, fold=fold, rows=512, patch_rows=512)
        report = build_student_from_teacher(redundant, HALF_FULL, latents, cfg)[1]
        results[(selection, fold)] = (report.psnr_db, report.channel_error())
    best_psnr, best_error = results.pop(("qr", True))
    assert all(best_psnr > psnr + 3 for psnr, _ in results.values()), results
    assert all(best_error < error / 2 for _, error in results.values()), results


def test_init_student_auto_prunes_an_ltx_teacher(teacher, latents, caplog):
    """The distillation hook: "auto" prunes (no fallback warning) from ComfyUI-space latents, and the
    student keeps the teacher's latent statistics."""
    gen = torch.Generator().manual_seed(3)
    norm = LatentNorm(0.1 * torch.randn(128, generator=gen), 1 + 0.2 * torch.rand(128, generator=gen))
    flash = FlashDecoder(Family.LTXV, "teacher", teacher, norm, "tiny-ltx-teacher")
    comfy = norm.to_comfy(latents)
    with caplog.at_level(logging.WARNING):
        student, how = init_student("auto", flash, TINY, comfy, seed=0)
    assert how == "prune"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert student.latent_norm is norm and student.info["pruned_from"] == "tiny-ltx-teacher"
    z = latents[-1:]
    with torch.no_grad():
        video = decode_clips(student.module, student.latent_norm.to_raw(comfy[-1:]))
    assert psnr_db(video, decode_clips(teacher, z)) > _random_student_psnr(TINY, teacher, z) + 2.0


def test_pruned_student_saves_and_reloads(teacher, latents, tmp_path):
    student, _ = build_student_from_teacher(teacher, TINY, latents, FAST)
    path = save_student(student, tmp_path / "ltx_pruned.safetensors")
    loaded = load_decoder(path)
    assert loaded.family is Family.LTXV and loaded.role == "student"
    assert loaded.module.spec == TINY
    z = latents[-1:]
    assert torch.equal(decode_clips(loaded.module, z), decode_clips(student.module, z))


def test_teacher_is_left_unchanged(teacher, latents):
    before = copy.deepcopy(teacher.state_dict())
    build_student_from_teacher(teacher, TINY, latents, FAST)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
