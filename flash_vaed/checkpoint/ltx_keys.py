"""LTX-Video VAE key layouts: diffusers (`AutoencoderKLLTXVideo`) names -> original (ComfyUI) names.

Both layouts hold the same tensors with the same shapes and the same meaning; only the names differ, so
loading a diffusers folder is a pure rename (checked against ComfyUI 0.3.75's `causal_video_autoencoder.py`
and diffusers' `autoencoder_kl_ltx.py`: resnet `scale_shift_table` rows are (shift1, scale1, shift2, scale2)
in both, the last table is (shift, scale) in both, `timestep_scale_multiplier` multiplies the timestep in
both, the residual depth-to-space upsampler and the 4x4 unpatchify order channels alike, and the time
embedders are the same PixArt-alpha MLP on a flipped sin/cos projection).

The original decoder is one flat list `decoder.up_blocks.N`, where every N is one of: a stack of resnets
(`res_x`, with its own `time_embedder` when timestep-conditioned), a resnet that changes the width
(`res_x_y`), or a depth-to-space upsampler (`compress_all`). diffusers groups the same modules as

    decoder.mid_block                     (a stack)
    decoder.up_blocks.i.conv_in           (a width-changing resnet; 0.9.0 only)
    decoder.up_blocks.i.upsamplers.0      (an upsampler)
    decoder.up_blocks.i.resnets / .time_embedder   (a stack)

run in exactly that order, so numbering those parts in order gives N. For the two real layouts:

    0.9.0: mid_block -> 0, up_blocks.0 -> 1, up_blocks.1.upsamplers.0 -> 2, up_blocks.1 -> 3,
           up_blocks.2.conv_in -> 4, up_blocks.2.upsamplers.0 -> 5, up_blocks.2 -> 6,
           up_blocks.3.conv_in -> 7, up_blocks.3.upsamplers.0 -> 8, up_blocks.3 -> 9
    0.9.1: mid_block -> 0, then (upsamplers.0, stack) of up_blocks.0/1/2 -> 1..6 (the same holds for 0.9.5)

Inside a part: `resnets.j` -> `res_blocks.j`, `conv_shortcut.conv` -> `conv_shortcut` (ComfyUI's 1x1x1
shortcut is a bare Conv3d), `norm3` -> `norm3.norm` (ComfyUI wraps its LayerNorm). At the top:
`decoder.time_embedder` / `decoder.scale_shift_table` -> `decoder.last_time_embedder` /
`decoder.last_scale_shift_table`, and the buffers `latents_mean` / `latents_std` -> the per-channel
statistics `mean-of-means` / `std-of-means` (diffusers un-normalizes with `z * std / scaling_factor + mean`,
scaling_factor 1.0 for these VAEs, which is ComfyUI's `z * std-of-means + mean-of-means`).

What a rename cannot carry is behaviour: diffusers (like LTX-Video's own code) pads convolutions with zeros
spatially, ComfyUI with reflect unless a config says otherwise; that is the builder's choice, not a key.

Encoder keys are left unmapped (not needed to decode). A `decoder.*` key that fits none of the rules is kept
under its own name, so that a strict loader reports it as unexpected instead of silently dropping it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..errors import CheckpointError

STATS = {
    "latents_mean": "per_channel_statistics.mean-of-means",
    "latents_std": "per_channel_statistics.std-of-means",
}

# whole-name prefixes outside the block list (first match wins)
_TOP_LEVEL = (
    ("decoder.conv_in.", "decoder.conv_in."),
    ("decoder.conv_out.", "decoder.conv_out."),
    ("decoder.time_embedder.", "decoder.last_time_embedder."),
    ("decoder.scale_shift_table", "decoder.last_scale_shift_table"),
    ("decoder.timestep_scale_multiplier", "decoder.timestep_scale_multiplier"),
)

# inside a resnet (diffusers name -> ComfyUI name)
_RESNET_PARTS = (
    ("conv_shortcut.conv.", "conv_shortcut."),
    ("norm3.", "norm3.norm."),
)

# decoder.<owner>.<part>.<rest>; owner is mid_block (-1) or up_blocks.i
_BLOCK_KEY = re.compile(
    r"decoder\.(?:mid_block|up_blocks\.(?P<block>\d+))\.(?P<part>conv_in|upsamplers\.0|resnets|time_embedder)\."
    r"(?P<rest>.+)"
)
# the order in which a diffusers block runs its parts (resnets and time_embedder form one stack)
_PART_ORDER = {"conv_in": 0, "upsamplers.0": 1, "resnets": 2, "time_embedder": 2}


def _resnet(rest: str) -> str:
    for old, new in _RESNET_PARTS:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _top_level(key: str) -> str | None:
    for old, new in _TOP_LEVEL:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old) :]
    return None


def _part_of(match: re.Match) -> tuple[int, int]:
    """Where a part runs: (-1 for mid_block else the up block, order of the part inside its block)."""
    block = -1 if match["block"] is None else int(match["block"])
    return block, _PART_ORDER[match["part"]]


def _inner(match: re.Match) -> str:
    part, rest = match["part"], match["rest"]
    if part == "resnets":
        index, _, tail = rest.partition(".")
        return f"res_blocks.{index}.{_resnet(tail)}"
    if part == "conv_in":
        return _resnet(rest)
    if part == "time_embedder":
        return f"time_embedder.{rest}"
    return rest  # upsamplers.0.conv.conv.* -> conv.conv.*


def diffusers_ltx_to_original(
    keys: Iterable[str], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, str]:
    """Map each decoder key (and the two latent statistics) of a diffusers LTX-Video VAE to its ComfyUI name.

    keys: the diffusers state-dict keys (without any `vae.` prefix). shapes is accepted for the loader's
    calling convention; the mapping needs names only. Encoder keys are left out of the result.
    Raises CheckpointError if two keys would land on one name.
    """
    del shapes  # names alone decide; the loader checks shapes against the module it builds
    keys = sorted(keys)
    matches = {k: m for k in keys if (m := _BLOCK_KEY.fullmatch(k))}
    parts = sorted({_part_of(m) for m in matches.values()})
    index = {part: n for n, part in enumerate(parts)}

    out: dict[str, str] = {}
    for key in keys:
        if key in STATS:
            out[key] = STATS[key]
        elif (m := matches.get(key)) is not None:
            out[key] = f"decoder.up_blocks.{index[_part_of(m)]}.{_inner(m)}"
        elif (new := _top_level(key)) is not None:
            out[key] = new
        elif key.startswith("decoder."):
            out[key] = key  # unknown: keep it visible to the strict loader

    seen: dict[str, str] = {}
    for old, new in out.items():
        if new in seen:
            raise CheckpointError(
                f"diffusers LTX-Video keys {seen[new]!r} and {old!r} both map to {new!r}; "
                "this is not an AutoencoderKLLTXVideo layout this library knows"
            )
        seen[new] = old
    return out
