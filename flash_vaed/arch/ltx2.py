"""LTX-2 family video VAE decoder (LTX-2.0, LTX-2.3, the LTX-2.5 conv VAE) as ComfyUI builds it.

An LTX-2 file does not imply its architecture through its keys: the keys are those of LTX-Video 0.9.5+,
and the file's safetensors metadata carries the config (`json.loads(metadata["config"])["vae"]`), from
which ComfyUI builds `VideoVAE(version=2, config=...)`. This module builds the same decoder from that
config and decodes like ComfyUI's `VideoVAE.decode` (facts from upstream ComfyUI
`comfy/ldm/lightricks/vae/causal_video_autoencoder.py`, 2026-03-19 version, commit f49856af):

- Decoder blocks are listed deep-last and run reversed. `res_x` {num_layers, inject_noise} is a stack of
  resnets sharing one timestep embedding; `res_x_y` {multiplier=2, inject_noise} one resnet dividing
  the channels; `compress_time` / `compress_space` / `compress_all` {multiplier=1; residual only for
  compress_all} a 3x3x3 conv to prod(stride)*C/multiplier channels, then depth-to-space. An `int`
  parameter means {"num_layers": n}. ComfyUI ignores other option keys; so do we.
- The first conv's width is decoder_base_channels (default 128) times the multiplier of every
  res_x_y and compress_* block (LTX-2.0: 128*2*2*2 = 1024; LTX-2.3: 128*2*2*1*2 = 1024).
- Config defaults when a key is absent (ComfyUI's): patch_size 1, norm_layer group_norm, causal_decoder
  false, timestep_conditioning false, spatial_padding_mode reflect (the decoder reads only
  `spatial_padding_mode`: LTX-2.0 files say `decoder_spatial_padding_mode: reflect`, which ComfyUI never
  reads, and get reflect from the default; LTX-2.3 says `spatial_padding_mode: zeros`),
  decode_timestep 0.05, decode_noise_scale 0.025.
- Latents are normalized (`per_channel_statistics` std-of-means / mean-of-means un-normalize them). A
  timestep-conditioned decoder first mixes `randn_like(z) * noise_scale + (1 - noise_scale) * z` on the
  normalized latent from the unseeded global RNG, then decodes at `decode_timestep` (times the file's
  `timestep_scale_multiplier`). Unconditioned decoders (LTX-2.0, 2.3) draw nothing.

The math of each block is LTX-Video 0.9's (`arch/ltx.py`): pixel-norm decoders reuse its blocks as they
are. Group/layer-norm resnets, which no released file uses but the schema allows, live here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.state import DecodeState
from ..errors import CheckpointError
from ..jsontext import parse as parse_json
from ..latents import LatentNorm
from ..spec import Family
from .ltx import (
    COMFY_DECODER_BLOCKS,
    ChannelLayerNorm,
    DepthToSpaceUp,
    LTXTeacherDecoder,
    ReplicateTimeConv3d,
    ResStack,
    TeacherResBlock,
    TimestepMLP,
    _ada,
    _add_spatial_noise,
    ltx_version_from_keys,
    pixel_norm,
    temporal_context,
    unpatchify,
)
from .protocol import DecoderModule

log = logging.getLogger(__name__)

__all__ = [
    "DIFFUSION_DECODER_KEY",
    "LTX2Block",
    "LTX2ConfigError",
    "LTX2DecoderConfig",
    "LTX2TeacherDecoder",
    "WHOLE_CLIP",
    "comfy_configless_behaviour",
    "comfy_decodes_configless",
    "describe_config",
    "family_of_config",
    "released_decoder_config",
    "diffusion_decoder_error",
    "is_diffusion_decoder",
    "load_ltx2_decoder",
    "vae_config_from_metadata",
]

UP_STRIDES = {"compress_time": (2, 1, 1), "compress_space": (1, 2, 2), "compress_all": (2, 2, 2)}
BLOCK_KINDS = ("res_x", "res_x_y", *UP_STRIDES)
NORM_LAYERS = ("pixel_norm", "group_norm", "layer_norm")
# what torch's Conv3d accepts as padding_mode, which is all ComfyUI passes the config value to
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
GROUP_NORM_GROUPS = 32
# temporal_context of a decoder whose frames depend on the whole clip (group norm pools over time):
# any window then spans the whole clip, which keeps windowed decodes exact
WHOLE_CLIP = 2**31 - 1
STATS_MEAN = "per_channel_statistics.mean-of-means"
STATS_STD = "per_channel_statistics.std-of-means"
DIFFUSION_DECODER_KEY = "decoder.conv_in_x_t.weight"


class LTX2ConfigError(CheckpointError):
    """An LTX VAE config (from a file's metadata) that describes no decoder ComfyUI could run."""


def _config_text(config: Mapping) -> str:
    text = json.dumps(config.get("decoder_blocks", config.get("blocks")), separators=(",", ":"))
    return text if len(text) <= 600 else text[:600] + "..."


# ---- config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LTX2Block:
    """One decoder block entry, normalized. `multiplier` is the channel divisor of the block."""

    kind: str
    layers: int = 1
    noisy: bool = False
    residual: bool = False
    multiplier: int = 1

    @property
    def stride(self) -> tuple[int, int, int] | None:
        return UP_STRIDES.get(self.kind)

    @classmethod
    def parse(cls, entry: object, index: int, fail: Callable[[str], NoReturn]) -> LTX2Block:
        """entry: `[kind, params]` as a config lists it; `fail(message)` raises the caller's error."""
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str):
            fail(f"decoder block {index} is {entry!r}, not a [name, parameters] pair")
        kind, params = entry
        if kind not in BLOCK_KINDS:
            fail(
                f"decoder block {index} is {kind!r}, a block type ComfyUI's LTX decoder does not have "
                f"(it builds {', '.join(BLOCK_KINDS)}), so neither ComfyUI nor Flash-VAED can build this "
                "decoder"
            )
        if isinstance(params, bool) or not isinstance(params, (int, dict)):
            fail(
                f"decoder block {index} ({kind}) has parameters {params!r}; expected an object or an integer"
            )
        if isinstance(params, int):
            params = {"num_layers": params}

        def positive_int(name: str, default: int | None) -> int:
            value = params.get(name, default)
            if value is None:
                fail(f"decoder block {index} ({kind}) has no {name!r}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"decoder block {index} ({kind}) has {name} = {value!r}; expected a positive integer")
            return value

        if kind == "res_x":
            return cls(kind, layers=positive_int("num_layers", None), noisy=bool(params.get("inject_noise")))
        if kind == "res_x_y":
            return cls(kind, noisy=bool(params.get("inject_noise")), multiplier=positive_int("multiplier", 2))
        multiplier = positive_int("multiplier", 1)
        residual = kind == "compress_all" and bool(params.get("residual", False))
        if residual and 8 % multiplier:
            fail(
                f"decoder block {index} (compress_all) is residual with multiplier {multiplier}: its "
                "shortcut repeats the input 8/multiplier times, so the multiplier must divide 8"
            )
        return cls(kind, residual=residual, multiplier=multiplier)


@dataclass(frozen=True)
class LTX2DecoderConfig:
    """The decoder part of an LTX VAE config. `blocks` are in the file's order (deep-last)."""

    blocks: tuple[LTX2Block, ...]
    latent_channels: int = 128
    out_channels: int = 3
    patch_size: int = 1
    base_channels: int = 128
    norm_layer: str = "group_norm"
    causal: bool = False
    timestep_conditioning: bool = False
    spatial_padding_mode: str = "reflect"
    decode_timestep: float = 0.05
    decode_noise_scale: float = 0.025
    family: Family = Family.LTX2

    @classmethod
    def from_comfy_config(cls, config: Mapping, origin: str = "config") -> LTX2DecoderConfig:
        """From `json.loads(metadata["config"])["vae"]`, read as ComfyUI's VideoVAE reads it; the family
        from `family_of_config`.

        origin names the file in errors. Raises `LTX2ConfigError` naming the problem and the blocks.
        """
        if not isinstance(config, Mapping):
            raise LTX2ConfigError(f"{origin}: the VAE config is {type(config).__name__}, not an object")

        def fail(message: str) -> NoReturn:
            raise LTX2ConfigError(f"{origin}: {message}. The file's decoder_blocks: {_config_text(config)}")

        dims = config.get("dims", 3)
        if dims != 3:
            fail(
                f"config dims = {dims!r}; only 3-D LTX decoders exist in released files, and ComfyUI cannot "
                "run any other from a config either"
            )
        blocks = config.get("decoder_blocks", config.get("blocks"))
        if not isinstance(blocks, (list, tuple)) or not blocks:
            fail("the config has no decoder_blocks (nor blocks) list")
        parsed = tuple(LTX2Block.parse(entry, i, fail) for i, entry in enumerate(blocks))

        def number(name: str, default, kind=int, positive=True):
            value = config.get(name, default)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is int:
                ok = ok and float(value).is_integer()
            if not ok or (positive and value <= 0) or value < 0:
                fail(f"config {name} = {value!r} is not a valid {'positive ' if positive else ''}number")
            return kind(value)

        norm = config.get("norm_layer", "group_norm")
        if norm not in NORM_LAYERS:
            fail(f"config norm_layer = {norm!r}; ComfyUI knows {', '.join(NORM_LAYERS)}")
        padding = config.get("spatial_padding_mode", "reflect")
        if padding not in PADDING_MODES:
            fail(f"config spatial_padding_mode = {padding!r}; expected one of {', '.join(PADDING_MODES)}")
        decoder_padding = config.get("decoder_spatial_padding_mode")
        if decoder_padding is not None and decoder_padding != padding:
            # ComfyUI reads only spatial_padding_mode: decode as it does, but say so
            log.warning(
                "%s: config says decoder_spatial_padding_mode=%r but ComfyUI pads its decoder with "
                "spatial_padding_mode=%r (what it reads); decoding as ComfyUI does",
                origin,
                decoder_padding,
                padding,
            )
        out = cls(
            blocks=parsed,
            latent_channels=number("latent_channels", None),
            out_channels=number("out_channels", 3),
            patch_size=number("patch_size", 1),
            base_channels=number("decoder_base_channels", 128),
            norm_layer=norm,
            causal=bool(config.get("causal_decoder", False)),
            timestep_conditioning=bool(config.get("timestep_conditioning", False)),
            spatial_padding_mode=padding,
            decode_timestep=number("decode_timestep", 0.05, float, positive=False),
            decode_noise_scale=number("decode_noise_scale", 0.025, float, positive=False),
        )
        out = dataclasses.replace(out, family=family_of_config(config, out))
        out.check(fail)
        return out

    @property
    def first_channels(self) -> int:
        """Width after conv_in: base channels times every block's channel multiplier."""
        return self.base_channels * math.prod(b.multiplier for b in self.blocks if b.kind != "res_x")

    @property
    def variant(self) -> str | None:
        """The released layout this decoder is ("ltx-2.0", "ltx-2.0-tc", "ltx-2.3", "ltxv-0.9.x"), by its
        blocks and conditioning; None for any other decoder a config describes."""
        for name, (blocks, conditioned) in KNOWN_DECODERS.items():
            if self.blocks == _parsed(blocks) and self.timestep_conditioning == conditioned:
                return name
        return None

    def check(self, fail: Callable[[str], NoReturn]) -> None:
        """Reject configs whose widths ComfyUI could not run (group sizes, noise scale widths)."""
        ch = self.first_channels
        for i, block in reversed(list(enumerate(self.blocks))):
            out = ch // block.multiplier if block.kind != "res_x" else ch
            if block.kind in ("res_x", "res_x_y") and self.norm_layer == "group_norm":
                for width in {ch, out}:
                    if width % GROUP_NORM_GROUPS:
                        fail(
                            f"decoder block {i} ({block.kind}) is {width} channels wide, which group_norm "
                            f"cannot split into {GROUP_NORM_GROUPS} groups"
                        )
            if block.kind == "res_x_y" and block.noisy and out != ch:
                fail(
                    f"decoder block {i} (res_x_y) injects noise while changing width {ch} -> {out}; "
                    "its noise scales have the input width, so ComfyUI fails on it at decode time"
                )
            ch = out
        if self.norm_layer == "group_norm" and ch % GROUP_NORM_GROUPS:
            fail(f"the decoder ends {ch} channels wide, which group_norm cannot split into 32 groups")


# ---- which model a config describes ------------------------------------------------------------

_LTX2_RES5 = ["res_x", {"num_layers": 5, "inject_noise": False}]
_LTX2_UP = ["compress_all", {"residual": True, "multiplier": 2}]
# decoder_blocks and timestep conditioning of the released layouts (the manifests in tests/data/manifests)
KNOWN_DECODERS: dict[str, tuple[list, bool]] = {
    "ltx-2.0": ([_LTX2_RES5, _LTX2_UP, _LTX2_RES5, _LTX2_UP, _LTX2_RES5, _LTX2_UP, _LTX2_RES5], False),
    "ltx-2.3": (
        [
            ["res_x", {"num_layers": 4}],
            ["compress_space", {"multiplier": 2}],
            ["res_x", {"num_layers": 6}],
            ["compress_time", {"multiplier": 2}],
            ["res_x", {"num_layers": 4}],
            ["compress_all", {"multiplier": 1}],
            ["res_x", {"num_layers": 2}],
            ["compress_all", {"multiplier": 2}],
            ["res_x", {"num_layers": 2}],
        ],
        False,
    ),
    "ltxv-0.9.0": (COMFY_DECODER_BLOCKS[0], False),
    "ltxv-0.9.1": (COMFY_DECODER_BLOCKS[1], True),
    # also the timestep-conditioned LTX-2.0 variant: the same decoder, told apart by LTX2_ONLY_KEYS
    "ltxv-0.9.5": (COMFY_DECODER_BLOCKS[2], True),
}
# Keys of the split encoder/decoder settings that LTX-2 configs write and LTX-Video 0.9 configs (one
# padding mode, fixed 128-channel bases) do not
LTX2_ONLY_KEYS = (
    "decoder_base_channels",
    "encoder_base_channels",
    "decoder_spatial_padding_mode",
    "encoder_spatial_padding_mode",
)


def released_decoder_config(variant: str) -> dict:
    """The decoder part of a released layout's VAE config ("ltx-2.0", "ltx-2.3", or an "ltxv-0.9.x"), as
    ComfyUI reads it: blocks, conditioning, padding (LTX-2.0 and 0.9.x decode reflect-padded, LTX-2.3 zeros)."""
    blocks, conditioned = KNOWN_DECODERS[variant]
    return {
        "latent_channels": 128,
        "patch_size": 4,
        "norm_layer": "pixel_norm",
        "decoder_blocks": blocks,
        "timestep_conditioning": conditioned,
        "spatial_padding_mode": "zeros" if variant == "ltx-2.3" else "reflect",
    }


def _parsed(blocks: Sequence) -> tuple[LTX2Block, ...]:
    def fail(message: str) -> NoReturn:
        raise ValueError(message)

    return tuple(LTX2Block.parse(entry, i, fail) for i, entry in enumerate(blocks))


def family_of_config(config: Mapping, parsed: LTX2DecoderConfig | None = None) -> Family:
    """The latent space of an LTX VAE config: LTX-Video 0.9 when its decoder is one of the three ComfyUI
    builds for 0.9.0 / 0.9.1 / 0.9.5+ (same blocks, same timestep conditioning) and the config has none of
    `LTX2_ONLY_KEYS`; LTX-2 otherwise (LTX-2.0's unconditioned decoder, LTX-2.3's and 2.5's upsamplers,
    any other layout a config can describe, which only LTX-2's configurable schema produces).

    The one layout both families share is the timestep-conditioned LTX-2.0 test variant, whose decoder is
    LTX-Video 0.9.5's: its config's LTX-2 keys decide. parsed: `config` already parsed (saves the work).
    """
    try:
        parsed = parsed or LTX2DecoderConfig.from_comfy_config(config)
    except LTX2ConfigError:
        return Family.LTX2
    variant = parsed.variant
    if variant is not None and variant.startswith("ltxv-") and not any(k in config for k in LTX2_ONLY_KEYS):
        return Family.LTXV
    return Family.LTX2


def describe_config(cfg: LTX2DecoderConfig) -> str:
    """A layout name for people: the released layout, or what the config builds."""
    variant = cfg.variant
    if variant == "ltxv-0.9.5" and cfg.family is Family.LTX2:
        return "ltx-2.0-tc"
    if variant is not None:
        return variant + (" (config)" if variant.startswith("ltxv-") else "")
    return f"{cfg.family.value} (config: {len(cfg.blocks)} decoder blocks)"


# ---- modules ----------------------------------------------------------------------------------


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group_norm":
        return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6)
    return ChannelLayerNorm(channels)


