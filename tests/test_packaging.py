"""The published node pack (the Comfy registry, ComfyUI-Manager, `comfy node install`).

* [tool.comfy] says what the registry specification asks for: a ComfyUI range the tested ComfyUI satisfies, an
  icon that is a file of this repository at the raw URL of the repository in [project.urls];
* `comfy node validate` passes without a warning (comfy-cli drops a malformed range with only a warning);
* `comfy node pack` holds exactly what a ComfyUI user runs and reads (no tests, benchmarks, training, docs or
  weights), is small, and works on its own: ComfyUI loads the nodes, the web extensions and the workflows from
  the unpacked zip, and every module of the packed library imports from it.

comfy-cli (the test extra) packs the git-tracked files. It runs in a copy of them, so no node.zip is written
into the repository; DO_NOT_TRACK keeps its telemetry off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest
import tomlkit
from packaging.specifiers import SpecifierSet

from harness.server import comfy_server, get_json

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomlkit.parse((REPO_ROOT / "pyproject.toml").read_text()).unwrap()
COMFY_CLI = Path(sys.executable).with_name("comfy")
# What a ComfyUI user runs and reads; everything else in the repository stays out of the pack.
USER_ROOTS = {
    "__init__.py", "nodes", "flash_vaed", "web", "workflows", "README.md", "LICENSE", "requirements.txt",
    "pyproject.toml",
}  # fmt: skip
WEIGHTS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
# The zip is about 0.2 MB of code and workflows; the shipped teacher alone would be 16 MB.
MAX_PACK_BYTES = 1_000_000
OUR_NODES = {"FlashVAEDLoad", "FlashVAEDDecode", "FlashVAEDPruneDistill"}
# The registry installs a pack into custom_nodes/<[project] name>.
INSTALLED_NAME = PYPROJECT["project"]["name"]


def harness_comfyui_version() -> str:
    """The ComfyUI version the harness installs (tests/harness/install.sh)."""
    script = (REPO_ROOT / "tests" / "harness" / "install.sh").read_text()
    return re.search(r"^COMFY_VERSION=(\S+)", script, re.MULTILINE).group(1)


def tracked_files() -> list[str]:
    """The git-tracked files: what `comfy node pack` starts from."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e}): `comfy node pack` packs git-tracked files")
    return [name for name in out.decode().split("\0") if name]


def for_users(name: str) -> bool:
    return name.split("/")[0] in USER_ROOTS and not name.endswith(WEIGHTS) and "__pycache__" not in name


@dataclass
class Pack:
    validate: subprocess.CompletedProcess
    pack: subprocess.CompletedProcess
    zip_path: Path


