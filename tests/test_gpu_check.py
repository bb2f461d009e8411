"""The GPU check (bench/gpu/check.py) at toy sizes on CPU, so that it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.tiny_clips import write_clips

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "bench" / "gpu" / "check.py"
# the columns bench/decode_speed.py --json writes per decoder: one reader serves CPU and GPU results
SPEED_FIELDS = {"name", "latent_shape", "video", "seconds_median", "fps", "peak_mem_mb", "speedup_vs_comfy"}


def _run(out: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT="")
    return subprocess.run(
        [sys.executable, str(CHECK), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


@pytest.fixture
def tiny_clips_dir(tmp_path: Path) -> Path:
    # 9 frames of 64 px: the teacher trainer's longest clip and crop at smoke size; four templates to split
    return write_clips(tmp_path / "clips", count=4, frames=9, size=64, smooth=True)


def _results(out: Path) -> tuple[dict, str]:
    (json_path,) = out.glob("gpu_*_smoke.json")
    return json.loads(json_path.read_text()), json_path.with_suffix(".md").read_text()


@pytest.mark.comfy
def test_smoke_runs_every_stage(tmp_path, tiny_clips_dir):
    proc = _run(tmp_path / "out", "--clips", str(tiny_clips_dir), "--budget", "900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data, md = _results(tmp_path / "out")
    stages = data["stages"]
    assert set(stages) == {"correctness", "speed", "memory", "variants", "training", "profile", "speed720"}
    assert {s["status"] for s in stages.values()} == {"passed"}, stages
    # the teachers agree with ComfyUI's own models, the students with the official code's stored outputs
    for row in data["correctness"]["teachers"]:
        assert row["fp32_max_abs_vs_comfy"] < 5e-5, row
    for row in data["correctness"]["students"]:
        assert row["fp32_max_abs_vs_official"] < 1e-4 and row["finite"], row
    rows = data["speed"]["rows"]
    assert rows and all(SPEED_FIELDS <= set(r) and r["device"] and r["dtype"] for r in rows)
    assert any(r["name"].startswith("comfyui-") and r["seconds_median"] for r in rows)
    assert {r["job"] for r in data["training"]["rows"]} == {"distill", "train_teacher"}
    assert "| correctness | passed |" in md


def test_budget_skips_stages_with_a_note(tmp_path):
    proc = _run(tmp_path, "--budget", "0", "--only", "correctness,speed")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data, md = _results(tmp_path)
    assert {name: s["status"] for name, s in data["stages"].items()} == {
        "correctness": "skipped",
        "speed": "skipped",
    }
    assert "budget" in data["stages"]["speed"]["note"] and "Skipped" in md


def test_refuses_gpu_sizes_without_cuda(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the full check would run")
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2 and "--smoke" in proc.stderr