class NormedResBlock(TeacherResBlock):
    """`TeacherResBlock` with affine group or layer norms (keys `norm1.*`, `norm2.*`) in place of pixel
    norm; same timestep modulation, noise injection and shortcut."""

    def __init__(self, in_ch: int, out_ch: int, padding_mode: str, norm: str, **kwargs):
        super().__init__(in_ch, out_ch, padding_mode, **kwargs)
        self.norm1 = _norm(norm, in_ch)
        self.norm2 = _norm(norm, out_ch)

    def forward(self, x: Tensor, emb: Tensor | None, noise: Iterator[Tensor]) -> Tensor:
        h = self.norm1(x)
        if self.conditioned:
            shift1, scale1, shift2, scale2 = _ada(self.scale_shift_table, emb, 4, h)
            h = h * (1 + scale1) + shift1
        h = self.conv1(F.silu(h))
        if self.noisy:
            h = _add_spatial_noise(h, next(noise), self.per_channel_scale1)
        h = self.norm2(h)
        if self.conditioned:
            h = h * (1 + scale2) + shift2
        h = self.conv2(F.silu(h))
        if self.noisy:
            h = _add_spatial_noise(h, next(noise), self.per_channel_scale2)
        if self.reshapes:
            x = self.conv_shortcut(self.norm3(x))
        return x + h


