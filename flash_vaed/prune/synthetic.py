"""Teachers with known channel redundancy, for tests and benchmarks of the pruning steps.

A randomly initialised decoder has (nearly) full-rank activations everywhere, so no selection rule can
beat another on it; a trained VAE does not (the paper's premise: many channels are near-linear
combinations of others). `make_redundant_` gives a random teacher that structure on purpose: in every
channel space of width C, a fraction of the channels are noisy copies of others, consistently for all
the convs that write that space (so the residual stream is redundant too, not only conv outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch.layers import FrameAttention, RMSNorm, Upsample


def _copy_map(width: int, originals: float, generator: torch.Generator) -> torch.Tensor:
    """(width,) source channel of each channel: itself for originals, a random original for copies,
    with originals scattered (not simply the first ones) so that index order carries no hint."""
    n = max(1, round(width * originals))
    perm = torch.randperm(width, generator=generator)
    src = torch.empty(width, dtype=torch.long)
    src[perm[:n]] = perm[:n]
    src[perm[n:]] = perm[:n][torch.randint(n, (width - n,), generator=generator)]
    return src


@torch.no_grad()
def make_redundant_(
    decoder: nn.Module, originals: float = 0.5, noise: float = 0.05, seed: int = 0, skip: tuple[str, ...] = ()
) -> dict[int, torch.Tensor]:
    """Make each channel space of a Wan-family `decoder` redundant, in place.

    For every width C one copy map is drawn; every conv whose output is a C-channel space (and every
    RMSNorm gamma over one) gets rows src[j] for row j, plus `noise` times the weights' std of Gaussian
    noise. Attention values and both time-upsample groups are treated as C-channel spaces; queries,
    keys, the 1x1 latent conv and the RGB head keep their rows. Returns {C: copy map}.
    """
    gen = torch.Generator().manual_seed(seed)
    maps: dict[int, torch.Tensor] = {}

    def src(width: int) -> torch.Tensor:
        if width not in maps:
            maps[width] = _copy_map(width, originals, gen)
        return maps[width]

    def copy_rows(t: torch.Tensor, lo: int, hi: int) -> None:
        block = t[lo:hi]
        rows = block[src(hi - lo).to(t.device)]
        jitter = torch.randn(rows.shape, generator=gen).to(t) * noise * float(t.std())
        block.copy_(rows + jitter)

    def redo(conv: nn.Module, groups: int = 1, start_group: int = 0) -> None:
        width = conv.weight.shape[0] // groups
        for g in range(start_group, groups):
            copy_rows(conv.weight, g * width, (g + 1) * width)
            if conv.bias is not None:
                copy_rows(conv.bias, g * width, (g + 1) * width)

    skipped = {"conv2", "decoder.head.2", *skip}
    special: set[nn.Module] = set()
    for name, m in decoder.named_modules():
        if name in skipped:
            special.add(m)
        elif isinstance(m, FrameAttention):
            redo(m.to_qkv, groups=3, start_group=2)  # values only: q.k is not a channel space
            special.add(m.to_qkv)
        elif isinstance(m, Upsample) and m.time_conv is not None:
            redo(m.time_conv, groups=2)
            special.add(m.time_conv)
        elif isinstance(m, RMSNorm):
            g = m.gamma.flatten()
            g.copy_(g[src(g.numel())])
    for m in decoder.modules():
        if m not in special and isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.groups == 1:
            redo(m)
    return maps
