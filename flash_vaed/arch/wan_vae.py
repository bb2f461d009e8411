"""A whole Wan 2.1 VAE (encoder and decoder) at any width, trainable end to end.

Used to train the small real-architecture teacher we ship (`flash_vaed.teacher`). `real_state_dict()`
has exactly the keys and shapes of `wan_2.1_vae.safetensors` at that width (`encoder.*`, `conv1.*`,
`conv2.*`, `decoder.*`), so ComfyUI's VAE loader, `load_decoder` and `load_encoder` all open the file.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.state import DecodeState
from ..spec import DecoderSpec
from .wan import WanFamilyDecoder
from .wan_encoder import WanEncoder


class WanVAE(nn.Module):
    def __init__(self, dim: int = 24, z_dim: int = 16):
        super().__init__()
        if z_dim != 16:
            raise ValueError("the Wan 2.1 layout has 16 latent channels")
        self.dim = dim
        self.enc = WanEncoder(dim, z_dim)
        self.dec = WanFamilyDecoder(DecoderSpec.wan21_teacher(dim))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, 4k+1, H, W) in [-1, 1] -> raw latent mean (B, 16, k+1, H/8, W/8)."""
        return self.enc(frames, DecodeState(self.enc))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z, DecodeState(self.dec))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(frames)
        return self.decode(z), z

    def real_state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.enc.state_dict(), **self.dec.state_dict()}

    def load_real_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        enc_keys = set(self.enc.state_dict())
        self.enc.load_state_dict({k: v for k, v in tensors.items() if k in enc_keys}, strict=True)
        self.dec.load_state_dict({k: v for k, v in tensors.items() if k not in enc_keys}, strict=True)
