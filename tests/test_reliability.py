"""Bad input and faults a user can hit: each gets a clear error, and no file or state is lost.

The table in docs/reliability.md maps every input/fault to its test, here or in the other test files.
Everything is tiny and CPU-only; the kill -9 training run is marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flash_vaed import CheckpointError, DecoderSpec, Family, FlashDecoder, LatentError, Op, load_decoder
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.checkpoint import io
from flash_vaed.checkpoint.io import DiskFullError, atomic_save
from flash_vaed.checkpoint.load import META_SPEC, save_student
from flash_vaed.engine.decode import DecodePlan
from flash_vaed.engine.limits import OutputTooLargeError, check_output_fits
from flash_vaed.policy import decode_with_fallback

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _student(seed: int = 0) -> FlashDecoder:
    torch.manual_seed(seed)
    module = WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, Op.FULL_3D, Op.FULL_3D)).eval()
    return FlashDecoder(Family.WAN21, "student", module)


def _z(t: int = 3, h: int = 4, w: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def student_file(tmp_path_factory) -> Path:
    return Path(save_student(_student(), tmp_path_factory.mktemp("student") / "student.safetensors"))


# ---- checkpoints: safetensors headers that lie -------------------------------------------------------


def _raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.mark.parametrize(
    ("header", "data"),
    [
        pytest.param(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000]}}, bytes(16), id="beyond"
        ),
        pytest.param(
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            bytes(24),
            id="overlap",
        ),
        pytest.param({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 16]}}, bytes(16), id="shape"),
        pytest.param(
            {"w": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 16]}}, bytes(16), id="huge"
        ),
    ],
)
def test_safetensors_header_that_lies_about_sizes_is_refused(tmp_path, header, data):
    path = _raw_safetensors(tmp_path / "vae.safetensors", header, data)
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: not a readable safetensors file.*download"):
        load_decoder(path)


def test_safetensors_header_length_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "vae.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b'{"a": 1}')
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_decoder(path)


# ---- checkpoints: VAEs of other models are named --------------------------------------------------------


def _foreign(kind: str) -> dict[str, torch.Tensor]:
    z = torch.zeros
    if kind == "sd_ldm":
        return {"decoder.conv_in.weight": z(512, 4, 3, 3), "decoder.mid.block_1.norm1.weight": z(512)}
    if kind == "sdxl_diffusers":
        return {
            "decoder.conv_in.weight": z(512, 4, 3, 3),
            "decoder.up_blocks.0.resnets.0.norm1.weight": z(512),
        }
    if kind == "flux_ldm":
        return {"decoder.conv_in.weight": z(512, 16, 3, 3), "decoder.up.0.block.0.norm1.weight": z(512)}
    if kind == "flux_diffusers":
        return {
            "decoder.conv_in.weight": z(512, 16, 3, 3),
            "decoder.up_blocks.0.resnets.0.norm1.weight": z(512),
        }
    if kind == "hunyuan_ldm":  # ComfyUI's HunyuanVideo VAE: 3-D convs in the SD key layout
        return {"decoder.conv_in.conv.weight": z(8, 16, 3, 3, 3), "decoder.mid.block_1.norm1.weight": z(8)}
    if kind == "hunyuan_diffusers":
        return {
            "decoder.conv_in.conv.weight": z(8, 16, 3, 3, 3),
            "decoder.up_blocks.0.resnets.0.norm1.weight": z(8),
        }
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("sd_ldm", "SD 1.x / SDXL"),
        ("sdxl_diffusers", "SD 1.x/SDXL"),
        ("flux_ldm", "Flux / SD3"),
        ("flux_diffusers", "Flux/SD3"),
        ("hunyuan_ldm", "HunyuanVideo"),
        ("hunyuan_diffusers", "HunyuanVideo"),
    ],
)
def test_vae_of_another_model_is_refused_naming_it(tmp_path, kind, named):
    path = tmp_path / "wan_2.1_vae.safetensors"  # the name says Wan; the keys say otherwise
    save_file(_foreign(kind), path)
    with pytest.raises(CheckpointError, match="wan_2.1_vae.safetensors") as info:
        load_decoder(path)
    assert named in str(info.value)


# ---- checkpoints: fp8 weights -------------------------------------------------------------------------


def test_fp8_file_loads_as_float32_and_decodes_close(student_file, tmp_path):
    tensors = load_file(student_file)
    with safe_open(str(student_file), framework="pt") as f:
        meta = f.metadata()
    path = tmp_path / "student_fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}, path, metadata=meta)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice(next(iter(f.keys()))).get_dtype() == "F8_E4M3"
    dec = load_decoder(path)
    assert dec.dtype == torch.float32
    z = _z()
    ref, out = load_decoder(student_file).decode(z), dec.decode(z)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = (out - ref).abs().mean().item() / ref.abs().mean().item()
    assert 0 < err < 0.2, f"mean relative error {err:.3f} of an fp8 file"


# ---- checkpoints: fuzzing the loader --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_corpus(student_file, tmp_path_factory) -> dict[str, bytes]:
    pth = tmp_path_factory.mktemp("fuzz") / "student.pth"
    torch.save(load_file(student_file), pth)
    return {".safetensors": student_file.read_bytes(), ".pth": pth.read_bytes()}


_mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "cut", "insert", "zero_run"]), st.floats(0, 1), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op, where, byte in ops:
        # mutations cluster at the start (headers, zip directory) as often as anywhere else
        i = int(where**3 * max(len(out) - 1, 0)) if byte % 2 else int(where * max(len(out) - 1, 0))
        if not out:
            break
        if op == "flip":
            out[i] ^= 1 << (byte % 8)
        elif op == "cut":
            del out[i:]
        elif op == "insert":
            out[i:i] = bytes([byte]) * (1 + byte % 7)
        else:
            out[i : i + 1 + byte] = bytes(min(1 + byte, len(out) - i))
    return bytes(out)


@settings(
    max_examples=60,
    deadline=2000,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(suffix=st.sampled_from([".safetensors", ".pth"]), ops=_mutations)
def test_fuzzed_checkpoints_raise_only_checkpoint_errors(fuzz_corpus, suffix, ops):
    data = _mutate(fuzz_corpus[suffix], ops)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"student{suffix}"
        path.write_bytes(data)
        try:
            dec = load_decoder(path)
        except CheckpointError:
            return
        dec.decode(_z(t=1, h=2, w=2))  # a file that loads must also decode (damaged values are allowed)


def test_a_seeded_sweep_of_mutations_raises_only_checkpoint_errors(fuzz_corpus, tmp_path):
    # wider than the hypothesis run above; found a KeyError/IndexError from damaged pickles and a
    # ValueError from damaged student metadata before they became CheckpointErrors
    rng = random.Random(0)
    for i in range(300):
        suffix = rng.choice(sorted(fuzz_corpus))
        ops = [
            (rng.choice(["flip", "cut", "insert", "zero_run"]), rng.random(), rng.randrange(256))
            for _ in range(rng.randint(1, 4))
        ]
        path = tmp_path / f"m{i}{suffix}"
        path.write_bytes(_mutate(fuzz_corpus[suffix], ops))
        try:
            load_decoder(path)
        except CheckpointError:
            pass
        path.unlink()


@pytest.mark.parametrize(
    "data", [pytest.param(b"\x80\x02h\x05.", id="KeyError"), pytest.param(b"\x80\x02a.", id="IndexError")]
)
def test_a_damaged_pickle_that_breaks_the_unpickler_is_a_checkpoint_error(tmp_path, data):
    # the kinds of failure the fuzzing found: unpickling raised a bare KeyError / IndexError
    path = tmp_path / "Wan2.1_VAE.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_decoder(path)


@pytest.mark.parametrize("spec", ["{not json", '{"stages": [{"nonsense": 1}]}', "[]"])
def test_damaged_student_metadata_is_a_checkpoint_error(student_file, tmp_path, spec):
    with safe_open(str(student_file), framework="pt") as f:
        meta = f.metadata()
    path = tmp_path / "student.safetensors"
    save_file(load_file(student_file), path, metadata={**meta, META_SPEC: spec})
    with pytest.raises(CheckpointError, match="student description.*damaged"):
        load_decoder(path)


# ---- latents ------------------------------------------------------------------------------------------


def test_inf_latents_are_refused_naming_the_count():
    z = _z()
    z[0, 0, 0, 0, :2] = float("inf")
    with pytest.raises(LatentError, match="2 NaN/Inf"):
        _student().decode(z)


def test_integer_latents_are_refused():
    with pytest.raises(LatentError, match="floating point.*torch.int64"):
        _student().decode(torch.zeros(1, 16, 2, 2, 2, dtype=torch.int64))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_latents_decode_like_float32(dtype, tol):
    dec, z = _student(), _z()
    ref = dec.decode(z)
    out = dec.decode(z.to(dtype))
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < tol * ref.abs().max().item() + tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_latents_on_another_device_are_moved():
    dec, z = _student(), _z()
    torch.testing.assert_close(dec.decode(z.cuda()), dec.decode(z), rtol=0, atol=1e-5)


def test_an_output_larger_than_free_memory_is_refused_before_decoding():
    dec, z = _student(), _z(t=3, h=4, w=4)
    ran = []
    dec.module.register_forward_pre_hook(lambda *a: ran.append(1))
    needed = 4 * 3 * 9 * 32 * 32  # float32 (1, 3, 9, 32, 32): 4k+1 frames, 8x space
    with pytest.raises(
        OutputTooLargeError, match=r"needs 0\.1 MiB.*fewer frames.*smaller resolution"
    ) as info:
        dec.decode(z, chunk_frames=1, tile_px=16, available_bytes=needed - 1)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, LatentError)
    assert "Smaller chunks or tiles do not shrink the output" in str(info.value)
    assert not ran, "the decoder ran before the refusal"
    assert dec.decode(z, available_bytes=needed).shape == (1, 3, 9, 32, 32)


def test_a_huge_latent_is_refused_by_its_size_alone():
    # a 1920x1080, 81-frame clip needs 1.9 GiB of float32 frames; with 1 GiB free it must be refused
    shape = (1, 3, 81, 1080, 1920)
    with pytest.raises(OutputTooLargeError, match=r"needs 370\.2 MiB.*256\.0 MiB is free on cpu"):
        check_output_fits((1, 3, 81, 480, 832), "cpu", available=2**28)
    with pytest.raises(OutputTooLargeError, match=r"1\.9 GiB.*81 frames of 1920x1080.*1\.0 GiB is free"):
        check_output_fits(shape, "cpu", available=2**30)
    assert check_output_fits(shape, "cpu", available=2**32) == 4 * 3 * 81 * 1080 * 1920


def test_an_output_too_large_is_not_retried_as_out_of_memory():
    dec, z = _student(), _z()
    with pytest.raises(OutputTooLargeError):
        decode_with_fallback(dec, z, DecodePlan(), available_bytes=10)


# ---- decode faults --------------------------------------------------------------------------------------


def test_two_threads_decoding_on_one_decoder_stay_independent():
    dec = _student()
    latents = [_z(t=5, h=4, w=6, seed=s) for s in (1, 2)]
    sequential = [dec.decode(z, chunk_frames=2) for z in latents]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                # progress sleeps so the two decodes interleave chunk by chunk
                results[i] = dec.decode(
                    latents[i], chunk_frames=1 + i, on_progress=lambda d, t: time.sleep(0.001)
                )
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for i in range(2):
        torch.testing.assert_close(results[i], sequential[i], rtol=0, atol=1e-5)


# ---- saving: a failed write keeps the previous file -------------------------------------------------------


def _partial_writer(err: BaseException):
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise err

    return save_file


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_failure_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = atomic_save({"w": torch.ones(3)}, tmp_path / "last.safetensors", {"step": "1"})
    before = path.read_bytes()
    monkeypatch.setattr(io, "save_file", _partial_writer(RuntimeError("writer crashed")))
    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_save({"w": torch.zeros(3)}, path, {"step": "2"})
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl+C mid-write too
        monkeypatch.setattr(io, "save_file", _partial_writer(KeyboardInterrupt()))
        save_student(_student(), path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["writer", "replace"])
def test_disk_full_names_the_folder_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    path = atomic_save({"w": torch.ones(3)}, out / "last.safetensors")
    before = path.read_bytes()
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "writer":
        monkeypatch.setattr(io, "save_file", _partial_writer(full))
    else:
        monkeypatch.setattr(io.os, "replace", lambda a, b: (_ for _ in ()).throw(full))
    with pytest.raises(
        DiskFullError, match=rf"disk full: no space left in {out}.*previous file is unchanged"
    ):
        atomic_save({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and _leftovers(out) == []


def test_disk_full_reported_by_the_safetensors_writer_is_recognised(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    monkeypatch.setattr(
        io, "save_file", _partial_writer(SafetensorError("No space left on device (os error 28)"))
    )
    with pytest.raises(DiskFullError, match="nothing was written") as info:
        atomic_save({"w": torch.ones(1)}, tmp_path / "new.safetensors")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---- training: kill -9 mid-run, then --resume --------------------------------------------------------------


def _clip(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    frames = [Image.fromarray(np.roll(base, 2 * t, axis=1)) for t in range(9)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_finishes_from_the_last_checkpoint(tmp_path):
    from support.reference_weights import generate, load_manifest

    save_file(generate(load_manifest("wan21_comfy_dim8")), tmp_path / "vae.safetensors")
    teacher = _student()
    teacher.role = "teacher"
    save_student(teacher, tmp_path / "teacher.safetensors")
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(4):
        _clip(clips / f"clip{i}.gif", i)
    out = tmp_path / "run"
    steps = 40
    argv = [
        sys.executable,
        str(REPO / "training" / "distill.py"),
        *("--teacher", str(tmp_path / "teacher.safetensors"), "--encoder", str(tmp_path / "vae.safetensors")),
        *("--data", str(clips), "--out", str(out), "--preset", "tiny", "--steps", str(steps)),
        *("--clip-frames", "5", "--crop-px", "16", "--calib-batches", "1", "--checkpoint-every", "2"),
        *("--no-evaluate", "--no-progress"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    state = out / "last.state.safetensors"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert state.exists(), "no checkpoint within 120 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with safe_open(str(state), framework="pt") as f:  # the last complete checkpoint is readable
        killed_at = int(f.metadata()["step"])
    assert 2 <= killed_at < steps
    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    assert int(meta["step"]) == steps and len(json.loads(meta["history"])) == steps
    assert load_decoder(out / "student.safetensors").role == "student"
    assert _leftovers(out) == []


# ---- issue 16: a second red-team pass ------------------------------------------------------------------------
# Each test below failed on the code before its fix (docs/reliability.md lists them).


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory) -> dict[str, Path]:
    """A tiny Wan 2.1 teacher (saved as a student file), a dim-8 Wan 2.1 VAE for the encoder, 4 clips."""
    from support.reference_weights import generate, load_manifest

    root = tmp_path_factory.mktemp("training")
    save_file(generate(load_manifest("wan21_comfy_dim8")), root / "vae.safetensors")
    teacher = _student()
    teacher.role = "teacher"
    save_student(teacher, root / "teacher.safetensors")
    clips = root / "clips"
    clips.mkdir()
    for i in range(4):
        _clip(clips / f"clip{i}.gif", i)
    return {"teacher": root / "teacher.safetensors", "vae": root / "vae.safetensors", "clips": clips}


def _distill_config(training: dict[str, Path], out: Path, **kw):
    from flash_vaed.distill.config import DistillConfig

    base = dict(
        teacher=str(training["teacher"]), encoder=str(training["vae"]), data=str(training["clips"]),
        out=str(out), preset="tiny", steps=2, clip_frames=5, crop_px=16, warmup_steps=1, log_every=1,
        calib_batches=1, evaluate=False,
    )  # fmt: skip
    return DistillConfig.from_dict(base | kw)


def _cli_argv(training: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        *("--teacher", str(training["teacher"]), "--encoder", str(training["vae"])),
        *("--data", str(training["clips"]), "--out", str(out), "--preset", "tiny", "--steps", "2"),
        *("--clip-frames", "5", "--crop-px", "16", "--calib-batches", "1", "--no-evaluate", "--no-progress"),
        "--no-plot",
        *extra,
    ]


SECRET = '{"db_password": "hunter2", "stages": "hunter2"}'


def test_a_preset_naming_a_file_is_refused_from_the_node_and_never_quoted(tmp_path):
    # High 1: through the node, `preset` was a path to any .json on the server, quoted back in the error
    from flash_vaed.distill.config import DistillError
    from flash_vaed.distill.job import DistillJob, JobError
    from flash_vaed.distill.student import resolve_spec

    secret = tmp_path / "secret.json"
    secret.write_text(SECRET)
    for preset in (str(secret), "../secret.json", "C:/x/secret.json", "tiny/../x.json", ""):
        with pytest.raises(JobError, match="neither a preset name nor a layout line") as info:
            DistillJob(tmp_path, "x", data=tmp_path, preset=preset)
        assert "hunter2" not in str(info.value)
    for preset in ("auto", "tiny", "wan21-wide", "16:dw3d:1/8:dw3d:1/8:frame2d:1/8:frame2d:1"):
        DistillJob(tmp_path, "x", data=tmp_path, preset=preset)  # names and layout lines still pass
    # the CLI may name a spec file: its errors name the file and the problem, never what it holds
    with pytest.raises(DistillError) as info:
        resolve_spec(str(secret), Family.WAN21)
    assert str(secret) in str(info.value) and "hunter2" not in str(info.value)
    for text in (SECRET, '{"family": "hunter2"}', '["hunter2"]', "hunter2"):
        with pytest.raises(ValueError) as info:
            DecoderSpec.from_json(text)
        assert "hunter2" not in str(info.value)


def test_resume_never_starts_a_run_over_an_existing_file(tiny_training, tmp_path):
    # High 2: resume=True with no run folder replaced a user's file of the output name with a student
    from flash_vaed.distill.job import DistillJob, JobError, run_job
    from support.reference_weights import generate, load_manifest

    models = tmp_path / "flash_vaed"
    models.mkdir()
    users = models / "my_wan_vae.safetensors"
    save_file({"w": torch.ones(3)}, users)
    before = users.read_bytes()
    job = DistillJob(
        models, "my_wan_vae", data=tiny_training["clips"], preset="tiny", steps=1, crop_px=16, clip_frames=5,
        resume=True, device="cpu",
    )  # fmt: skip
    with pytest.raises(JobError, match="my_wan_vae.safetensors already exists; resume found no run"):
        run_job(job, generate(load_manifest("wan21_comfy_dim8")))
    assert users.read_bytes() == before and not (models / "runs" / "my_wan_vae").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_the_cli_never_starts_a_run_in_a_folder_of_other_files(tiny_training, tmp_path, resume):
    # High 3: --out naming a folder of someone's files (a diffusers model, a typo) overwrote them
    from flash_vaed.distill.config import DistillError
    from training.distill import main

    out = tmp_path / "diffusers_vae"
    out.mkdir()
    mine = {
        "config.json": b'{"_class_name": "AutoencoderKLWan"}',
        "report.md": b"# mine",
        "student.safetensors": b"x",
    }
    for name, blob in mine.items():
        (out / name).write_bytes(blob)
    with pytest.raises(
        DistillError, match=r"not empty \(config.json, report.md, student.safetensors\).*--overwrite"
    ):
        main(_cli_argv(tiny_training, out, *(["--resume"] if resume else [])))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == mine
    if not resume:  # the explicit flag writes there
        main(_cli_argv(tiny_training, out, "--overwrite"))
        assert load_decoder(out / "student.safetensors").role == "student"


def test_stale_temp_files_of_a_killed_run_are_removed_on_start(tiny_training, tmp_path):
    # Low 15: a `.last.state.safetensors.*.tmp` left by a kill stayed even after a clean resumed finish
    from flash_vaed.distill.loop import run

    out = tmp_path / "run"
    run(_distill_config(tiny_training, out, steps=1))
    stale = [".last.state.safetensors.k2x9.tmp", ".last.safetensors.abc.tmp", ".config.json.tmp"]
    for name in stale:
        (out / name).write_bytes(b"half a file")
    (out / "notes.tmp").write_text("not ours")
    run(_distill_config(tiny_training, out, steps=2, resume=True))
    assert _leftovers(out) == ["notes.tmp"]


def _bad_layout(kind: str) -> str:
    return {
        "wide": "12000:dw3d:1/16:dw3d:1/8:frame2d:1/8:frame2d:1",
        "blocks": "16:dw3d:100000000/8:dw3d:1/8:frame2d:1/8:frame2d:1",
        "stages": "16:dw3d:1/8:frame2d:1/8:frame2d:1",
        "blocks33": "16:dw3d:33/8:dw3d:1/8:frame2d:1/8:frame2d:1",
    }[kind]


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("wide", "a width of 12000 channels; the limit is 4096"),
        ("blocks", "100000000 blocks in one stage; the limit is 32"),
        ("blocks33", "33 blocks in one stage; the limit is 32"),
        ("stages", "its 3 stages upsample 2x in time and 4x in space, a wan21 decoder 4x and 8x"),
    ],
)
def test_a_layout_is_size_checked_before_it_is_built(tiny_training, tmp_path, kind, says):
    # Medium 4: width 12000 allocated 15.5 GB, blocks=10**8 ran to a MemoryError, a stage too few trained
    # until a raw tensor-size RuntimeError
    from flash_vaed.distill.config import ConfigError
    from flash_vaed.distill.loop import run

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"refused before it is built: {says}"):
        run(_distill_config(tiny_training, out, preset=_bad_layout(kind)))
    assert not (out / "last.state.safetensors").exists()


def test_a_layout_whose_training_does_not_fit_in_memory_is_refused_naming_the_sizes():
    from flash_vaed.distill.config import ConfigError
    from flash_vaed.distill.limits import check_layout, training_need
    from flash_vaed.presets import resolve_spec

    spec = resolve_spec("wan21-official")
    params, elements = training_need(spec, batch=1, clip_frames=17, crop_px=128)
    assert params == sum(p.numel() for p in WanFamilyDecoder(spec).parameters())
    args = dict(batch=1, clip_frames=17, crop_px=128, device="cpu", preset="wan21-official")
    need = check_layout(spec, Family.WAN21, **args, available=2**40)
    assert need == params * 16 + elements * 8
    with pytest.raises(
        ConfigError, match=r"needs at least .* GiB \(5\.9 M parameters.*17-frame 128 px.*is free on cpu"
    ):
        check_layout(spec, Family.WAN21, **args, available=need - 1)


def _with_spec(student_file: Path, path: Path, edit) -> Path:
    """A copy of the tiny student file whose metadata spec is edited by `edit(spec_dict)`."""
    with safe_open(str(student_file), framework="pt") as f:
        meta = f.metadata()
    spec = json.loads(meta[META_SPEC])
    edit(spec)
    save_file(load_file(student_file), path, metadata={**meta, META_SPEC: json.dumps(spec)})
    return path


def test_a_spec_that_does_not_fit_the_file_is_refused_before_building(student_file, tmp_path, monkeypatch):
    # Medium 5: a few-KB file whose spec says blocks=10**8 built modules for 75-107 s and 3.7 GB
    from flash_vaed.checkpoint import load as load_module

    built = []

    class Spy(WanFamilyDecoder):
        def __init__(self, spec):
            built.append(spec)
            raise AssertionError("the decoder was built from a description that does not fit the file")

    monkeypatch.setitem(load_module._OUR_ARCHS, "wan", (DecoderSpec, Spy))
    for blocks, says in (
        (10**8, "implies at least 100000009 tensors, the file holds 58"),
        (2, "implies 64 tensors, the file holds 58"),
    ):
        path = _with_spec(
            student_file,
            tmp_path / f"b{blocks}.safetensors",
            lambda s, b=blocks: s["stages"][0].update(blocks=b),
        )
        with pytest.raises(CheckpointError, match=f"{says}.*nothing was built"):
            load_decoder(path)
    assert built == []


def test_an_ltx_spec_of_a_huge_mid_block_is_refused_before_building(tmp_path, monkeypatch):
    from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
    from flash_vaed.checkpoint import load as load_module
    from flash_vaed.latents import LatentNorm

    torch.manual_seed(0)
    ltx = FlashDecoder(
        Family.LTXV,
        "student",
        LTXStudentDecoder(LTXStudentSpec.tiny()),
        LatentNorm(torch.zeros(128), torch.ones(128)),
    )
    path = Path(save_student(ltx, tmp_path / "ltx.safetensors"))
    assert load_decoder(path).family is Family.LTXV
    huge = _with_spec(path, tmp_path / "huge.safetensors", lambda s: s.update(mid_layers=10**8))

    def refuse_to_build(spec):  # building 10**8 blocks took minutes and gigabytes
        raise AssertionError("the decoder was built from a description that does not fit the file")

    monkeypatch.setitem(load_module._OUR_ARCHS, "ltx", (LTXStudentSpec, refuse_to_build))
    with pytest.raises(CheckpointError, match="implies at least 100000006 tensors.*nothing was built"):
        load_decoder(huge)


@pytest.mark.parametrize("key", ["flash_vaed.spec", "config"])
def test_deeply_nested_metadata_json_is_a_checkpoint_error(student_file, tmp_path, key):
    # Low 8: 100 000 nested brackets raised RecursionError
    with safe_open(str(student_file), framework="pt") as f:
        meta = f.metadata()
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.safetensors"
    if key == "config":  # an LTX-Video VAE's ComfyUI config, read before its decoder is built
        keys = ["decoder.up_blocks.0.res_blocks.0.conv1.conv.weight", "decoder.conv_in.conv.weight"]
        save_file({k: torch.zeros(512, 1) for k in keys}, path, metadata={"config": deep})
    else:
        save_file(load_file(student_file), path, metadata={**meta, key: deep})
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_decoder(path)


MEMORY_PROBE = """
import resource, sys
from flash_vaed.distill import data

