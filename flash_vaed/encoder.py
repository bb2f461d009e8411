"""The teachers' encoders, loaded on their own: real videos -> latents in ComfyUI's LATENT convention.

    from flash_vaed import load_encoder
    enc = load_encoder("wan_2.1_vae.safetensors")
    latents = enc.encode(frames)          # frames (B, 3, T, H, W) in [-1, 1]
    latents = enc.encode_images(images)   # ComfyUI IMAGE (T, H, W, 3) in [0, 1], as VAEEncode does

Decoders stay decoder-only: `load_decoder` never reads an encoder tensor, and `load_encoder` reads only
the encoder's (plus, for LTX-Video, the two latent statistics).

What ComfyUI's VAEEncode returns (comfy.sd.VAE.encode, 0.3.75), and so what `encode` returns:
- Wan 2.1 / 2.2: the encoder's mean `mu` (the log-variance half is dropped, nothing is sampled), raw (no
  latents_mean/std: the model's latent format applies them later). (B, 16, 1 + (T-1)//4, H/8, W/8) for
  2.1, (B, 48, 1 + (T-1)//4, H/16, W/16) for 2.2.
- LTX-Video: the means normalized per channel, `(mu - mean-of-means) / std-of-means` with the file's
  `per_channel_statistics`. (B, 128, 1 + (T-1)//8, H/32, W/32).
Frame fitting in ComfyUI: VAE.encode centre-crops H and W down to multiples of the spatial stride (offset
`(size % stride) // 2`); Wan's encode loop silently never reads frames past the last 4k+1; LTX raises for
T != 8k+1. `encode` refuses such frames with a `FrameError` unless `crop=True`, which does exactly that
fitting; `encode_images` always fits, like VAEEncode.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .arch.ltx2 import family_of_config
from .arch.ltx_encoder import V2_ENCODER_KEY, LTXTeacherEncoder
from .arch.wan_encoder import WanEncoder
from .checkpoint.io import TensorSource
from .checkpoint.load import (
    LTX_STATS,
    Layouts,
    Recipe,
    detect,
    has,
    ltx_metadata_config,
    materialize,
    ours,
    owned,
    read_latent_norm,
    tensor_source,
)
from .checkpoint.wan_keys import diffusers_wan_encoder_to_original
from .decoder import RunsOnModule
from .engine.decode import ProgressFn
from .engine.state import DecodeState
from .errors import CheckpointError, FlashVAEDError
from .latents import LatentNorm
from .spec import Family

log = logging.getLogger(__name__)

ENCODE_CHUNK_FRAMES = 4  # ComfyUI's Wan encode feeds 1, then 4, 4, ... frames


class FrameError(FlashVAEDError, ValueError):
    """Frames that do not fit the encoder (layout, frame count, size)."""


@dataclass
class FlashEncoder(RunsOnModule):
    """A teacher's encoder ready to run.

    family:  the latent space it writes ("wan21" | "wan22" | "ltxv" | "ltx2").
    module:  the torch module: frames in [-1, 1] in, raw latent means out.
    latent_norm: turns raw means into ComfyUI's LATENT (LTX: the file's statistics), or None (Wan: raw).
    layout:  name of the checkpoint layout it was loaded from.
    """

    family: Family
    module: nn.Module
    latent_norm: LatentNorm | None = None
    layout: str = "unknown"
    info: dict = field(default_factory=dict)

    @property
    def time_stride(self) -> int:
        return self.module.time_stride

    @property
    def space_stride(self) -> int:
        return self.module.space_stride

    # ---- frames ----

    def fit_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """What ComfyUI's VAE.encode does to frames (B, 3, T, H, W): centre-crop H and W down to multiples
        of the spatial stride; for Wan, drop the frames past the last 4k+1 (its encode never reads them).
        LTX frame counts are left alone (ComfyUI raises for T != 8k+1, and so does `encode`)."""
        _check_layout(frames)
        s = self.space_stride
        for dim in (3, 4):
            size = frames.shape[dim]
            keep = size // s * s
            if keep != size and keep > 0:
                frames = frames.narrow(dim, (size % s) // 2, keep)
        t = frames.shape[2]
        if not self.family.is_ltx and t > 0 and (t - 1) % self.time_stride:
            keep = (t - 1) // self.time_stride * self.time_stride + 1
            log.warning(
                "Wan encode: %d frames is not 4k+1; the last %d are dropped, as ComfyUI does", t, t - keep
            )
            frames = frames[:, :, :keep]
        return frames

    def check_frames(self, frames: torch.Tensor) -> None:
        """Raise `FrameError` unless frames (B, 3, T, H, W) fit this encoder exactly."""
        _check_layout(frames)
        _, _, t, h, w = frames.shape
        ts, s = self.time_stride, self.space_stride
        name = self.family.title
        if t < 1 or (t - 1) % ts:
            fix = (
                "ComfyUI refuses other counts too; trim or pad the clip"
                if self.family.is_ltx
                else "crop=True drops the trailing frames, as ComfyUI does"
            )
            raise FrameError(
                f"the {name} encoder takes 1 + {ts}k frames (1, {1 + ts}, {1 + 2 * ts}, ...), got {t}: {fix}."
            )
        if h < s or w < s or h % s or w % s:
            raise FrameError(
                f"the {name} encoder needs height and width that are multiples of {s}, got "
                f"{h}x{w}: crop=True centre-crops them, as ComfyUI's VAEEncode does."
            )
        if not bool(torch.isfinite(frames).all()):
            raise FrameError("frames contain NaN/Inf values")

    # ---- encoding ----

    @torch.inference_mode()
    def encode(
        self,
        frames: torch.Tensor,
        chunk_frames: int | None = ENCODE_CHUNK_FRAMES,
        *,
        crop: bool = False,
        on_progress: ProgressFn | None = None,
    ) -> torch.Tensor:
        """Encode frames (B, 3, T, H, W) in [-1, 1] to ComfyUI latents (B, C, T', H', W'), float32, on the
        encoder's device (Wan: raw means; LTX: normalized means; see the module docstring).

        chunk_frames: Wan only: frames per streaming step after the first (ComfyUI: 4); None: the whole
                      clip in one step (same result, more memory). LTX always encodes the whole clip.
        crop:         fit the frames first as ComfyUI does (`fit_frames`); otherwise they must fit exactly.
        on_progress(done, total): called after each step.
        """
        if crop:
            frames = self.fit_frames(frames)
        self.check_frames(frames)
        x = frames.to(device=self.device, dtype=self.dtype)
        if self.family.is_ltx:
            raw = self.module(x).float()
            if on_progress is not None:
                on_progress(1, 1)
            return raw if self.latent_norm is None else self.latent_norm.to_comfy(raw)
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be positive or None, got {chunk_frames}")
        state = DecodeState(self.module)
        chunks = [x] if chunk_frames is None else [x[:, :, :1], *x[:, :, 1:].split(chunk_frames, dim=2)]
        out = []
        for i, chunk in enumerate(chunks):
            out.append(self.module(chunk, state).float())
            if on_progress is not None:
                on_progress(i + 1, len(chunks))
        return torch.cat(out, dim=2)

    def encode_images(
        self, images: torch.Tensor, chunk_frames: int | None = ENCODE_CHUNK_FRAMES
    ) -> torch.Tensor:
        """ComfyUI's VAEEncode: IMAGE (T, H, W, C) in [0, 1] (channels past 3 ignored) -> latents
        (1, C_lat, T', H', W'), with ComfyUI's crop (see `fit_frames`)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] < 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise FrameError(f"images must be a ComfyUI IMAGE (T, H, W, 3) in [0, 1], got {shape}")
        frames = images[..., :3].movedim(-1, 0).unsqueeze(0).float() * 2.0 - 1.0
        return self.encode(frames, chunk_frames, crop=True)


def _check_layout(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor):
        raise FrameError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dim() != 5 or frames.shape[1] != 3:
        raise FrameError(
            f"frames must be (B, 3, T, H, W) in [-1, 1], got {tuple(frames.shape)} (a ComfyUI "
            "IMAGE (T, H, W, 3) in [0, 1] goes to encode_images)"
        )
    if not frames.is_floating_point():
        raise FrameError(f"frames must be floating point in [-1, 1], got {frames.dtype}")


# ---- loading ----------------------------------------------------------------------------------


def _wan_recipe(src: TensorSource, diffusers: bool = False) -> Recipe:
    shapes = src.shapes
    wan22 = "encoder.downsamples.0.downsamples.0.residual.2.weight" in shapes
    try:
        dim = shapes["encoder.conv1.weight"][0]
        z_dim = shapes["conv1.weight"][0] // 2
    except KeyError as err:
        raise CheckpointError(
            f"{src.origin}: looks like a Wan VAE encoder but the key {err.args[0]!r} is "
            "missing; the file is truncated or edited; nothing was loaded."
        ) from None
    family = Family.WAN22 if wan22 else Family.WAN21
    return Recipe(
        f"{family.value}-encoder" + ("-diffusers" if diffusers else ""),
        family,
        "teacher",
        functools.partial(WanEncoder, dim=dim, z_dim=z_dim, wan22=wan22),
        src,
        owned(src, "encoder.", "conv1."),
    )


def _wan_diffusers_recipe(src: TensorSource) -> Recipe:
    keys = sorted(src.keys())
    wan22 = any(re.match(r"encoder\.down_blocks\.\d+\.resnets\.", k) for k in keys)
    return _wan_recipe(src.renamed(diffusers_wan_encoder_to_original(keys, wan22)), diffusers=True)


def _ltx_recipe(src: TensorSource) -> Recipe:
    config = ltx_metadata_config(src)
    if not all(k in src for k in LTX_STATS):
        raise CheckpointError(
            f"{src.origin}: an LTX VAE without per_channel_statistics (mean-of-means / std-of-means); "
            "they turn the encoder's raw means into ComfyUI's normalized latents. Use the full VAE file."
        )
    keys = owned(src, "encoder.")
    if config and config.get("encoder_blocks", config.get("blocks")):
        # the file describes itself, as ComfyUI's loaders read it; LTX-2 configs name the encoder's width
        base = config.get("encoder_base_channels", src.shapes.get("encoder.conv_in.conv.weight", (128,))[0])
        family = family_of_config(config)

        def build() -> nn.Module:
            try:
                return LTXTeacherEncoder.from_comfy_config(config, base_channels=base)
            except ValueError as err:
                raise CheckpointError(
                    f"{src.origin}: its metadata config describes an LTX encoder this "
                    f"library cannot build ({err})"
                ) from err

        name = f"{'ltx2' if family is Family.LTX2 else 'ltxv'}-encoder (config)"
        return Recipe(name, family, "teacher", build, src, keys, LTX_STATS)
    version = 2 if V2_ENCODER_KEY in src else 0
    padding = (config or {}).get("spatial_padding_mode", "zeros")
    name = "ltxv-0.9.5-encoder" if version == 2 else "ltxv-0.9.0/0.9.1-encoder"
    build = functools.partial(LTXTeacherEncoder.for_version, version, padding)
    return Recipe(name, Family.LTXV, "teacher", build, src, keys, LTX_STATS)


def _refuse(message: str) -> Callable[[TensorSource], Recipe]:
    def refuse(src: TensorSource) -> Recipe:
        raise CheckpointError(f"{src.origin}: {message}")

    return refuse


def _diffusers_ltx(src: TensorSource) -> bool:
    return "encoder.conv_in.conv.weight" in src and any(
        k.startswith("encoder.down_blocks.0.resnets.") for k in src.shapes
    )


# Every encoder layout, by what its source holds once a model prefix is stripped: first match wins.
ENCODER_LAYOUTS: Layouts = (
    (
        ours,
        _refuse(
            "a Flash-VAED student holds a decoder only; load the teacher's VAE file (the one the "
            "student was distilled from) to encode."
        ),
    ),
    (lambda src: "encoder.middle.0.residual.0.gamma" in src or "encoder.conv1.weight" in src, _wan_recipe),
    (has("encoder.mid_block.attentions.0.to_qkv.weight", "encoder.conv_in.weight"), _wan_diffusers_recipe),
    (
        _diffusers_ltx,
        _refuse(
            "a diffusers LTX-Video VAE; its encoder is not supported yet. Load the single-file "
            "(ComfyUI layout) LTX-Video VAE to encode."
        ),
    ),
    (has("encoder.conv_in.conv.weight"), _ltx_recipe),
    (
        lambda src: any(k.startswith("decoder.") for k in src.shapes),
        _refuse(
            "holds a decoder but no encoder tensors (encoder.*): a decoder-only file cannot encode. "
            "Load the full VAE file of the model."
        ),
    ),
)


def build_encoder(
    src: TensorSource, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> FlashEncoder:
    recipe = detect(src, ENCODER_LAYOUTS, part="encoder")
    module = materialize(recipe).eval().requires_grad_(False).to(device=device, dtype=dtype)
    info = {"origin": src.origin, "parameters": sum(p.numel() for p in module.parameters())}
    return FlashEncoder(recipe.family, module, read_latent_norm(recipe, device), recipe.layout, info)


def load_encoder(
    source: str | os.PathLike | Mapping[str, torch.Tensor] | TensorSource,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FlashEncoder:
    """Load a teacher's encoder from a VAE file (.safetensors/.pth/...), a diffusers Wan folder, a state
    dict (keys may carry a `vae.` prefix) or a `TensorSource` (a state dict with its file's metadata, see
    `load_decoder`). Strict: missing or unexpected encoder keys raise CheckpointError.

    Only the encoder's tensors are read (plus LTX's latent statistics); the decoder stays on disk.
    """
    return build_encoder(tensor_source(source), device, dtype)
