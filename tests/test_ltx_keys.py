"""diffusers LTX-Video VAE keys -> ComfyUI keys (flash_vaed.checkpoint.ltx_keys).

Names: the real 0.9.0 / 0.9.1 manifests must map onto each other one to one with equal shapes.
Meaning: shapes cannot tell two resnets of one stack apart, nor say whether a table holds (shift, scale) or
(scale, shift), so a small decoder in diffusers' layout is run here with diffusers' own formulas (written
out below from `diffusers/models/autoencoders/autoencoder_kl_ltx.py`: its reshape/permute depth-to-space,
unflatten-and-unbind AdaLN, flipped sin/cos timestep projection, patch order) and compared with our
ComfyUI-exact teacher loaded through the rename. Equal outputs mean no tensor needs a value transform.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from flash_vaed.arch.ltx import LTXTeacherDecoder
from flash_vaed.checkpoint.ltx_keys import diffusers_ltx_to_original
from flash_vaed.errors import CheckpointError
from support.reference_weights import load_manifest, manifest_shapes

STATS = {
    "latents_mean": "per_channel_statistics.mean-of-means",
    "latents_std": "per_channel_statistics.std-of-means",
}
PAIRS = [("diffusers_ltx_090", "ltx_comfy_v0"), ("diffusers_ltx_091", "ltx_comfy_v1")]


def _decoder_view(shapes: dict[str, tuple[int, ...]], stats: set[str]) -> dict[str, tuple[int, ...]]:
    return {k: s for k, s in shapes.items() if k.startswith("decoder.") or k in stats}


# ---- names: the real manifests ---------------------------------------------------------------------


@pytest.mark.parametrize(("diffusers_name", "comfy_name"), PAIRS)
def test_real_layouts_map_one_to_one_with_equal_shapes(diffusers_name: str, comfy_name: str) -> None:
    src = manifest_shapes(load_manifest(diffusers_name))
    dst = manifest_shapes(load_manifest(comfy_name))
    mapping = diffusers_ltx_to_original(set(src), src)

    wanted_src = _decoder_view(src, set(STATS))
    wanted_dst = _decoder_view(dst, set(STATS.values()))
    assert set(mapping) == set(wanted_src), "every decoder key and both statistics, and nothing else"
    assert len(set(mapping.values())) == len(mapping), "two diffusers keys land on one ComfyUI key"
    assert set(mapping.values()) == set(wanted_dst)
    bad = {k: (src[k], dst[v]) for k, v in mapping.items() if tuple(src[k]) != tuple(dst[v])}
    assert not bad
    assert not any(k.startswith("encoder.") for k in mapping)


# Correspondences read off diffusers' own converter (loaders/single_file_utils.py,
# convert_ltx_vae_checkpoint_to_diffusers), written here in the ComfyUI -> diffusers direction it uses.
KNOWN_090 = {
    "decoder.mid_block.resnets.3.conv2.conv.bias": "decoder.up_blocks.0.res_blocks.3.conv2.conv.bias",
    "decoder.up_blocks.0.resnets.2.conv1.conv.weight": "decoder.up_blocks.1.res_blocks.2.conv1.conv.weight",
    "decoder.up_blocks.1.upsamplers.0.conv.conv.weight": "decoder.up_blocks.2.conv.conv.weight",
    "decoder.up_blocks.1.resnets.0.conv1.conv.bias": "decoder.up_blocks.3.res_blocks.0.conv1.conv.bias",
    "decoder.up_blocks.2.conv_in.norm3.weight": "decoder.up_blocks.4.norm3.norm.weight",
    "decoder.up_blocks.2.conv_in.conv_shortcut.conv.weight": "decoder.up_blocks.4.conv_shortcut.weight",
    "decoder.up_blocks.2.upsamplers.0.conv.conv.bias": "decoder.up_blocks.5.conv.conv.bias",
    "decoder.up_blocks.2.resnets.1.conv2.conv.weight": "decoder.up_blocks.6.res_blocks.1.conv2.conv.weight",
    "decoder.up_blocks.3.conv_in.conv1.conv.weight": "decoder.up_blocks.7.conv1.conv.weight",
    "decoder.up_blocks.3.upsamplers.0.conv.conv.weight": "decoder.up_blocks.8.conv.conv.weight",
    "decoder.up_blocks.3.resnets.3.conv2.conv.bias": "decoder.up_blocks.9.res_blocks.3.conv2.conv.bias",
    "decoder.conv_in.conv.weight": "decoder.conv_in.conv.weight",
    "decoder.conv_out.conv.bias": "decoder.conv_out.conv.bias",
    **STATS,
}
KNOWN_091 = {
    "decoder.mid_block.time_embedder.timestep_embedder.linear_1.weight": "decoder.up_blocks.0.time_embedder.timestep_embedder.linear_1.weight",
    "decoder.mid_block.resnets.7.scale_shift_table": "decoder.up_blocks.0.res_blocks.7.scale_shift_table",
    "decoder.up_blocks.0.upsamplers.0.conv.conv.weight": "decoder.up_blocks.1.conv.conv.weight",
    "decoder.up_blocks.0.time_embedder.timestep_embedder.linear_2.bias": "decoder.up_blocks.2.time_embedder.timestep_embedder.linear_2.bias",
    "decoder.up_blocks.0.resnets.6.per_channel_scale2": "decoder.up_blocks.2.res_blocks.6.per_channel_scale2",
    "decoder.up_blocks.1.upsamplers.0.conv.conv.bias": "decoder.up_blocks.3.conv.conv.bias",
    "decoder.up_blocks.1.resnets.5.scale_shift_table": "decoder.up_blocks.4.res_blocks.5.scale_shift_table",
    "decoder.up_blocks.2.upsamplers.0.conv.conv.weight": "decoder.up_blocks.5.conv.conv.weight",
    "decoder.up_blocks.2.resnets.4.per_channel_scale1": "decoder.up_blocks.6.res_blocks.4.per_channel_scale1",
    "decoder.time_embedder.timestep_embedder.linear_1.weight": "decoder.last_time_embedder.timestep_embedder.linear_1.weight",
    "decoder.scale_shift_table": "decoder.last_scale_shift_table",
    "decoder.timestep_scale_multiplier": "decoder.timestep_scale_multiplier",
    **STATS,
}


@pytest.mark.parametrize(
    ("manifest", "known"), [("diffusers_ltx_090", KNOWN_090), ("diffusers_ltx_091", KNOWN_091)]
)
def test_matches_diffusers_converter_table(manifest: str, known: dict[str, str]) -> None:
    shapes = manifest_shapes(load_manifest(manifest))
    mapping = diffusers_ltx_to_original(set(shapes), shapes)
    assert {k: mapping[k] for k in known} == known


def _diffusers_part(key: str) -> tuple[str, str] | None:
    """(owner, part) of a block key: part is conv_in, upsamplers.0 or stack (resnets + time_embedder)."""
    m = re.match(
        r"(decoder\.(?:mid_block|up_blocks\.\d+))\."
        r"(conv_in|upsamplers\.0|resnets|time_embedder)\.",
        key,
    )
    if m is None:
        return None
    return m[1], "stack" if m[2] in ("resnets", "time_embedder") else m[2]


@pytest.mark.parametrize("manifest", ["diffusers_ltx_090", "diffusers_ltx_091"])
def test_resnet_index_is_kept_and_each_diffusers_part_is_one_comfy_block(manifest: str) -> None:
    shapes = manifest_shapes(load_manifest(manifest))
    mapping = diffusers_ltx_to_original(set(shapes), shapes)
    blocks_of: dict[tuple[str, str], set[str]] = {}
    for old, new in mapping.items():
        if ".resnets." in old:
            assert old.split(".resnets.")[1].split(".")[0] == new.split(".res_blocks.")[1].split(".")[0]
        if (part := _diffusers_part(old)) is not None:
            blocks_of.setdefault(part, set()).add(".".join(new.split(".")[:3]))
    assert all(len(blocks) == 1 for blocks in blocks_of.values()), blocks_of
    targets = [next(iter(blocks)) for blocks in blocks_of.values()]
    assert len(set(targets)) == len(targets), "two diffusers parts share one ComfyUI block"


# diffusers' 0.9.5 converter (VAE_095_RENAME_DICT): ComfyUI v2 decoder block -> diffusers part
TABLE_095 = {
    0: "mid_block",
    1: "up_blocks.0.upsamplers.0",
    2: "up_blocks.0",
    3: "up_blocks.1.upsamplers.0",
    4: "up_blocks.1",
    5: "up_blocks.2.upsamplers.0",
    6: "up_blocks.2",
}


def comfy_v2_to_diffusers(key: str) -> str | None:
    """The diffusers name diffusers' converter gives a ComfyUI 0.9.5+ VAE key (decoder and the two stats)."""
    if key in STATS.values():
        return next(k for k, v in STATS.items() if v == key)
    if not key.startswith("decoder."):
        return None
    if key.startswith("decoder.up_blocks."):
        n, rest = key.split(".", 3)[2:]
        return f"decoder.{TABLE_095[int(n)]}.{rest}".replace(".res_blocks.", ".resnets.")
    return key.replace("decoder.last_", "decoder.")  # last_time_embedder, last_scale_shift_table


