"""LTX-Video VAE decoder (the teacher) exactly as ComfyUI 0.3.75 runs it, for LTX-Video 0.9.0/0.9.1/0.9.5+.

Layout: `LTXTeacherDecoder.decoder` holds every parameter under the names of ComfyUI's checkpoints
(`decoder.conv_in.conv.weight`, `decoder.up_blocks.N.res_blocks.M.conv1.conv.weight`, ...), so the
`decoder.*` keys of a real file load with strict=True. The file's `per_channel_statistics.*` buffers are
not part of this module: callers un-normalize latents themselves.

What ComfyUI does when it decodes an LTX latent (comfy.sd.VAE.decode -> VideoVAE.decode -> Decoder):

1. LATENT["samples"] holds *normalized* latents. VAE.decode cuts the batch into chunks that fit in free
   memory and, for each chunk, calls VideoVAE.decode(x, timestep=0.05, noise_scale=0.025).
2. Versions 1 and 2 (timestep-conditioned) first replace the chunk by
   `randn_like(x) * 0.025 + 0.975 * x` -- on the NORMALIZED latent, before un-normalizing, with the
   global RNG of the latent's device. Decode itself never seeds it: its state is whatever the workflow
   left (KSampler's prepare_noise calls torch.manual_seed(seed), then sampling consumes it), so a cached
   re-decode of the same latent differs. The draw happens even for noise_scale 0. Version 0 draws nothing.
   `mix_decode_noise` below is that step; call it before `un_normalize`.
3. Un-normalize per channel: `x * std-of-means + mean-of-means`, then run the decoder with the
   timestep 0.05, which the decoder multiplies by its `timestep_scale_multiplier` (1000.0 in the files).
4. Version 1 (0.9.1) also injects noise inside the decoder: every resnet of a block marked
   inject_noise draws `randn(H, W)` (the current spatial size) right after conv1 and again after conv2,
   scales it per channel by `per_channel_scale1/2` and adds it to every frame, channel and batch entry.
   These draws come from the same global RNG, after the latent-noise draw, in execution order: for
   0.9.1 that is 14 draws at (2H, 2W), 12 at (4H, 4W), 10 at (8H, 8W) for an (H, W) latent.
   `draw_spatial_noise` pre-draws them in that order so one seeded generator reproduces a
   torch.manual_seed'ed ComfyUI decode (CPU: a CPU generator; CUDA: a generator on the latent's device).
5. The timestep embedding is computed once for the scalar timestep and then `.view(batch, ...)`ed, so
   ComfyUI's decoder raises for a chunk of more than one latent in versions 1/2; here it broadcasts.
   (A batch only decodes there when memory forces one-latent chunks; its draws then interleave per
   latent: latent noise of sample 0, its spatial noise, latent noise of sample 1, ...)
6. The decoder's output is roughly [-1, 1]; VAE.decode returns clamp((x + 1) / 2, 0, 1) moved to
   (B, F, H, W, 3).

Padding: the decoder pads space with `reflect` unless the file's metadata config names
`spatial_padding_mode` (VAELoader passes no metadata, so real files decode with reflect; LTX-Video's own
code and diffusers use zeros, which changes every pixel, not only borders). Reflect needs latents of at
least 2x2. The decoder is non-causal: each 3x3x3 conv repeats the first and last frame once in time.

Each 2x time upsample drops its first output frame, so T latent frames give 8T - 7 frames, latent frame
t > 0 gives frames 8t-7 .. 8t and a window starting at latent frame s > 0 starts at frame 8s. Every time
conv reaches one frame each way at its own frame rate; `temporal_context` turns that into the latent
frames a window needs on each side: 24 for 0.9.0, 31 for 0.9.1, 22 for 0.9.5+.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..engine.state import DecodeState
from ..spec import Family
from .protocol import DecoderModule

__all__ = [
    "COMFY_DECODER_BLOCKS",
    "DECODE_NOISE_SCALE",
    "DECODE_TIMESTEP",
    "LTXTeacherDecoder",
    "ltx_version_from_keys",
    "mix_decode_noise",
    "un_normalize",
    "temporal_context",
    "unpatchify",
    "sinusoidal_embedding",
]

DECODE_TIMESTEP = 0.05
DECODE_NOISE_SCALE = 0.025
PADDING_MODES = ("reflect", "zeros")

# Decoder block lists of ComfyUI's guessed configs, deep-last as the files list them (the decoder runs
# them reversed). Version 0 shares one list with its encoder.
COMFY_DECODER_BLOCKS: dict[int, list] = {
    0: [
        ["res_x", 4],
        ["compress_all", 1],
        ["res_x_y", 1],
        ["res_x", 3],
        ["compress_all", 1],
        ["res_x_y", 1],
        ["res_x", 3],
        ["compress_all", 1],
        ["res_x", 3],
        ["res_x", 4],
    ],
    1: [
        ["res_x", {"num_layers": 5, "inject_noise": True}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 6, "inject_noise": True}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 7, "inject_noise": True}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 8, "inject_noise": False}],
    ],
    2: [
        ["res_x", {"num_layers": 5, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5, "inject_noise": False}],
    ],
}

_PROBE_KEY = "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"
_V2_ENCODER_KEY = "encoder.down_blocks.1.conv.conv.bias"


# ---- functions the engine calls around the decoder ------------------------------------------------


def mix_decode_noise(
    z: Tensor, noise_scale: float = DECODE_NOISE_SCALE, generator: torch.Generator | None = None
) -> Tensor:
    """ComfyUI's pre-decode latent noise for timestep-conditioned LTX VAEs (versions 1 and 2).

    z: NORMALIZED latent (B, 128, T, H, W), any float dtype; apply before `un_normalize`, once per
    decode on the whole latent. Draws exactly like `torch.randn_like(z)` (so `generator=None` consumes
    the global RNG the way ComfyUI does), even when noise_scale is 0.
    """
    noise = torch.empty_like(z).normal_(generator=generator)
    return noise * noise_scale + (1.0 - noise_scale) * z


def un_normalize(z: Tensor, mean_of_means: Tensor, std_of_means: Tensor) -> Tensor:
    """Normalized (B, C, T, H, W) latent -> raw latent, per channel, in ComfyUI's operation order."""
    shape = (1, -1, 1, 1, 1)
    return z * std_of_means.view(shape).to(z) + mean_of_means.view(shape).to(z)


