"""One decode of one latent clip: whole, streamed in time, tiled in space, or both.

The engine drives a `RegionDecoder`, which turns a latent crop into frames with a decoder module (see
`arch/protocol.py`: its strides, causality and temporal context are all the engine reads). Causal decoders
(the Wan family) stream: chunks of latent frames go through in order with one `DecodeState` per tile.
Non-causal decoders (LTX-Video) get overlapping temporal windows with enough latent context on both
sides that the frames kept are exactly the whole-clip frames.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import FlashVAEDError
from .state import DecodeState
from .tiles import Tile, TileBlender, feather_mask, plan_tiles

if TYPE_CHECKING:
    from ..arch.protocol import DecoderModule

ProgressFn = Callable[[int, int], None]

# ComfyUI's "VAE Decode (Tiled)" defaults, so a user who switches nodes keeps the tile size they know
DEFAULT_TILE_PX = 512
DEFAULT_OVERLAP_PX = 64


class RegionDecoder(Protocol):
    module: DecoderModule

    def __call__(self, z: torch.Tensor, stream: DecodeState | None, tile: Tile) -> torch.Tensor:
        """z (B, C, t, h, w) latent crop -> frames (B, 3, t', h*s, w*s)."""
        ...


@dataclass(frozen=True)
class DecodePlan:
    """chunk_frames: latent frames per step (None: the whole clip at once).
    tile_px / overlap_px: spatial tile edge and overlap in output pixels (None: no tiling)."""

    chunk_frames: int | None = None
    tile_px: int | None = None
    overlap_px: int | None = None

    def __post_init__(self) -> None:
        for name, value, least, none in (
            ("chunk_frames", self.chunk_frames, 1, "None for the whole clip"),
            ("tile_px", self.tile_px, 1, "None for no tiling"),
            ("overlap_px", self.overlap_px, 0, "None for a quarter tile"),
        ):
            # a whole number: 1.5, NaN or inf would fail deep in range() or math.ceil() without the name
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least
            ):
                raise PlanError(f"{name} must be a whole number >= {least} (or {none}), got {value!r}")


class PlanError(FlashVAEDError, ValueError):
    """A decode plan with a chunk, tile or overlap that is not a whole number in its range."""


def frames_of_latents(first: int, stop: int, stride: int) -> tuple[int, int]:
    """Output frame range [f0, f1) decoded from latent frames [first, stop): latent 0 gives one frame,
    every later latent frame `stride` frames."""
    f0 = 0 if first == 0 else stride * (first - 1) + 1
    f1 = 0 if stop == 0 else stride * (stop - 1) + 1
    return f0, f1


def chunk_bounds(frames: int, chunk: int | None) -> list[tuple[int, int]]:
    if chunk is None or chunk >= frames:
        return [(0, frames)]
    return [(a, min(a + chunk, frames)) for a in range(0, frames, chunk)]


def tiles_for(plan: DecodePlan, latent_hw: tuple[int, int], space_stride: int) -> tuple[list[Tile], int]:
    """The tile plan and the feather ramp in pixels."""
    if plan.tile_px is None:
        return [Tile(0, latent_hw[0], 0, latent_hw[1])], 0
    tile_lat = max(1, math.ceil(plan.tile_px / space_stride))
    overlap_px = plan.overlap_px if plan.overlap_px is not None else plan.tile_px // 4
    overlap_lat = math.ceil(overlap_px / space_stride)
    return plan_tiles(latent_hw, tile_lat, overlap_lat), overlap_lat * space_stride


def run_decode(
    region: RegionDecoder,
    z: torch.Tensor,
    plan: DecodePlan,
    on_progress: ProgressFn | None = None,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode z (B, C, T, H, W) in the decoder's latent space -> float32 (B, 3, T_out, H*s, W*s)."""
    b, _, t, h, w = z.shape
    causal, s, ts = region.module.causal, region.module.space_stride, region.module.time_stride
    tiles, ramp_px = tiles_for(plan, (h, w), s)
    chunks = chunk_bounds(t, plan.chunk_frames)
    total, done = len(tiles) * len(chunks), 0
    blender = TileBlender((b, 3, frames_of_latents(0, t, ts)[1], h * s, w * s), out_device or z.device)

    for tile in tiles:
        ys, xs = tile.pixels(s)
        mask = feather_mask(tile, (h, w), s, ramp_px)
        z_tile = z[:, :, :, tile.y0 : tile.y1, tile.x0 : tile.x1]
        stream = DecodeState(region.module) if causal else None
        for a, c in chunks:
            if causal:
                frames = region(z_tile[:, :, a:c], stream, tile)
            else:
                frames = _decode_window(region, z_tile, a, c, tile)
            f0, f1 = frames_of_latents(a, c, ts)
            if frames.shape[2] != f1 - f0:
                raise RuntimeError(
                    f"decoder produced {frames.shape[2]} frames for latent frames [{a}, {c}), "
                    f"expected {f1 - f0}"
                )
            blender.add(frames, slice(f0, f1), ys, xs, mask)
            del frames
            done += 1
            if on_progress is not None:
                on_progress(done, total)
        blender.add_weight(ys, xs, mask)
    return blender.result()


def _decode_window(region: RegionDecoder, z: torch.Tensor, a: int, c: int, tile: Tile) -> torch.Tensor:
    """Frames of latent frames [a, c) from a non-causal decoder, via a window padded by the halo."""
    t, stride = z.shape[2], region.module.time_stride
    before, after = region.module.temporal_context
    # at least one frame of left context: a window's first latent frame yields only its last video frame
    w0, w1 = max(0, a - max(1, before)), min(t, c + after)
    frames = region(z[:, :, w0:w1], None, tile)
    # a window decodes like a clip of its own: its first latent frame yields one frame, at global w0*stride
    base = 0 if w0 == 0 else stride * w0
    f0, f1 = frames_of_latents(a, c, stride)
    return frames[:, :, f0 - base : f1 - base]
