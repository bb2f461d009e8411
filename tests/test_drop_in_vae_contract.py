"""The drop-in VAE against the `comfy.sd.VAE` of every ComfyUI release it has to stand in for.

`FlashVAE` is a `comfy.sd.VAE` built without `VAE.__init__`, so what a release's `__init__` sets and what
its methods take must be provided by hand. tests/data/comfy_vae/ records those surfaces: 0.3.75 (what the
harness runs), 0.38.1 (Comfy-Org/ComfyUI, the release users run in 2026) and the hiddenswitch fork (2026-01),
each with the commit it was read from (tests/support/vae_surface.py makes the files). The FlashVAE side is
measured in the harness's real ComfyUI (tests/support/drop_in_vae_worker.py), so 0.38 need not be installed:
whatever 0.38 adds is checked against the data, and methods missing from the installed release's base class
must be FlashVAE's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import comfy_env
from support.comfy_subprocess import comfy_root

REPO = Path(__file__).resolve().parents[1]
SURFACES = sorted((REPO / "tests" / "data" / "comfy_vae").glob("*.json"))
WORKER = REPO / "tests" / "support" / "drop_in_vae_worker.py"

# Reached only from VAE.decode / encode / decode_tiled / encode_tiled when `handles_tiling` is True (a VAE
# that tiles itself): FlashVAE overrides all four and sets handles_tiling False, so nothing calls them.
OWNED_TILING_HELPERS = {"_decode_tiled_owned", "_encode_tiled_owned", "_owned_tiled_args"}
# Built by our node, never by ComfyUI: its signature is ours. __str__ takes no arguments anywhere.
NOT_CALLED_BY_COMFYUI = {"__init__", "__str__"}


def _surface(path: Path) -> dict:
    return json.loads(path.read_text())


def accepts(ours: list[dict], theirs: list[dict]) -> list[str]:
    """What a call made to ComfyUI's method (parameters `theirs`) would break on ours; [] when none."""
    problems = []
    our_kinds = {p["kind"] for p in ours}
    by_name = {p["name"]: p for p in ours}
    our_positional = [p["name"] for p in ours if p["kind"] == "positional"]
    their_positional = [p["name"] for p in theirs if p["kind"] == "positional"]
    their_required = {
        p["name"] for p in theirs if p["default"] is None and p["kind"] in ("positional", "keyword_only")
    }
    for i, name in enumerate(their_positional):
        if i < len(our_positional):
            if our_positional[i] != name:
                problems.append(f"positional {i} is {our_positional[i]!r}, ComfyUI's is {name!r}")
        elif "var_positional" not in our_kinds and (name in their_required or "var_keyword" not in our_kinds):
            # an optional parameter a later release added is passed by keyword, which **kwargs takes
            problems.append(f"no positional {i} ({name!r})")
    for p in theirs:
        if (
            p["kind"] in ("positional", "keyword_only")
            and p["name"] not in by_name
            and "var_keyword" not in our_kinds
        ):
            problems.append(f"keyword {p['name']!r} is refused")
        if p["kind"] in ("var_positional", "var_keyword") and p["kind"] not in our_kinds:
            problems.append(f"ComfyUI's takes {p['kind']} ({p['name']}), ours does not")
    for p in ours:
        if (
            p["default"] is None
            and p["kind"] in ("positional", "keyword_only")
            and p["name"] not in their_required
        ):
            problems.append(f"ours requires {p['name']!r}, ComfyUI's does not")
    return problems


def test_accepts_tells_compatible_from_broken_signatures():
    P = lambda n, d=None, k="positional": {"name": n, "kind": k, "default": d}  # noqa: E731
    theirs = [P("samples"), P("tile_x", "None"), P("not_video", "None")]
    assert accepts([P("samples"), P("tile_x", "None"), P("kw", None, "var_keyword")], theirs) == []
    assert accepts([P("samples"), P("tile_x", "None"), P("not_video", "None")], theirs) == []
    assert "keyword 'not_video' is refused" in accepts([P("samples"), P("tile_x", "None")], theirs)
    assert accepts([P("pixels"), P("tile_x", "None"), P("kw", None, "var_keyword")], theirs)
    assert accepts([P("samples"), P("tile_x"), P("kw", None, "var_keyword")], theirs)  # newly required