def ltx_version_from_keys(
    keys: Iterable[str], shapes: Mapping[str, Sequence[int]], *, like_comfyui: bool = True
) -> int:
    """LTX VAE version (0: 0.9.0, 1: 0.9.1, 2: 0.9.5+) from checkpoint keys without the `vae.` prefix.

    like_comfyui=True reproduces ComfyUI: 2 only when the encoder key of 0.9.5+ is present, so a
    decoder-only 0.9.5+ file reads as 1; unknown widths read as 0. like_comfyui=False tells 1 from 2 by
    the decoder alone (only 0.9.1 has noise-injection scales) and rejects unknown widths.
    """
    keys = set(keys)
    if _PROBE_KEY not in keys:
        raise ValueError(f"not an LTX-Video VAE state dict: no {_PROBE_KEY!r}")
    width = int(shapes[_PROBE_KEY][0])
    if width == 512:
        return 0
    if width == 1024:
        if like_comfyui:
            return 2 if _V2_ENCODER_KEY in keys else 1
        return 1 if any("per_channel_scale" in k for k in keys if k.startswith("decoder.")) else 2
    if like_comfyui:
        return 0
    raise ValueError(f"unknown LTX-Video decoder width {width} in {_PROBE_KEY!r}")


def temporal_context(ops: Iterable[tuple[int, int] | str]) -> tuple[int, int]:
    """Latent frames needed (before, after) a window so that its cropped output is exact.

    ops: the decoder's time structure in execution order: `(before, after)` for a layer that reads that
    many frames back/ahead at its own frame rate, or "up" for a 2x time upsample that drops its first
    output frame (LTX's depth-to-space). Tracks, as an offset from the window's edges in each rate's frame
    index, the first and last output frame that never sees the window's replicated edge frames.
    """
    first, last, ups = 0, 0, 0
    for op in ops:
        if op == "up":
            ups += 1
            # frame t of the slower rate becomes frames 2t-1 and 2t; the window's own edges map to
            # 0 and -(2^ups - 1) offsets, and a clean frame can never lie outside the window.
            first = max(2 * first - 1, 0)
            last = min(2 * last - 1, -(2**ups - 1))
        else:
            before, after = op
            first += before
            last -= after
    scale = 2**ups
    need_before = math.ceil((first + scale - 1) / scale)
    need_after = (-last - scale) // scale + 1
    return max(need_before, 0), max(need_after, 0)


