"""Decode, and on out-of-memory try again with a leaner plan: shorter chunks first, then smaller tiles.

Shorter chunks cost nothing in quality (streaming equals the whole clip), so they go first; tiles blend
at their seams, so they come only when one latent frame at a time still does not fit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .decode import DecodePlan, ProgressFn

log = logging.getLogger(__name__)

MIN_TILE_STRIDES = 2  # a tile is at least this many latent pixels a side


def is_torch_oom(err: BaseException) -> bool:
    """torch's own out-of-memory error (CUDA, and the generic one newer torch raises)."""
    kinds = tuple(
        k
        for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(k, type)
    )
    return isinstance(err, kinds)


@dataclass
class DecodeResult:
    """frames: float32 (B, 3, T_out, H_out, W_out) in about [-1, 1]; plan: the plan that succeeded;
    attempts: every plan tried, in order (the last is `plan`); seconds: wall time of the whole call."""

    frames: torch.Tensor
    plan: DecodePlan
    attempts: list[DecodePlan] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def retries(self) -> int:
        return len(self.attempts) - 1


def smaller_plan(plan: DecodePlan, latent_shape: Sequence[int], space_stride: int) -> DecodePlan | None:
    """The next leaner plan after an OOM, or None when `plan` is already one frame on the smallest tile."""
    t, h, w = latent_shape[2], latent_shape[3], latent_shape[4]
    chunk = t if plan.chunk_frames is None else min(plan.chunk_frames, t)
    if chunk > 1:
        return DecodePlan(math.ceil(chunk / 2), plan.tile_px, plan.overlap_px)
    min_tile = MIN_TILE_STRIDES * space_stride
    current = (
        max(h, w) * space_stride if plan.tile_px is None else min(plan.tile_px, max(h, w) * space_stride)
    )
    if current <= min_tile:
        return None
    tile = max(min_tile, (current // 2) // space_stride * space_stride)
    if plan.tile_px is None:
        overlap = tile // 4
    else:  # keep the user's overlap ratio
        overlap = min(
            tile // 2,
            round(
                (plan.overlap_px if plan.overlap_px is not None else plan.tile_px // 4) * tile / plan.tile_px
            ),
        )
    return DecodePlan(1, tile, overlap)


def decode_with_fallback(
    decoder,
    latents: torch.Tensor,
    plan: DecodePlan,
    on_progress: ProgressFn | None = None,
    is_oom: Callable[[BaseException], bool] = is_torch_oom,
    *,
    on_retry: Callable[[DecodePlan, DecodePlan, str], None] | None = None,
    **decode_kwargs,
) -> DecodeResult:
    """`decoder.decode(latents, plan..., on_progress)`, retried with `smaller_plan` while it runs out of memory.

    decoder: a FlashDecoder; latents (B, C, T, H, W) in ComfyUI space. is_oom(err) says whether an
    exception is an out-of-memory error (anything else propagates at once, e.g. a user's cancel).
    on_retry(failed_plan, next_plan, message) runs before each retry, e.g. to empty the allocator cache.
    decode_kwargs go to `FlashDecoder.decode` (timestep, noise_scale, generator, out_device).
    Raises the last out-of-memory error when even the leanest plan does not fit.
    """
    start = time.perf_counter()
    family = decoder.family
    stride = int(getattr(decoder.module, "space_stride", family.space_stride))
    attempts: list[DecodePlan] = []
    while True:
        attempts.append(plan)
        try:
            frames = decoder.decode(
                latents, plan.chunk_frames, plan.tile_px, plan.overlap_px, on_progress, **decode_kwargs
            )
            return DecodeResult(frames, plan, attempts, time.perf_counter() - start)
        except Exception as err:
            if not is_oom(err):
                raise
            lean = smaller_plan(plan, latents.shape, stride)
            if lean is None:
                log.error("out of memory even with %s; giving up", plan)
                raise
            message = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        # out of the except block, so the failed attempt's tensors (held by the traceback) can be freed
        log.warning("Flash-VAED decode ran out of memory with %s (%s); retrying with %s", plan, message, lean)
        if on_retry is not None:
            on_retry(plan, lean, message)
        plan = lean