def _res_stack(ch: int, block: LTX2Block, cfg: LTX2DecoderConfig) -> ResStack:
    stack = ResStack(ch, block.layers, cfg.spatial_padding_mode, cfg.timestep_conditioning, block.noisy)
    if cfg.norm_layer != "pixel_norm":
        stack.res_blocks = nn.ModuleList(
            NormedResBlock(
                ch,
                ch,
                cfg.spatial_padding_mode,
                cfg.norm_layer,
                conditioned=cfg.timestep_conditioning,
                noisy=block.noisy,
            )
            for _ in range(block.layers)
        )
    return stack


def _res_y(ch: int, out: int, block: LTX2Block, cfg: LTX2DecoderConfig) -> TeacherResBlock:
    # ComfyUI never timestep-conditions a res_x_y block
    if cfg.norm_layer == "pixel_norm":
        return TeacherResBlock(ch, out, cfg.spatial_padding_mode, noisy=block.noisy)
    return NormedResBlock(ch, out, cfg.spatial_padding_mode, cfg.norm_layer, noisy=block.noisy)


class LTX2Decoder(nn.Module):
    """The `decoder` submodule (checkpoint keys `decoder.*`): conv_in, up_blocks, final norm, conv_out."""

    def __init__(self, cfg: LTX2DecoderConfig):
        super().__init__()
        mode = cfg.spatial_padding_mode
        ch = cfg.first_channels
        self.norm_layer = cfg.norm_layer
        self.patch_size = cfg.patch_size
        self.timestep_conditioning = cfg.timestep_conditioning
        self.conv_in = ReplicateTimeConv3d(cfg.latent_channels, ch, mode)
        self.up_blocks = nn.ModuleList()
        for block in reversed(cfg.blocks):
            if block.kind == "res_x":
                self.up_blocks.append(_res_stack(ch, block, cfg))
            elif block.kind == "res_x_y":
                self.up_blocks.append(_res_y(ch, ch // block.multiplier, block, cfg))
                ch //= block.multiplier
            else:
                self.up_blocks.append(
                    DepthToSpaceUp(ch, block.stride, mode, block.residual, block.multiplier)
                )
                ch //= block.multiplier
        if cfg.norm_layer != "pixel_norm":
            self.conv_norm_out = _norm(cfg.norm_layer, ch)
        self.conv_out = ReplicateTimeConv3d(ch, cfg.out_channels * cfg.patch_size**2, mode)
        if cfg.timestep_conditioning:
            self.timestep_scale_multiplier = nn.Parameter(torch.tensor(1000.0))
            self.last_time_embedder = TimestepMLP(2 * ch)
            self.last_scale_shift_table = nn.Parameter(torch.zeros(2, ch))
        # the blocks build non-causal convs; a causal decoder repeats the first frame k-1 times instead
        for module in self.modules():
            if isinstance(module, ReplicateTimeConv3d):
                module.causal = cfg.causal

    def forward(self, x: Tensor, timestep: float, noise: Iterator[Tensor]) -> Tensor:
        x = self.conv_in(x)
        t = None
        if self.timestep_conditioning:
            # Python float times the float32 parameter, as ComfyUI computes it
            t = timestep * self.timestep_scale_multiplier.to(x.dtype)
        for block in self.up_blocks:
            if isinstance(block, ResStack):
                x = block(x, t, noise)
            elif isinstance(block, TeacherResBlock):
                x = block(x, None, noise)
            else:
                x = block(x)
        x = pixel_norm(x) if self.norm_layer == "pixel_norm" else self.conv_norm_out(x)
        if self.timestep_conditioning:
            shift, scale = _ada(self.last_scale_shift_table, self.last_time_embedder(t, x.dtype), 2, x)
            x = x * (1 + scale) + shift
        x = self.conv_out(F.silu(x))
        return unpatchify(x, self.patch_size)


class LTX2TeacherDecoder(DecoderModule):
    """An LTX decoder built from a file's VAE config (LTX-2.0 / 2.3 / 2.5, and LTX-Video 0.9.x checkpoints
    that carry theirs): RAW latents in, video out.

    The interface the engine uses for LTX-Video teachers (`LTXTeacherDecoder`), with the config's own
    decode defaults and latent space (`family`: `family_of_config`, LTX2 unless the config is one of
    LTX-Video 0.9's):
      timestep_conditioned / injects_noise, draw_spatial_noise, crop_spatial_noise: as LTXTeacherDecoder.
      decode_timestep, decode_noise_scale: ComfyUI's values for this file (config keys, else 0.05 / 0.025).
      temporal_context: latent frames (before, after) a window needs so that its frames are exact;
      temporal_halo = max of the two; WHOLE_CLIP for group-norm decoders, whose norms pool over the
      whole clip (no finite window is exact; nor is ComfyUI's own chunked decode). time_stride /
      space_stride: frames per latent frame, pixels per latent pixel. causal_decoder: the config's causal_decoder (convs look back only).
    """

    family = Family.LTX2

    def __init__(self, cfg: LTX2DecoderConfig):
        super().__init__()
        self.config = cfg
        self.family = cfg.family
        self.decoder = LTX2Decoder(cfg)
        self.latent_channels = cfg.latent_channels
        self.spatial_padding_mode = cfg.spatial_padding_mode
        self.timestep_conditioned = cfg.timestep_conditioning
        self.causal_decoder = cfg.causal
        self.decode_timestep = cfg.decode_timestep
        self.decode_noise_scale = cfg.decode_noise_scale
        ups = [b for b in self.decoder.up_blocks if isinstance(b, DepthToSpaceUp)]
        self.time_stride = 2 ** sum(b.stride[0] == 2 for b in ups)
        self.space_stride = cfg.patch_size * math.prod(b.stride[1] for b in ups)
        ops = [self.decoder.conv_in.time_reach]
        for block in self.decoder.up_blocks:
            ops += block.time_ops()
        ops.append(self.decoder.conv_out.time_reach)
        self.temporal_context = temporal_context(ops)
        if cfg.norm_layer == "group_norm":
            self.temporal_context = (WHOLE_CLIP, WHOLE_CLIP)
        self.noise_scales = self._noise_draw_scales()

    @classmethod
    def from_comfy_config(cls, config: Mapping, origin: str = "config") -> LTX2TeacherDecoder:
        """From `json.loads(metadata["config"])["vae"]` (see `LTX2DecoderConfig.from_comfy_config`)."""
        return cls(LTX2DecoderConfig.from_comfy_config(config, origin))

    # LTX-Video's injected-noise draw order (the 0.9.1 contract) holds here too: share its code
    _noise_draw_scales = LTXTeacherDecoder._noise_draw_scales

    def _decode(
        self, z_raw: Tensor, state: DecodeState | None, timestep: float | None, noise: list[Tensor]
    ) -> Tensor:
        """z_raw (B, C, T, H, W) raw latents -> video (B, 3, s_t (T-1) + 1, s H, s W), unclamped ~[-1, 1].

        timestep: conditioned decoders only; default `decode_timestep`."""
        return self.decoder(z_raw, self.decode_timestep if timestep is None else timestep, iter(noise))


# ---- files -------------------------------------------------------------------------------------


def vae_config_from_metadata(metadata: Mapping[str, str], origin: str = "file") -> dict | None:
    """The VAE config ComfyUI reads from safetensors metadata (`config` -> `vae`); None when absent.

    ComfyUI crashes on a `config` entry that is not JSON; this raises `LTX2ConfigError` instead.
    """
    raw = metadata.get("config")
    if raw is None:
        return None
    try:
        config = parse_json(raw, "its metadata 'config'")
    except ValueError as err:  # not JSON, or brackets nested 100 000 deep
        raise LTX2ConfigError(
            f"{origin}: {err}; re-save the file with its original metadata, or use the VAE file as published"
        ) from None
    vae = config.get("vae") if isinstance(config, dict) else None
    return vae if isinstance(vae, dict) else None


def load_ltx2_decoder(
    config: Mapping,
    tensors: Mapping[str, Tensor],
    origin: str = "state dict",
) -> tuple[LTX2TeacherDecoder, LatentNorm]:
    """Build the decoder of `config` and load it strictly from `tensors` (keys without a `vae.` prefix).

    Every `decoder.*` key must be used and every decoder tensor present; the encoder and the other
    per-channel statistics are ignored. Returns (decoder in eval mode, float32, latent statistics).
    """
    module = LTX2TeacherDecoder.from_comfy_config(config, origin)
    expected = module.state_dict()
    given = {k: v for k, v in tensors.items() if k.startswith("decoder.")}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{origin}: its keys do not match the decoder its config describes: {len(missing)} missing "
            f"(first: {', '.join(missing[:4]) or '-'}), {len(unexpected)} unexpected "
            f"(first: {', '.join(unexpected[:4]) or '-'}). The file is truncated, edited, or its metadata "
            f"config belongs to another model; nothing was loaded. decoder_blocks: {_config_text(config)}"
        )
    bad = [
        (k, tuple(given[k].shape), tuple(v.shape)) for k, v in expected.items() if given[k].shape != v.shape
    ]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"{origin}: {len(bad)} decoder tensors have other shapes than its config describes (first: {k} "
            f"is {got}, expected {want}); nothing was loaded. decoder_blocks: {_config_text(config)}"
        )
    for key in (STATS_MEAN, STATS_STD):
        if key not in tensors:
            raise CheckpointError(
                f"{origin}: no {key}: LTX latents are normalized and the decoder needs the file's "
                "per-channel statistics to un-normalize them. Use the full VAE file."
            )
    module.load_state_dict({k: given[k].float() for k in expected}, strict=True)
    norm = LatentNorm(tensors[STATS_MEAN].float().flatten(), tensors[STATS_STD].float().flatten())
    return module.eval().requires_grad_(False), norm


