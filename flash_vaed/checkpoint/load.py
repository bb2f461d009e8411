"""Recognise a checkpoint by its keys, shapes and metadata (never its file name) and build its decoder.

Known layouts (`DECODER_LAYOUTS`, a table of what the keys hold and the recipe that follows): the Wan 2.1 /
2.2 VAEs (original and diffusers), LTX-Video VAEs 0.9.0 / 0.9.1 / 0.9.5+ (standalone, inside all-in-one
checkpoints, diffusers), LTX-2 video VAEs (2.0, 2.3, the 2.5 conv VAE: built from the config in their
metadata, standalone or inside all-in-one checkpoints), the official Flash-VAED students, and our own
students (safetensors with flash_vaed.* metadata). LTX-2.4/2.5's diffusion decoder is refused first. Detection returns a `Recipe` that carries the tensors under the module's own names;
building only follows it. Loads are strict: a partial match is an error that names the layout and the
first missing / unexpected keys.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch.ltx import LTXTeacherDecoder, ltx_version_from_keys
from ..arch.ltx2 import (
    LTX2DecoderConfig,
    LTX2TeacherDecoder,
    comfy_configless_behaviour,
    comfy_decodes_configless,
    describe_config,
    diffusion_decoder_error,
    is_diffusion_decoder,
    vae_config_from_metadata,
)
from ..arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from ..arch.wan import WanFamilyDecoder
from ..arch.wan22 import Wan22Decoder
from ..decoder import FlashDecoder
from ..errors import CheckpointError
from ..finite import all_finite, first_non_finite
from ..latents import LatentNorm
from ..spec import DecoderSpec, Family, Op
from .io import TensorSource, atomic_save, from_state_dict, open_tensors
from .limits import check_spec_family, check_spec_fits_file, tensor_problem
from .ltx_keys import diffusers_ltx_to_original
from .wan_keys import diffusers_wan_to_original, spec_from_wan_shapes

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
META_FORMAT = "flash_vaed.format_version"
META_FAMILY = "flash_vaed.family"
META_ARCH = "flash_vaed.arch"
META_SPEC = "flash_vaed.spec"

LTX_STATS = ("per_channel_statistics.mean-of-means", "per_channel_statistics.std-of-means")
LTX_PROBE = "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"  # how ComfyUI recognises an LTX VAE


@dataclass(frozen=True)
class Recipe:
    """What a checkpoint holds and how to build it, decided once from its keys, shapes and metadata.

    source: the tensors under the built module's own names (model prefix stripped, diffusers names
            mapped), so that building reads them without detecting anything again.
    keys:   the source keys the module owns; the others (an encoder, say) stay on disk.
    latent_norm_keys: (mean, std) source keys of the latent statistics (LTX), or None.
    layout: the layout's name, for people (errors, logs, FlashDecoder.layout); nothing dispatches on it.
    """

    layout: str
    family: Family
    role: str
    build: Callable[[], nn.Module]
    source: TensorSource
    keys: tuple[str, ...]
    latent_norm_keys: tuple[str, str] | None = None


def owned(src: TensorSource, *prefixes: str) -> tuple[str, ...]:
    """The keys of `src` under any of `prefixes`."""
    return tuple(k for k in src.shapes if k.startswith(prefixes))


# ---- detection -------------------------------------------------------------------------------


def _foreign_guess(keys: set[str], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Name the model a non-video VAE (or another video VAE) most likely belongs to."""

    def ch(key: str, dim: int) -> int | None:
        s = shapes.get(key)
        return s[dim] if s is not None and len(s) > dim else None

    if "decoder.mid.block_1.norm1.weight" in keys or "decoder.up.0.block.0.norm1.weight" in keys:
        z = ch("decoder.conv_in.weight", 1)
        if z == 16:
            return "a Flux / SD3 image VAE (16 channels)"
        if z == 4:
            return "an SD 1.x / SDXL image VAE (4 channels)"
        if "decoder.conv_in.conv.weight" in keys or len(shapes.get("decoder.conv_in.weight", ())) == 5:
            return "a HunyuanVideo / Mochi-style video VAE"
        return f"an SD-style image VAE ({z} channels)"
    if "decoder.up_blocks.0.resnets.0.norm1.weight" in keys:
        if "decoder.conv_in.conv.weight" in keys:
            return "a HunyuanVideo VAE (diffusers layout)"
        z = ch("decoder.conv_in.weight", 1)
        return f"a diffusers SD-style image VAE ({z} channels: {'Flux/SD3' if z == 16 else 'SD 1.x/SDXL'})"
    if any(k.startswith("taesd_decoder.") for k in keys):
        return "a TAESD tiny autoencoder"
    if any(k.startswith(("model.diffusion_model.", "transformer_blocks.", "blocks.0.")) for k in keys):
        return "a diffusion model (not a VAE)"
    return None


