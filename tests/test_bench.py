"""bench/decode_speed.py and bench/decode_memory.py run end to end at a tiny shape and report what they claim.

The scripts run as subprocesses, as a user runs them (ComfyUI is imported by decode_speed.py, never by
pytest). Numbers at this shape mean nothing; the tests check the plumbing and the JSON fields.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import comfy_env

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
TINY = ["--latent", "16x2x2x2", "--repeats", "1"]
SPEED_FIELDS = {"name", "seconds_median", "fps", "peak_mem_mb", "speedup_vs_comfy"}


def _run(script: str, args: list[str], cwd: Path, comfy: Path | None = None) -> dict:
    env = comfy_env()  # no PYTHONPATH of the caller's, offline
    # flash_vaed even where it is not pip-installed; decode_speed.py takes the repository root off
    # sys.path again before it imports ComfyUI, so our nodes/ cannot shadow ComfyUI's nodes.py
    env["PYTHONPATH"] = str(REPO)
    if comfy is not None:
        env["FLASH_VAED_COMFYUI"] = str(comfy)
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", "-"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)  # stdout is exactly one JSON object; the log went to stderr


def _speed_module():
    spec = importlib.util.spec_from_file_location("decode_speed", BENCH / "decode_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ltx_latent_decodes_at_least_the_wan_video():
    ds = _speed_module()
    assert ds.ltx_latent_for((16, 5, 30, 52)) == (128, 3, 8, 13)  # 17x240x416 -> 17x256x416
    assert ds.ltx_latent_for((16, 21, 60, 104)) == (128, 11, 15, 26)  # 81x480x832 exactly
    assert ds.ltx_latent_for((16, 2, 2, 2)) == (128, 2, 2, 2)  # reflect padding needs 2x2
    for wan in ((16, 5, 30, 52), (16, 21, 90, 160), (16, 3, 16, 24)):
        f, h, w = ds.video_of(ds.Family.WAN21, wan)
        lf, lh, lw = ds.video_of(ds.Family.LTXV, ds.ltx_latent_for(wan))
        assert lf >= f and lh >= h and lw >= w


@pytest.mark.comfy
@pytest.mark.slow
def test_decode_speed_against_comfyui(tmp_path, comfy_root):
    result = _run("decode_speed.py", [*TINY, "--require-comfy"], tmp_path, comfy_root)
    rows = {r["name"]: r for r in result["decoders"]}
    for row in rows.values():
        assert SPEED_FIELDS <= row.keys(), row
        assert row["error"] is None, row
        assert row["seconds_median"] > 0 and row["fps"] > 0 and row["speedup_vs_comfy"] > 0
    assert result["comfyui"]["version"] == "0.3.75"
    assert rows["comfyui-wan21"]["speedup_vs_comfy"] == 1.0
    assert rows["comfyui-ltxv-v0"]["speedup_vs_comfy"] == 1.0
    # same weights, same latent: our teachers compute ComfyUI's function
    for name in ("teacher-wan21", "teacher-ltxv-v0"):
        assert rows[name]["check_vs_comfy"]["max_abs_diff"] < 1e-4, rows[name]
    assert {"student-wan21-official", "student-ltxv-official"} <= rows.keys()
    assert "streaming_slowdown_vs_whole" in rows["student-wan21-official[chunk=1]"]
    if sys.platform == "linux":
        assert all(r["peak_mem_mb"] is not None for r in rows.values())


@pytest.mark.slow
def test_decode_speed_without_comfyui(tmp_path):
    args = [*TINY, "--family", "wan21", "--no-comfy", "--no-presets", "--stream-chunks", ""]
    result = _run("decode_speed.py", args, tmp_path)
    rows = {r["name"]: r for r in result["decoders"]}
    assert set(rows) == {"teacher-wan21", "student-wan21-official"}
    for row in rows.values():
        assert SPEED_FIELDS <= row.keys() and row["speedup_vs_comfy"] is None
        assert row["speedup_vs_teacher"] > 0


@pytest.mark.slow
def test_decode_memory(tmp_path):
    plot = tmp_path / "memory.png"
    args = [*TINY, "--chunks", "1", "--tiles", "8", "--overlap", "0", "--plot", str(plot)]
    result = _run("decode_memory.py", args, tmp_path)
    runs = {r["mode"]: r for r in result["runs"]}
    assert set(runs) == {"whole", "stream-1", "stream-1 tile-8"}
    for run in runs.values():
        assert not run.get("error"), run
        assert run["seconds_median"] > 0 and run["output_mb"] > 0
        if sys.platform == "linux":
            assert run["peak_mb"] > 0 and run["peak_delta_mb"] is not None
    # the official student keeps causal context in its deep 3D stages
    assert runs["stream-1"]["state_mb"] > 0
    assert runs["stream-1 tile-8"]["state_mb"] < runs["stream-1"]["state_mb"]  # one tile's context
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.is_file() and result["plot"] == str(plot)