def test_095_layout_maps_back_onto_comfy_v2() -> None:
    comfy = manifest_shapes(load_manifest("ltx_comfy_v2"))
    forward = {k: new for k in comfy if (new := comfy_v2_to_diffusers(k)) is not None}
    mapping = diffusers_ltx_to_original(set(forward.values()))
    assert {mapping[new]: old for old, new in forward.items()} == {k: k for k in forward}


def test_unknown_decoder_keys_stay_visible_and_encoder_keys_are_dropped() -> None:
    keys = {
        "decoder.conv_in.conv.weight",
        "decoder.norm_out.weight",
        "encoder.conv_in.conv.weight",
        "latents_std",
        "decoder.mid_block.resnets.0.conv1.conv.weight",
    }
    mapping = diffusers_ltx_to_original(keys, {})
    assert mapping["decoder.norm_out.weight"] == "decoder.norm_out.weight"  # the strict loader will name it
    assert "encoder.conv_in.conv.weight" not in mapping
    assert mapping["latents_std"] == "per_channel_statistics.std-of-means"
    assert (
        mapping["decoder.mid_block.resnets.0.conv1.conv.weight"]
        == "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"
    )


def test_two_keys_on_one_name_is_an_error() -> None:
    # an unknown key spelled like a ComfyUI key collides with the renamed diffusers key
    keys = {
        "decoder.mid_block.resnets.0.conv1.conv.weight",
        "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight",
    }
    with pytest.raises(CheckpointError, match="both map to"):
        diffusers_ltx_to_original(keys, {})


