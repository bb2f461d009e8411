"""How much memory a decode needs, and the largest chunk / tile plan that fits in what is free.

A decoder is measured once (`profile_decoder`): one tiny probe decode with forward hooks records its
largest activation and, for causal decoders, the size of the stream state. Activations of convolutional
decoders grow linearly with output pixels and frames, so the probe scales to any latent:

    bytes(chunk of c latent frames, tile of h x w latent) ~
        LIVE_ACTIVATIONS * peak_per_px_frame * frames_out(window) * px(tile) * B * dtype_bytes
      + state_per_px * px(tile) * B * dtype_bytes                        (causal stream state)
      + 4 * 3 * T_out * H_out * W_out * B                                (float32 output, if on the device)

`choose_plan` walks the plans from fastest (whole clip) to leanest (small tiles, one frame at a time)
and returns the first whose estimate fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .decode import DecodePlan

# Tensors alive at the peak, in units of the largest activation: a conv's input, its time-padded copy,
# its output and the residual branch.
LIVE_ACTIVATIONS = 4.0
# Leave this share of the free memory alone (allocator fragmentation, cuDNN workspaces).
HEADROOM = 0.85
TILE_CANDIDATES_PX = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 64)


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


def _strides(decoder) -> tuple[int, int]:
    module, family = decoder.module, decoder.family
    return (
        int(getattr(module, "space_stride", family.space_stride)),
        int(getattr(module, "time_stride", family.time_stride)),
    )


@torch.inference_mode()
def profile_decoder(decoder, probe_frames: int = 2, probe_px: int = 64) -> DecoderProfile:
    """Measure `decoder` (a FlashDecoder) with one probe decode of (1, C, probe_frames, h, w) zeros, h*s ~ probe_px.

    Runs on the decoder's device and dtype; for the largest decoders this is a fraction of a second.
    The result is cached in ``decoder.info["profile"]``.
    """
    cached = decoder.info.get("profile")
    if isinstance(cached, DecoderProfile):
        return cached
    s, ts = _strides(decoder)
    side = max(2, math.ceil(probe_px / s))
    z = torch.zeros(1, decoder.family.latent_channels, probe_frames, side, side, device=decoder.device)
    peak = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal peak
        if isinstance(output, torch.Tensor):
            peak = max(peak, output.numel())

    handles = [m.register_forward_hook(hook) for m in decoder.module.modules()]
    try:
        frames = decoder.decode(z, noise_scale=0.0)
    finally:
        for h in handles:
            h.remove()
    t_out, px = frames.shape[2], frames.shape[3] * frames.shape[4]
    state = 0.0
    if decoder.causal:
        from .state import DecodeState

        stream = DecodeState(decoder.module)
        decoder.module(z.to(decoder.dtype), stream)
        state = sum(s.past.numel() for s in stream.layers() if s.past is not None) / px
    profile = DecoderProfile(
        peak / (px * t_out), state, s, ts, decoder.causal, int(getattr(decoder.module, "temporal_halo", 0))
    )
    decoder.info["profile"] = profile
    return profile


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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
    elem = _dtype_bytes(dtype)
    total = LIVE_ACTIVATIONS * profile.peak_per_px_frame * frames * px * b * elem
    total += profile.state_per_px * px * b * elem
    if output_on_device:
        total += 4 * 3 * (ts * (t - 1) + 1) * h * w * s * s * b + 4 * h * w * s * s
    return int(total)


def candidate_plans(latent_shape: Sequence[int], space_stride: int) -> Iterator[DecodePlan]:
    """Plans from fastest to leanest: whole, then shorter chunks, then smaller tiles with shorter chunks."""
    t, h, w = latent_shape[2], latent_shape[3], latent_shape[4]
    chunks: list[int | None] = [None]
    c = t
    while c > 1:
        c = math.ceil(c / 2)
        chunks.append(c)
    chunks = list(dict.fromkeys(chunks))
    yield from (DecodePlan(chunk_frames=c) for c in chunks)
    side_px, min_px = max(h, w) * space_stride, 2 * space_stride
    tiles = [tile for tile in TILE_CANDIDATES_PX if min_px <= tile < side_px]
    smallest = tiles[-1] if tiles else side_px
    while smallest // 2 >= min_px:  # small clips or big strides: keep halving down to 2 latent pixels
        smallest = smallest // 2 // space_stride * space_stride
        tiles.append(smallest)
    for tile in tiles:
        for c in chunks:
            yield DecodePlan(chunk_frames=c, tile_px=tile, overlap_px=tile // 4)


def choose_plan(
    decoder,
    latent_shape: Sequence[int],
    dtype: torch.dtype,
    free_bytes: int,
    *,
    output_on_device: bool = False,
    profile: DecoderProfile | None = None,
) -> DecodePlan:
    """The fastest plan whose estimated peak fits in HEADROOM * free_bytes; the leanest plan if none does.

    decoder: a FlashDecoder (profiled on first use unless `profile` is given).
    latent_shape: (B, C, T, H, W); dtype: the dtype the decoder runs in; free_bytes: free device memory.
    """
    profile = profile or profile_decoder(decoder)
    budget = HEADROOM * free_bytes
    plan = DecodePlan()
    for plan in candidate_plans(latent_shape, profile.space_stride):
        if estimate_bytes(profile, latent_shape, dtype, plan, output_on_device=output_on_device) <= budget:
            return plan
    return plan