shape = data.ClipShape(5, 32)
videos, _ = data.scan_videos(sys.argv[1], shape)
reader = data.ClipReader(videos, shape)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for step in range(3):
    frames, _, _ = data.draw_batch(reader, 0, step, [0])
    assert frames.shape == (1, 3, 5, 32, 32)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown * (1 if sys.platform == "darwin" else 1024))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="reads the peak RSS with the resource module")
def test_training_memory_follows_the_crop_not_the_video(tmp_path):
    # Medium 6: one small GIF of large frames took a 32 px run from 397 MB to 4.5 GB: ClipReader decoded and
    # kept every full-resolution frame, and converted whole frames to float before cropping
    clips = tmp_path / "clips"
    clips.mkdir()
    frames = [Image.new("P", (1800, 1800), color=i) for i in range(30)]  # 292 MB as RGB, a 100 KB file
    for f in frames:
        f.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    frames[0].save(clips / "big.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    assert (clips / "big.gif").stat().st_size < 200_000
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(clips)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    grown = int(proc.stdout.split()[-1])
    assert grown < 60 * 2**20, f"reading 32 px crops grew the process by {grown / 2**20:.0f} MB"


def test_a_reader_keeps_small_videos_decoded_within_its_budget(tmp_path):
    from flash_vaed.distill import data

    for i in range(3):
        _clip(tmp_path / f"c{i}.gif", i)  # 9 frames of 40x40: 43 KB each decoded
    shape = data.ClipShape(5, 16)
    videos, _ = data.scan_videos(tmp_path, shape)
    crops = [data.Crop(v, 1, 3, 5, v == 1) for v in range(3)]
    unkept = [data.ClipReader(videos, shape, keep_videos=0).clip(c) for c in crops]
    reader = data.ClipReader(videos, shape, keep_videos=8, keep_bytes=100_000)
    for crop, expected in zip(crops, unkept, strict=True):
        assert torch.equal(reader.clip(crop), expected)
    assert sum(v.nbytes for v in reader._memory.values()) <= 100_000 and len(reader._memory) == 2
    full = (
        data.read_video(videos[0].path).permute(3, 0, 1, 2).float() / 127.5 - 1
    )  # the crop of the whole video
    torch.testing.assert_close(unkept[0], full[:, 1:6, 3:19, 5:21], rtol=0, atol=0)


def _nan_optimizer_state(state: Path) -> None:
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(state)
    key = sorted(k for k in tensors if k.startswith("optim.") and k.endswith(".exp_avg_sq"))[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, state, metadata=meta)


def test_a_nan_optimizer_state_is_refused_on_resume_and_keeps_the_student(tiny_training, tmp_path):
    # Medium 7: resuming from a NaN optimizer state trained a NaN student, reported as a success, which
    # replaced the previous finite one
    from flash_vaed.distill.config import DistillError
    from flash_vaed.distill.loop import run

    out = tmp_path / "run"
    run(_distill_config(tiny_training, out, steps=2))
    before = (out / "student.safetensors").read_bytes()
    _nan_optimizer_state(out / "last.state.safetensors")
    with pytest.raises(
        DistillError, match=r"last.state.safetensors: optimizer exp_avg_sq of \S+ holds \d+ NaN/Inf values"
    ):
        run(_distill_config(tiny_training, out, steps=4, resume=True))
    assert (out / "student.safetensors").read_bytes() == before


def test_a_step_that_makes_weights_non_finite_stops_before_any_save(tiny_training, tmp_path, monkeypatch):
    from flash_vaed.distill.config import DistillError
    from flash_vaed.distill.loop import run

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    with pytest.raises(DistillError, match=r"step 3 .*non-finite weights after the update.*step 2\) is kept"):
        run(_distill_config(tiny_training, out, steps=4, checkpoint_every=2))
    assert load_decoder(out / "last.safetensors").num_parameters() > 0  # finite: it loads
    assert not (out / "student.safetensors").exists()
    with pytest.raises(CheckpointError, match="refused to save.*NaN/Inf"):  # never a NaN student file
        broken = _student()
        next(broken.module.parameters()).data.fill_(float("nan"))
        save_student(broken, out / "last.safetensors")
    assert load_decoder(out / "last.safetensors").num_parameters() > 0


@pytest.mark.parametrize("what", ["decoder.conv1.weight", "latent_norm.std"])
def test_nan_weights_are_refused_at_load(student_file, tmp_path, what):
    # Low 10: NaN weights (or a NaN LTX latent_norm.std) decoded to all-NaN frames with no warning
    tensors = load_file(student_file)
    with safe_open(str(student_file), framework="pt") as f:
        meta = f.metadata()
    tensors |= {"latent_norm.mean": torch.zeros(16), "latent_norm.std": torch.ones(16)}
    tensors[what].view(-1)[:3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(tensors, path, metadata=meta)
    with pytest.raises(
        CheckpointError, match=rf"{what} holds 3 NaN/Inf values.*every decoded frame would be NaN"
    ):
        load_decoder(path)


def _resaved(student_file: Path, path: Path, meta_edit=None, tensors_edit=None) -> Path:
    with safe_open(str(student_file), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(student_file)
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, path, metadata=meta | (meta_edit or {}))
    return path


def test_raw_exceptions_from_odd_files_are_checkpoint_errors(student_file, tmp_path):
    # Low 9: each of these escaped as a raw RuntimeError / ValueError / AttributeError
    from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
    from flash_vaed.checkpoint.io import open_tensors
    from flash_vaed.checkpoint.load import build_decoder

    # a Wan-family student labelled as LTX-Video
    wan_as_ltx = _resaved(student_file, tmp_path / "wan_as_ltx.safetensors", {"flash_vaed.family": "ltxv"})
    with pytest.raises(CheckpointError, match="names the family ltxv but its student description is a wan21"):
        load_decoder(wan_as_ltx)
    # an LTX-Video student that reads 16 latent channels
    spec = dataclasses_replace(LTXStudentSpec.tiny(), latent_channels=16)
    odd = FlashDecoder(Family.LTXV, "student", LTXStudentDecoder(spec))
    with pytest.raises(CheckpointError, match="reads 16 latent channels.*reads 128"):
        load_decoder(save_student(odd, tmp_path / "ltx16.safetensors"))
    # meta-device and sparse tensors in a .pth
    sd = load_file(student_file)
    for kind, tensor, says in [
        ("meta", torch.empty(sd["decoder.conv1.weight"].shape, device="meta"), "meta device"),
        ("sparse", sd["decoder.conv1.weight"].to_sparse(), "sparse_coo tensor"),
    ]:
        torch.save(sd | {"decoder.conv1.weight": tensor}, tmp_path / f"{kind}.pth")
        with pytest.raises(CheckpointError, match=f"decoder.conv1.weight is .*{says}"):
            load_decoder(tmp_path / f"{kind}.pth")
    # a file replaced between detection (its header) and the read of its tensors
    path = Path(shutil.copy(student_file, tmp_path / "swapped.safetensors"))
    source = open_tensors(path)
    _resaved(
        student_file,
        path,
        tensors_edit=lambda t: t.update({"decoder.conv1.weight": torch.zeros(3, 16, 3, 3, 3)}),
    )
    with pytest.raises(CheckpointError, match=r"has shape \(3, 16, 3, 3, 3\).*changed while it was read"):
        build_decoder(source)


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_odd_latents_are_latent_errors():
    # Low 9: a nested-tensor latent raised a raw RuntimeError; meta and sparse latents were not refused
    dec, z = _student(), _z()
    nested = torch.nested.nested_tensor([z[0], _z(t=2)[0]], layout=torch.jagged)
    for latent, says in [
        (nested, "nested tensor"),
        (z.to_sparse(), "sparse_coo tensor"),
        (torch.empty(z.shape, device="meta"), "meta device"),
    ]:
        with pytest.raises(LatentError, match=says):
            dec.decode(latent)


@pytest.mark.parametrize("damage", ["shape", "history", "groups", "config"])
def test_a_tampered_run_state_is_a_distill_error(tiny_training, tmp_path, damage):
    # Low 9: a state file with a tensor of the wrong shape, a history that is no list, or empty optimizer
    # groups raised raw RuntimeError / AttributeError / ValueError on resume
    from flash_vaed.distill.config import DistillError
    from flash_vaed.distill.loop import run

    out = tmp_path / "run"
    run(_distill_config(tiny_training, out, steps=1))
    state = out / "last.state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(state)
    if damage == "shape":
        key = next(k for k in tensors if k.startswith("student."))
        tensors[key] = torch.zeros(2, 2)
    elif damage == "history":
        meta["history"] = json.dumps({"step": 1})
    elif damage == "groups":
        meta["optim_groups"] = "[]"
    else:
        meta["config"] = "[" * 100_000 + "]" * 100_000
    save_file(tensors, state, metadata=meta)
    says = (
        r"its metadata \(step, config, student spec\) is damaged"
        if damage == "config"
        else "the checkpoint does not fit"
    )
    with pytest.raises(
        DistillError, match=rf"last.state.safetensors: {says}.*(Move|move) the run folder away"
    ):
        run(_distill_config(tiny_training, out, steps=2, resume=True))


def test_a_huge_diffusers_config_is_not_read(student_file, tmp_path):
    # Low 11: a 1.5 GB config.json beside diffusers weights was read whole (peak 3.3 GB), though nothing uses it
    import tracemalloc

    from flash_vaed.checkpoint.io import open_tensors

    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(student_file, folder / "diffusion_pytorch_model.safetensors")
    with open(folder / "config.json", "wb") as f:
        f.truncate(256 * 2**20)  # sparse: no disk used
    tracemalloc.start()
    try:
        source = open_tensors(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"opening the folder took {peak / 2**20:.0f} MB"
    assert "diffusers_config" not in source.metadata


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("chunk_frames", 1.5), ("tile_px", float("nan")), ("tile_px", float("inf")), ("overlap_px", 0.5)],
)
def test_a_plan_number_that_is_no_whole_number_names_the_parameter(keyword, value):
    # Low 12: chunk_frames=1.5 and tile_px=nan/inf failed deep inside with errors not naming them
    from flash_vaed import FlashVAEDError

    with pytest.raises(FlashVAEDError, match=rf"{keyword} must be a whole number >= \d.*got {value}"):
        _student().decode(_z(), **{keyword: value, **({"tile_px": 64} if keyword == "overlap_px" else {})})


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("evil\u202egpj.exe", "U\\+202E"),
        ("CON", "device name on Windows"),
        ("nul", "device name on Windows"),
        ("COM1", "device name on Windows"),
        ("lpt9.backup", "device name on Windows"),
        ("a\x7fb", "U\\+007F"),
        ("line\u2028break", "U\\+2028"),
        ("zero\u200bwidth", "U\\+200B"),
        ("dots...", "ends with a dot"),
        ("x" * 300, "longer than 100 characters"),
        ("\u65e5" * 70, "200 bytes"),
    ],
)
def test_output_names_unsafe_on_any_platform_are_refused(tmp_path, name, says):
    # Low 13: U+202E, CON, nul, COM1, DEL, U+2028, zero-width space passed; 300 characters ended in OSError
    from flash_vaed.distill.job import JobError, job_paths

    with pytest.raises(JobError, match=f"output_name .* is not a plain file name .*{says}"):
        job_paths(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_plain_output_names_still_pass(tmp_path):
    from flash_vaed.distill.job import student_file_name

    for name in ("wan21_student", "café-2", "\u65e5\u672c\u8a9e", "a b", "COM10", "v1.2", "x" * 100):
        assert student_file_name(name) == f"{name}.safetensors"


def test_a_symlink_out_of_the_model_folders_says_what_to_do(tmp_path, student_file):
    # Low 14: ComfyUI lists a symlinked file (its loaders follow it), ours refused it without a way out
    from flash_vaed.checkpoint.io import find_model_file

    models, vae, elsewhere = tmp_path / "flash_vaed", tmp_path / "vae", tmp_path / "elsewhere"
    for folder in (models, vae, elsewhere):
        folder.mkdir()
    shutil.copy(student_file, elsewhere / "mine.safetensors")
    shutil.copy(student_file, vae / "inside.safetensors")
    (models / "mine.safetensors").symlink_to(elsewhere / "mine.safetensors")
    (models / "linked.safetensors").symlink_to(vae / "inside.safetensors")
    with pytest.raises(
        CheckpointError, match=r"mine.safetensors is a symlink to .*elsewhere.*extra_model_paths.yaml"
    ):
        find_model_file([models, vae], "mine.safetensors")
    assert (
        find_model_file([models, vae, elsewhere], "mine.safetensors")
        == (elsewhere / "mine.safetensors").resolve()
    )
    assert find_model_file([models, vae], "linked.safetensors") == (vae / "inside.safetensors").resolve()
    assert find_model_file([models, vae], "missing.safetensors") is None
    with pytest.raises(CheckpointError, match="tries to leave"):
        find_model_file([models, vae], "../elsewhere/mine.safetensors")


@pytest.mark.slow
def test_sigterm_mid_training_stops_after_a_checkpoint_like_ctrl_c(tiny_training, tmp_path):
    # Low 15: SIGTERM (kill, systemd, Docker, Slurm) had no handler: the run died without a checkpoint
    out = tmp_path / "run"
    argv = [sys.executable, str(REPO / "training" / "distill.py"), *_cli_argv(tiny_training, out)]
    argv[argv.index("--steps") + 1] = "400"
    argv += ["--checkpoint-every", "1000", "--log-level", "INFO"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # a few steps into the run
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != -signal.SIGTERM, "killed by SIGTERM: no handler"
    assert "SIGTERM: stopping after this step" in stderr
    with safe_open(str(out / "last.state.safetensors"), framework="pt") as f:  # saved when it stopped
        stopped = int(f.metadata()["step"])
    assert 1 <= stopped < 400 and _leftovers(out) == []
    resumed = [*argv, "--resume"]
    resumed[resumed.index("--steps") + 1] = str(stopped + 1)
    done = subprocess.run(resumed, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_decoder(out / "student.safetensors").role == "student"