def unpatchify(x: Tensor, patch: int) -> Tensor:
    """(B, C*p*p, T, H, W) -> (B, C, T, H*p, W*p); channel c*p*p + pw*p + ph goes to pixel (ph, pw)."""
    if patch == 1:
        return x
    return rearrange(x, "b (c pw ph) t h w -> b c t (h ph) (w pw)", ph=patch, pw=patch)


def depth_to_space(x: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """(B, C*st*sh*sw, T, H, W) -> (B, C, T*st, H*sh, W*sw), dropping the first st-1 frames."""
    st, sh, sw = stride
    x = rearrange(x, "b (c st sh sw) t h w -> b c (t st) (h sh) (w sw)", st=st, sh=sh, sw=sw)
    return x[:, :, st - 1 :]


def sinusoidal_embedding(t: Tensor, dim: int = 256) -> Tensor:
    """(N,) timesteps -> (N, dim) float32 [cos | sin] features, frequencies 10000^(-i/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalize each position's channel vector to unit RMS (LTX's parameter-free norm)."""
    return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + eps)


# ---- building blocks (attribute names are the checkpoint's) ----------------------------------------


class ReplicateTimeConv3d(nn.Module):
    """kxkxk conv whose time axis is padded by repeating edge frames (`<name>.conv.*` keys); space pads k//2.

    causal=False repeats the first and last frame k//2 times each; causal=True the first frame k-1 times.
    """

    def __init__(
        self, in_ch: int, out_ch: int, padding_mode: str = "zeros", causal: bool = False, kernel_size: int = 3
    ):
        super().__init__()
        self.causal = causal
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        self.conv = nn.Conv3d(in_ch, out_ch, kernel_size, padding=(0, pad, pad), padding_mode=padding_mode)

    @property
    def time_reach(self) -> tuple[int, int]:
        return time_reach(self.kernel_size, self.causal)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_time(x, self.kernel_size, self.causal))