def is_diffusion_decoder(keys: Iterable[str]) -> bool:
    """True for LTX-2.4/2.5's diffusion decoder (ComfyUI's CausalDiffusionVAE), standalone or in a
    `vae.` / `first_stage_model.`-prefixed checkpoint."""
    return any(k == DIFFUSION_DECODER_KEY or k.endswith("." + DIFFUSION_DECODER_KEY) for k in keys)


def diffusion_decoder_error(keys: Iterable[str], origin: str = "file") -> CheckpointError | None:
    """The error to raise for an LTX diffusion decoder, or None when `keys` are not one."""
    if not is_diffusion_decoder(keys):
        return None
    return CheckpointError(
        f"{origin}: this is the LTX-2.4/2.5 *diffusion* decoder ({DIFFUSION_DECODER_KEY}; ComfyUI's "
        "CausalDiffusionVAE), a separate model that denoises pixels in several steps, not a convolutional "
        "VAE decoder. Flash-VAED does not decode with it. Load the conv video VAE of the same release "
        "instead (e.g. ltx-2.5-video-vae-bf16.safetensors, the one ComfyUI's LTX-2.5 templates load): "
        "that one is supported."
    )


def comfy_configless_behaviour(keys: Iterable[str], shapes: Mapping[str, Sequence[int]]) -> str:
    """What upstream ComfyUI does with an LTX VAE state dict whose metadata has no config, in words.

    ComfyUI then guesses the version from the keys (0.9.0 / 0.9.1 / 0.9.5+, see
    `ltx.ltx_version_from_keys`) and builds that version's fixed config: for 0.9.5+ a timestep-conditioned
    decoder with 4x res_x(5) and three residual compress_all(x2), padded reflect.
    """
    return _configless(keys, shapes)[1]


