"""The LTX-Video VAE encoder (the teacher's) exactly as ComfyUI 0.3.75 runs it, for versions 0, 1 and 2.

frames (B, 3, T, H, W) in [-1, 1], T = 8k+1, H and W multiples of 32 -> RAW latent means
(B, 128, k+1, H/32, W/32). ComfyUI's VAE.encode returns these *normalized* per channel,
`(mean - mean-of-means) / std-of-means` with the file's `per_channel_statistics` buffers; that step lives
outside this module (`LatentNorm.to_comfy`), as un-normalizing does for the decoders.

Layout: `LTXTeacherEncoder.encoder` holds every parameter under the names of ComfyUI's checkpoints
(`encoder.conv_in.conv.weight`, `encoder.down_blocks.N.res_blocks.M.conv1.conv.weight`, ...).

What ComfyUI's Encoder does (comfy/ldm/lightricks/vae/causal_video_autoencoder.py):
- patchify 4x4 (`b c f (h q) (w r) -> b (c r q) f h w`), so RGB becomes 48 channels;
- every 3x3x3 conv is causal: the first frame is repeated twice in front, space is padded by one with the
  encoder's padding mode, which is **zeros** unless a metadata config names `spatial_padding_mode` (the
  decoder's default is reflect: the two differ on purpose);
- `compress_*` blocks are such convs with stride 2 in time and/or space; `compress_*_res` blocks
  (0.9.5+) repeat the first frame once when they halve time, then add a space-to-depth of their input
  averaged over channel groups to a space-to-depth of a conv;
- pixel norm, SiLU and a causal conv out to 129 channels ("uniform" log-variance): the first 128 are the
  means, which VideoVAE.encode keeps after `torch.chunk(.., 2)`.
Versions 0 and 1 share one encoder; 0.9.5+ (version 2) has its own block list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..spec import Family
from .ltx import COMFY_DECODER_BLOCKS, ChannelLayerNorm, pad_time, pixel_norm

# Encoder block lists of ComfyUI's guessed configs (VideoVAE.guess_config), in run order.
# versions 0 and 1 share the encoder, whose block list is the 0.9.0 decoder's in run order
_V01_BLOCKS: list = COMFY_DECODER_BLOCKS[0]
COMFY_ENCODER_BLOCKS: dict[int, list] = {
    0: _V01_BLOCKS,
    1: _V01_BLOCKS,
    2: [
        ["res_x", {"num_layers": 4}],
        ["compress_space_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 6}],
        ["compress_time_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 6}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 2}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 2}],
    ],
}
V2_ENCODER_KEY = "encoder.down_blocks.1.conv.conv.bias"

_STRIDES = {"time": (2, 1, 1), "space": (1, 2, 2), "all": (2, 2, 2)}
# conv_out channels per log-variance mode; the means are always the first `latent_channels` of them
_LOG_VAR_EXTRA = {"per_channel": None, "uniform": 1, "constant": 1}


class CausalConv3d(nn.Module):
    """kxkxk conv, causal in time by repeating the first frame k-1 times, space padded by k//2 with
    `padding_mode`; optional stride. Keys `<name>.conv.*`, as ComfyUI's."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        padding_mode: str,
        stride: tuple[int, int, int] = (1, 1, 1),
        kernel_size: int = 3,
    ):
        super().__init__()
        pad = kernel_size // 2
        self.kernel_size = kernel_size
        self.conv = nn.Conv3d(
            in_ch, out_ch, kernel_size, stride=stride, padding=(0, pad, pad), padding_mode=padding_mode
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_time(x, self.kernel_size, causal=True))


