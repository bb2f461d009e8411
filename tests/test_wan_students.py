"""The official Flash-VAED Wan student layout decodes as the official code does (reference outputs made by
running it on seeded weights, tests/data/official/README.md), and any spec builds a working student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flash_vaed import DecoderSpec, Family, Op, load_decoder
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.engine.state import DecodeState
from support.reference_weights import generate, load_manifest

REF = Path(__file__).parent / "data" / "official" / "wan_student_ref.safetensors"
TOL = 5e-5


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "Flash_VAED_Wan.pth"
    torch.save(generate(load_manifest("flashvaed_wan_official"), seed=0), path)
    return load_decoder(path)


def test_official_layout_is_detected(official):
    assert official.family is Family.WAN21
    assert official.role == "student"
    assert official.layout == "flashvaed-wan-official"
    assert official.module.spec == DecoderSpec.flashvaed_wan21()


@pytest.mark.parametrize("chunk", [None, 1, 2, 4])
def test_official_student_matches_official_code(official, chunk):
    ref = load_file(str(REF))
    video = official.decode(ref["latent_raw"], chunk_frames=chunk)
    assert video.shape == ref["video"].shape == (1, 3, 17, 32, 48)
    assert (video - ref["video"]).abs().max().item() < TOL


def test_official_first_frame_path(official):
    ref = load_file(str(REF))
    video = official.decode(ref["latent_raw"][:, :, :1])
    assert (video - ref["video_first_frame_only"]).abs().max().item() < TOL


def test_long_clip_stays_continuous(official):
    """The official decode resets its cache after latent frame 20 (86 frames from 23); ours keeps 4T-3."""
    z = torch.randn(1, 16, 23, 1, 1, generator=torch.Generator().manual_seed(0))
    whole = official.decode(z)
    assert whole.shape[2] == 4 * 23 - 3
    streamed = official.decode(z, chunk_frames=5)
    assert (whole - streamed).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "deep,shallow",
    [
        (Op.DEPTHWISE_3D, Op.FRAME_2D),
        (Op.FULL_3D, Op.FULL_3D),
        (Op.FULL_3D, Op.FRAME_2D),
        (Op.DEPTHWISE_3D, Op.DEPTHWISE_3D),
    ],
)
@pytest.mark.parametrize("family", [Family.WAN21, Family.WAN22])
def test_any_spec_builds_and_streams(deep, shallow, family):
    spec = DecoderSpec.tiny(family, deep, shallow)
    torch.manual_seed(0)
    dec = WanFamilyDecoder(spec).eval()
    z = torch.randn(1, family.latent_channels, 6, 3, 4)
    with torch.no_grad():
        whole = dec(z, DecodeState(dec))
        state = DecodeState(dec)
        streamed = torch.cat([dec(c, state) for c in z.split(2, dim=2)], dim=2)
    s = family.space_stride
    assert whole.shape == (1, 3, 4 * 6 - 3, 3 * s, 4 * s)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)


def test_state_holds_only_temporal_layers():
    """Per-frame 2D stages keep no state: the student's temporal context is visibly smaller."""
    all3d = WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, Op.FULL_3D, Op.FULL_3D))
    hybrid = WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, Op.DEPTHWISE_3D, Op.FRAME_2D))
    assert len(DecodeState(hybrid)) < len(DecodeState(all3d))


def test_spec_json_round_trip():
    spec = DecoderSpec.flashvaed_wan21()
    assert DecoderSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="not a valid decoder spec"):
        DecoderSpec.from_json('{"family": "wan21"}')