def strip_model_prefix(src: TensorSource, part: str = "decoder") -> TensorSource:
    """The VAE's own keys of an all-in-one checkpoint ('vae.' in LTX files, 'first_stage_model.' in SD-style
    ones), found by where `part` ('decoder' or 'encoder') lives; other sources unchanged."""
    for prefix in ("vae.", "first_stage_model."):
        if any(k.startswith(f"{prefix}{part}.") for k in src.shapes):
            return src.with_prefix_stripped(prefix)
    return src


def _wan_recipe(src: TensorSource, diffusers: bool = False) -> Recipe:
    try:
        return _wan_recipe_from_shapes(src, diffusers)
    except KeyError as err:  # a key the layout cannot do without (conv1, head, conv2, ...)
        raise CheckpointError(
            f"{src.origin}: looks like a Wan VAE but the key {err.args[0]!r} is missing; "
            "the file is truncated or edited; nothing was loaded."
        ) from err
    except CheckpointError as err:
        if str(err).startswith(src.origin):
            raise
        raise CheckpointError(f"{src.origin}: looks like a Wan VAE but {err}; nothing was loaded.") from err


def _wan_diffusers_recipe(src: TensorSource) -> Recipe:
    keys = sorted(src.keys())
    wan22 = any(".upsampler." in k for k in keys)
    return _wan_recipe(src.renamed(diffusers_wan_to_original(keys, wan22)), diffusers=True)


def _wan_recipe_from_shapes(src: TensorSource, diffusers: bool) -> Recipe:
    shapes = src.shapes
    suffix = "-diffusers" if diffusers else ""
    keys = owned(src, "decoder.", "conv2.")
    if "decoder.upsamples.0.upsamples.0.residual.2.weight" in shapes:
        dim, z = shapes["decoder.head.0.gamma"][0], shapes["conv2.weight"][0]
        build = functools.partial(Wan22Decoder, dec_dim=dim, z_dim=z)
        return Recipe("wan22" + suffix, Family.WAN22, "teacher", build, src, keys)
    spec = spec_from_wan_shapes(shapes, name="from-checkpoint")
    teacher = all(s.op is Op.FULL_3D for s in spec.stages) and spec.middle_op is Op.FULL_3D
    if teacher:
        dim = spec.stages[-1].width
        if dataclasses.replace(spec, name=DecoderSpec.wan21_teacher(dim).name) == DecoderSpec.wan21_teacher(
            dim
        ):
            spec = DecoderSpec.wan21_teacher(dim)
        name = "wan21" if spec.family is Family.WAN21 else "wan22-wanlayout"
    elif dataclasses.replace(spec, name="flashvaed-wan21-official") == DecoderSpec.flashvaed_wan21():
        spec, name = DecoderSpec.flashvaed_wan21(), "flashvaed-wan-official"
    else:
        name = "flash-vaed-wan (untagged)"
    role = "teacher" if teacher else "student"
    return Recipe(name + suffix, spec.family, role, lambda: WanFamilyDecoder(spec), src, keys)


def ltx_metadata_config(src: TensorSource) -> dict | None:
    """The VAE config ComfyUI's loaders read from safetensors metadata ('config' -> 'vae'), None without
    one; a 'config' that is not JSON is an error (ComfyUI crashes on it)."""
    return vae_config_from_metadata(src.metadata, src.origin)


def _require_ltx_stats(src: TensorSource) -> None:
    if not all(k in src for k in LTX_STATS):
        raise CheckpointError(
            f"{src.origin}: an LTX VAE without per_channel_statistics (mean-of-means / std-of-means); "
            "they turn ComfyUI's normalized latents into the decoder's raw latents. Use the full VAE file."
        )


