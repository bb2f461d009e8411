"""The Flash-VAED LTX student: official layout, the official code's output reproduced, halo, tiny spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flash_vaed.arch.ltx import LTXTeacherDecoder
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec, StudentStage
from flash_vaed.spec import Op
from support.reference_weights import generate, load_manifest, manifest_shapes

OFFICIAL_REF = Path(__file__).resolve().parent / "data" / "official" / "ltx_student_ref.safetensors"


def official_weights() -> dict[str, torch.Tensor]:
    return generate(load_manifest("flashvaed_ltx_official"), seed=0, include=["decoder."])


def seeded(model: LTXStudentDecoder, dtype: torch.dtype = torch.float32) -> LTXStudentDecoder:
    manifest = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtype) for k, v in generate(manifest, seed=3).items()}, strict=True)
    return model.eval().to(dtype)


def test_official_layout_keys():
    with torch.device("meta"):
        model = LTXStudentDecoder(LTXStudentSpec.official())
    want = {
        k: v
        for k, v in manifest_shapes(load_manifest("flashvaed_ltx_official")).items()
        if k.startswith("decoder.")
    }
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want
    assert (model.latent_channels, model.time_stride, model.space_stride) == (128, 8, 32)
    assert model.timestep_conditioned is False
    # Causal depthwise convs read two frames back at the latent rate: the left context dominates.
    assert model.temporal_context == (40, 6)
    assert model.temporal_halo == 40


def test_wrong_layout_is_refused():
    with torch.device("meta"):
        model = LTXStudentDecoder()
        teacher = LTXTeacherDecoder.for_version(0)
    with pytest.raises(RuntimeError):
        model.load_state_dict(teacher.state_dict(), strict=True, assign=True)


@pytest.mark.skipif(not OFFICIAL_REF.is_file(), reason=f"no official reference decode at {OFFICIAL_REF}")
def test_reproduces_official_code():
    """Seeded weights in the official layout, strict load, the official code's decode of the same latent."""
    ref = load_file(OFFICIAL_REF)
    with torch.device("meta"):  # skip the default init of 67M parameters; the load replaces them all
        model = LTXStudentDecoder()
    model.load_state_dict(official_weights(), strict=True, assign=True)
    with torch.no_grad():
        video = model.eval()(ref["latent_raw"])
    assert video.shape == ref["video"].shape == (1, 3, 17, 64, 96)
    assert (video - ref["video"]).abs().max().item() < 5e-5


@pytest.mark.parametrize("shape", [(1, 128, 1, 1, 1), (2, 128, 3, 2, 3)])
def test_tiny_shapes(shape):
    model = seeded(LTXStudentDecoder(LTXStudentSpec.tiny()))
    b, _, t, h, w = shape
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (b, 3, 8 * t - 7, 32 * h, 32 * w)
    assert torch.isfinite(out).all()
    assert model.draw_spatial_noise((h, w), None) is None
    with pytest.raises(ValueError):
        model(torch.randn(1, 16, 1, 1, 1))


def test_spec_variants():
    narrow = LTXStudentSpec(
        mid_width=8,
        mid_layers=1,
        mid_op=Op.FULL_3D,
        stages=(
            StudentStage(8, 1, Op.DEPTHWISE_3D, shortcut=True),
            StudentStage(4, 2, Op.FRAME_2D, upsample=False),
        ),
    )
    model = LTXStudentDecoder(narrow)
    assert (model.time_stride, model.space_stride) == (2, 8)
    keys = model.state_dict().keys()
    assert "decoder.up_blocks.0.conv_in.conv_shortcut.depthwise.weight" in keys
    assert "decoder.up_blocks.1.resnets.1.conv1.weight" in keys  # per-frame Conv2d
    assert "decoder.up_blocks.1.upsamplers.0.conv.conv.weight" not in keys
    with torch.no_grad():
        assert model(torch.randn(1, 128, 3, 2, 2)).shape == (1, 3, 5, 16, 16)
    with pytest.raises(ValueError):
        LTXStudentSpec(mid_width=0, mid_layers=1, mid_op=Op.FULL_3D, stages=())
    for spec in (LTXStudentSpec.official(), LTXStudentSpec.tiny(), narrow):
        assert LTXStudentSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):
        LTXStudentSpec.from_json('{"mid_width": 8}')


def _window(model, z, start, stop, before, after):
    lo, hi = max(start - before, 0), min(stop + after, z.shape[2])
    out = model(z[:, :, lo:hi])
    s = model.time_stride
    first = 0 if start == 0 else s * start - s + 1
    origin = 0 if lo == 0 else s * lo
    return out[:, :, first - origin : s * (stop - 1) - origin + 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temporal_context_is_exact_and_tight(dtype):
    model = seeded(LTXStudentDecoder(LTXStudentSpec.tiny()), dtype)
    before, after = model.temporal_context
    t = before + after + 6
    cut = before + 3
    z = torch.randn(1, 128, t, 1, 1, generator=torch.Generator().manual_seed(4)).to(dtype)
    with torch.no_grad():
        whole = model(z)
        parts = [_window(model, z, 0, cut, before, after), _window(model, z, cut, t, before, after)]
        parts = torch.cat(parts, dim=2)
        assert (parts - whole).abs().max().item() < (1e-5 if dtype == torch.float32 else 1e-12)
        if dtype == torch.float64:  # float32 rounding would hide the far edge's small influence
            short_after = _window(model, z, 0, cut, before, after - 1)
            short_before = _window(model, z, cut, t, before - 1, after)
            assert (short_after - whole[:, :, : short_after.shape[2]]).abs().max().item() > 1e-9
            assert (short_before - whole[:, :, -short_before.shape[2] :]).abs().max().item() > 1e-9
