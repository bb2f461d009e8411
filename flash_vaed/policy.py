"""Which plan a decode starts with, and what happens when it runs out of memory: the policy that drives
`FlashDecoder.decode`, which itself only runs the plan it is given.

Start ("auto"): activations of convolutional decoders grow linearly with output pixels and frames, so the
decoder's memory profile (`FlashDecoder.memory_profile`) scales to any latent:

    bytes(chunk of c latent frames, tile of h x w latent) ~
        LIVE_ACTIVATIONS * peak_per_px_frame * frames_out(window) * px(tile) * B * dtype_bytes
      + state_per_px * px(tile) * B * dtype_bytes                        (causal stream state)
      + 4 * 3 * T_out * H_out * W_out * B                                (float32 output, if on the device)

`choose_plan` walks the plans from fastest (whole clip) to leanest (small tiles, one frame at a time) and
returns the first whose estimate fits.

On out-of-memory (`decode_with_fallback`): shorter chunks first, because they cost nothing in quality
(streaming equals the whole clip); tiles blend at their seams, so they come only when one latent frame at
a time still does not fit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from .engine.decode import DecodePlan, ProgressFn
from .engine.limits import available_bytes
from .engine.memory import DecoderProfile

if TYPE_CHECKING:
    from .arch.protocol import DecoderModule
    from .decoder import FlashDecoder

log = logging.getLogger(__name__)

# Tensors alive at the peak, in units of the largest activation: a conv's input, its time-padded copy,
# its output and the residual branch.
LIVE_ACTIVATIONS = 4.0
# Leave this share of the free memory alone (allocator fragmentation, cuDNN workspaces).
HEADROOM = 0.85
TILE_CANDIDATES_PX = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 64)
MIN_TILE_STRIDES = 2  # a tile is at least this many latent pixels a side


# ---- the plan to start with ---------------------------------------------------------------------------


def estimate_bytes(
    profile: DecoderProfile,
    latent_shape: Sequence[int],
    dtype: torch.dtype,
    plan: DecodePlan,
    *,
    output_on_device: bool = False,
) -> int:
    """Peak device bytes to decode a (B, C, T, H, W) latent with `plan` (weights not included)."""
    b, _, t, h, w = latent_shape
    s, ts = profile.space_stride, profile.time_stride
    chunk = t if plan.chunk_frames is None else min(plan.chunk_frames, t)
    if not profile.causal and chunk < t:
        chunk = min(t, chunk + 2 * max(1, profile.temporal_halo))
    frames = ts * chunk + 2  # + the frames a causal conv pads in front
    if plan.tile_px is None:
        tile_h, tile_w = h, w
    else:
        tile_lat = max(1, math.ceil(plan.tile_px / s))
        tile_h, tile_w = min(h, tile_lat), min(w, tile_lat)
    px = tile_h * tile_w * s * s
    elem = torch.empty((), dtype=dtype).element_size()
    total = LIVE_ACTIVATIONS * profile.peak_per_px_frame * frames * px * b * elem
    total += profile.state_per_px * px * b * elem
    if output_on_device:
        total += 4 * 3 * (ts * (t - 1) + 1) * h * w * s * s * b + 4 * h * w * s * s
    return int(total)


def chunks_help(chunk: int, frames: int, temporal_context: tuple[int, int] | None = None) -> bool:
    """Whether decoding `chunk` of `frames` latent frames at a time holds less than the whole clip.

    temporal_context: None for causal decoders (a stream holds only its chunk); a non-causal decoder's
    (before, after): its windows add that much context on both sides (at least one frame before), so a
    window as long as the clip decodes the whole clip again for every chunk, for nothing. Decoders whose
    norms pool over the whole clip have an infinite context: chunks never help them.
    """
    if temporal_context is None:
        return chunk < frames
    before, after = temporal_context
    return chunk + max(1, before) + after < frames


def useful_plan(plan: DecodePlan, module: DecoderModule, frames: int) -> DecodePlan:
    """`plan` without a chunking that cannot help (`chunks_help`): the same frames, decoded once."""
    if module.causal or plan.chunk_frames is None:
        return plan
    if chunks_help(plan.chunk_frames, frames, module.temporal_context):
        return plan
    return DecodePlan(None, plan.tile_px, plan.overlap_px)


def candidate_plans(
    latent_shape: Sequence[int], space_stride: int, temporal_context: tuple[int, int] | None = None
) -> Iterator[DecodePlan]:
    """Plans from fastest to leanest: whole, then shorter chunks, then smaller tiles with shorter chunks.

    temporal_context: a non-causal decoder's (before, after) window context (None: causal); chunks whose
    windows would span the whole clip are left out (`chunks_help`)."""
    t, h, w = latent_shape[2], latent_shape[3], latent_shape[4]
    chunks: list[int | None] = [None]
    c = t
    while c > 1:
        c = math.ceil(c / 2)
        if chunks_help(c, t, temporal_context):
            chunks.append(c)
    chunks = list(dict.fromkeys(chunks))
    yield from (DecodePlan(chunk_frames=c) for c in chunks)
    side_px, min_px = max(h, w) * space_stride, MIN_TILE_STRIDES * space_stride
    tiles = [tile for tile in TILE_CANDIDATES_PX if min_px <= tile < side_px]
    smallest = tiles[-1] if tiles else side_px
    while smallest // 2 >= min_px:  # small clips or big strides: keep halving down to 2 latent pixels
        smallest = smallest // 2 // space_stride * space_stride
        tiles.append(smallest)
    for tile in tiles:
        for c in chunks:
            yield DecodePlan(chunk_frames=c, tile_px=tile, overlap_px=tile // 4)


def choose_plan(
    decoder: FlashDecoder,
    latent_shape: Sequence[int],
    dtype: torch.dtype,
    free_bytes: int,
    *,
    output_on_device: bool = False,
) -> DecodePlan:
    """The fastest plan whose estimated peak fits in HEADROOM * free_bytes; the leanest plan if none does.

    latent_shape: (B, C, T, H, W); dtype: the dtype the decoder runs in; free_bytes: free device memory.
    """
    profile = decoder.memory_profile
    budget = HEADROOM * free_bytes
    plan = DecodePlan()
    for plan in candidate_plans(latent_shape, profile.space_stride, _context(decoder.module)):
        if estimate_bytes(profile, latent_shape, dtype, plan, output_on_device=output_on_device) <= budget:
            return plan
    return plan


# ---- what to do when it does not fit ------------------------------------------------------------------


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


def _context(module: DecoderModule) -> tuple[int, int] | None:
    return None if module.causal else module.temporal_context


def smaller_plan(
    plan: DecodePlan,
    latent_shape: Sequence[int],
    space_stride: int,
    temporal_context: tuple[int, int] | None = None,
) -> DecodePlan | None:
    """The next leaner plan after an OOM, or None when `plan` is already one frame on the smallest tile.

    temporal_context: as for `candidate_plans`; where halving the chunk cannot help, tiles shrink instead
    (with whole-clip windows)."""
    t, h, w = latent_shape[2], latent_shape[3], latent_shape[4]
    chunk = t if plan.chunk_frames is None else min(plan.chunk_frames, t)
    if chunk > 1 and chunks_help(math.ceil(chunk / 2), t, temporal_context):
        return DecodePlan(math.ceil(chunk / 2), plan.tile_px, plan.overlap_px)
    min_tile = MIN_TILE_STRIDES * space_stride
    current = (
        max(h, w) * space_stride if plan.tile_px is None else min(plan.tile_px, max(h, w) * space_stride)
    )
    if current <= min_tile:
        return None
    tile = max(min_tile, (current // 2) // space_stride * space_stride)
    lean_chunk = 1 if chunks_help(1, t, temporal_context) else None
    if plan.tile_px is None:
        overlap = tile // 4
    else:  # keep the user's overlap ratio
        overlap = min(
            tile // 2,
            round(
                (plan.overlap_px if plan.overlap_px is not None else plan.tile_px // 4) * tile / plan.tile_px
            ),
        )
    return DecodePlan(lean_chunk, tile, overlap)


def decode_with_fallback(
    decoder: FlashDecoder,
    latents: torch.Tensor,
    plan: DecodePlan | Literal["auto"] = "auto",
    on_progress: ProgressFn | None = None,
    is_oom: Callable[[BaseException], bool] = is_torch_oom,
    *,
    free_bytes: int | None = None,
    on_retry: Callable[[DecodePlan, DecodePlan, str], None] | None = None,
    **decode_kwargs,
) -> DecodeResult:
    """`decoder.decode(latents, plan, on_progress=...)`, retried with `smaller_plan` while it runs out of memory.

    latents (B, C, T, H, W) in ComfyUI space. plan "auto": `choose_plan` for `free_bytes` (default: what
    is free on the decoder's device now). is_oom(err) says whether an exception is an out-of-memory
    error (anything else propagates at once, e.g. a user's cancel). on_retry(failed_plan, next_plan,
    message) runs before each retry, e.g. to empty the allocator cache. decode_kwargs go to
    `FlashDecoder.decode` (timestep, noise_scale, generator, out_device, available_bytes).
    Raises the last out-of-memory error when even the leanest plan does not fit.
    """
    start = time.perf_counter()
    if plan == "auto":
        free = available_bytes(decoder.device) if free_bytes is None else free_bytes
        plan = DecodePlan() if free is None else choose_plan(decoder, latents.shape, decoder.dtype, free)
    stride = decoder.module.space_stride
    attempts: list[DecodePlan] = []
    while True:
        attempts.append(plan)
        try:
            frames = decoder.decode(latents, plan, on_progress=on_progress, **decode_kwargs)
            return DecodeResult(frames, plan, attempts, time.perf_counter() - start)
        except Exception as err:
            if not is_oom(err):
                raise
            lean = smaller_plan(plan, latents.shape, stride, _context(decoder.module))
            if lean is None:
                log.error("out of memory even with %s; giving up", plan)
                raise
            message = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        # out of the except block, so the failed attempt's tensors (held by the traceback) can be freed
        log.warning("Flash-VAED decode ran out of memory with %s (%s); retrying with %s", plan, message, lean)
        if on_retry is not None:
            on_retry(plan, lean, message)
        plan = lean