# ---- meaning: a diffusers-layout decoder run with diffusers' formulas --------------------------------


def diffusers_decoder_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Decoder keys and shapes AutoencoderKLLTXVideo(**cfg) has (its LTXVideoDecoder3d constructor)."""
    names = (
        "decoder_block_out_channels",
        "decoder_spatio_temporal_scaling",
        "decoder_layers_per_block",
        "decoder_inject_noise",
        "upsample_factor",
    )
    rev = {k: tuple(reversed(cfg[k])) for k in names}
    cond = cfg["timestep_conditioning"]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3) -> None:
        shapes[f"{name}.conv.weight"] = (cout, cin, k, k, k)
        shapes[f"{name}.conv.bias"] = (cout,)

    def embedder(name: str, dim: int) -> None:
        shapes.update(
            {
                f"{name}.timestep_embedder.linear_1.weight": (dim, 256),
                f"{name}.timestep_embedder.linear_1.bias": (dim,),
                f"{name}.timestep_embedder.linear_2.weight": (dim, dim),
                f"{name}.timestep_embedder.linear_2.bias": (dim,),
            }
        )

    def resnet(name: str, cin: int, cout: int, noisy: bool) -> None:
        conv(f"{name}.conv1", cin, cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            shapes[f"{name}.norm3.weight"] = shapes[f"{name}.norm3.bias"] = (cin,)
            conv(f"{name}.conv_shortcut", cin, cout, 1)
        if noisy:
            shapes[f"{name}.per_channel_scale1"] = shapes[f"{name}.per_channel_scale2"] = (cin, 1, 1)
        if cond:
            shapes[f"{name}.scale_shift_table"] = (4, cin)

    widths, layers = rev["decoder_block_out_channels"], rev["decoder_layers_per_block"]
    noise = rev["decoder_inject_noise"]
    ch = widths[0]
    conv("decoder.conv_in", cfg["latent_channels"], ch)
    if cond:
        embedder("decoder.mid_block.time_embedder", 4 * ch)
    for j in range(layers[0]):
        resnet(f"decoder.mid_block.resnets.{j}", ch, ch, noise[0])
    for i, width in enumerate(widths):
        factor = rev["upsample_factor"][i]
        cin, cout = ch // factor, width // factor
        p = f"decoder.up_blocks.{i}"
        if cond:
            embedder(f"{p}.time_embedder", 4 * cin)
        if cin != cout:
            resnet(f"{p}.conv_in", cin, cout, noise[i + 1])
        if rev["decoder_spatio_temporal_scaling"][i]:
            conv(f"{p}.upsamplers.0.conv", cout * factor, cout * 8)
        for j in range(layers[i + 1]):
            resnet(f"{p}.resnets.{j}", cout, cout, noise[i + 1])
        ch = cout
    conv("decoder.conv_out", ch, cfg["out_channels"] * cfg["patch_size"] ** 2)
    if cond:
        shapes["decoder.timestep_scale_multiplier"] = ()
        embedder("decoder.time_embedder", 2 * ch)
        shapes["decoder.scale_shift_table"] = (2, ch)
    return shapes


@pytest.mark.parametrize("manifest", ["diffusers_ltx_090", "diffusers_ltx_091"])
def test_diffusers_shape_model_matches_the_real_manifest(manifest: str) -> None:
    """Guards the transcription below: it yields exactly the real files' decoder keys and shapes."""
    m = load_manifest(manifest)
    real = {k: s for k, s in manifest_shapes(m).items() if k.startswith("decoder.")}
    assert diffusers_decoder_shapes(m["config"]) == real


