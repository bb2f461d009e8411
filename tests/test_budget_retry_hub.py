"""Memory budget (auto plan), out-of-memory retry policy, and the official-checkpoint download. No ComfyUI."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flash_vaed import DecoderSpec, Family, Op
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.decoder import FlashDecoder
from flash_vaed.engine.decode import DecodePlan
from flash_vaed.errors import CheckpointError
from flash_vaed.hub import OFFICIAL, HubDownloadError, fetch_official, recheck_official
from flash_vaed.policy import (
    HEADROOM,
    candidate_plans,
    choose_plan,
    decode_with_fallback,
    estimate_bytes,
    is_torch_oom,
    smaller_plan,
)

SHAPE = (1, 16, 5, 4, 6)  # (B, C, T, H, W) Wan 2.1 latent -> 17 frames of 32 x 48


def _decoder(op=Op.DEPTHWISE_3D) -> FlashDecoder:
    torch.manual_seed(0)
    return FlashDecoder(Family.WAN21, "student", WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, op)).eval())


def _z(shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _oom(msg: str = "CUDA out of memory. Tried to allocate 2.00 GiB (injected)") -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(msg)


# ---- budget ------------------------------------------------------------------------------------------


def test_profile_is_measured_once_and_scales_with_the_plan():
    dec = _decoder()
    profile = dec.memory_profile
    assert profile is dec.memory_profile  # measured once
    assert profile.causal and profile.space_stride == 8 and profile.time_stride == 4
    assert profile.peak_per_px_frame >= 8  # the 8-channel full-resolution stage at least
    assert profile.state_per_px > 0  # depthwise 3D stages keep past frames
    whole = estimate_bytes(profile, SHAPE, torch.float32, DecodePlan())
    chunked = estimate_bytes(profile, SHAPE, torch.float32, DecodePlan(chunk_frames=1))
    tiled = estimate_bytes(profile, SHAPE, torch.float32, DecodePlan(chunk_frames=1, tile_px=16))
    assert whole > chunked > tiled > 0
    assert estimate_bytes(profile, SHAPE, torch.float16, DecodePlan()) == pytest.approx(whole / 2, rel=0.01)
    with_output = estimate_bytes(profile, SHAPE, torch.float32, DecodePlan(), output_on_device=True)
    assert with_output - whole >= 4 * 3 * 17 * 32 * 48


def test_per_frame_stages_keep_less_state():
    assert (
        _decoder(Op.FRAME_2D).memory_profile.state_per_px < _decoder(Op.FULL_3D).memory_profile.state_per_px
    )


def test_candidate_plans_go_from_fastest_to_leanest():
    plans = list(candidate_plans((1, 16, 9, 32, 32), space_stride=8))
    assert plans[0] == DecodePlan()
    assert [p.chunk_frames for p in plans[:5]] == [None, 5, 3, 2, 1]
    assert all(p.tile_px is None for p in plans[:5])
    tiles = [p.tile_px for p in plans[5:]]
    assert tiles == sorted(tiles, reverse=True) and max(tiles) < 256 and min(tiles) >= 16
    assert all(p.overlap_px == p.tile_px // 4 for p in plans[5:])


def test_choose_plan_fits_the_free_memory():
    dec = _decoder()
    profile = dec.memory_profile

    def est(plan):
        return estimate_bytes(profile, SHAPE, torch.float32, plan)

    assert choose_plan(dec, SHAPE, torch.float32, 10**12) == DecodePlan()
    # just enough for chunks of 2 latent frames: streaming, no tiles
    free = int(est(DecodePlan(chunk_frames=2)) / HEADROOM) + 1
    plan = choose_plan(dec, SHAPE, torch.float32, free)
    assert plan == DecodePlan(chunk_frames=2)
    # below one frame of the whole picture: tiles
    free = int(est(DecodePlan(chunk_frames=1)) / HEADROOM) - 1
    plan = choose_plan(dec, SHAPE, torch.float32, free)
    assert plan.tile_px is not None and est(plan) <= HEADROOM * free
    # nothing fits: the leanest plan (and the retry policy takes it from there)
    assert choose_plan(dec, SHAPE, torch.float32, 1) == list(candidate_plans(SHAPE, 8))[-1]


def test_auto_starts_from_the_plan_that_fits_and_keeps_the_frames():
    dec, z = _decoder(), _z()
    free = (
        int(estimate_bytes(dec.memory_profile, SHAPE, torch.float32, DecodePlan(chunk_frames=2)) / HEADROOM)
        + 1
    )
    result = decode_with_fallback(dec, z, "auto", free_bytes=free)
    assert result.attempts == [DecodePlan(chunk_frames=2)]
    assert decode_with_fallback(dec, z, "auto", free_bytes=10**12).plan == DecodePlan()
    torch.testing.assert_close(result.frames, dec.decode(z), rtol=0, atol=1e-5)
    torch.testing.assert_close(dec.decode(z, "auto"), dec.decode(z), rtol=0, atol=1e-5)


# ---- retry -------------------------------------------------------------------------------------------


def test_smaller_plan_halves_chunks_then_tiles():
    shape, seq, plan = (1, 16, 8, 8, 8), [], DecodePlan()
    while plan is not None:
        seq.append((plan.chunk_frames, plan.tile_px))
        plan = smaller_plan(plan, shape, space_stride=8)
    assert seq == [(None, None), (4, None), (2, None), (1, None), (1, 32), (1, 16)]
    assert smaller_plan(DecodePlan(1, 64, 32), shape, 8) == DecodePlan(1, 32, 16)  # keeps the overlap ratio


def test_oom_retries_with_smaller_chunks_and_gives_the_whole_clip_frames():
    dec, z = _decoder(), _z()
    reference = dec.decode(z)
    retries = []

    def on_progress(done: int, total: int) -> None:
        if total < 3:  # "does not fit" unless the clip is split into 3 or more chunks
            raise _oom()

    result = decode_with_fallback(
        dec,
        z,
        DecodePlan(),
        on_progress,
        is_torch_oom,
        on_retry=lambda a, b, msg: retries.append((a, b, msg)),
    )
    assert result.attempts == [DecodePlan(), DecodePlan(3), DecodePlan(2)]
    assert result.plan == DecodePlan(2) and result.retries == 2 and result.seconds > 0
    assert [(a, b) for a, b, _ in retries] == [(DecodePlan(), DecodePlan(3)), (DecodePlan(3), DecodePlan(2))]
    assert "out of memory" in retries[0][2]
    torch.testing.assert_close(result.frames, reference, rtol=0, atol=1e-5)


def test_oom_falls_back_to_tiles_when_one_frame_does_not_fit():
    dec, z = _decoder(), _z((1, 16, 2, 6, 6))

    def on_progress(done: int, total: int) -> None:
        if total < 4:  # only 4+ tiles fit
            raise _oom()

    result = decode_with_fallback(dec, z, DecodePlan(), on_progress)
    assert result.plan == DecodePlan(1, 24, 6)
    assert result.frames.shape == (1, 3, 5, 48, 48)


def test_other_errors_and_the_leanest_oom_propagate():
    dec, z = _decoder(), _z()

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        decode_with_fallback(dec, z, DecodePlan(), cancel)

    def always_oom(done, total):
        raise _oom()

    with pytest.raises(torch.OutOfMemoryError):
        decode_with_fallback(dec, z, DecodePlan(), always_oom)
    # the caller decides what an OOM is: a RuntimeError from another backend, say
    mps = RuntimeError("MPS backend out of memory")

    def mps_oom(done, total):
        if total < 5:
            raise mps

    result = decode_with_fallback(dec, z, DecodePlan(), mps_oom, lambda e: e is mps)
    assert result.plan.chunk_frames == 1


def test_is_torch_oom():
    assert is_torch_oom(_oom()) and is_torch_oom(torch.cuda.OutOfMemoryError("x"))
    assert not is_torch_oom(RuntimeError("out of memory")) and not is_torch_oom(ValueError())


# ---- hub ---------------------------------------------------------------------------------------------

WAN = OFFICIAL["Flash_VAED_Wan.pth"]
PAYLOAD = bytes(range(256)) * 12289  # ~3 MB: several read chunks


def test_official_names_and_urls():
    assert set(OFFICIAL) == {"Flash_VAED_Wan.pth", "Flash_VAED_LTX.pth"}
    assert WAN.url() == "https://huggingface.co/Aoko955/Flash-VAED/resolve/main/models/wan/Flash_VAED_Wan.pth"
    assert OFFICIAL["Flash_VAED_LTX.pth"].path_in_repo == "models/ltx/Flash_VAED_LTX.pth"
    assert WAN.family is Family.WAN21 and OFFICIAL["Flash_VAED_LTX.pth"].family is Family.LTXV


def test_offline_fails_with_the_manual_step_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "flash_vaed"
    with pytest.raises(HubDownloadError) as info:
        fetch_official("Flash_VAED_Wan.pth", dest)
    msg = str(info.value)
    assert WAN.url() in msg and str(dest / "Flash_VAED_Wan.pth") in msg and "HF_HUB_OFFLINE" in msg
    assert not dest.exists() or not any(dest.iterdir())
    # a file already there needs no network
    dest.mkdir()
    (dest / "Flash_VAED_Wan.pth").write_bytes(b"x")
    assert fetch_official("Flash_VAED_Wan.pth", dest) == (dest / "Flash_VAED_Wan.pth").resolve()
    with pytest.raises(ValueError, match="not an official"):
        fetch_official("../evil.pth", dest)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The two requests huggingface_hub + our download make: HEAD on /resolve (a 302 to the CDN, as the Hub
    answers for LFS files) and GET on the CDN URL."""

    payload = PAYLOAD
    announced_sha = hashlib.sha256(PAYLOAD).hexdigest()
    announced_size = len(PAYLOAD)

    def log_message(self, *args) -> None:
        pass

    def _resolve(self, body: bool) -> None:
        cls = type(self)
        if self.path == "/Aoko955/Flash-VAED/resolve/main/models/wan/Flash_VAED_Wan.pth":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/cdn/blob")
            self.send_header("X-Linked-Size", str(cls.announced_size))
            self.send_header("X-Linked-Etag", f'"{cls.announced_sha}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/cdn/blob":
            self.send_response(200)
            self.send_header("Content-Length", str(len(cls.payload)))
            self.end_headers()
            if body:
                self.wfile.write(cls.payload)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._resolve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._resolve(body=True)


@pytest.fixture
def fake_hub(monkeypatch) -> Iterator[type[_FakeHub]]:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    handler = type("Hub", (_FakeHub,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_from_a_local_fake_hub_is_atomic_with_progress(tmp_path, fake_hub):
    dest, seen = tmp_path / "models" / "flash_vaed", []
    path = fetch_official("Flash_VAED_Wan.pth", dest, lambda d, t: seen.append((d, t)), endpoint=fake_hub.url)
    assert path == (dest / "Flash_VAED_Wan.pth").resolve() and path.read_bytes() == PAYLOAD
    assert _leftovers(dest) == ["Flash_VAED_Wan.pth"]
    assert len(seen) >= 3 and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("damage", ["checksum", "size"])
def test_a_damaged_download_leaves_no_file(tmp_path, fake_hub, damage):
    if damage == "checksum":
        fake_hub.announced_sha = hashlib.sha256(b"something else").hexdigest()
    else:
        fake_hub.announced_size = len(PAYLOAD) + 1
    dest = tmp_path / "flash_vaed"
    with pytest.raises(HubDownloadError, match="sha256" if damage == "checksum" else "bytes") as info:
        fetch_official("Flash_VAED_Wan.pth", dest, endpoint=fake_hub.url)
    assert WAN.url() in str(info.value)  # the manual step
    assert _leftovers(dest) == []


def test_a_cancelled_download_leaves_no_file(tmp_path, fake_hub):
    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done > total // 2:
            raise Cancelled

    dest = tmp_path / "flash_vaed"
    with pytest.raises(Cancelled):
        fetch_official("Flash_VAED_Wan.pth", dest, cancel, endpoint=fake_hub.url)
    assert _leftovers(dest) == []


def test_a_hub_error_gives_the_manual_step(tmp_path, fake_hub):
    # the fake Hub has no LTX file: a 404, like a renamed file upstream (a refused connection ends the same
    # way, after huggingface_hub's 5 retries, 23 s)
    with pytest.raises(HubDownloadError, match="could not reach") as info:
        fetch_official("Flash_VAED_LTX.pth", tmp_path / "fv", endpoint=fake_hub.url, timeout_s=5)
    msg = str(info.value)
    assert "huggingface.co/Aoko955/Flash-VAED/resolve/main/models/ltx/Flash_VAED_LTX.pth" in msg
    assert str(tmp_path / "fv" / "Flash_VAED_LTX.pth") in msg
    assert _leftovers(tmp_path / "fv") == []


# ---- an official file already there that does not load (issue 16, Low 16) ---------------------------------


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_official_file_is_checked_against_the_hub_and_replaced(tmp_path, fake_hub, damage):
    dest = tmp_path / "flash_vaed"
    dest.mkdir()
    broken = bytearray(PAYLOAD)
    if damage == "flipped":
        broken[1000] ^= 0xFF  # same size, another sha256
    else:
        del broken[len(PAYLOAD) // 2 :]
    (dest / "Flash_VAED_Wan.pth").write_bytes(bytes(broken))
    path = recheck_official(
        "Flash_VAED_Wan.pth", dest, "not a readable PyTorch checkpoint", endpoint=fake_hub.url
    )
    assert path == (dest / "Flash_VAED_Wan.pth").resolve() and path.read_bytes() == PAYLOAD
    assert _leftovers(dest) == ["Flash_VAED_Wan.pth"]


def test_an_official_file_that_matches_the_hub_but_does_not_load_is_reported(tmp_path, fake_hub):
    dest = tmp_path / "flash_vaed"
    dest.mkdir()
    (dest / "Flash_VAED_Wan.pth").write_bytes(PAYLOAD)
    with pytest.raises(CheckpointError, match="matches the Hub's copy .* same sha256.*report"):
        recheck_official("Flash_VAED_Wan.pth", dest, "odd", endpoint=fake_hub.url)
    assert (dest / "Flash_VAED_Wan.pth").read_bytes() == PAYLOAD


def test_a_damaged_official_file_offline_names_its_path_and_that_deleting_it_helps(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "flash_vaed"
    dest.mkdir()
    (dest / "Flash_VAED_Wan.pth").write_bytes(b"half a file")
    with pytest.raises(CheckpointError) as info:
        recheck_official("Flash_VAED_Wan.pth", dest, "not a readable PyTorch checkpoint (truncated)")
    msg = str(info.value)
    assert str(dest.resolve() / "Flash_VAED_Wan.pth") in msg and "truncated" in msg
    assert "Delete" in msg and "downloads it again" in msg and WAN.url() in msg
    assert (dest / "Flash_VAED_Wan.pth").read_bytes() == b"half a file"