def test_surface_files_name_their_source_and_differ_where_comfyui_changed():
    surfaces = {p.stem: _surface(p) for p in SURFACES}
    assert set(surfaces) >= {"0.3.75", "0.38.1", "hiddenswitch-2026-01"}
    for name, s in surfaces.items():
        assert "@" in s["source"] or "==" in s["source"], name
        assert {"decode", "decode_tiled", "encode", "encode_tiled"} <= set(s["methods"]), name
    new, old = surfaces["0.38.1"], surfaces["0.3.75"]
    assert {"is_dynamic", "prepare_decode", "_tile_bounded_shape", "vae_output_dtype"} <= set(
        new["methods"]
    ) - set(old["methods"])
    assert "get_ram_usage" in set(old["methods"]) - set(new["methods"])
    assert {"handles_tiling", "format_encoded", "audio_sample_rate", "pad_channel_value"} <= set(
        new["attributes"]["always"]
    )
    assert "conv_out_channels" in new["attributes"]["conditional"]


@pytest.fixture(scope="module")
def flash_vae(tmp_path_factory) -> dict:
    root = comfy_root()
    out = tmp_path_factory.mktemp("drop_in") / "report.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--comfy", str(root), "--pack", str(REPO), "--out", str(out)],
        cwd=out.parent, env=comfy_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(out.read_text())


@pytest.mark.comfy
@pytest.mark.parametrize("surface_path", SURFACES, ids=[p.stem for p in SURFACES])
def test_flash_vae_answers_every_method_of_the_release(flash_vae, surface_path):
    surface = _surface(surface_path)
    missing, broken = [], {}
    for name, theirs in surface["methods"].items():
        if name in NOT_CALLED_BY_COMFYUI or name in OWNED_TILING_HELPERS:
            continue
        ours = flash_vae["methods"].get(name)
        if ours is None:
            missing.append(name)
        elif problems := accepts(ours, theirs):
            broken[name] = problems
    assert not missing, f"FlashVAE lacks {missing} of ComfyUI {surface['comfyui_version']}'s VAE"
    assert not broken, f"calls ComfyUI {surface['comfyui_version']} makes would fail: {broken}"


@pytest.mark.comfy
@pytest.mark.parametrize("surface_path", SURFACES, ids=[p.stem for p in SURFACES])
def test_flash_vae_has_every_attribute_the_release_sets(flash_vae, surface_path):
    surface = _surface(surface_path)
    missing = set(surface["attributes"]["always"]) - set(flash_vae["attributes"])
    assert not missing, (
        f"FlashVAE lacks {sorted(missing)}, which every ComfyUI {surface['comfyui_version']} VAE has"
    )
    where = surface.get("conditional_where", {})
    wan21 = {a for a, branch in where.items() if branch.startswith("Wan 2.1")}
    assert wan21 <= set(flash_vae["attributes"]), "a Wan 2.1 FlashVAE lacks what a Wan 2.1 VAE has"


@pytest.mark.comfy
def test_the_calls_a_newer_comfyui_makes_work(flash_vae):
    assert flash_vae["base_is_comfy_vae"]
    assert flash_vae["decode"]["shape"] == [1, 9, 48, 48, 3]  # tiny Wan 2.1: 4T-3 frames, 8x space
    assert flash_vae["decode"]["dtype"] == flash_vae["vae_output_dtype"]
    assert (
        flash_vae["decode_tiled_vs_decode_max_abs"] < 1e-4
    )  # one tile, streamed a latent frame at a time: exact
    assert flash_vae["clone_vs_decode_max_abs"] == 0.0
    assert flash_vae["prepare_decode"] >= 1
    assert flash_vae["tile_bounded_shape"] == [1, 16, 2, 12, 8]
    assert flash_vae["is_dynamic"] is False  # a plain ModelPatcher, loaded whole
    assert flash_vae["free_memory_bytes"] > 0
    assert "tiny.safetensors" in flash_vae["str"] or "FlashVAE" in flash_vae["str"]
    assert "teacher_vae" in flash_vae["encode_without_teacher"]
