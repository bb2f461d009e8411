"""Run a teacher on calibration latents and keep a bounded sample of what its layers see.

Two kinds of sample, both taken with forward hooks while the teacher decodes whole clips (`decode_raw`:
causal layers see zeros before the first frame, as in a real decode; LTX teachers decode noise-free):

- `collect_inputs`: pixel rows of a module's input, (rows, C). What channel selection, the folds and
  the norm refits need.
- `collect_patches`: for a causal 3x3x3 conv, the (zero-padded, causal) 3x3x3 neighbourhood of chosen
  input channels at sampled output positions, (rows, k_in, 27), with the conv's output there, (rows,
  k_out); for a per-frame 2D conv the 3x3 neighbourhood, (rows, k_in, 9). What the operator fits need.

Rows are drawn uniformly over batch, frames and pixels with a seeded generator, at most `rows` per
module, so memory stays bounded whatever the clip size.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.protocol import DecoderModule, decode_raw

log = logging.getLogger(__name__)


def _batches(latents: torch.Tensor, batch: int) -> list[torch.Tensor]:
    if latents.ndim != 5:
        raise ValueError(f"calibration latents must be (N, C, T, H, W), got shape {tuple(latents.shape)}")
    return list(latents.split(max(1, batch), dim=0))


def _generator(seed: int, name: str) -> torch.Generator:
    # one stream per module, independent of hook order, so adding a module changes no other sample
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def sample_rows(x: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """x (N, C, ...) -> (min(rows, pixels), C) float32: channel vectors at uniformly drawn positions."""
    flat = x.detach().movedim(1, -1).reshape(-1, x.shape[1])
    n = flat.shape[0]
    if n <= rows:
        return flat.float()
    idx = torch.randperm(n, generator=generator)[:rows].to(flat.device)
    return flat[idx].float()


@torch.no_grad()
def decode_clips(module: DecoderModule, latents: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """`decode_raw`, `batch` clips at a time: raw latents (N, C, T, H, W) -> video, float32."""
    p = next(module.parameters())
    return torch.cat([decode_raw(module, z.to(p.device, p.dtype)).float() for z in _batches(latents, batch)])


@torch.no_grad()
def collect_inputs(
    module: nn.Module,
    latents: torch.Tensor,
    names: Iterable[str],
    rows: int = 4096,
    seed: int = 0,
    batch: int = 1,
) -> dict[str, torch.Tensor]:
    """Decode `latents` with `module` and return {name: (rows, C) float32} of each named submodule's
    first input (channels on dim 1: (B, C, T, H, W) or frames folded (B*T, C, H, W))."""
    chunks = _batches(latents, batch)
    quota = math.ceil(rows / len(chunks))
    got: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name in dict.fromkeys(names):
        gen = _generator(seed, name)

        def hook(_mod: nn.Module, args: tuple, name: str = name, gen: torch.Generator = gen) -> None:
            got.setdefault(name, []).append(sample_rows(args[0], quota, gen))

        handles.append(module.get_submodule(name).register_forward_pre_hook(hook))
    try:
        decode_clips(module, latents, batch)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts)[:rows] for name, parts in got.items()}


@dataclass(frozen=True)
class PatchRequest:
    """Which channels of one causal conv to sample: input channels `kept_in`, output channels `kept_out`."""

    kept_in: torch.Tensor
    kept_out: torch.Tensor


def causal_patches(
    x: torch.Tensor, kept_in: torch.Tensor, index: tuple[torch.Tensor, ...], kernel: int = 3
) -> torch.Tensor:
    """The causal k x k x k input neighbourhoods of `kept_in` channels at output positions `index`.

    x (B, C, T, H, W): a causal conv's whole-clip input (zeros before frame 0, `kernel // 2` zeros
    around each frame, as CausalConv3d pads). index: (b, t, h, w) int tensors of length R.
    Returns (R, k_in, kernel**3) laid out like the conv weight's (kt, kh, kw) flattened.
    """
    p = kernel // 2
    padded = F.pad(x[:, kept_in.to(x.device)], (p, p, p, p, kernel - 1, 0))
    b, t, h, w = index
    taps = [
        padded[b, :, t + dt, h + dh, w + dw]
        for dt in range(kernel)
        for dh in range(kernel)
        for dw in range(kernel)
    ]
    return torch.stack(taps, dim=-1)


def frame_patches(
    x: torch.Tensor, kept_in: torch.Tensor, index: tuple[torch.Tensor, ...], kernel: int = 3
) -> torch.Tensor:
    """The k x k neighbourhoods of `kept_in` channels of frames x (N, C, H, W) (zero 'same' padding) at
    positions `index` = (n, h, w). Returns (R, k_in, kernel**2) in the weight's (kh, kw) order."""
    p = kernel // 2
    padded = F.pad(x[:, kept_in.to(x.device)], (p, p, p, p))
    n, h, w = index
    return torch.stack([padded[n, :, h + dh, w + dw] for dh in range(kernel) for dw in range(kernel)], dim=-1)


def _kernel(conv: nn.Module) -> int:
    inner = getattr(conv, "depthwise_conv", conv)  # a separable conv's reach is its depthwise kernel
    return inner.kernel_size[0]


@torch.no_grad()
def collect_patches(
    module: nn.Module,
    latents: torch.Tensor,
    requests: Mapping[str, PatchRequest],
    rows: int = 2048,
    seed: int = 0,
    batch: int = 1,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decode `latents`; for each named conv return (patches (rows, k_in, k^3), outputs (rows, k_out)),
    float32, at the same sampled positions. Causal 3D convs (full or separable) take (B, C, T, H, W)
    inputs; per-frame 2D convs take frames (B*T, C, H, W) and give (rows, k_in, k^2) patches. Positions
    are drawn from the flat (batch, frame, row, column) index either way, so a 3D teacher conv and a
    2D student conv of the same name sample the same pixels."""
    chunks = _batches(latents, batch)
    quota = math.ceil(rows / len(chunks))
    got: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    handles = []
    for name, req in requests.items():
        conv = module.get_submodule(name)
        kernel = _kernel(conv)
        gen = _generator(seed + 1, name)

        def hook(
            _mod: nn.Module,
            args: tuple,
            out: torch.Tensor,
            name: str = name,
            req: PatchRequest = req,
            kernel: int = kernel,
            gen: torch.Generator = gen,
        ) -> None:
            x = args[0]
            grid = (out.shape[0], *out.shape[2:])  # (B, T, H, W) or (B*T, H, W): same flat order
            total = math.prod(grid)
            flat = torch.randperm(total, generator=gen)[: min(quota, total)]
            index = tuple(i.to(x.device) for i in torch.unravel_index(flat, grid))
            extract = causal_patches if x.ndim == 5 else frame_patches
            patches = extract(x, req.kept_in, index, kernel).float()
            target = out.movedim(1, -1)[index][:, req.kept_out.to(x.device)].float()
            got.setdefault(name, []).append((patches, target))

        handles.append(conv.register_forward_hook(hook))
    try:
        decode_clips(module, latents, batch)
    finally:
        for h in handles:
            h.remove()
    return {
        name: (torch.cat([p for p, _ in parts])[:rows], torch.cat([t for _, t in parts])[:rows])
        for name, parts in got.items()
    }
