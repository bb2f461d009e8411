"""Refuse a decode whose output alone cannot fit, before allocating anything.

Chunks and tiles bound the working memory of a decode, never its output: the whole clip's frames are
one float32 buffer (B, 3, T_out, H_out, W_out) on the output device. When that buffer is larger than the
memory free there, the decode would fail after minutes or swap the machine to a halt; we say so first.
"""

from __future__ import annotations

import os

import torch

from ..errors import LatentError

FLOAT32_BYTES = 4


class OutputTooLargeError(LatentError, MemoryError):
    """The decoded frames alone would not fit in the memory free on the output device."""


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory on `device` in bytes, or None when it cannot be told (then nothing is refused)."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # the caching allocator's reserved-but-unused blocks are free for this process too
            return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        if device.type == "cpu":
            try:
                import psutil

                return int(psutil.virtual_memory().available)
            except ImportError:
                return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (RuntimeError, ValueError, OSError, AttributeError):
        return None
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_output_fits(
    out_shape: tuple[int, ...], device: torch.device | str, available: int | None = None
) -> int:
    """Bytes of a float32 output of `out_shape`; raise OutputTooLargeError if more than `available`
    (default: what `available_bytes(device)` finds free)."""
    n = FLOAT32_BYTES
    for d in out_shape:
        n *= int(d)
    free = available_bytes(device) if available is None else available
    if free is not None and n > free:
        b, _, t, h, w = out_shape
        raise OutputTooLargeError(
            f"the decoded video alone needs {_gib(n)} ({b} x {t} frames of {w}x{h}, float32) but only "
            f"{_gib(free)} is free on {torch.device(device)}. Smaller chunks or tiles do not shrink the "
            "output: decode fewer frames at a time (split the latent in time), use a smaller resolution, "
            "or decode onto a device with more free memory."
        )
    return n
