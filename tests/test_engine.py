"""Decode engine: streaming equals whole-clip, tiles blend without seams, progress and cancellation; the
decoder-module protocol every architecture follows."""

from __future__ import annotations

import pytest
import torch

from flash_vaed import DecoderSpec, Family, LatentError, Op
from flash_vaed.arch.ltx import LTXTeacherDecoder
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from flash_vaed.arch.protocol import DecoderModule, decode_raw
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.arch.wan22 import Wan22Decoder
from flash_vaed.decoder import FlashDecoder
from flash_vaed.engine.decode import DecodePlan, chunk_bounds, frames_of_latents
from flash_vaed.engine.state import DecodeState
from flash_vaed.engine.tiles import feather_mask, plan_tiles
from test_ltx_teacher import reduced_config


def _decoder(op_deep=Op.FULL_3D, op_shallow=Op.FULL_3D, family=Family.WAN21, seed=0) -> FlashDecoder:
    torch.manual_seed(seed)
    module = WanFamilyDecoder(DecoderSpec.tiny(family, op_deep, op_shallow)).eval()
    return FlashDecoder(family, "student", module)


def _z(family=Family.WAN21, t=7, h=8, w=10, seed=1):
    return torch.randn(1, family.latent_channels, t, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 100])
def test_streaming_equals_whole_clip(chunk):
    dec = _decoder()
    z = _z()
    torch.testing.assert_close(dec.decode(z, chunk_frames=chunk), dec.decode(z), rtol=0, atol=1e-5)


def test_streaming_state_size_is_flat_in_clip_length():
    dec = _decoder()
    sizes = []
    for t in (4, 16):
        state = DecodeState(dec.module)
        with torch.no_grad():
            for c in _z(t=t).split(2, dim=2):
                dec.module(c, state)
        sizes.append(state.nbytes())
    assert sizes[0] == sizes[1] > 0


def test_frame_bookkeeping():
    assert frames_of_latents(0, 1, 4) == (0, 1)
    assert frames_of_latents(1, 3, 4) == (1, 9)
    assert frames_of_latents(0, 21, 4)[1] == 81
    assert chunk_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_bounds(5, None) == [(0, 5)]


def test_tile_plan_covers_and_overlaps():
    tiles = plan_tiles((30, 52), 16, 4)
    covered = torch.zeros(30, 52)
    for t in tiles:
        assert t.y1 - t.y0 <= 16 and t.x1 - t.x0 <= 16
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert covered.min() >= 1
    assert plan_tiles((5, 5), 16, 4) == plan_tiles((5, 5), 5, 0)  # one tile when the latent fits


def test_feather_weights_sum_to_one_after_normalising():
    tiles = plan_tiles((12, 12), 8, 4)
    weight = torch.zeros(96, 96)
    for t in tiles:
        ys, xs = t.pixels(8)
        weight[ys, xs] += feather_mask(t, (12, 12), 8, 32)
    assert weight.min() > 0.05  # every pixel gets real weight, no holes at seams


def test_tiled_decode_is_close_and_seamless():
    """Tiles at the default-ish overlap stay close to the whole-clip decode, and the error is not
    concentrated on tile borders (no seam)."""
    dec = _decoder(Op.DEPTHWISE_3D, Op.FRAME_2D)
    z = _z(t=3, h=24, w=24)
    whole = dec.decode(z)
    tiled = dec.decode(z, tile_px=128, overlap_px=64)
    err = (tiled - whole).abs()
    psnr = 10 * torch.log10(4.0 / (err**2).mean()).item()  # video range [-1, 1]
    assert psnr > 40, psnr
    # the seam test: error along tile borders is not much larger than elsewhere
    col = err.mean(dim=(0, 1, 2, 3))
    assert col.max().item() < 10 * col.mean().item() + 1e-6


def test_tiled_streaming_equals_tiled_whole():
    dec = _decoder()
    z = _z(t=5, h=12, w=12)
    a = dec.decode(z, tile_px=64, overlap_px=16)
    b = dec.decode(z, tile_px=64, overlap_px=16, chunk_frames=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_progress_is_reported_per_chunk_and_tile():
    dec = _decoder()
    calls = []
    dec.decode(
        _z(t=5, h=12, w=12),
        chunk_frames=2,
        tile_px=64,
        overlap_px=16,
        on_progress=lambda d, t: calls.append((d, t)),
    )
    n_tiles = len(plan_tiles((12, 12), 8, 2))
    assert calls[-1] == (3 * n_tiles, 3 * n_tiles)
    assert [d for d, _ in calls] == list(range(1, 3 * n_tiles + 1))


def test_exception_from_progress_stops_decode_and_next_decode_is_clean():
    dec = _decoder()
    z = _z()

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        dec.decode(z, chunk_frames=1, on_progress=cancel)
    torch.testing.assert_close(dec.decode(z, chunk_frames=3), dec.decode(z), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_decode_runs_close(dtype):
    dec = _decoder(Op.DEPTHWISE_3D, Op.FRAME_2D)
    z = _z(t=3, h=4, w=4)
    ref = dec.decode(z)
    dec.to(dtype=dtype)
    out = dec.decode(z, chunk_frames=2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().mean().item() < 0.05 * ref.abs().mean().item() + 0.01


@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 4, 8, 8), "image latent"),
        ((1, 4, 3, 8, 8), "SD 1.x"),
        ((1, 128, 3, 2, 2), "LTX-Video"),
        ((1, 16, 0, 2, 2), "empty"),
        ((16, 3, 2, 2), "5-D|image"),
    ],
)
def test_wrong_latents_get_clear_errors(shape, match):
    with pytest.raises(LatentError, match=match):
        _decoder().decode(torch.zeros(shape))


