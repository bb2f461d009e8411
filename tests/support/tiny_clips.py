"""Tiny training clips for Prune & Distill tests: a moving random texture as lossless animated WebPs.

write_clips(input_dir / "clips", count=3, frames=9, size=32)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_clip(path: Path, frames: int = 9, size: int = 32, seed: int = 0, smooth: bool = False) -> Path:
    """A seeded random texture sliding 2 px per frame, `frames` frames of `size` x `size`; `smooth`: a 4x4
    texture upscaled (something a small autoencoder can learn, unlike pixel noise)."""
    rng = np.random.default_rng(seed)
    base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    if smooth:
        coarse = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8))
        base = np.asarray(coarse.resize((size, size), Image.BICUBIC))
    images = [Image.fromarray(np.roll(base, 2 * t, axis=1)) for t in range(frames)]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0, lossless=True)
    return path


def write_clips(folder: Path, count: int = 3, frames: int = 9, size: int = 32, smooth: bool = False) -> Path:
    for i in range(count):
        write_clip(Path(folder) / f"clip{i}.webp", frames, size, seed=i, smooth=smooth)
    return Path(folder)
