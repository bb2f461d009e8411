"""LTX-2 students: the recipe layout (`presets.ltx2_recipe`), pruned from LTX-2 teachers, saved and loaded as
LTX-2, their cost against the teacher's, and `auto` in the distillation (the CLI trains one end to end)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flash_vaed import Family, FlashDecoder, Op, load_decoder, save_student
from flash_vaed.arch.ltx2 import LTX2TeacherDecoder
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec, StudentStage
from flash_vaed.cost import decoder_cost
from flash_vaed.distill.config import DistillError
from flash_vaed.distill.student import resolve_spec
from flash_vaed.presets import PRESETS, ltx2_recipe
from flash_vaed.presets import resolve_spec as preset_spec
from flash_vaed.prune import PruneConfig, build_student_from_teacher
from flash_vaed.prune.calibrate import decode_clips
from flash_vaed.prune.ltx import pair_layouts
from support.reference_weights import generate, load_manifest
from support.tiny_models import TINY_LTX2_CONFIG, write_ltx2_vae

REAL = {"ltx2_comfy": "ltx20-recipe", "ltx23_comfy": "ltx2-recipe"}


def meta_teacher(name: str) -> LTX2TeacherDecoder:
    with torch.device("meta"):
        return LTX2TeacherDecoder.from_comfy_config(load_manifest(name)["comfy_config"])


def tiny_teacher(config: dict, seed: int = 0) -> LTX2TeacherDecoder:
    module = LTX2TeacherDecoder.from_comfy_config(config).eval().requires_grad_(False)
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(generate(shapes, seed=seed))
    return module


# an LTX-2.0-like layout (residual compress_all x2 everywhere), zero padded so that a copy can be exact
TINY_20 = {
    "latent_channels": 128,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "decoder_base_channels": 16,
    "spatial_padding_mode": "zeros",
    "decoder_blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 2}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 2}],
    ],
}
TINY = {"ltx23-like": TINY_LTX2_CONFIG, "ltx20-like": TINY_20}


def raw_latents(n: int = 3, t: int = 2, hw: int = 2) -> torch.Tensor:
    return torch.randn(n, 128, t, hw, hw, generator=torch.Generator().manual_seed(11))


# ---- the layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REAL))
def test_recipe_follows_the_real_teachers(name):
    """Deep segments at full width depthwise 3D; half resolution a quarter, full 3D; full resolution a
    quarter, per-frame 2D; the teacher's resnets per segment and upsamples, so every module pairs."""
    teacher = meta_teacher(name)
    spec = ltx2_recipe(teacher)
    assert spec.name == REAL[name] and spec.family is Family.LTX2 and spec == PRESETS[REAL[name]]()
    assert spec.mid_width == 1024 and spec.mid_op is Op.DEPTHWISE_3D
    ops = [s.op for s in spec.stages]
    assert ops[0] is Op.DEPTHWISE_3D and ops[-1] is Op.FRAME_2D and Op.FULL_3D in ops
    assert [s.width for s in spec.stages][-2:] == [64, 32]  # the official LTX student's 25% shallow widths
    with torch.device("meta"):
        student = LTXStudentDecoder(spec)
    assert (student.time_stride, student.space_stride) == (teacher.time_stride, teacher.space_stride)
    pairs, dropped = pair_layouts(teacher, student)
    assert not dropped and len(pairs) == sum(s.layers + 1 for s in spec.stages) + spec.mid_layers
    cost, base = decoder_cost(student), decoder_cost(teacher)
    assert cost.flops_per_px < base.flops_per_px / 10 and cost.parameters < base.parameters / 2


def test_spec_json_keeps_the_family_and_the_upsamples_and_old_json_is_unchanged():
    spec = ltx2_recipe()
    assert LTXStudentSpec.from_json(spec.to_json()) == spec
    assert '"family": "ltx2"' in spec.to_json() and '"up_stride": [1, 2, 2]' in spec.to_json()
    official = LTXStudentSpec.official().to_json()
    assert "family" not in official and "up_stride" not in official and "up_narrows" not in official
    assert LTXStudentSpec.from_json(official) == LTXStudentSpec.official()


def test_bad_upsamples_are_refused():
    stage = StudentStage(8, 1, Op.FULL_3D)
    for bad, match in [
        (dataclasses.replace(stage, up_stride=(2, 1, 2)), "height and width"),
        (dataclasses.replace(stage, up_stride=(1, 1, 1)), "1s and 2s"),
        (dataclasses.replace(stage, width=6, up_narrows=True), "narrow 16"),
    ]:
        with pytest.raises(ValueError, match=match):
            LTXStudentSpec(16, 1, Op.DEPTHWISE_3D, (bad,))
    with pytest.raises(ValueError, match="LTX latents"):
        LTXStudentSpec(16, 1, Op.DEPTHWISE_3D, (stage,), family=Family.WAN21)


# ---- pruning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_pruned_student_starts_closer_to_the_teacher_than_random(name):
    """On random teachers the pruned init sits near the all-zero video (docs/pruning.md says why), but above
    every random init; `test_pruning_into_the_teachers_own_layout_is_exact` checks the walk itself."""
    teacher = tiny_teacher(TINY[name])
    spec = ltx2_recipe(teacher)
    z = raw_latents(6)
    student, report = build_student_from_teacher(teacher, spec, z, PruneConfig(holdout=1, rows=2048))
    assert student.family is Family.LTX2 and student.module.family is Family.LTX2
    assert report.psnr_db is not None and np.isfinite(report.psnr_db)
    held = z[-1:]
    target = decode_clips(teacher, held, 1)

    def psnr(module) -> float:
        err = (decode_clips(module, held, 1) - target).pow(2).mean()
        return float(10 * torch.log10(4 / err))

    randoms = []
    for seed in range(3):
        torch.manual_seed(seed)
        randoms.append(psnr(LTXStudentDecoder(spec).eval()))
    assert psnr(student.module) > max(randoms)