def _ltx_config_recipe(src: TensorSource) -> Recipe:
    """An LTX VAE that carries its config (LTX-2.x, LTX-Video 0.9.x checkpoints): built from the config,
    as ComfyUI builds `VideoVAE(config=...)`; the config also says which latent space it is."""
    config = ltx_metadata_config(src)
    if config is None:  # metadata 'config' without a 'vae' entry: ComfyUI guesses from the keys
        return _ltx_teacher_recipe(src)
    cfg = LTX2DecoderConfig.from_comfy_config(config, src.origin)
    _require_ltx_stats(src)
    build = functools.partial(LTX2TeacherDecoder, cfg)
    return Recipe(describe_config(cfg), cfg.family, "teacher", build, src, owned(src, "decoder."), LTX_STATS)


def _ltx_teacher_recipe(src: TensorSource, diffusers: bool = False) -> Recipe:
    # ComfyUI reads a decoder-only 0.9.5+ file as 0.9.1; a diffusers folder has no ComfyUI behaviour to
    # copy (ComfyUI cannot load it) and no encoder key names that match, so tell versions by the decoder
    try:
        version = ltx_version_from_keys(src.keys(), src.shapes, like_comfyui=not diffusers)
    except ValueError as err:
        raise CheckpointError(f"{src.origin}: {err}") from err
    if not diffusers:
        _check_configless(src)
    # ComfyUI pads the decoder with reflect when no config says otherwise; diffusers (whose folders ComfyUI
    # cannot load) pads with zeros, so a diffusers folder decodes as diffusers does
    padding = "zeros" if diffusers else "reflect"
    _require_ltx_stats(src)
    names = {0: "ltxv-0.9.0", 1: "ltxv-0.9.1", 2: "ltxv-0.9.5"}
    return Recipe(
        names.get(version, f"ltxv-v{version}") + ("-diffusers" if diffusers else ""),
        Family.LTXV,
        "teacher",
        lambda: LTXTeacherDecoder.for_version(version, spatial_padding_mode=padding),
        src,
        owned(src, "decoder."),
        LTX_STATS,
    )


def _check_configless(src: TensorSource) -> None:
    """An LTX VAE without a metadata config decodes as ComfyUI decodes it: with the LTX-Video 0.9 version it
    guesses from the keys. Where that guess is not this decoder (LTX-2.0 and 2.3 files whose metadata was
    stripped, truncated files), ComfyUI fails or decodes garbage: refuse, saying which."""
    behaviour = comfy_configless_behaviour(src.keys(), src.shapes)
    if comfy_decodes_configless(src.keys(), src.shapes):
        log.info("%s: no VAE config in its metadata; %s", src.origin, behaviour)
        return
    raise CheckpointError(
        f"{src.origin}: an LTX VAE without the config in its safetensors metadata whose decoder is not the "
        f"one ComfyUI guesses from the keys: {behaviour}. An LTX-2 VAE (2.0, 2.3, 2.5) describes its "
        "architecture only in that metadata: use the file as published (a conversion that dropped the "
        "metadata cannot be decoded faithfully); otherwise the file is truncated or edited. Nothing was loaded."
    )


def _ltx_diffusion_decoder(src: TensorSource) -> Recipe:
    raise diffusion_decoder_error(src.keys(), src.origin)


def _ltx_diffusers_recipe(src: TensorSource) -> Recipe:
    return _ltx_teacher_recipe(src.renamed(diffusers_ltx_to_original(src.keys())), diffusers=True)


def _ltx_student_recipe(src: TensorSource) -> Recipe:
    pairs = (("mean_of_means", "std_of_means"), ("latents_mean", "latents_std"))
    stats = next((pair for pair in pairs if all(k in src for k in pair)), None)
    build = functools.partial(LTXStudentDecoder, LTXStudentSpec.official())
    return Recipe("flashvaed-ltx-official", Family.LTXV, "student", build, src, owned(src, "decoder."), stats)


# Our own students, by their `flash_vaed.arch` metadata: the spec type and the module it builds.
_OUR_ARCHS = {"wan": (DecoderSpec, WanFamilyDecoder), "ltx": (LTXStudentSpec, LTXStudentDecoder)}