class EncoderResBlock(nn.Module):
    """pixel norm, SiLU, causal conv, pixel norm, SiLU, causal conv; the shortcut is LayerNorm + 1x1 conv
    when the width changes (ComfyUI's ResnetBlock3D without timestep conditioning or noise)."""

    def __init__(self, in_ch: int, out_ch: int, padding_mode: str):
        super().__init__()
        self.conv1 = CausalConv3d(in_ch, out_ch, padding_mode)
        self.conv2 = CausalConv3d(out_ch, out_ch, padding_mode)
        self.reshapes = in_ch != out_ch
        if self.reshapes:
            self.conv_shortcut = nn.Conv3d(in_ch, out_ch, 1)
            self.norm3 = ChannelLayerNorm(in_ch)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(pixel_norm(x)))
        h = self.conv2(F.silu(pixel_norm(h)))
        if self.reshapes:
            x = self.conv_shortcut(self.norm3(x))
        return x + h


class EncoderResStack(nn.Module):
    """ComfyUI's `res_x` block in the encoder: resnets at one width (keys `res_blocks.N.*`)."""

    def __init__(self, ch: int, layers: int, padding_mode: str):
        super().__init__()
        self.res_blocks = nn.ModuleList(EncoderResBlock(ch, ch, padding_mode) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


def space_to_depth(x: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """(B, C, T*st, H*sh, W*sw) -> (B, C*st*sh*sw, T, H, W), channel c*st*sh*sw + it*sh*sw + ih*sw + iw."""
    st, sh, sw = stride
    return rearrange(x, "b c (d p1) (h p2) (w p3) -> b (c p1 p2 p3) d h w", p1=st, p2=sh, p3=sw)


class SpaceToDepthDown(nn.Module):
    """ComfyUI's `compress_*_res` (SpaceToDepthDownsample): space-to-depth of a causal conv plus the
    space-to-depth of the input averaged over groups of channels; a time stride first repeats frame 0."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int, int], padding_mode: str):
        super().__init__()
        prod = math.prod(stride)
        if out_ch % prod or (in_ch * prod) % out_ch:
            raise ValueError(f"compress_*_res from {in_ch} to {out_ch} channels with stride {stride}")
        self.stride = stride
        self.group = in_ch * prod // out_ch
        self.conv = CausalConv3d(in_ch, out_ch // prod, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 2:
            x = torch.cat([x[:, :, :1], x], dim=2)  # the teacher pads time by duplicating the first frame
        skip = space_to_depth(x, self.stride)
        skip = skip.unflatten(1, (-1, self.group)).mean(dim=2)
        return space_to_depth(self.conv(x), self.stride) + skip


def _parse(entry: Sequence) -> tuple[str, dict]:
    kind, params = entry
    return kind, ({"num_layers": params} if isinstance(params, int) else dict(params))


class ComfyLTXEncoder(nn.Module):
    """The `encoder` submodule: ComfyUI's LTX Encoder (pixel norm, causal, patch 4) from a block list."""

    def __init__(
        self,
        blocks: Sequence[Sequence],
        *,
        padding_mode: str = "zeros",
        in_channels: int = 3,
        latent_channels: int = 128,
        patch_size: int = 4,
        base_channels: int = 128,
        latent_log_var: str = "uniform",
    ):
        super().__init__()
        if latent_log_var not in _LOG_VAR_EXTRA:
            raise ValueError(f"latent_log_var {latent_log_var!r} is not supported (no released file uses it)")
        self.patch_size = patch_size
        self.latent_channels = latent_channels
        ch = base_channels
        self.conv_in = CausalConv3d(in_channels * patch_size**2, ch, padding_mode)
        self.down_blocks = nn.ModuleList()
        self.time_stride, self.space_stride = 1, patch_size
        for entry in blocks:
            kind, params = _parse(entry)
            if kind == "res_x":
                block: nn.Module = EncoderResStack(ch, params.get("num_layers", 1), padding_mode)
            elif kind == "res_x_y":
                out = ch * params.get("multiplier", 2)
                block, ch = EncoderResBlock(ch, out, padding_mode), out
            elif kind in ("compress_time", "compress_space", "compress_all", "compress_all_x_y"):
                stride = _STRIDES[kind.split("_")[1]]
                out = ch * params.get("multiplier", 2) if kind == "compress_all_x_y" else ch
                block, ch = CausalConv3d(ch, out, padding_mode, stride=stride), out
            elif kind in ("compress_time_res", "compress_space_res", "compress_all_res"):
                stride = _STRIDES[kind.split("_")[1]]
                out = ch * params.get("multiplier", 2)
                block, ch = SpaceToDepthDown(ch, out, stride, padding_mode), out
            else:
                raise ValueError(f"unsupported LTX encoder block {kind!r}")
            if kind.startswith("compress"):
                self.time_stride *= stride[0]
                self.space_stride *= stride[1]
            self.down_blocks.append(block)
        extra = _LOG_VAR_EXTRA[latent_log_var]
        out_ch = latent_channels + extra if extra else 2 * latent_channels
        self.conv_out = CausalConv3d(ch, out_ch, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        x = rearrange(x, "b c f (h q) (w r) -> b (c r q) f h w", q=p, r=p)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.conv_out(F.silu(pixel_norm(x)))
        return x[:, : self.latent_channels]


class LTXTeacherEncoder(nn.Module):
    """ComfyUI's LTX-Video VAE encoder: frames (B, 3, 8k+1, 32h, 32w) in [-1, 1] -> RAW means
    (B, 128, k+1, h, w). Normalize with the file's statistics to get ComfyUI's LATENT["samples"]."""

    family = Family.LTXV

    def __init__(self, blocks: Sequence[Sequence], *, spatial_padding_mode: str = "zeros", **kwargs):
        super().__init__()
        self.encoder = ComfyLTXEncoder(blocks, padding_mode=spatial_padding_mode, **kwargs)
        self.spatial_padding_mode = spatial_padding_mode
        self.latent_channels = self.encoder.latent_channels
        self.time_stride = self.encoder.time_stride
        self.space_stride = self.encoder.space_stride

    @property
    def causal(self) -> bool:
        return False  # causal in time, but not streamed: ComfyUI encodes the whole clip at once

    @classmethod
    def for_version(cls, version: int, spatial_padding_mode: str = "zeros") -> LTXTeacherEncoder:
        """The encoder ComfyUI builds for a file of this version when no metadata config is given."""
        if version not in COMFY_ENCODER_BLOCKS:
            raise ValueError(f"LTX VAE version must be 0, 1 or 2, got {version}")
        return cls(COMFY_ENCODER_BLOCKS[version], spatial_padding_mode=spatial_padding_mode)

    @classmethod
    def from_comfy_config(cls, config: Mapping, base_channels: int = 128) -> LTXTeacherEncoder:
        """From ComfyUI's VAE config dict (`json.loads(metadata["config"])["vae"]`), read as VideoVAE does:
        encoder_blocks (else blocks), latent_channels, in_channels, patch_size, latent_log_var (from
        double_z), spatial_padding_mode (default zeros for the encoder)."""
        if config.get("dims", 3) != 3 or config.get("norm_layer", "group_norm") != "pixel_norm":
            raise ValueError("only 3-D pixel_norm LTX encoders exist in released files and are supported")
        blocks = config.get("encoder_blocks", config.get("blocks"))
        if blocks is None:
            raise ValueError("config has neither encoder_blocks nor blocks")
        log_var = config.get("latent_log_var", "per_channel" if config.get("double_z", True) else "none")
        return cls(
            blocks,
            spatial_padding_mode=config.get("spatial_padding_mode", "zeros"),
            in_channels=int(config.get("in_channels", 3)),
            latent_channels=int(config["latent_channels"]),
            patch_size=int(config.get("patch_size", 1)),
            base_channels=base_channels,
            latent_log_var=log_var,
        )

    def forward(self, frames: Tensor) -> Tensor:
        t = frames.shape[2]
        if (t - 1) % self.time_stride:
            raise ValueError(f"the LTX encoder needs 1 + {self.time_stride}k frames, got {t}")
        return self.encoder(frames)