def time_reach(kernel_size: int, causal: bool) -> tuple[int, int]:
    """Frames (before, after) a time-padded conv reads around each output frame."""
    return (kernel_size - 1, 0) if causal else (kernel_size // 2, kernel_size // 2)


def pad_time(x: Tensor, kernel_size: int, causal: bool) -> Tensor:
    """Repeat edge frames of (B, C, T, H, W) so a valid time conv of `kernel_size` keeps T frames."""
    before, after = time_reach(kernel_size, causal)
    if before == after == 0:
        return x
    parts = [x[:, :, :1]] * before + [x] + [x[:, :, -1:]] * after
    return torch.cat(parts, dim=2)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T, H, W) tensor; keys `<name>.norm.weight/bias`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class TimestepMLP(nn.Module):
    """Sinusoidal features -> linear -> SiLU -> linear (keys `timestep_embedder.linear_{1,2}`)."""

    class _Layers(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.linear_1 = nn.Linear(256, dim)
            self.linear_2 = nn.Linear(dim, dim)

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = self._Layers(dim)

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """t: 0-d or (N,) scaled timestep -> (N, dim, 1, 1, 1)."""
        layers = self.timestep_embedder
        h = layers.linear_1(sinusoidal_embedding(t.flatten()).to(dtype))
        h = layers.linear_2(F.silu(h))
        return h[:, :, None, None, None]


def _ada(table: Tensor, emb: Tensor, parts: int, ref: Tensor) -> tuple[Tensor, ...]:
    """Split `table (parts, C) + emb (N, parts*C, 1, 1, 1)` into `parts` (N, C, 1, 1, 1) tensors."""
    values = table.to(ref)[None, :, :, None, None, None] + emb.unflatten(1, (parts, -1))
    return values.unbind(dim=1)


class TeacherResBlock(nn.Module):
    """Pixel-norm resnet with two 3x3x3 convs; optional AdaLN timestep modulation and 0.9.1 noise."""

    def __init__(
        self, in_ch: int, out_ch: int, padding_mode: str, conditioned: bool = False, noisy: bool = False
    ):
        super().__init__()
        if noisy and in_ch != out_ch:
            raise ValueError("noise injection needs equal in/out channels (its scales have in_ch entries)")
        self.conv1 = ReplicateTimeConv3d(in_ch, out_ch, padding_mode)
        self.conv2 = ReplicateTimeConv3d(out_ch, out_ch, padding_mode)
        if noisy:
            self.per_channel_scale1 = nn.Parameter(torch.zeros(in_ch, 1, 1))
            self.per_channel_scale2 = nn.Parameter(torch.zeros(in_ch, 1, 1))
        if in_ch != out_ch:
            self.conv_shortcut = nn.Conv3d(in_ch, out_ch, 1)
            self.norm3 = ChannelLayerNorm(in_ch)
        if conditioned:
            self.scale_shift_table = nn.Parameter(torch.zeros(4, in_ch))
        self.noisy = noisy
        self.conditioned = conditioned
        self.reshapes = in_ch != out_ch

    def time_ops(self) -> list[tuple[int, int]]:
        return [self.conv1.time_reach, self.conv2.time_reach]

    def forward(self, x: Tensor, emb: Tensor | None, noise: Iterator[Tensor]) -> Tensor:
        h = pixel_norm(x)
        if self.conditioned:
            shift1, scale1, shift2, scale2 = _ada(self.scale_shift_table, emb, 4, h)
            h = h * (1 + scale1) + shift1
        h = self.conv1(F.silu(h))
        if self.noisy:
            h = _add_spatial_noise(h, next(noise), self.per_channel_scale1)
        h = pixel_norm(h)
        if self.conditioned:
            h = h * (1 + scale2) + shift2
        h = self.conv2(F.silu(h))
        if self.noisy:
            h = _add_spatial_noise(h, next(noise), self.per_channel_scale2)
        if self.reshapes:
            x = self.conv_shortcut(self.norm3(x))
        return x + h


def _add_spatial_noise(h: Tensor, noise: Tensor, scale: Tensor) -> Tensor:
    if noise.shape != h.shape[-2:]:
        raise ValueError(f"spatial noise {tuple(noise.shape)} does not match features {tuple(h.shape[-2:])}")
    scaled = noise.to(h)[None] * scale.to(h)
    return h + scaled[None, :, None]


class ResStack(nn.Module):
    """ComfyUI's `res_x` block: resnets at one resolution sharing one timestep embedding."""

    def __init__(self, ch: int, layers: int, padding_mode: str, conditioned: bool, noisy: bool):
        super().__init__()
        if conditioned:
            self.time_embedder = TimestepMLP(4 * ch)
        self.res_blocks = nn.ModuleList(
            TeacherResBlock(ch, ch, padding_mode, conditioned, noisy) for _ in range(layers)
        )
        self.conditioned = conditioned

    def time_ops(self) -> list[tuple[int, int]]:
        return [op for block in self.res_blocks for op in block.time_ops()]

    def forward(self, x: Tensor, t: Tensor | None, noise: Iterator[Tensor]) -> Tensor:
        emb = self.time_embedder(t, x.dtype) if self.conditioned else None
        for block in self.res_blocks:
            x = block(x, emb, noise)
        return x


class DepthToSpaceUp(nn.Module):
    """3x3x3 conv to `prod(stride)*C/reduction` channels, then depth-to-space (ComfyUI's `compress_*`).

    residual=True adds the input itself, depth-to-spaced and tiled along channels to the output width.
    """

    def __init__(
        self,
        in_ch: int,
        stride: tuple[int, int, int],
        padding_mode: str,
        residual: bool = False,
        reduction: int = 1,
    ):
        super().__init__()
        self.stride = stride
        self.residual = residual
        self.repeats = math.prod(stride) // reduction
        self.conv = ReplicateTimeConv3d(in_ch, math.prod(stride) * in_ch // reduction, padding_mode)

    def time_ops(self) -> list:
        return [self.conv.time_reach] + (["up"] if self.stride[0] == 2 else [])

    def forward(self, x: Tensor) -> Tensor:
        out = depth_to_space(self.conv(x), self.stride)
        if self.residual:
            out = out + depth_to_space(x, self.stride).repeat(1, self.repeats, 1, 1, 1)
        return out


_UP_STRIDES = {"compress_all": (2, 2, 2), "compress_time": (2, 1, 1), "compress_space": (1, 2, 2)}


@dataclass(frozen=True)
class _Block:
    """One entry of a ComfyUI block list, normalized."""

    kind: str
    layers: int = 1
    noisy: bool = False
    residual: bool = False
    multiplier: int = 1

    @classmethod
    def parse(cls, entry: Sequence) -> _Block:
        kind, params = entry
        if kind not in ("res_x", "res_x_y", *_UP_STRIDES):
            raise ValueError(f"unsupported LTX decoder block {kind!r}")
        if isinstance(params, int):
            params = {"num_layers": params}
        default_mult = 2 if kind == "res_x_y" else 1
        return cls(
            kind,
            params.get("num_layers", 1),
            bool(params.get("inject_noise", False)),
            bool(params.get("residual", False)),
            int(params.get("multiplier", default_mult)),
        )


class ComfyLTXDecoder(nn.Module):
    """The `decoder` submodule: ComfyUI's LTX Decoder (pixel norm, non-causal, patch 4) from a block list."""

    def __init__(
        self,
        blocks: Sequence[Sequence],
        *,
        timestep_conditioning: bool,
        padding_mode: str,
        latent_channels: int = 128,
        out_channels: int = 3,
        patch_size: int = 4,
        base_channels: int = 128,
    ):
        super().__init__()
        plan = [_Block.parse(entry) for entry in reversed(blocks)]
        ch = base_channels
        for block in plan:
            if block.kind in ("res_x_y", "compress_all"):
                ch *= block.multiplier
        self.patch_size = patch_size
        self.timestep_conditioning = timestep_conditioning
        self.conv_in = ReplicateTimeConv3d(latent_channels, ch, padding_mode)
        self.up_blocks = nn.ModuleList()
        for block in plan:
            if block.kind == "res_x":
                self.up_blocks.append(
                    ResStack(ch, block.layers, padding_mode, timestep_conditioning, block.noisy)
                )
            elif block.kind == "res_x_y":
                out = ch // block.multiplier
                self.up_blocks.append(TeacherResBlock(ch, out, padding_mode, noisy=block.noisy))
                ch = out
            else:
                reduction = block.multiplier if block.kind == "compress_all" else 1
                self.up_blocks.append(
                    DepthToSpaceUp(ch, _UP_STRIDES[block.kind], padding_mode, block.residual, reduction)
                )
                ch //= reduction
        self.conv_out = ReplicateTimeConv3d(ch, out_channels * patch_size**2, padding_mode)
        if timestep_conditioning:
            self.timestep_scale_multiplier = nn.Parameter(torch.tensor(1000.0))
            self.last_time_embedder = TimestepMLP(2 * ch)
            self.last_scale_shift_table = nn.Parameter(torch.zeros(2, ch))

    def forward(self, x: Tensor, timestep: float, noise: Iterator[Tensor]) -> Tensor:
        x = self.conv_in(x)
        t = None
        if self.timestep_conditioning:
            # Python float times the float32 parameter, as ComfyUI computes it.
            t = timestep * self.timestep_scale_multiplier.to(x.dtype)
        for block in self.up_blocks:
            if isinstance(block, ResStack):
                x = block(x, t, noise)
            elif isinstance(block, TeacherResBlock):
                x = block(x, None, noise)
            else:
                x = block(x)
        x = pixel_norm(x)
        if self.timestep_conditioning:
            shift, scale = _ada(self.last_scale_shift_table, self.last_time_embedder(t, x.dtype), 2, x)
            x = x * (1 + scale) + shift
        x = self.conv_out(F.silu(x))
        return unpatchify(x, self.patch_size)


class LTXTeacherDecoder(DecoderModule):
    """ComfyUI's LTX-Video VAE decoder (versions 0/1/2 or any ComfyUI decoder config of that family).

    Takes RAW latents (un-normalize first; for versions 1/2 mix the decode noise before that, see the
    module docstring). Versions 1 and 2 are timestep-conditioned (default timestep 0.05); version 1
    injects noise (drawn from the global RNG when not given, which only matches ComfyUI for an unsplit
    decode). A window whose first latent frame s > 0 yields frames from time_stride * s on (its first
    latent frame gives one frame).
    """

    family = Family.LTXV

    def __init__(
        self,
        blocks: Sequence[Sequence],
        *,
        timestep_conditioning: bool,
        spatial_padding_mode: str = "reflect",
        latent_channels: int = 128,
        out_channels: int = 3,
        patch_size: int = 4,
        base_channels: int = 128,
    ):
        super().__init__()
        if spatial_padding_mode not in PADDING_MODES:
            raise ValueError(
                f"spatial_padding_mode must be one of {PADDING_MODES}, got {spatial_padding_mode!r}"
            )
        self.decoder = ComfyLTXDecoder(
            blocks,
            timestep_conditioning=timestep_conditioning,
            padding_mode=spatial_padding_mode,
            latent_channels=latent_channels,
            out_channels=out_channels,
            patch_size=patch_size,
            base_channels=base_channels,
        )
        self.spatial_padding_mode = spatial_padding_mode
        self.latent_channels = latent_channels
        self.timestep_conditioned = timestep_conditioning
        ops = [self.decoder.conv_in.time_reach]
        for block in self.decoder.up_blocks:
            ops += block.time_ops()
        ops.append(self.decoder.conv_out.time_reach)
        self.temporal_context = temporal_context(ops)
        time_ups = sum(isinstance(b, DepthToSpaceUp) and b.stride[0] == 2 for b in self.decoder.up_blocks)
        self.time_stride = 2**time_ups
        self.noise_scales = self._noise_draw_scales()
        space_ups = math.prod(b.stride[1] for b in self.decoder.up_blocks if isinstance(b, DepthToSpaceUp))
        self.space_stride = patch_size * space_ups

    # ---- construction ----

    @classmethod
    def for_version(cls, version: int, spatial_padding_mode: str = "reflect") -> LTXTeacherDecoder:
        """The decoder ComfyUI builds for a file of this version when no metadata config is given."""
        if version not in COMFY_DECODER_BLOCKS:
            raise ValueError(f"LTX VAE version must be 0, 1 or 2, got {version}")
        return cls(
            COMFY_DECODER_BLOCKS[version],
            timestep_conditioning=version > 0,
            spatial_padding_mode=spatial_padding_mode,
        )

    @classmethod
    def from_comfy_config(
        cls, config: Mapping, spatial_padding_mode: str | None = None, base_channels: int = 128
    ) -> LTXTeacherDecoder:
        """From ComfyUI's VAE config dict (`json.loads(metadata["config"])["vae"]`, or a guessed config).

        Reads decoder_blocks (else blocks), latent_channels, out_channels, patch_size,
        timestep_conditioning and spatial_padding_mode (default reflect, as ComfyUI's decoder).
        """
        if config.get("dims", 3) != 3 or config.get("norm_layer", "group_norm") != "pixel_norm":
            raise ValueError("only 3-D pixel_norm LTX decoders exist in released files and are supported")
        if config.get("causal_decoder", False):
            raise ValueError("causal LTX decoders are not supported (no released file uses one)")
        blocks = config.get("decoder_blocks", config.get("blocks"))
        if blocks is None:
            raise ValueError("config has neither decoder_blocks nor blocks")
        mode = spatial_padding_mode or config.get("spatial_padding_mode", "reflect")
        return cls(
            blocks,
            timestep_conditioning=bool(config.get("timestep_conditioning", False)),
            spatial_padding_mode=mode,
            latent_channels=int(config["latent_channels"]),
            out_channels=int(config.get("out_channels", 3)),
            patch_size=int(config.get("patch_size", 1)),
            base_channels=base_channels,
        )

    # ---- noise ----

    def _noise_draw_scales(self) -> tuple[int, ...]:
        """Spatial scale (vs the latent) of each injected-noise draw, in draw order."""
        scale, scales = 1, []
        for block in self.decoder.up_blocks:
            if isinstance(block, DepthToSpaceUp):
                scale *= block.stride[1]
                continue
            resnets = block.res_blocks if isinstance(block, ResStack) else [block]
            scales += [scale, scale] * sum(r.noisy for r in resnets)
        return tuple(scales)

    # ---- decode ----

    def _decode(
        self, z_raw: Tensor, state: DecodeState | None, timestep: float | None, noise: list[Tensor]
    ) -> Tensor:
        """z_raw (B, 128, T, H, W) raw latents -> video (B, 3, 8T-7, 32H, 32W), roughly [-1, 1], unclamped.

        timestep defaults to ComfyUI's 0.05 for conditioned decoders; noise: the injected noise, drawn from
        the global RNG by `forward` when not given (which matches ComfyUI for an unwindowed decode).
        """
        return self.decoder(z_raw, DECODE_TIMESTEP if timestep is None else timestep, iter(noise))