def _conv(sd: dict, name: str, x: Tensor) -> Tensor:
    """LTXVideoCausalConv3d(is_causal=False): repeat edge frames in time, zero-pad space."""
    w, b = sd[f"{name}.conv.weight"], sd[f"{name}.conv.bias"]
    k = w.shape[2]
    pad = (k - 1) // 2
    x = torch.cat([x[:, :, :1].repeat(1, 1, pad, 1, 1), x, x[:, :, -1:].repeat(1, 1, pad, 1, 1)], dim=2)
    return F.conv3d(x, w, b, padding=(0, k // 2, k // 2))


def _rms(x: Tensor) -> Tensor:
    x = x.movedim(1, -1)
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-8)).movedim(-1, 1)


def _embed(sd: dict, name: str, t: Tensor) -> Tensor:
    """PixArtAlphaCombinedTimestepSizeEmbeddings: Timesteps(256, flip_sin_to_cos=True, shift 0) + MLP."""
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.flatten()[:, None].float() * freqs[None]
    proj = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    proj = torch.cat([proj[:, half:], proj[:, :half]], dim=-1)  # flip_sin_to_cos
    mlp = f"{name}.timestep_embedder"
    h = F.linear(proj, sd[f"{mlp}.linear_1.weight"], sd[f"{mlp}.linear_1.bias"])
    return F.linear(F.silu(h), sd[f"{mlp}.linear_2.weight"], sd[f"{mlp}.linear_2.bias"])


def _resnet(sd: dict, p: str, x: Tensor, temb: Tensor | None, noise: list[Tensor]) -> Tensor:
    h = _rms(x)
    if f"{p}.scale_shift_table" in sd:
        t = temb.unflatten(1, (4, -1)) + sd[f"{p}.scale_shift_table"][None, ..., None, None, None]
        shift_1, scale_1, shift_2, scale_2 = t.unbind(dim=1)
        h = h * (1 + scale_1) + shift_1
    h = _conv(sd, f"{p}.conv1", F.silu(h))
    if f"{p}.per_channel_scale1" in sd:
        noise.append(torch.randn(h.shape[-2:]))
        h = h + (noise[-1][None] * sd[f"{p}.per_channel_scale1"])[None, :, None, ...]
    h = _rms(h)
    if f"{p}.scale_shift_table" in sd:
        h = h * (1 + scale_2) + shift_2
    h = _conv(sd, f"{p}.conv2", F.silu(h))
    if f"{p}.per_channel_scale2" in sd:
        noise.append(torch.randn(h.shape[-2:]))
        h = h + (noise[-1][None] * sd[f"{p}.per_channel_scale2"])[None, :, None, ...]
    if f"{p}.norm3.weight" in sd:
        x = F.layer_norm(
            x.movedim(1, -1), x.shape[1:2], sd[f"{p}.norm3.weight"], sd[f"{p}.norm3.bias"], 1e-6
        ).movedim(-1, 1)
        x = _conv(sd, f"{p}.conv_shortcut", x)
    return h + x


