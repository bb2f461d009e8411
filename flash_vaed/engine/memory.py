"""Memory facts: what a decoder module needs per output pixel (`profile_module`) and what one decode took
(`PeakMemory`).

A profile comes from one probe decode run on the meta device: the activations' shapes are all it needs, so
nothing is computed or allocated, the weights stay where they are, and the result holds on any device.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .state import DecodeState


@dataclass(frozen=True)
class DecoderProfile:
    """Memory facts of one decoder, per output pixel (per frame for activations).

    peak_per_px_frame: elements of the largest activation / (output pixels * output frames).
    state_per_px:      elements of the causal stream state / output pixels (0 for non-causal decoders).
    space_stride, time_stride: latent -> pixel / frame scale; temporal_halo: latent frames of context a
    non-causal decoder decodes on each side of a window.
    """

    peak_per_px_frame: float
    state_per_px: float
    space_stride: int
    time_stride: int
    causal: bool
    temporal_halo: int = 0


def _on_meta(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters and buffers are meta tensors (no weight is copied)."""
    memo: dict[int, torch.Tensor] = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    shadow = copy.deepcopy(module, memo)
    for m in shadow.modules():
        # the copy must not run what was attached to the original: a torch.compile'd forward (which
        # calls the original's), or hooks a caller registered (they would see meta tensors)
        m._compiled_call_impl = None
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return shadow


@torch.no_grad()
def profile_module(module, probe_frames: int = 2, probe_px: int = 64) -> DecoderProfile:
    """Profile a decoder module (`arch.protocol.DecoderModule`) with one probe decode of
    (1, C, probe_frames, h, w) latents, h * space_stride ~ probe_px."""
    shadow = _on_meta(module)
    s = shadow.space_stride
    side = max(2, math.ceil(probe_px / s))
    z = torch.zeros(1, shadow.latent_channels, probe_frames, side, side, device="meta")
    peak = 0

    def record(_module, _inputs, output) -> None:
        nonlocal peak
        if isinstance(output, torch.Tensor):
            peak = max(peak, output.numel())

    for m in shadow.modules():
        m.register_forward_hook(record)
    stream = DecodeState(shadow) if shadow.causal else None
    frames = shadow(z, stream, spatial_noise=shadow.draw_spatial_noise((side, side), None, "meta"))
    t_out, px = frames.shape[2], frames.shape[3] * frames.shape[4]
    state = 0 if stream is None else sum(s.past.numel() for s in stream.layers() if s.past is not None)
    return DecoderProfile(
        peak / (px * t_out), state / px, s, shadow.time_stride, shadow.causal, shadow.temporal_halo
    )


# ---- what one decode took ---------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return None


def _malloc_trim() -> None:
    # glibc keeps freed heap pages resident; trimming first makes the RSS increase of the next decode
    # count its own allocations instead of reusing what an earlier decode left behind
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of one decode: CUDA allocations on a GPU, the process's resident set on the CPU.

        with PeakMemory(device) as memory:
            frames = decoder.decode(latents)
        memory.peak, memory.base      # bytes: the peak during the decode, what was in use right before

    kind: "cuda_max_allocated" or "process_peak_rss" (what `peak` counts); method: how it was measured.
    On the CPU the peak RSS mark (VmHWM) is reset through /proc/self/clear_refs (Linux >= 4.0), else a
    1 ms RSS sampler runs during the decode.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "process_peak_rss"
        self.method = ""
        self.base = 0
        self.peak = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "max_memory_allocated"
            return
        _malloc_trim()
        self.base = self.peak = _rss_bytes() or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak-RSS mark
            self.method = "VmHWM"
        except OSError:
            self.method = "RSS sampled every 1 ms"
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def stop(self) -> int | None:
        """Peak bytes over `base` (None where nothing could be measured); sets `peak` too."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return self.peak - self.base
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
        else:
            status = Path("/proc/self/status").read_text().splitlines()
            hwm = [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")]
            self.peak = hwm[0] if hwm else 0
        return self.peak - self.base if self.peak and self.base else None
