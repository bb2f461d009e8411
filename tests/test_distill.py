"""Distillation: schedules and losses (pure), data (crops, split, bad files), the loop (each phase lowers its
loss, exact resume, NaN stop, interruption, DDP) and the CLI. Tiny models, tiny crops, CPU."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from flash_vaed import DecoderSpec, Family, FlashDecoder, Op, load_decoder, save_student
from flash_vaed.arch.protocol import decode_raw
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.distill import data, losses, schedule
from flash_vaed.distill.config import DistillConfig, DistillError, describe_mismatch, flat_fields
from flash_vaed.distill.loop import run
from flash_vaed.distill.resume import read_checkpoint
from support.reference_weights import generate, load_manifest

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- fixtures: a tiny teacher, a tiny Wan 2.1 VAE for the encoder, a few tiny clips ---------------


def write_clip(path: Path, frames: int, size: int = 40, seed: int = 0) -> Path:
    """A moving random texture as an animated GIF or lossless WebP."""
    rng = np.random.default_rng(seed)
    base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    images = [Image.fromarray(np.roll(base, 2 * t, axis=1)) for t in range(frames)]
    extra = {"lossless": True} if path.suffix == ".webp" else {}
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0, **extra)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    vae = root / "wan21_dim8.safetensors"
    save_file(generate(load_manifest("wan21_comfy_dim8")), vae)
    torch.manual_seed(0)
    spec = DecoderSpec.tiny(Family.WAN21, Op.FULL_3D, Op.FULL_3D)
    teacher = FlashDecoder(Family.WAN21, "teacher", WanFamilyDecoder(spec).eval())
    save_student(teacher, root / "tiny_teacher.safetensors")
    return {"vae": vae, "teacher": root / "tiny_teacher.safetensors"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for i, suffix in enumerate([".gif", ".webp", ".gif", ".webp"]):
        write_clip(root / f"clip{i}{suffix}", frames=9, seed=i)
    return root


def config(models, clips, out: Path, **kw) -> DistillConfig:
    base = dict(
        teacher=str(models["teacher"]),
        encoder=str(models["vae"]),
        data=str(clips),
        out=str(out),
        preset="tiny",
        steps=4,
        clip_frames=5,
        crop_px=16,
        warmup_steps=1,
        lr=3e-3,
        log_every=1,
        checkpoint_every=100,
        calib_batches=1,
        evaluate=False,
    )
    return DistillConfig.from_dict(base | kw)


LOSS_KEYS = ("loss", *schedule.TERMS)


def losses_of(history: list[dict]) -> list[tuple]:
    return [tuple(h[k] for k in ("step", "phase", "lr", *LOSS_KEYS)) for h in history]


# ---- schedule -----------------------------------------------------------------------------------


def test_phase_spans_tile_the_run():
    for total in (1, 3, 4, 10, 997):
        spans = schedule.phase_spans(total, (0.25, 0.25, 0.5))
        assert [p for p, _, _ in spans] == [1, 2, 3]
        assert spans[0][1] == 0 and spans[-1][2] == total
        assert all(spans[i][2] == spans[i + 1][1] for i in range(2))
    assert schedule.phase_spans(10, (0, 1, 0)) == [(1, 0, 0), (2, 0, 10), (3, 10, 10)]
    assert [schedule.phase_at(s, 8, (0.25, 0.25, 0.5)) for s in range(8)] == [1, 1, 2, 2, 3, 3, 3, 3]


def test_loss_weights_move_in_three_phases_without_jumps():
    sched = schedule.PhaseSchedule(keep=0.1, blend=0.2, w_gt=0.5)
    total = 2000
    ws = [schedule.loss_weights(s, total, sched) for s in range(total)]
    first = ws[0]
    assert first["feat_deep"] == 1 and all(first[k] == 0 for k in schedule.TERMS if k != "feat_deep")
    mid2, end2 = ws[700], ws[999]  # phase 2 is steps 500-999
    assert mid2["feat_middle"] == 1 and math.isclose(mid2["feat_deep"], 0.1)
    assert end2["l1"] == 0 and end2["feat_shallow"] == 0
    last = ws[-1]
    assert last["feat_shallow"] == 1 and last["l1"] == 1 and last["l2"] == 1 and last["ssim"] == 0.2
    assert math.isclose(last["feat_deep"], 0.1) and math.isclose(last["feat_middle"], 0.1)
    assert last["gt_l1"] == 0.5
    # dynamic but continuous: no weight jumps by more than a few % from one step to the next
    jumps = [max(abs(a[k] - b[k]) for k in schedule.TERMS) for a, b in zip(ws, ws[1:], strict=False)]
    assert max(jumps) < 0.05


def test_lr_warmup_then_cosine():
    lrs = [schedule.lr_at(s, 100, 1e-3, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4)
    assert schedule.lr_at(0, 1, 1e-3, 0) == pytest.approx(1e-3)


def test_schedule_rejects_bad_fractions():
    with pytest.raises(ValueError, match="phase fractions"):
        schedule.PhaseSchedule(fractions=(0, 0, 0))
    with pytest.raises(DistillError):
        DistillConfig.from_dict({"teacher": "t", "data": "d", "out": "o", "phases": (1.0, -1.0, 1.0)})


# config.json as the runs before the nested PhaseSchedule wrote it (written by that code, flat, one key per flag)
EARLIER_CONFIG = """{"amp": true, "batch_size": 1, "blend": 0.3, "cache": false, "calib_batches": 2,
 "checkpoint_every": 100, "clip_frames": 17, "crop_pool": 0, "crop_px": 128, "data": "clips", "device": "auto",
 "encoder": null, "eval_crops": 2, "eval_px": null, "evaluate": true, "flip": true, "grad_clip": 1.0,
 "holdout": 0.1, "init": "auto", "keep": 0.1, "keep_videos": 8, "log_every": 10, "lr": 0.0002,
 "min_lr_ratio": 0.1, "out": "runs/x", "phases": [0.5, 0.25, 0.25], "preset": "tiny", "resize_short": null,
 "resume": false, "seed": 3, "steps": 2000, "teacher": "vae-sha256:0123456789abcdef", "w_feat": 1.0,
 "w_gt": 0.5, "w_l1": 1.0, "w_l2": 1.0, "w_ssim": 0.2, "warmup_steps": 100, "weight_decay": 0.0}"""


def test_config_reads_and_writes_the_flat_json_of_earlier_runs():
    cfg = DistillConfig.from_json(EARLIER_CONFIG)
    assert cfg.schedule == schedule.PhaseSchedule(fractions=(0.5, 0.25, 0.25), blend=0.3, w_gt=0.5)
    assert (cfg.teacher, cfg.seed, cfg.preset) == ("vae-sha256:0123456789abcdef", 3, "tiny")
    assert json.loads(cfg.to_json()) == json.loads(EARLIER_CONFIG)
    older = {k: v for k, v in json.loads(EARLIER_CONFIG).items() if k != "calib_batches"}
    assert DistillConfig.from_dict(older).calib_batches == 2  # a setting added later takes its default
    with pytest.raises(DistillError, match="unknown DistillConfig fields.*nope"):
        DistillConfig.from_dict(older | {"nope": 1})


def test_describe_mismatch_names_what_a_resume_may_not_change():
    import dataclasses

    saved = DistillConfig.from_json(EARLIER_CONFIG)
    later = dataclasses.replace(
        saved, steps=9000, seed=4, schedule=dataclasses.replace(saved.schedule, blend=0.5)
    )
    assert describe_mismatch(saved, dataclasses.replace(saved, steps=9000, resume=True)) == ""
    assert describe_mismatch(saved, later) == "blend: 0.3 -> 0.5, seed: 3 -> 4"
    assert describe_mismatch(saved, later, {"seed": "the seed"}) == "blend: 0.3 -> 0.5, the seed: 3 -> 4"


# ---- losses -------------------------------------------------------------------------------------


def test_pixel_losses_and_psnr():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    b = (a + 0.1).clamp(-1, 1)
    assert losses.pixel_l1(a, a) == 0 and losses.pixel_l2(a, a) == 0
    t = torch.zeros(1, 3, 2, 8, 8)
    assert losses.psnr(t + 0.1, t) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert losses.pixel_l1(b, a) > 0


def test_ssim_properties():
    torch.manual_seed(0)
    a = torch.rand(1, 3, 3, 24, 24) * 2 - 1
    assert float(losses.ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    noisy = [a + s * torch.randn_like(a) for s in (0.05, 0.2, 0.8)]
    values = [float(losses.ssim(n, a)) for n in noisy]
    assert values[0] > values[1] > values[2] and values[0] < 1
    assert float(losses.ssim(noisy[1], a)) == pytest.approx(float(losses.ssim(a, noisy[1])), abs=1e-6)
    # frames smaller than the 11-px window use the largest odd window that fits
    small = torch.rand(1, 3, 2, 6, 6)
    assert float(losses.ssim(small, small)) == pytest.approx(1.0, abs=1e-6)
    x = noisy[1].clone().requires_grad_(True)
    losses.ssim_loss(x, a).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_feature_alignment_pairs_groups_and_adapters():
    rs = [(1, 2, 2), (2, 4, 4), (5, 8, 8), (5, 16, 16)]
    assert losses.pair_resolutions(reversed(rs), rs + [(9, 32, 32)]) == rs
    assert list(losses.depth_groups(rs).values()) == ["deep", "deep", "middle", "shallow"]
    assert list(losses.depth_groups(rs[:3]).values()) == ["deep", "middle", "shallow"]
    torch.manual_seed(0)
    s = torch.randn(2, 4, 3, 5, 5)
    # an identity-shrunk fit recovers equal features exactly, even on few rows
    same = losses.FeatureAdapters({(3, 5, 5): (4, 4)})
    same.fit({(3, 5, 5): s}, {(3, 5, 5): s})
    assert float(losses.feature_loss(s, s, same[(3, 5, 5)]).detach()) < 1e-10
    s = torch.randn(2, 4, 3, 20, 20)
    mix = torch.randn(6, 4)
    t = torch.einsum("oc,bcthw->bothw", mix, s) + 0.5
    adapters = losses.FeatureAdapters({(3, 5, 5): (4, 6)})
    with torch.no_grad():
        before = float(losses.feature_loss(s, t, adapters[(3, 5, 5)]))
        adapters.fit({(3, 5, 5): s}, {(3, 5, 5): t})
        after = float(losses.feature_loss(s, t, adapters[(3, 5, 5)]))
    assert before > 0.1 and after < 1e-4
    with torch.no_grad():
        terms = losses.feature_terms({(3, 5, 5): s}, {(3, 5, 5): t}, {(3, 5, 5): "middle"}, adapters)
    assert set(terms) == {"feat_deep", "feat_middle", "feat_shallow"}
    assert float(terms["feat_deep"]) == 0 and float(terms["feat_middle"]) == pytest.approx(after)


def test_stage_recorder_sees_every_resolution_of_teacher_and_student():
    torch.manual_seed(0)
    teacher = WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, Op.FULL_3D, Op.FULL_3D))
    student = WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21))  # 2D (frame-folded) shallow stages
    z = torch.randn(2, 16, 2, 3, 3)
    feats = []
    for m in (teacher, student):
        with losses.StageRecorder(m) as rec, torch.no_grad():
            rec.start(2)
            decode_raw(m, z)
        feats.append(rec.features)
    want = [(2, 3, 3), (3, 6, 6), (5, 12, 12), (5, 24, 24)]
    assert losses.pair_resolutions(feats[1], feats[0]) == want
    assert all(f.shape[0] == 2 and f.dim() == 5 for f in feats[1].values())
    assert not teacher._forward_hooks and not any(m._forward_hooks for m in student.modules())


def _features(module, z):
    with losses.StageRecorder(module) as rec, torch.no_grad():
        rec.start(z.shape[0])
        video = decode_raw(module, z)
    return video, rec.features


@pytest.mark.parametrize("teacher_kind", ["wan22", "ltx-noisy"])
def test_stage_features_pair_for_wan22_and_ltx(teacher_kind):
    from flash_vaed.arch.ltx import LTXTeacherDecoder
    from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
    from flash_vaed.arch.wan22 import Wan22Decoder

    torch.manual_seed(0)
    if teacher_kind == "wan22":
        teacher, student = (
            Wan22Decoder(dec_dim=8, z_dim=48, blocks=1),
            WanFamilyDecoder(DecoderSpec.tiny(Family.WAN22)),
        )
        z = torch.randn(1, 48, 2, 2, 2)
    else:  # a reduced LTX 0.9.1 layout: timestep-conditioned, injects noise (the target uses zero noise)
        res = {"num_layers": 1, "inject_noise": True}
        up = ["compress_all", {"residual": True, "multiplier": 2}]
        config = {"blocks": [["res_x", res], up, ["res_x", res], up, ["res_x", res], up, ["res_x", res]]}
        config |= {"dims": 3, "norm_layer": "pixel_norm", "timestep_conditioning": True}
        config |= {"latent_channels": 128, "patch_size": 4, "spatial_padding_mode": "zeros"}
        teacher = LTXTeacherDecoder.from_comfy_config(config, base_channels=4)
        student = LTXStudentDecoder(LTXStudentSpec.tiny())
        z = torch.randn(1, 128, 2, 2, 2)
    t_video, t_feats = _features(teacher.eval(), z)
    s_video, s_feats = _features(student, z)
    assert t_video.shape == s_video.shape
    assert len(losses.pair_resolutions(s_feats, t_feats)) == 4
    torch.testing.assert_close(_features(teacher, z)[0], t_video, rtol=0, atol=0)  # deterministic target


# ---- data ---------------------------------------------------------------------------------------


def test_reads_webp_and_gif_frames_exactly(tmp_path):
    path = write_clip(tmp_path / "a.webp", frames=6, size=24)
    video = data.read_video(path)
    assert video.shape == (6, 24, 24, 3) and video.dtype == torch.uint8
    assert torch.equal(data.read_video(path, 2, 3), video[2:5])
    assert data.probe_video(path) == (6, 24, 24)
    gif = write_clip(tmp_path / "b.gif", frames=5, size=24)
    assert data.read_video(gif).shape == (5, 24, 24, 3)


def test_mp4_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "c.mp4"
    try:
        with av.open(str(path), "w") as out:
            stream = out.add_stream("mpeg4", rate=8)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for t in range(9):
                img = np.full((32, 32, 3), 20 * t, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    except Exception as err:  # no encoder in this PyAV build
        pytest.skip(f"cannot write mp4 here: {err}")
    assert data.probe_video(path) == (9, 32, 32)
    frames = data.read_video(path, 4, 5)
    assert frames.shape == (5, 32, 32, 3)
    assert abs(int(frames[0].float().mean()) - 80) <= 3


def test_scan_skips_bad_videos_with_a_warning(tmp_path, caplog):
    write_clip(tmp_path / "good.gif", frames=9)
    write_clip(tmp_path / "short.webp", frames=3)
    write_clip(tmp_path / "small.gif", frames=9, size=8)
    (tmp_path / "corrupt.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPnonsense")
    (tmp_path / "notes.txt").write_text("not a video")
    with caplog.at_level(logging.WARNING):
        videos, skipped = data.scan_videos(tmp_path, data.ClipShape(5, 16))
    assert [v.name for v in videos] == ["good.gif"]
    assert [line.split(":")[0] for line in skipped] == ["corrupt.webp", "short.webp", "small.gif"]
    text = caplog.text
    assert "corrupt.webp: unreadable" in text and "short.webp: 3 frames" in text and "small.gif" in text


def test_too_few_videos_fail_clearly(tmp_path, models):
    write_clip(tmp_path / "short.gif", frames=3)
    with pytest.raises(DistillError, match="no usable training videos.*short.gif: 3 frames, a clip needs 5"):
        run(config(models, tmp_path, tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match="no videos in"):
        data.scan_videos(empty, data.ClipShape(5, 16))
    with pytest.raises(data.DataError, match="4k\\+1"):
        data.ClipShape(6, 16).check(4, 8)
    with pytest.raises(data.DataError, match="multiple of 32"):
        data.ClipShape(9, 48).check(8, 32)


def test_crops_are_deterministic_per_step_and_slot(clips):
    shape = data.ClipShape(5, 16)
    videos, _ = data.scan_videos(clips, shape)
    a = [data.crop_for(videos, shape, 7, step, slot) for step in range(5) for slot in range(3)]
    b = [data.crop_for(videos, shape, 7, step, slot) for step in range(5) for slot in range(3)]
    assert a == b and len(set(a)) > 10
    assert data.crop_for(videos, shape, 8, 0, 0) != data.crop_for(videos, shape, 7, 0, 0)
    pooled = {data.crop_for(videos, shape, 7, s, 0, pool=2)[0] for s in range(30)}
    assert len(pooled) == 2
    for crop, _ in a:
        info = videos[crop.video]
        assert crop.t0 + 5 <= info.frames and crop.y0 + 16 <= info.height and crop.x0 + 16 <= info.width
    reader = data.ClipReader(videos, shape)
    frames, crops, _ = data.draw_batch(reader, 7, 3, [0, 1])
    again, _, _ = data.draw_batch(data.ClipReader(videos, shape, keep_videos=0), 7, 3, [0, 1])
    assert frames.shape == (2, 3, 5, 16, 16) and torch.equal(frames, again)
    assert frames.min() >= -1 and frames.max() <= 1


def test_holdout_split_is_by_file_fixed_and_disjoint(clips):
    videos, _ = data.scan_videos(clips, data.ClipShape(5, 16))
    train, held = data.split_holdout(videos, 0.25, seed=0)
    assert len(held) == 1 and len(train) == 3
    assert {v.name for v in train}.isdisjoint({v.name for v in held})
    assert data.split_holdout(list(reversed(videos)), 0.25, seed=0) == (train, held)
    assert data.split_holdout(videos[:1], 0.5, 0) == (videos[:1], [])


# ---- the loop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_a_few_steps_of_each_phase_lower_its_loss(phase, models, clips, tmp_path):
    fractions = tuple(1.0 if p == phase else 0.0 for p in (1, 2, 3))
    # one fixed clip (a pool of 1), the phase's weights from the first step on (blend 0), pruned init
    cfg = config(
        models, clips, tmp_path, phases=fractions, blend=0.0, steps=8, crop_pool=1, lr=1e-3, warmup_steps=3
    )
    history = run(cfg).history
    assert all(h["phase"] == phase for h in history)
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.85 * first, [round(h["loss"], 4) for h in history]


def test_pruned_init_and_outputs(models, clips, tmp_path):
    result = run(config(models, clips, tmp_path, steps=2, evaluate=True, eval_crops=1))
    assert result.info["init"] == "prune"
    student = load_decoder(result.student_path)
    assert student.role == "student" and student.module.spec == DecoderSpec.tiny(Family.WAN21)
    for name in ("last.safetensors", "last.state.safetensors", "config.json", "report.json", "report.md"):
        assert (tmp_path / name).is_file(), name
    assert DistillConfig.from_json((tmp_path / "config.json").read_text()) == config(
        models, clips, tmp_path, steps=2, evaluate=True, eval_crops=1
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["split"] == "held-out videos" and report["crops"] == 1
    assert set(report["mean"]) >= {
        "psnr_vs_teacher",
        "ssim_vs_teacher",
        "psnr_vs_real",
        "teacher_psnr_vs_real",
    }
    assert report["speed"]["ratio_student_over_teacher"] > 0
    # the final student decodes like the one the loop returned
    z = torch.randn(1, 16, 2, 2, 2)
    torch.testing.assert_close(student.decode(z), result.student.decode(z), rtol=0, atol=0)


class Stop(Exception):
    pass


def test_resume_is_exact(models, clips, tmp_path):
    straight = run(config(models, clips, tmp_path / "a"))

    def stop_at_2(done, total):
        if done == 2:
            raise Stop

    cfg = config(models, clips, tmp_path / "b")
    with pytest.raises(Stop):
        run(cfg, on_progress=stop_at_2)
    _, meta = read_checkpoint(tmp_path / "b" / "last.state.safetensors")
    assert meta["step"] == "2"
    assert load_decoder(tmp_path / "b" / "last.safetensors").role == "student"
    with pytest.raises(DistillError, match="already holds a run"):
        run(cfg)
    with pytest.raises(DistillError, match="another config.*lr"):
        run(config(models, clips, tmp_path / "b", resume=True, lr=1e-2))
    resumed = run(config(models, clips, tmp_path / "b", resume=True))
    assert losses_of(resumed.history) == losses_of(straight.history)
    a, b = load_file(straight.student_path), load_file(resumed.student_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_gives_the_same_losses(models, clips, tmp_path):
    plain = run(config(models, clips, tmp_path / "a", crop_pool=2))
    cached = run(config(models, clips, tmp_path / "b", crop_pool=2, cache=True))
    assert len(list((tmp_path / "b" / "cache").glob("*.safetensors"))) == 2
    assert losses_of(plain.history) == losses_of(cached.history)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(models, clips, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_l2 = losses.pixel_l2

    def l2_nan_at_step_3(pred, target):
        calls["n"] += 1
        return real_l2(pred, target) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(losses, "pixel_l2", l2_nan_at_step_3)
    cfg = config(models, clips, tmp_path, checkpoint_every=2)
    with pytest.raises(DistillError, match=r"step 3 .*non-finite loss in loss, l2.*step 2\) is kept"):
        run(cfg)
    _, meta = read_checkpoint(tmp_path / "last.state.safetensors")
    assert meta["step"] == "2" and len(json.loads(meta["history"])) == 2
    assert load_decoder(tmp_path / "last.safetensors").num_parameters() > 0
    monkeypatch.setattr(losses, "pixel_l2", real_l2)
    assert len(run(config(models, clips, tmp_path, checkpoint_every=2, resume=True)).history) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_json: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result = run(DistillConfig.from_json(cfg_json))
    torch.save(
        {"weights": result.student.module.state_dict(), "history": losses_of(result.history)},
        Path(out) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(models, clips, tmp_path):
    cfg = config(models, clips, tmp_path / "run", steps=3, checkpoint_every=2, batch_size=1)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_json(), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["history"] == r1["history"]
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    _, meta = read_checkpoint(tmp_path / "run" / "last.state.safetensors")
    assert meta["world_size"] == "2" and meta["step"] == "3"
    # the ranks trained on different clips: a 1-process run gives other losses
    single = run(config(models, clips, tmp_path / "single", steps=3))
    assert losses_of(single.history) != r0["history"]


# ---- the CLI ------------------------------------------------------------------------------------


def test_cli_help_documents_every_flag():
    proc = subprocess.run(
        [sys.executable, str(REPO / "training" / "distill.py"), "--help"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name, f, _ in flat_fields():
        assert "--" + name.replace("_", "-") in proc.stdout, name
        assert f.metadata["help"], name


def test_cli_two_steps_writes_student_plot_and_report(models, clips, tmp_path):
    pytest.importorskip("matplotlib")
    from training.distill import main

    out = tmp_path / "cli"
    argv = [
        *("--teacher", str(models["teacher"]), "--encoder", str(models["vae"]), "--data", str(clips)),
        *("--out", str(out), "--preset", "tiny", "--steps", "2", "--clip-frames", "5", "--crop-px", "16"),
        *("--calib-batches", "1", "--eval-crops", "1", "--no-progress"),
    ]
    assert main(argv) == out
    assert load_decoder(out / "student.safetensors").role == "student"
    png = out / "loss.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "student vs teacher" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["training"]["phases"]


@pytest.mark.slow
def test_real_clips_from_the_workflow_templates(models, tmp_path):
    media = pytest.importorskip("comfyui_workflow_templates_media_video")
    found = sorted((Path(media.__file__).parent / "templates").glob("*.webp"))[:3]
    if len(found) < 3:
        pytest.skip("the templates package ships fewer than 3 animated WebP clips")
    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    for f in found:
        (clips_dir / f.name).symlink_to(f)
    result = run(
        config(
            models,
            clips_dir,
            tmp_path / "out",
            steps=3,
            clip_frames=9,
            crop_px=64,
            evaluate=True,
            eval_crops=1,
        )
    )
    assert len(result.history) == 3 and all(math.isfinite(h["loss"]) for h in result.history)
    assert result.report["split"] == "held-out videos" and len(result.report["videos"]) == 1