def _upsample(sd: dict, p: str, x: Tensor, residual: bool, factor: int) -> Tensor:
    b, _, f, hh, ww = x.shape

    def d2s(y: Tensor) -> Tensor:
        y = y.reshape(b, -1, 2, 2, 2, f, hh, ww).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    out = d2s(_conv(sd, f"{p}.conv", x))[:, :, 1:]
    if residual:
        out = out + d2s(x).repeat(1, 8 // factor, 1, 1, 1)[:, :, 1:]
    return out


def diffusers_decode(sd: dict, cfg: dict, z: Tensor, timestep: float, noise: list[Tensor]) -> Tensor:
    """LTXVideoDecoder3d.forward on raw latents z; appends each injected-noise draw to `noise`."""
    n_up = len(cfg["decoder_block_out_channels"])
    residual = tuple(reversed(cfg["upsample_residual"]))
    factor = tuple(reversed(cfg["upsample_factor"]))
    h = _conv(sd, "decoder.conv_in", z)
    temb = None
    if cfg["timestep_conditioning"]:
        temb = torch.tensor([timestep]) * sd["decoder.timestep_scale_multiplier"]
    blocks = [("decoder.mid_block", None)] + [(f"decoder.up_blocks.{i}", i) for i in range(n_up)]
    for p, i in blocks:
        if f"{p}.conv_in.conv1.conv.weight" in sd:
            h = _resnet(sd, f"{p}.conv_in", h, temb, noise)
        block_temb = temb
        if f"{p}.time_embedder.timestep_embedder.linear_1.weight" in sd:
            block_temb = _embed(sd, f"{p}.time_embedder", temb).view(h.shape[0], -1, 1, 1, 1)
        if f"{p}.upsamplers.0.conv.conv.weight" in sd:
            h = _upsample(sd, f"{p}.upsamplers.0", h, residual[i], factor[i])
        j = 0
        while f"{p}.resnets.{j}.conv1.conv.weight" in sd:
            h = _resnet(sd, f"{p}.resnets.{j}", h, block_temb, noise)
            j += 1
    h = _rms(h)
    if cfg["timestep_conditioning"]:
        e = _embed(sd, "decoder.time_embedder", temb).view(h.shape[0], -1, 1, 1, 1).unflatten(1, (2, -1))
        shift, scale = (e + sd["decoder.scale_shift_table"][None, ..., None, None, None]).unbind(dim=1)
        h = h * (1 + scale) + shift
    h = _conv(sd, "decoder.conv_out", F.silu(h))
    b, _, f, hh, ww = h.shape
    p = cfg["patch_size"]
    h = h.reshape(b, -1, 1, p, p, f, hh, ww).permute(0, 1, 5, 2, 6, 4, 7, 3)
    return h.flatten(6, 7).flatten(4, 5).flatten(2, 3)


# Reduced decoders of both real kinds, and the ComfyUI block lists (deep-last) that build the same decoder.
SMALL_090 = {
    "latent_channels": 128,
    "out_channels": 3,
    "patch_size": 4,
    "timestep_conditioning": False,
    "decoder_block_out_channels": (4, 8, 16, 16),
    "decoder_layers_per_block": (1, 1, 1, 2, 1),
    "decoder_spatio_temporal_scaling": (True, True, True, False),
    "decoder_inject_noise": (False,) * 5,
    "upsample_residual": (False,) * 4,
    "upsample_factor": (1,) * 4,
}
COMFY_090 = [
    ["res_x", 1],
    ["compress_all", 1],
    ["res_x_y", 1],
    ["res_x", 1],
    ["compress_all", 1],
    ["res_x_y", 1],
    ["res_x", 1],
    ["compress_all", 1],
    ["res_x", 2],
    ["res_x", 1],
]
SMALL_091 = {
    "latent_channels": 128,
    "out_channels": 3,
    "patch_size": 4,
    "timestep_conditioning": True,
    "decoder_block_out_channels": (8, 16, 32),
    "decoder_layers_per_block": (1, 2, 1, 2),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (True, True, True, False),
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
}
_UP = ["compress_all", {"residual": True, "multiplier": 2}]
COMFY_091 = [
    ["res_x", {"num_layers": 1, "inject_noise": True}],
    _UP,
    ["res_x", {"num_layers": 2, "inject_noise": True}],
    _UP,
    ["res_x", {"num_layers": 1, "inject_noise": True}],
    _UP,
    ["res_x", {"num_layers": 2, "inject_noise": False}],
]


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in sorted(shapes.items()):
        z = torch.randn(shape, generator=gen)
        if k.endswith("timestep_scale_multiplier"):
            z = torch.tensor(1000.0)
        elif "norm3.weight" in k:
            z = 1 + 0.1 * z
        elif z.ndim >= 2 and "scale_shift_table" not in k and "per_channel_scale" not in k:
            z = z / math.sqrt(math.prod(shape[1:]))
        else:
            z = 0.1 * z  # biases, AdaLN tables, noise scales: non-zero so a swap would show
        sd[k] = z
    return sd


@pytest.mark.parametrize(
    ("cfg", "comfy_blocks"),
    [(SMALL_090, COMFY_090), (SMALL_091, COMFY_091)],
    ids=["0.9.0-like", "0.9.1-like"],
)
def test_renamed_diffusers_weights_decode_like_diffusers(cfg: dict, comfy_blocks: list) -> None:
    torch.manual_seed(0)
    sd = _random_state(diffusers_decoder_shapes(cfg), seed=1)
    z = torch.randn(1, 128, 2, 2, 1)  # W=1 keeps it fast; H=2 still mixes rows
    noise: list[Tensor] = []
    want = diffusers_decode(sd, cfg, z, timestep=0.05, noise=noise)

    mapping = diffusers_ltx_to_original(set(sd), {k: tuple(v.shape) for k, v in sd.items()})
    assert set(mapping) == set(sd)
    base = cfg["decoder_block_out_channels"][0] // cfg["upsample_factor"][0]
    teacher = LTXTeacherDecoder(
        comfy_blocks,
        timestep_conditioning=cfg["timestep_conditioning"],
        spatial_padding_mode="zeros",
        base_channels=base,
    )
    teacher.load_state_dict({mapping[k]: v for k, v in sd.items()}, strict=True)
    assert teacher.injects_noise == bool(noise)
    got = teacher(z, timestep=0.05, spatial_noise=noise or None)
    assert got.shape == want.shape == (1, 3, 9, 64, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


# ---- through the loader: a diffusers-layout state dict builds the right full-size teacher ------------------


def _diffusers_095_shapes() -> dict[str, tuple[int, ...]]:
    comfy = manifest_shapes(load_manifest("ltx_comfy_v2"))
    return {new: shape for k, shape in comfy.items() if (new := comfy_v2_to_diffusers(k)) is not None}


@pytest.mark.parametrize(
    ("source", "layout"),
    [
        ("diffusers_ltx_090", "ltxv-0.9.0-diffusers"),
        ("diffusers_ltx_091", "ltxv-0.9.1-diffusers"),
        ("095", "ltxv-0.9.5-diffusers"),
    ],
)
def test_load_decoder_routes_every_diffusers_tensor_to_its_comfy_slot(source: str, layout: str) -> None:
    """Each tensor is a constant equal to its index (expanded, so a full-size file costs no memory)."""
    from flash_vaed import Family, load_decoder

    shapes = _diffusers_095_shapes() if source == "095" else manifest_shapes(load_manifest(source))
    sd = {k: torch.tensor(float(i)).expand(shape) for i, (k, shape) in enumerate(sorted(shapes.items()))}
    dec = load_decoder(sd)
    assert (dec.family, dec.role, dec.layout) == (Family.LTXV, "teacher", layout)
    mapping = diffusers_ltx_to_original(set(sd), shapes)
    state = dec.module.state_dict()
    assert set(state) == {v for v in mapping.values() if v.startswith("decoder.")}
    for old, new in mapping.items():
        if new.startswith("decoder."):
            first = (0,) * sd[old].ndim  # every element is the same constant
            assert state[new].shape == sd[old].shape and state[new][first] == sd[old][first], old
    torch.testing.assert_close(dec.latent_norm.mean, sd["latents_mean"].float(), rtol=0, atol=0)
    torch.testing.assert_close(dec.latent_norm.std, sd["latents_std"].float(), rtol=0, atol=0)