@pytest.mark.parametrize("name", list(TINY))
def test_pruning_into_the_teachers_own_layout_is_exact(name):
    """Full width, full 3D, the teacher's upsamples (residuals folded in): the student is the teacher."""
    teacher = tiny_teacher(TINY[name])
    recipe = ltx2_recipe(teacher)
    widths = [teacher.config.first_channels]
    for block in reversed(teacher.config.blocks):
        if block.kind != "res_x":
            widths.append(widths[-1] // block.multiplier)
    stages = tuple(
        dataclasses.replace(s, width=w, op=Op.FULL_3D, shortcut=False)
        for s, w in zip(recipe.stages, widths[1:], strict=True)
    )
    copy = dataclasses.replace(recipe, mid_op=Op.FULL_3D, stages=stages, name="copy")
    z = raw_latents()
    student, _ = build_student_from_teacher(teacher, copy, z, PruneConfig(holdout=0, rows=256))
    torch.testing.assert_close(
        decode_clips(student.module, z, 1), decode_clips(teacher, z, 1), rtol=0, atol=1e-4
    )


def test_an_ltx_video_09_layout_is_not_an_ltx2_student():
    teacher = tiny_teacher(TINY_LTX2_CONFIG)
    with pytest.raises(ValueError, match="another latent space"):
        build_student_from_teacher(teacher, LTXStudentSpec.tiny(), raw_latents(), PruneConfig(holdout=0))


def test_student_file_round_trip_keeps_the_family(tmp_path):
    teacher = tiny_teacher(TINY_LTX2_CONFIG)
    student, _ = build_student_from_teacher(
        teacher, ltx2_recipe(teacher), raw_latents(), PruneConfig(holdout=0)
    )
    path = save_student(student, tmp_path / "ltx2_student.safetensors")
    loaded = load_decoder(path)
    assert loaded.family is Family.LTX2 and loaded.module.spec == student.module.spec
    z = raw_latents(1)
    torch.testing.assert_close(loaded.decode(z), student.decode(z), rtol=0, atol=0)


# ---- distillation ---------------------------------------------------------------------------------


def test_auto_and_presets_for_ltx2_teachers():
    teacher = tiny_teacher(TINY_20)
    auto = resolve_spec("auto", Family.LTX2, teacher)
    assert auto == ltx2_recipe(teacher) and auto.name == "ltx2-recipe-derived"
    assert preset_spec("auto", Family.LTX2) == ltx2_recipe()  # no teacher: the LTX-2.3 layout
    assert resolve_spec("tiny", Family.LTX2).family is Family.LTX2
    assert resolve_spec("ltx20-recipe", Family.LTX2).name == "ltx20-recipe"
    with pytest.raises(DistillError, match="LTX-Video 0.9 latents; the teacher is LTX-2") as err:
        resolve_spec("ltx-official", Family.LTX2)
    assert "ltx2-recipe" in str(err.value)
    with pytest.raises(DistillError, match="LTX-2 latents; the teacher is LTX-Video 0.9"):
        resolve_spec("ltx2-recipe", Family.LTXV)


def write_clip(path: Path, frames: int = 9, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    images = [Image.fromarray(np.roll(base, 2 * t, axis=1)) for t in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0, lossless=True)
    return path


@pytest.mark.usefixtures("one_thread")
def test_cli_distils_an_ltx2_student_from_an_ltx2_vae_file(tmp_path, capfd):
    """training/distill.py on an LTX-2 VAE file (its encoder makes the latents): auto = the recipe for this
    teacher, pruned from it, saved as an LTX-2 student; the log gives its cost against the teacher's."""
    pytest.importorskip("matplotlib")
    from training.distill import main

    vae = write_ltx2_vae(tmp_path / "ltx2_vae.safetensors")
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(3):
        write_clip(clips / f"clip{i}.webp", seed=i)
    out = tmp_path / "run"
    argv = [
        *("--teacher", str(vae), "--data", str(clips), "--out", str(out), "--preset", "auto"),
        *("--steps", "2", "--clip-frames", "9", "--crop-px", "32", "--calib-batches", "1"),
        *("--eval-crops", "1", "--no-progress"),
    ]
    assert main(argv) == out
    log = capfd.readouterr().err
    student = load_decoder(out / "student.safetensors")
    assert student.family is Family.LTX2 and student.role == "student"
    assert student.module.spec == ltx2_recipe(load_decoder(vae).module)
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "auto"
    assert "(prune init)" in log and "fewer FLOPs" in log
    z = torch.randn(1, 128, 2, 1, 1)
    assert torch.isfinite(student.decode(z)).all()


def test_flash_decoder_of_an_ltx2_student_checks_latents_as_ltx():
    student = FlashDecoder(
        Family.LTX2, "student", LTXStudentDecoder(ltx2_recipe(tiny_teacher(TINY_20))), None
    )
    assert student.decode(raw_latents(1, 2, 1)).shape == (1, 3, 9, 32, 32)