def _ours_recipe(src: TensorSource) -> Recipe:
    meta = src.metadata
    version = meta.get(META_FORMAT)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{src.origin}: Flash-VAED format version {version!r}, this library reads "
            f"{FORMAT_VERSION!r}; update the pack (or re-export the student)."
        )
    try:
        family = Family(meta[META_FAMILY])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{src.origin}: metadata {META_FAMILY!r} missing or unknown ({err})") from err
    arch = meta.get(META_ARCH, "wan")
    if arch not in _OUR_ARCHS:
        raise CheckpointError(f"{src.origin}: unknown Flash-VAED architecture {arch!r}")
    spec_type, module_type = _OUR_ARCHS[arch]
    try:
        spec = spec_type.from_json(meta[META_SPEC])
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{src.origin}: its student description (metadata {META_SPEC!r}) is missing or damaged "
            f"({str(err)[:200]}); the file is corrupt: export or download it again."
        ) from err
    keys = tuple(k for k in src.shapes if not k.startswith("latent_norm."))
    check_spec_family(spec, family, src.origin)
    check_spec_fits_file(spec, len(keys), src.origin)  # before a module of a damaged description is built
    stats = ("latent_norm.mean", "latent_norm.std") if "latent_norm.mean" in src else None
    layout = f"flash-vaed:{spec.name}" if arch == "wan" else "flash-vaed:ltx"
    return Recipe(layout, family, "student", lambda: module_type(spec), src, keys, stats)


Layouts = tuple[tuple[Callable[[TensorSource], bool], Callable[[TensorSource], Recipe]], ...]


def has(*keys: str) -> Callable[[TensorSource], bool]:
    return lambda src: all(k in src for k in keys)


def ours(src: TensorSource) -> bool:
    return META_FORMAT in src.metadata


# Every decoder layout, by what its source holds once a model prefix is stripped: first match wins.
DECODER_LAYOUTS: Layouts = (
    (lambda src: is_diffusion_decoder(src.keys()), _ltx_diffusion_decoder),
    (ours, _ours_recipe),
    (has("decoder.middle.0.residual.0.gamma"), _wan_recipe),
    (has("decoder.mid_block.attentions.0.to_qkv.weight", "decoder.conv_in.weight"), _wan_diffusers_recipe),
    (lambda src: LTX_PROBE in src and "config" in src.metadata, _ltx_config_recipe),
    (has(LTX_PROBE), _ltx_teacher_recipe),
    (has("decoder.mid_block.resnets.0.conv1.depthwise.weight"), _ltx_student_recipe),
    (
        has("decoder.conv_in.conv.weight", "decoder.up_blocks.0.resnets.0.conv1.conv.weight"),
        _ltx_diffusers_recipe,
    ),
)


def detect(src: TensorSource, layouts: Layouts = DECODER_LAYOUTS, part: str = "decoder") -> Recipe:
    """The recipe of the first of `layouts` that `src` (its VAE's keys, for `part` "decoder" or "encoder")
    matches. Raises CheckpointError naming the closest known model when none does."""
    src = strip_model_prefix(src, part)
    for matches, recipe in layouts:
        if matches(src):
            return recipe(src)
    raise unknown_layout_error(src)


def unknown_layout_error(src: TensorSource) -> CheckpointError:
    keys = src.keys()
    foreign = _foreign_guess(keys, src.shapes)
    first = ", ".join(sorted(keys)[:5])
    if foreign:
        return CheckpointError(
            f"{src.origin}: this is {foreign}, not a Wan 2.1/2.2 or LTX-Video VAE or a Flash-VAED decoder. "
            "Flash-VAED decodes Wan and LTX-Video latents only; load the VAE of your video model."
        )
    return CheckpointError(
        f"{src.origin}: no known decoder layout matches its {len(keys)} tensors (first keys: {first}). "
        "Expected a Wan 2.1/2.2 VAE (decoder.middle.0.residual.0.gamma), an LTX-Video VAE "
        "(decoder.up_blocks.0.res_blocks.0.conv1.conv.weight), a diffusers VAE folder of either, or a "
        "Flash-VAED student."
    )


# ---- building --------------------------------------------------------------------------------


