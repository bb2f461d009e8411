"""`make demo` and bench/quality.py end to end on a tiny teacher trained here, and the quality measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from flash_vaed import load_decoder, load_encoder
from flash_vaed.errors import FlashVAEDError
from flash_vaed.quality import held_out_clips, measure, write_report
from support.tiny_clips import write_clips
from training.demo import held_out_names, link_training_clips
from training.demo import main as demo_main
from training.teacher import TeacherConfig, export_teacher, run

REPO = Path(__file__).resolve().parents[1]
# the demo's recipe (deep stages dw3d at full width, shallow frame2d narrower) for a dim-4 teacher
TINY_LAYOUT = "mid=16:dw3d/16:dw3d/16:dw3d/4:frame2d/2:frame2d"


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher file with its card, clip folder): a dim-4 Wan 2.1 VAE trained 2 steps on 64 px clips."""
    root = tmp_path_factory.mktemp("teacher")
    clips = write_clips(root / "clips", count=4, frames=9, size=64, smooth=True)
    cfg = TeacherConfig(
        data=str(clips), out=str(root / "run"), dim=4, steps=2, clip_frames=5, crop_px=16, holdout=0.25,
        eval_every=2, eval_frames=5, eval_px=16, checkpoint_every=2, threads=1,
    )  # fmt: skip
    result = run(cfg)
    path = export_teacher(result["ema"], root / "teacher.safetensors", {"held_out": result["held_out"]})
    return path, clips


def test_held_out_clips_never_reach_the_student(tiny_teacher, tmp_path):
    teacher, clips = tiny_teacher
    held = held_out_names(teacher)
    linked = link_training_clips(clips, held, tmp_path / "train")
    names = {p.name for p in linked.iterdir()}
    assert names and names.isdisjoint(held)
    assert names | set(held) == {p.name for p in clips.iterdir()}


def test_teacher_without_card_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(FlashVAEDError, match="training card"):
        held_out_names(tmp_path / "t.safetensors")


def test_quality_of_a_copy_is_full_retention_and_of_zeros_is_low(tiny_teacher, tmp_path, one_thread):
    teacher_path, clips = tiny_teacher
    enc, teacher = load_encoder(teacher_path), load_decoder(teacher_path)
    zero = load_decoder(teacher_path)
    for p in zero.module.decoder.head.parameters():
        p.data.zero_()
    frames = held_out_clips(clips, held_out_names(teacher_path), 5, 32)
    report = measure(enc, teacher, {"copy": load_decoder(teacher_path), "zero": zero}, frames, repeats=1)
    rows = {r.name: r for r in report.rows}
    assert rows["copy"].retention == pytest.approx(1.0)
    assert rows["copy"].psnr_teacher > 90
    assert rows["zero"].psnr_teacher < rows["copy"].psnr_teacher - 50
    assert rows["teacher"].speedup == 1.0 and rows["copy"].seconds_median > 0
    files = write_report(report, tmp_path, strip=(frames[0][1], enc, teacher, zero))
    assert "| copy |" in files["markdown"].read_text()
    assert json.loads(files["json"].read_text())["rows"][1]["name"] == "copy"
    strip = Image.open(files["strip"])
    assert strip.size == (4 * 32 + 3 * 4, 32)
    assert Image.open(files["plot"]).size[0] > 100


def test_demo_distils_and_reports(tiny_teacher, tmp_path, capsys, one_thread):
    teacher, clips = tiny_teacher
    args = ["--teacher", str(teacher), "--data", str(clips), "--out", str(tmp_path / "demo"), "--steps", "2"]
    args += ["--layout", TINY_LAYOUT, "--eval-frames", "5", "--eval-px", "32", "--speed-latent", "16x2x2x2"]
    assert demo_main(args) == 0
    printed = capsys.readouterr().out
    assert "| flash-vaed |" in printed and "retention" in printed
    report = tmp_path / "demo" / "report"
    for name in ("quality.md", "quality.json", "quality_vs_speed.png", "strip.png", "loss.png"):
        assert (report / name).is_file(), name
    student = load_decoder(tmp_path / "demo" / "student" / "student.safetensors")
    assert student.num_parameters() < load_decoder(teacher).num_parameters()


@pytest.mark.slow
def test_bench_quality_script_runs(tiny_teacher, tmp_path):
    teacher, clips = tiny_teacher
    cmd = [
        sys.executable,
        str(REPO / "bench" / "quality.py"),
        "--teacher",
        str(teacher),
        "--data",
        str(clips),
    ]
    cmd += ["--distill", TINY_LAYOUT, "--steps", "1", "--eval-frames", "5", "--eval-px", "32"]
    cmd += ["--speed-latent", "16x2x2x2", "--repeats", "1", "--out", str(tmp_path / "q")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| custom0 |" in done.stdout
