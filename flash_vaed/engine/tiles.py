"""Spatial tiling: where the tiles go and how their overlaps are blended. Knows nothing of models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """A latent-space rectangle [y0, y1) x [x0, x1) and which of its sides touch a neighbour."""

    y0: int
    y1: int
    x0: int
    x1: int

    def pixels(self, stride: int) -> tuple[slice, slice]:
        return slice(self.y0 * stride, self.y1 * stride), slice(self.x0 * stride, self.x1 * stride)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if tile >= size:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((size - tile) / step) + 1
    # spread the tiles evenly so every overlap is at least `overlap`, the last tile ends at the edge
    return sorted({round(i * (size - tile) / (n - 1)) for i in range(n)})


def plan_tiles(latent_hw: tuple[int, int], tile_latent: int, overlap_latent: int) -> list[Tile]:
    """Cover an (H, W) latent with tiles of at most `tile_latent` a side, overlapping by >= `overlap_latent`."""
    h, w = latent_hw
    if tile_latent <= 0:
        raise ValueError(f"tile size must be positive, got {tile_latent}")
    overlap_latent = max(0, min(overlap_latent, tile_latent - 1))
    th, tw = min(tile_latent, h), min(tile_latent, w)
    return [
        Tile(y, y + th, x, x + tw)
        for y in _starts(h, th, overlap_latent)
        for x in _starts(w, tw, overlap_latent)
    ]


def feather_mask(tile: Tile, latent_hw: tuple[int, int], stride: int, ramp_px: int) -> torch.Tensor:
    """(h_px, w_px) weights: 1 inside, ramping linearly to ~0 over `ramp_px` on sides shared with a
    neighbour, so overlapping tiles cross-fade instead of meeting at a seam."""
    h_px, w_px = (tile.y1 - tile.y0) * stride, (tile.x1 - tile.x0) * stride

    def ramp(n: int, lo_inner: bool, hi_inner: bool) -> torch.Tensor:
        r = torch.ones(n)
        k = min(ramp_px, n // 2)
        if k > 0:
            up = (torch.arange(k, dtype=torch.float32) + 0.5) / k
            if lo_inner:
                r[:k] = up
            if hi_inner:
                r[n - k :] = up.flip(0)
        return r

    ry = ramp(h_px, tile.y0 > 0, tile.y1 < latent_hw[0])
    rx = ramp(w_px, tile.x0 > 0, tile.x1 < latent_hw[1])
    return ry[:, None] * rx[None, :]


class TileBlender:
    """Accumulates weighted tile outputs into one (B, C, T, H, W) float32 video."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str):
        self.out = torch.zeros(shape, dtype=torch.float32, device=device)
        self.weight = torch.zeros(shape[-2:], dtype=torch.float32, device=device)

    def add(self, frames: torch.Tensor, t_slice: slice, ys: slice, xs: slice, mask: torch.Tensor) -> None:
        mask = mask.to(self.out.device)
        self.out[:, :, t_slice, ys, xs] += frames.to(self.out.device, torch.float32) * mask

    def add_weight(self, ys: slice, xs: slice, mask: torch.Tensor) -> None:
        self.weight[ys, xs] += mask.to(self.weight.device)

    def result(self) -> torch.Tensor:
        # in place: a second output-sized buffer would be 0.9 GB at 720p x 81 frames in float32
        return self.out.div_(self.weight.clamp_min(1e-12))
