"""Shared fixtures and markers.

Markers (registered in pyproject.toml):
  slow   more than a second or two; ``make test`` deselects them (-m "not slow"), ``make test-all`` runs them
  gpu    needs CUDA; skipped without it
  comfy  drives the real ComfyUI (tests/harness); skipped when it is not installed, unless
         FLASH_VAED_REQUIRE_COMFY=1 (set by ``make test`` and CI), which turns the skip into a failure

ComfyUI is found at $FLASH_VAED_COMFYUI, else <repo>/.cache/comfyui (where tests/harness/install.sh puts it).
It never runs inside the pytest process: see tests/support/comfy_subprocess.py and tests/harness/server.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch

from harness.server import comfy_root as _comfy_root
from harness.server import comfy_server as _comfy_server
from support.comfy_subprocess import comfy_installed

# Model folders ComfyUI and our pack look in (ComfyUI's names).
MODEL_SUBDIRS = ("vae", "vae_approx", "checkpoints")


def _require_comfy() -> bool:
    return os.environ.get("FLASH_VAED_REQUIRE_COMFY", "") not in ("", "0")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if item.get_closest_marker("comfy") and not comfy_installed():
        msg = (
            f"the real ComfyUI is not installed at {_comfy_root()}: run `make install` "
            "(tests/harness/install.sh) or point FLASH_VAED_COMFYUI at a ComfyUI 0.3.75"
        )
        if _require_comfy():
            pytest.fail(msg + " (FLASH_VAED_REQUIRE_COMFY is set, so this is a failure)", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """Root of the harness's ComfyUI (has main.py); only meaningful in ``comfy``-marked tests."""
    return _comfy_root()


@pytest.fixture
def tmp_models_dir(tmp_path: Path) -> Path:
    """An empty ComfyUI models folder (vae/, vae_approx/, checkpoints/); link it with ``comfy_server``."""
    models = tmp_path / "models"
    for sub in MODEL_SUBDIRS:
        (models / sub).mkdir(parents=True)
    return models


@pytest.fixture
def comfy_server(comfy_root: Path, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``url = comfy_server(nodes=[REPO_ROOT], models_dir=...)`` starts a real server for this test.

    Each call gets its own run directory under tmp_path (so its comfyui.log is kept for a failing test)
    and port; every server is stopped when the test ends.
    """
    with contextlib.ExitStack() as stack:
        count = 0

        def start(
            nodes: Iterable[Path] = (), models_dir: Path | None = None, extra_args: Iterable[str] = ()
        ) -> str:
            nonlocal count
            count += 1
            run_dir = tmp_path / f"comfy-run-{count}"
            server = _comfy_server(
                comfy_root, nodes=nodes, models_dir=models_dir, run_dir=run_dir, extra_args=extra_args
            )
            return stack.enter_context(server)

        yield start


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one CPU thread: tiny convs on a shared 2-core machine run several times faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
