"""What a decoder costs, independent of its weights: parameters and FLOPs per output pixel.

The FLOPs come from one whole-clip decode on PyTorch's meta device (`torch.utils.flop_counter`, 2 per
multiply-add; nothing is computed or allocated), divided by the output pixels (frames x height x width),
so that students and teachers of any family compare on the same footing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .arch.protocol import DecoderModule, decode_raw


@dataclass(frozen=True)
class DecoderCost:
    """parameters: all of the module's; flops_per_px: per output pixel and frame (2 per multiply-add)."""

    parameters: int
    flops_per_px: float

    def versus(self, teacher: DecoderCost) -> str:
        """'<M> parameters, <M> FLOP/px: <x> fewer FLOPs, <x> fewer parameters than the teacher'."""
        return (
            f"{self.parameters / 1e6:.3g} M parameters, {self.flops_per_px / 1e6:.3g} MFLOP per output pixel: "
            f"{teacher.flops_per_px / max(self.flops_per_px, 1e-9):.1f}x fewer FLOPs and "
            f"{teacher.parameters / max(self.parameters, 1):.1f}x fewer parameters than the teacher "
            f"({teacher.parameters / 1e6:.3g} M, {teacher.flops_per_px / 1e6:.3g} MFLOP per pixel)"
        )


@torch.no_grad()
def decoder_cost(module: DecoderModule, latent_frames: int = 3, latent_px: int = 4) -> DecoderCost:
    """Parameters and FLOPs per output pixel of a decoder module, from a (1, C, latent_frames, latent_px,
    latent_px) probe decode on the meta device (the module's weights stay where they are)."""
    parameters = sum(p.numel() for p in module.parameters())
    shadow = _on_meta(module)
    z = torch.zeros(1, shadow.latent_channels, latent_frames, latent_px, latent_px, device="meta")
    with FlopCounterMode(display=False) as counter:
        video = decode_raw(shadow, z)
    pixels = video.shape[2] * video.shape[3] * video.shape[4]
    return DecoderCost(parameters, counter.get_total_flops() / pixels)


def _on_meta(module: nn.Module) -> nn.Module:
    memo = {}
    for t in [*module.parameters(), *module.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(module, memo)