def comfy_cli(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    if not COMFY_CLI.is_file():
        pytest.fail(f"comfy-cli is not installed next to {sys.executable}: pip install -e '.[test]'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"DO_NOT_TRACK": "1", "HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    env["PATH"] = f"{COMFY_CLI.parent}{os.pathsep}{env.get('PATH', '')}"  # its ruff check runs sys.executable
    return subprocess.run(
        [str(COMFY_CLI), "--skip-prompt", "--no-json", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    """`comfy node validate` and `comfy node pack` run on a git repository holding the tracked files."""
    src = tmp_path_factory.mktemp("pack-src")
    for name in tracked_files():
        if (REPO_ROOT / name).is_file():  # a tracked file deleted in the working tree is not packed
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, src / name)
    subprocess.run(["git", "init", "-q"], cwd=src, check=True)
    subprocess.run(["git", "add", "-A"], cwd=src, check=True)
    home = tmp_path_factory.mktemp("comfy-cli-home")
    validate = comfy_cli(["node", "validate"], src, home)
    pack = comfy_cli(["node", "pack"], src, home)
    return Pack(validate, pack, src / "node.zip")


def test_registry_metadata():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert SpecifierSet(comfy["requires-comfyui"]).contains(harness_comfyui_version()), comfy[
        "requires-comfyui"
    ]

    # The icon: a file of this repository, at its raw URL on the main branch of the repository named in
    # [project.urls]; SVG, PNG, JPG or GIF, at most 800 x 400 px (the registry specification).
    repository = PYPROJECT["project"]["urls"]["Repository"]
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/", 1) + "/main/"
    assert comfy["Icon"].startswith(raw), (comfy["Icon"], raw)
    icon = comfy["Icon"].removeprefix(raw)
    assert icon in tracked_files(), f"{icon} is not a tracked file of the repository"
    assert icon.endswith(".svg")  # the size check below reads SVG
    svg = ElementTree.parse(REPO_ROOT / icon).getroot()
    width, height = float(svg.get("width")), float(svg.get("height"))
    assert 0 < width <= 800 and 0 < height <= 400, (width, height)

    for path in comfy.get("includes", []):  # untracked extras a pack may force in: each must exist
        assert (REPO_ROOT / path).exists(), path


def test_comfy_node_validate_passes(packed: Pack):
    out = packed.validate.stdout + packed.validate.stderr
    assert packed.validate.returncode == 0, out
    assert "All validation checks passed" in out, out
    assert not re.search(r"warning|error", out, re.IGNORECASE), out  # e.g. a requires-comfyui it dropped


def test_pack_holds_what_a_user_runs(packed: Pack):
    out = packed.pack.stdout + packed.pack.stderr
    assert packed.pack.returncode == 0 and packed.zip_path.is_file(), out
    assert not re.search(r"warning|not found", out, re.IGNORECASE), out
    with zipfile.ZipFile(packed.zip_path) as zf:
        names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
    expected = sorted(n for n in tracked_files() if for_users(n) and (REPO_ROOT / n).is_file())
    assert names == expected, {
        "extra": sorted(set(names) - set(expected)),
        "missing": sorted(set(expected) - set(names)),
    }
    # what ComfyUI loads is all there
    assert {"__init__.py", "LICENSE", "requirements.txt", "pyproject.toml"} <= set(names)
    for folder in ("nodes", "web", "workflows"):
        assert {n for n in tracked_files() if n.startswith(f"{folder}/")} <= set(names), folder
    size = packed.zip_path.stat().st_size
    assert size < MAX_PACK_BYTES, f"the pack is {size / 1e6:.1f} MB: {len(names)} files"


@pytest.mark.slow  # 5 s of imports; test_import_boundaries already keeps the library off tests/ and training/
def test_every_packed_library_module_imports_from_the_pack(packed: Pack, tmp_path: Path):
    """Nothing the pack holds imports what it leaves out (tests/, training/, the shipped teacher's assets)."""
    with zipfile.ZipFile(packed.zip_path) as zf:
        zf.extractall(tmp_path / INSTALLED_NAME)
    code = (
        "import importlib, pkgutil, sys; sys.modules['comfy'] = None; import flash_vaed; "
        "names = [m.name for m in pkgutil.walk_packages(flash_vaed.__path__, 'flash_vaed.')]; "
        "[importlib.import_module(n) for n in names]; "
        "assert all(m.__file__.startswith(sys.argv[1]) for n, m in sys.modules.items() if n.startswith('flash_vaed')); "
        "print(len(names))"
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    root = tmp_path / INSTALLED_NAME
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 20, done.stdout


@pytest.mark.comfy
def test_comfyui_loads_the_unpacked_pack(packed: Pack, comfy_root: Path, tmp_path: Path):
    """Installed as the registry installs it (the zip unpacked into custom_nodes/<name>): the nodes, the web
    extensions and the example workflows are there."""
    pack_dir = tmp_path / "custom" / INSTALLED_NAME
    with zipfile.ZipFile(packed.zip_path) as zf:
        zf.extractall(pack_dir)
    with comfy_server(comfy_root, nodes=[pack_dir], run_dir=tmp_path / "run") as url:
        info = get_json(url, "/object_info")
        extensions = get_json(url, "/extensions")
        templates = get_json(url, "/workflow_templates")
    assert OUR_NODES <= set(info), sorted(n for n in info if "Flash" in n)
    served = sorted(u.rsplit("/", 1)[1] for u in extensions if u.startswith(f"/extensions/{INSTALLED_NAME}/"))
    assert served == sorted(p.name for p in (REPO_ROOT / "web").glob("*.js")), extensions
    assert sorted(templates.get(INSTALLED_NAME, [])) == sorted(
        p.stem for p in (REPO_ROOT / "workflows").glob("*.json")
    )
