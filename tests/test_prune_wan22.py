"""Pruning a Wan 2.2 teacher (48 latent channels, stage shortcuts, 2x2 unpatchify head) into students.

Reduced-width Wan 2.2 decoders (`Wan22Decoder(dec_dim=8)`, the real layout at 1/32 of the width) with
seeded random weights, random raw latents as calibration.
"""

from __future__ import annotations

import pytest
import torch

from flash_vaed.arch.protocol import decode_raw
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.arch.wan22 import Wan22Decoder
from flash_vaed.checkpoint.load import load_decoder, save_student
from flash_vaed.engine.state import DecodeState
from flash_vaed.presets import format_spec, parse_spec, resolve_spec, wan22_recipe
from flash_vaed.prune import PruneConfig, build_student_from_teacher, prune_
from flash_vaed.prune.report import psnr_db
from flash_vaed.prune.wan import wan22_teacher_spec, wan22_teacher_view
from flash_vaed.spec import DecoderSpec, Family, Op, StageSpec

DIM = 8
FAST = PruneConfig(rows=512, patch_rows=256, holdout=1)


@pytest.fixture(scope="module")
def teacher() -> Wan22Decoder:
    torch.manual_seed(0)
    return Wan22Decoder(dec_dim=DIM).eval()


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(3, 48, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def _decode(module, z):
    with torch.no_grad():
        return module(z, DecodeState(module))


def _with_shortcuts(spec: DecoderSpec, kind: str) -> DecoderSpec:
    stages = tuple(
        StageSpec(s.width, s.op, s.blocks, s.up_out, s.up_time, kind if s.shortcut else None)
        for s in spec.stages
    )
    return DecoderSpec(
        spec.family, spec.middle_width, spec.middle_op, stages, out_patch=2, name=f"{spec.name}-{kind}"
    )


def test_the_teacher_view_shares_the_modules_and_decodes_identically(teacher, latents):
    view = wan22_teacher_view(teacher)
    assert {id(p) for p in view.parameters()} == {id(p) for p in teacher.parameters()}
    torch.testing.assert_close(_decode(view, latents), _decode(teacher, latents), rtol=0, atol=0)
    spec = wan22_teacher_spec(teacher)
    assert [s.shortcut for s in spec.stages] == ["dup", "dup", "dup", None]
    assert [s.up_time for s in spec.stages] == [True, True, False, False]
    assert spec.middle_width == 4 * DIM and spec.stages[-1].width == DIM


def test_a_spec_built_decoder_with_shortcuts_streams_exactly(teacher, latents):
    module = WanFamilyDecoder(wan22_recipe(DIM)).eval()
    whole = _decode(module, latents)
    state = DecodeState(module)
    with torch.no_grad():
        streamed = torch.cat(
            [module(latents[:, :, t : t + 1], state) for t in range(latents.shape[2])], dim=2
        )
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
    assert whole.shape == (3, 3, 9, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dup", "proj"])
def test_pruning_into_the_teacher_layout_is_exact(teacher, latents, kind):
    """All channels kept: "dup" keeps the teacher's spread, "proj" gets it as 0/1 weights; both exact."""
    spec = _with_shortcuts(wan22_teacher_spec(teacher), kind)
    student, report = build_student_from_teacher(teacher, spec, latents, FAST)
    torch.testing.assert_close(_decode(student.module, latents), _decode(teacher, latents), rtol=0, atol=1e-5)
    assert report.psnr_db == float("inf")


@pytest.mark.slow
def test_the_recipe_student_starts_closer_to_the_teacher_than_random_weights(teacher, latents):
    spec = wan22_recipe(DIM)
    student, report = build_student_from_teacher(teacher, spec, latents, FAST)
    torch.manual_seed(0)
    random = WanFamilyDecoder(spec).eval()
    held = latents[-1:]
    random_db = psnr_db(decode_raw(random, held), decode_raw(teacher, held))
    assert report.psnr_db > random_db + 2, (report.psnr_db, random_db)
    assert student.family is Family.WAN22 and student.role == "student"
    assert report.student_parameters < report.teacher_parameters / 5


@pytest.mark.slow
def test_a_pruned_wan22_student_saves_and_loads(teacher, latents, tmp_path):
    student, _ = build_student_from_teacher(teacher, wan22_recipe(DIM), latents, FAST)
    path = save_student(student, tmp_path / "wan22_student.safetensors")
    again = load_decoder(path)
    assert again.family is Family.WAN22 and again.module.spec == wan22_recipe(DIM)
    torch.testing.assert_close(
        _decode(again.module, latents), _decode(student.module, latents), rtol=0, atol=0
    )


def test_refusals_name_the_fix(teacher, latents):
    no_shortcuts = DecoderSpec(Family.WAN22, 4 * DIM, Op.DEPTHWISE_3D,
                               tuple(StageSpec(s.width, s.op, s.blocks, s.up_out, s.up_time) for s in wan22_recipe(DIM).stages),
                               out_patch=2)  # fmt: skip
    with pytest.raises(ValueError, match="stage shortcut needs one in the student"):
        build_student_from_teacher(teacher, no_shortcuts, latents, FAST)
    rec = wan22_recipe(DIM)
    pruned_dup = DecoderSpec(Family.WAN22, rec.middle_width, rec.middle_op,
                             (rec.stages[0], StageSpec(4 * DIM, Op.DEPTHWISE_3D, 3, DIM // 2, True, "dup"), *rec.stages[2:]),
                             out_patch=2)  # fmt: skip
    with pytest.raises(ValueError, match="use 'proj'"):
        build_student_from_teacher(teacher, pruned_dup, latents, FAST)
    with pytest.raises(TypeError, match="build_student_from_teacher"):
        prune_(teacher, PruneConfig(target=rec), latents)


def test_auto_is_the_recipe_for_wan22_and_the_layout_line_reads_back():
    spec = resolve_spec("auto", Family.WAN22)
    assert spec == wan22_recipe() and spec.name == "wan22-recipe"
    assert [s.op for s in spec.stages] == [Op.DEPTHWISE_3D, Op.DEPTHWISE_3D, Op.FRAME_2D, Op.FRAME_2D]
    assert (spec.middle_width, spec.stages[1].up_out, spec.stages[2].width, spec.stages[3].width) == (
        1024,
        128,
        64,
        32,
    )
    assert parse_spec(format_spec(spec), Family.WAN22, name=spec.name) == spec
    assert resolve_spec("wan22-recipe", Family.WAN22) == spec
    # Wan 2.1 keeps its released layout; old spec JSON (no shortcut key) is unchanged
    assert "shortcut" not in DecoderSpec.flashvaed_wan21().to_json()
    assert DecoderSpec.from_json(spec.to_json()) == spec
