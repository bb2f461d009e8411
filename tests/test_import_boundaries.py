"""flash_vaed and training never import ComfyUI; nodes/ is not installable as a top-level package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, pkgutil, sys
for name in ("comfy", "comfy_api", "folder_paths", "nodes", "server", "comfy_extras"):
    sys.modules[name] = None          # any import of ComfyUI now raises ImportError
import flash_vaed
mods = ["flash_vaed"] + [m.name for m in pkgutil.walk_packages(flash_vaed.__path__, "flash_vaed.")]
try:
    import training
    mods += ["training"] + [m.name for m in pkgutil.walk_packages(training.__path__, "training.")]
except ImportError:
    pass
for m in mods:
    importlib.import_module(m)
print(len(mods))
"""


def test_library_and_training_import_without_comfyui():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 10


def test_library_has_no_comfyui_imports_in_source():
    offenders = []
    for path in (REPO / "flash_vaed").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import comfy", "from comfy", "import folder_paths", "from folder_paths")):
                offenders.append(f"{path.relative_to(REPO)}: {s}")
    assert not offenders, offenders
