"""Distilling the shipped teacher into a student on the real clips (what `make demo` and bench/quality.py
run): the clips the teacher never saw stay out of the student's training too."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import safe_open

from ..distill import data as clipdata
from ..distill.config import DistillConfig
from ..errors import FlashVAEDError
from . import TEACHER_CARD_KEY

# The released Flash-VAED student's recipe at our teacher's width (24; the real Wan 2.1 VAE has 96):
# bottleneck and deep stages at full width as depthwise-separable causal 3D, the two shallow stages
# per-frame 2D at a quarter of the teacher's width (the official student keeps an eighth of 96, i.e.
# 12 channels; an eighth of 24 would leave 3).
QUARTER_LAYOUT = "mid=96:dw3d/96:dw3d/96:dw3d/12:frame2d/6:frame2d"
# Half of the teacher's shallow width: slower, closer to the teacher.
HALF_LAYOUT = "mid=96:dw3d/96:dw3d/96:dw3d/24:frame2d/12:frame2d"


def held_out_names(teacher: str | os.PathLike) -> list[str]:
    """The clips the teacher was not trained on, from the card training/train_teacher.py writes into the
    file's metadata."""
    with safe_open(str(teacher), "pt") as f:
        card = (f.metadata() or {}).get(TEACHER_CARD_KEY)
    if card is None:
        raise FlashVAEDError(
            f"{teacher} has no training card (metadata {TEACHER_CARD_KEY!r}), so its held-out clips are "
            "unknown; use a teacher written by training/train_teacher.py"
        )
    return list(json.loads(card)["held_out"])


def link_training_clips(data: Path, held_out: list[str], folder: Path) -> Path:
    """A folder of links to every clip in `data` but the held-out ones (copies where links fail)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    held = set(held_out)
    for path in sorted(p for p in data.iterdir() if p.suffix.lower() in clipdata.VIDEO_SUFFIXES):
        if path.name in held:
            continue
        try:
            os.symlink(path, folder / path.name)
        except OSError:
            shutil.copy2(path, folder / path.name)
    return folder


def demo_config(
    teacher: Path, train_dir: Path, out: Path, layout: str, steps: int, resume: bool
) -> DistillConfig:
    """Prune & Distill settings for a short CPU run: pruned init, a short warmup, small crops, no
    held-out evaluation inside the loop (the quality report uses the teacher's own held-out clips). The
    learning rate stays in the range the Wan layout's RMS norms tolerate (training/README.md)."""
    return DistillConfig(
        teacher=str(teacher),
        data=str(train_dir),
        out=str(out),
        preset=layout,
        init="prune",
        steps=steps,
        lr=3e-4,
        warmup_steps=min(50, steps // 10),
        clip_frames=9,
        crop_px=64,
        keep_videos=64,
        holdout=0.0,
        evaluate=False,
        checkpoint_every=100,
        resume=resume,
    )