def test_nan_latents_are_refused():
    z = _z(t=2, h=2, w=2)
    z[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(LatentError, match="NaN"):
        _decoder().decode(z)


def test_non_contiguous_latents_decode_like_contiguous():
    dec = _decoder()
    z = _z(t=3, h=4, w=6)
    zt = z.transpose(3, 4).contiguous().transpose(3, 4)
    assert not zt.is_contiguous()
    torch.testing.assert_close(dec.decode(zt), dec.decode(z), rtol=0, atol=0)


def test_decode_takes_a_plan_or_the_old_keywords():
    dec = _decoder()
    z = _z(t=5, h=12, w=12)
    plan = DecodePlan(chunk_frames=2, tile_px=64, overlap_px=16)
    by_keywords = dec.decode(z, chunk_frames=2, tile_px=64, overlap_px=16)
    torch.testing.assert_close(dec.decode(z, plan), by_keywords, rtol=0, atol=0)
    with pytest.raises(TypeError, match="not both"):
        dec.decode(z, plan, chunk_frames=2)


# ---- the decoder-module protocol ---------------------------------------------------------------------

MODULES = {
    "wan21-student": lambda: WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, Op.DEPTHWISE_3D, Op.FRAME_2D)),
    "wan22-student": lambda: WanFamilyDecoder(DecoderSpec.tiny(Family.WAN22)),
    "wan22-teacher": lambda: Wan22Decoder(dec_dim=4, blocks=1),
    "ltx-teacher-0.9.1": lambda: LTXTeacherDecoder.from_comfy_config(
        reduced_config(1, "zeros"), base_channels=4
    ),
    "ltx-student": lambda: LTXStudentDecoder(LTXStudentSpec.tiny()),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_decoder_module_keeps_the_protocol(name):
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    assert isinstance(module, DecoderModule) and module.family.latent_channels == module.latent_channels
    z = torch.randn(1, module.latent_channels, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    s = module.space_stride
    with torch.no_grad():
        whole = decode_raw(module, z)
        assert whole.shape == (1, 3, frames_of_latents(0, 3, module.time_stride)[1], 2 * s, 2 * s)
        if module.causal:
            assert module.temporal_context == (0, 0)
            state = DecodeState(module)
            streamed = torch.cat([module(c, state) for c in z.split(1, dim=2)], dim=2)
            torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
        else:
            assert module.temporal_halo == max(module.temporal_context) > 0
            with pytest.raises(ValueError, match="not causal"):
                module(z, DecodeState(module))
        with pytest.raises(ValueError, match=f"{module.latent_channels}, T, H, W"):
            module(z[:, :1])
    profile = FlashDecoder(module.family, "teacher", module).memory_profile
    assert (profile.space_stride, profile.time_stride, profile.causal) == (
        s,
        module.time_stride,
        module.causal,
    )


def test_decode_raw_decodes_without_drawing_noise():
    """decode_raw is the noise-free decode (zero injected noise, ComfyUI's timestep): no RNG is read."""
    module = MODULES["ltx-teacher-0.9.1"]().eval()
    assert module.injects_noise and module.timestep_conditioned
    z = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(1)
        a = decode_raw(module, z)
        torch.manual_seed(2)
        b = decode_raw(module, z)
        zeros = [torch.zeros(n.shape) for n in module.draw_spatial_noise((2, 2), None)]
        c = module(z, timestep=0.05, spatial_noise=zeros)
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("name", ["wan21-student", "ltx-student"])
def test_memory_profile_on_meta_equals_a_real_decode(name):
    """The profile runs on the meta device; its largest activation is what a real decode allocates."""
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    side = max(2, -(-64 // module.space_stride))
    z = torch.randn(1, module.latent_channels, 2, side, side)
    largest = 0

    def record(_m, _i, out):
        nonlocal largest
        largest = max(largest, out.numel())

    handles = [m.register_forward_hook(record) for m in module.modules()]
    with torch.no_grad():
        frames = decode_raw(module, z)
    for h in handles:
        h.remove()
    dec = FlashDecoder(module.family, "student", module)
    rng = torch.get_rng_state()
    profile = dec.memory_profile
    assert torch.equal(rng, torch.get_rng_state()) and next(module.parameters()).device.type == "cpu"
    assert profile.peak_per_px_frame == largest / (frames.shape[2] * frames.shape[3] * frames.shape[4])