def materialize(recipe: Recipe) -> nn.Module:
    src = recipe.source
    try:
        with torch.device("meta"):
            module = recipe.build()
    except (ValueError, TypeError, KeyError, RuntimeError, AssertionError, ZeroDivisionError) as err:
        raise CheckpointError(
            f"{src.origin}: looks like {recipe.layout} but its description does not build a decoder "
            f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__}); the file is corrupt "
            "or from another version: nothing was loaded."
        ) from err
    expected = module.state_dict()
    keys = set(recipe.keys)
    missing = [k for k in expected if k not in keys]
    unexpected = [k for k in recipe.keys if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{src.origin}: looks like {recipe.layout} but does not match it: "
            f"{len(missing)} missing keys (first: {', '.join(missing[:4]) or '-'}), "
            f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:4]) or '-'}). "
            "The file is truncated, from another model version, or edited; nothing was loaded."
        )
    bad = [
        (k, tuple(t.shape), src.shapes[k])
        for k, t in expected.items()
        if tuple(t.shape) != tuple(src.shapes[k])
    ]
    if bad:
        k, want, got = bad[0]
        raise CheckpointError(
            f"{src.origin}: looks like {recipe.layout} but {len(bad)} tensors have other shapes "
            f"(first: {k} is {got}, expected {want}); nothing was loaded."
        )
    state = {}
    for k, t in src.load(recipe.keys).items():
        problem = tensor_problem(t, expected[k].shape)
        if problem:
            raise CheckpointError(f"{src.origin}: tensor {k} {problem}; nothing was loaded.")
        state[k] = t.to(torch.float32)  # also lifts fp8/fp16/bf16 files; the caller picks the run dtype
    module.load_state_dict(state, strict=True, assign=True)
    leftovers = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(
            f"internal: {recipe.layout} module has tensors not in its state dict: {leftovers[:3]}"
        )
    return module


def read_latent_norm(recipe: Recipe, device: torch.device | str = "cpu") -> LatentNorm | None:
    if recipe.latent_norm_keys is None:
        return None
    mean_key, std_key = recipe.latent_norm_keys
    got = recipe.source.load([mean_key, std_key])
    for key in (mean_key, std_key):
        shape = recipe.source.shapes[key]
        problem = tensor_problem(got[key], torch.Size(shape))
        if problem:
            raise CheckpointError(
                f"{recipe.source.origin}: latent statistics {key} {problem}; nothing was loaded."
            )
    return LatentNorm(got[mean_key].float().flatten(), got[std_key].float().flatten()).to(device)


def build_decoder(
    src: TensorSource, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> FlashDecoder:
    recipe = detect(src)
    module = materialize(recipe).eval().requires_grad_(False).to(device=device, dtype=dtype)
    norm = read_latent_norm(recipe, device)
    if recipe.family.is_ltx and norm is None:
        log.warning(
            "%s: no latent statistics in the file; decoding ComfyUI latents as raw latents", src.origin
        )
    info = {"origin": src.origin, "parameters": sum(p.numel() for p in module.parameters())}
    return FlashDecoder(recipe.family, recipe.role, module, norm, recipe.layout, info)


def load_decoder(
    source: str | os.PathLike | Mapping[str, torch.Tensor] | TensorSource,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FlashDecoder:
    """Load a decoder from a file (.safetensors/.pth/...), a diffusers folder, a state dict, or a
    `TensorSource` (a state dict with the metadata its file had: `checkpoint.io.from_state_dict(sd, meta)`,
    which LTX-2 VAEs need, their architecture being in the metadata).

    Only the decoder's tensors are read (the encoder stays on disk), lazily for safetensors files.
    """
    return build_decoder(tensor_source(source), device, dtype)


def tensor_source(source: str | os.PathLike | Mapping[str, torch.Tensor] | TensorSource) -> TensorSource:
    """What `load_decoder` / `load_encoder` take, as a `TensorSource`."""
    if isinstance(source, TensorSource):
        return source
    return from_state_dict(source) if isinstance(source, Mapping) else open_tensors(source)


def save_student(decoder: FlashDecoder, path: str | os.PathLike) -> os.PathLike:
    """Write a student as safetensors with the metadata `load_decoder` reads back (atomic)."""
    module = decoder.module
    spec = getattr(module, "spec", None)
    if spec is None:
        raise ValueError("only decoders built from a spec can be saved as Flash-VAED students")
    arch = "wan" if isinstance(module, WanFamilyDecoder) else "ltx"
    tensors = dict(module.state_dict())
    bad = None if all_finite(tensors.values()) else first_non_finite(tensors.items())
    if bad:  # it would decode to NaN frames; never let it replace a file that decodes
        raise CheckpointError(f"refused to save {path}: tensor {bad[0]} holds {bad[1]} NaN/Inf values")
    if decoder.latent_norm is not None:
        tensors["latent_norm.mean"] = decoder.latent_norm.mean
        tensors["latent_norm.std"] = decoder.latent_norm.std
    meta = {
        META_FORMAT: FORMAT_VERSION,
        META_FAMILY: decoder.family.value,
        META_ARCH: arch,
        META_SPEC: spec.to_json(),
    }
    return atomic_save(tensors, path, meta)