def comfy_decodes_configless(keys: Iterable[str], shapes: Mapping[str, Sequence[int]]) -> bool:
    """True when ComfyUI's guess for a config-less LTX VAE is exactly its decoder (every decoder key present
    with the guessed shape), so that decoding it as that LTX-Video 0.9 version is what ComfyUI does."""
    return _configless(keys, shapes)[0]


def _configless(keys: Iterable[str], shapes: Mapping[str, Sequence[int]]) -> tuple[bool, str]:
    keys = set(keys)
    try:
        version = ltx_version_from_keys(keys, shapes, like_comfyui=True)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    with torch.device("meta"):
        guess = LTXTeacherDecoder.for_version(version)
    want = {k: tuple(v.shape) for k, v in guess.state_dict().items()}
    have = {k: tuple(shapes[k]) for k in keys if k.startswith("decoder.")}
    missing = [k for k in want if k not in have]
    wrong = [k for k in want if k in have and have[k] != want[k]]
    name = {0: "0.9.0", 1: "0.9.1", 2: "0.9.5+"}[version]
    if wrong:
        return False, (
            f"ComfyUI reads it as LTX-Video {name} and fails to load it ({len(wrong)} size mismatches, first "
            f"{wrong[0]}): without its metadata config this file cannot be decoded there"
        )
    if missing:
        return False, (
            f"ComfyUI reads it as LTX-Video {name}, warns 'Missing VAE keys' for {len(missing)} decoder "
            f"tensors (first {missing[0]}) and decodes with those left uninitialized: garbage output"
        )
    blocks = len(COMFY_DECODER_BLOCKS[version])
    return True, (
        f"ComfyUI reads it as LTX-Video {name} ({blocks} decoder blocks, timestep-conditioned: "
        f"{version > 0}, reflect padding) and decodes it exactly as that version"
    )
