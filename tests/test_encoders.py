"""The teachers' encoders (`flash_vaed.load_encoder`) against ComfyUI 0.3.75's own encode on seeded weights,
plus streaming (whole clip = any chunking), key layouts, strict loading and the decoder/encoder split.

ComfyUI runs in subprocesses (support.comfy_subprocess / comfy_model_worker). Wan 2.1 goes through VAELoader +
VAE.encode at dim 8; Wan 2.2 through a direct WanVAE.encode call at reduced width (VAELoader only builds the
released size); LTX-Video through VAE.encode with reduced encoder block lists handed over as metadata config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flash_vaed import CheckpointError, FlashEncoder, load_decoder, load_encoder
from flash_vaed.arch.ltx_encoder import LTXTeacherEncoder
from flash_vaed.arch.wan22 import Wan22Decoder
from flash_vaed.arch.wan_encoder import WanEncoder
from flash_vaed.checkpoint.io import TensorSource, from_state_dict
from flash_vaed.checkpoint.load import build_decoder, detect
from flash_vaed.checkpoint.wan_keys import diffusers_wan_encoder_to_original
from flash_vaed.encoder import ENCODER_LAYOUTS, FrameError, build_encoder
from flash_vaed.spec import Family
from support.comfy_subprocess import comfy_root, comfy_vae_encode, worker_env
from support.reference_weights import generate, load_manifest, manifest_shapes

TOL = 5e-5
MODEL_WORKER = Path(__file__).parent / "support" / "comfy_model_worker.py"
LTX_STATS = ("std-of-means", "mean-of-means", "mean-of-stds", "mean-of-stds_over_std-of-means", "channel")


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _frames(shape: tuple[int, ...], seed: int = 5) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1]."""
    return _rand(shape, seed) * 2 - 1


@pytest.fixture(scope="module")
def wan21_small() -> dict[str, torch.Tensor]:
    """The whole Wan 2.1 VAE at dim 8 (the manifest was read off ComfyUI's own model). Do not mutate."""
    return generate(load_manifest("wan21_comfy_dim8"), seed=1)


def wan22_small_weights(seed: int = 2) -> dict[str, torch.Tensor]:
    """Wan 2.2 at encoder dim 16 and decoder dim 8: what comfy_model_worker builds for `--dim 8`."""
    with torch.device("meta"):
        enc, dec = WanEncoder(16, 48, wan22=True), Wan22Decoder(dec_dim=8, z_dim=48)
    shapes = {k: list(v.shape) for m in (enc, dec) for k, v in m.state_dict().items()}
    return generate(shapes, seed=seed)


def _recording(sd: dict[str, torch.Tensor]) -> tuple[TensorSource, list[str]]:
    src = from_state_dict(sd)
    asked: list[str] = []
    inner = src._loader

    def load(names):
        names = list(names)
        asked.extend(names)
        return inner(names)

    src._loader = load
    return src, asked


# ---- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wan22", [False, True])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_wan_stream_equals_whole_clip(wan22, chunk):
    torch.manual_seed(0)
    sd = wan22_small_weights() if wan22 else generate(load_manifest("wan21_comfy_dim8"), seed=1)
    enc = load_encoder(sd)
    assert enc.family is (Family.WAN22 if wan22 else Family.WAN21)
    x = _frames((2, 3, 13, 32, 16))
    whole = enc.encode(x, chunk_frames=None)
    assert whole.shape == (2, 48 if wan22 else 16, 4, 32 // enc.space_stride, 16 // enc.space_stride)
    torch.testing.assert_close(enc.encode(x, chunk_frames=chunk), whole, rtol=0, atol=1e-5)


def test_chunk_that_ends_mid_pair_emits_nothing_and_state_carries_it():
    from flash_vaed.engine.state import DecodeState

    enc = load_encoder(wan22_small_weights())
    x = _frames((1, 3, 9, 16, 16)).to(enc.dtype)
    state = DecodeState(enc.module)
    sizes = [enc.module(c, state).shape[2] for c in x.split([1, 1, 1, 2, 4], dim=2)]
    # latent frame 1 needs video frames 1-4, latent frame 2 frames 5-8
    assert sizes == [1, 0, 0, 1, 1]
    assert state.nbytes() > 0


# ---- ComfyUI equality -----------------------------------------------------------------------------


@pytest.mark.comfy
def test_wan21_encode_images_equals_comfyui_vaeencode(tmp_path, wan21_small):
    """VAELoader + VAE.encode: centre crop 20x27 -> 16x24, the 10th frame dropped (T -> 4k+1), raw mu."""
    path = tmp_path / "vae.safetensors"
    save_file(wan21_small, str(path))
    images = _rand((10, 20, 27, 3), seed=3)
    theirs = comfy_vae_encode(path, images, out_path=tmp_path / "out.safetensors")
    enc = load_encoder(path)
    ours = enc.encode_images(images)
    assert ours.shape == theirs.shape == (1, 16, 3, 2, 3)
    assert (ours - theirs).abs().max().item() < TOL
    assert (enc.encode_images(images, chunk_frames=None) - theirs).abs().max().item() < TOL


@pytest.mark.comfy
def test_wan22_encode_equals_comfyui_model(tmp_path):
    """Direct WanVAE(2.2).encode at reduced width: patchify 2x2, AvgDown3D shortcuts, mu of 48 channels."""
    weights = wan22_small_weights()
    save_file(weights, str(tmp_path / "w.safetensors"))
    frames = _frames((1, 3, 9, 32, 48), seed=4)
    save_file({"frames": frames}, str(tmp_path / "x.safetensors"))
    cmd = [
        sys.executable,
        str(MODEL_WORKER),
        "--comfy",
        str(comfy_root()),
        "encode",
        "--family",
        "wan22",
        "--dim",
        "8",
        "--weights",
        str(tmp_path / "w.safetensors"),
        "--frames",
        str(tmp_path / "x.safetensors"),
        "--out",
        str(tmp_path / "o.safetensors"),
    ]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = load_file(str(tmp_path / "o.safetensors"))["latent"]
    enc = load_encoder(weights)
    ours = enc.encode(frames)
    assert ours.shape == theirs.shape == (1, 48, 3, 2, 3)
    assert (ours - theirs).abs().max().item() < TOL


# Reduced LTX encoders (ComfyUI's width 128, fewer blocks) covering every block kind ComfyUI knows.
LTX_CASES = {
    "v01-blocks": (
        [
            ["res_x", 1],
            ["compress_all", 1],
            ["res_x_y", 1],
            ["compress_all", 1],
            ["res_x", 1],
            ["compress_all", 1],
        ],
        None,
    ),
    "v2-blocks-reflect": (
        [
            ["res_x", {"num_layers": 1}],
            ["compress_space_res", {"multiplier": 2}],
            ["compress_time_res", {"multiplier": 1}],
            ["compress_all_res", {"multiplier": 1}],
            ["compress_all_res", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
        ],
        "reflect",
    ),
    "strided-x-y": (
        [
            ["compress_time", 1],
            ["compress_space", 1],
            ["compress_all_x_y", {"multiplier": 2}],
            ["res_x", 1],
            ["compress_all", 1],
        ],
        None,
    ),
}


def ltx_reduced(blocks: list, padding: str | None) -> tuple[dict, dict[str, torch.Tensor]]:
    config = {
        "dims": 3,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "encoder_blocks": blocks,
        "decoder_blocks": [["res_x", 1]],
        "norm_layer": "pixel_norm",
        "patch_size": 4,
        "latent_log_var": "uniform",
        "causal_decoder": False,
    }
    if padding is not None:
        config["spatial_padding_mode"] = padding
    with torch.device("meta"):
        model = LTXTeacherEncoder.from_comfy_config(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    shapes.update({f"per_channel_statistics.{s}": [128] for s in LTX_STATS})
    # ComfyUI recognises an LTX VAE by this decoder key (it loads the rest non-strictly)
    shapes["decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"] = [128, 128, 3, 3, 3]
    return config, generate(shapes, seed=6)


@pytest.mark.comfy
@pytest.mark.slow
@pytest.mark.parametrize("name", list(LTX_CASES))
def test_ltx_encode_images_equals_comfyui_vaeencode(tmp_path, name):
    """VAE.encode with the config as metadata (as the checkpoint loaders pass it): normalized means."""
    config, weights = ltx_reduced(*LTX_CASES[name])
    metadata = {"config": json.dumps({"vae": config})}
    path = tmp_path / "vae.safetensors"
    save_file(weights, str(path), metadata=metadata)
    images = _rand((9, 70, 66, 3), seed=8)  # ComfyUI crops to 64x64, offsets 3 and 1
    theirs = comfy_vae_encode(path, images, out_path=tmp_path / "out.safetensors", metadata=metadata)
    enc = load_encoder(path)  # reads the same config from the file's metadata
    ours = enc.encode_images(images)
    assert ours.shape == theirs.shape == (1, 128, 2, 2, 2)
    assert (ours - theirs).abs().max().item() < TOL
    # LATENT is normalized: raw means = latent * std-of-means + mean-of-means
    with torch.no_grad():
        raw = enc.module(images[:, 3:67, 1:65].movedim(-1, 0)[None] * 2 - 1)
    assert (raw - enc.latent_norm.to_raw(ours)).abs().max().item() < 1e-4


@pytest.mark.comfy
@pytest.mark.slow
def test_wan21_full_size_equals_comfyui_vaeencode(tmp_path):
    """The released Wan 2.1 encoder (dim 96); the decoder keys ComfyUI needs to recognise the file only."""
    sd = generate(
        load_manifest("wan21_comfy"),
        seed=0,
        include=["encoder.", "conv1.", "decoder.middle.0.residual.0.gamma", "decoder.head.0.gamma"],
    )
    path = tmp_path / "vae.safetensors"
    save_file(sd, str(path))
    images = _rand((5, 16, 24, 3), seed=9)
    theirs = comfy_vae_encode(path, images, out_path=tmp_path / "out.safetensors")
    ours = load_encoder(path).encode_images(images)
    assert ours.shape == theirs.shape == (1, 16, 2, 2, 3)
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.comfy
@pytest.mark.slow
def test_ltx_full_size_equals_comfyui_vaeencode(tmp_path):
    """The released LTX-Video 0.9.0/0.9.1 encoder (ComfyUI's guessed config, no metadata, zero padding)."""
    probe = "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"
    include = ["encoder.", "per_channel_statistics.", probe]
    sd = generate(load_manifest("ltx_comfy_v1"), seed=0, include=include)
    path = tmp_path / "vae.safetensors"
    save_file(sd, str(path))
    del sd
    images = _rand((9, 32, 64, 3), seed=10)
    theirs = comfy_vae_encode(path, images, out_path=tmp_path / "out.safetensors")
    enc = load_encoder(path)
    assert enc.layout == "ltxv-0.9.0/0.9.1-encoder"
    ours = enc.encode_images(images)
    assert ours.shape == theirs.shape == (1, 128, 2, 1, 2)
    assert (ours - theirs).abs().max().item() < TOL


# ---- layouts --------------------------------------------------------------------------------------


def _shape_source(shapes: dict[str, tuple[int, ...]]) -> TensorSource:
    def refuse(names):
        raise AssertionError("layout detection must not read tensors")

    return TensorSource(shapes, refuse)


@pytest.mark.parametrize(
    "manifest,family,layout",
    [
        ("wan21_comfy", Family.WAN21, "wan21-encoder"),
        ("wan22_comfy", Family.WAN22, "wan22-encoder"),
        ("diffusers_wan21", Family.WAN21, "wan21-encoder-diffusers"),
        ("diffusers_wan22", Family.WAN22, "wan22-encoder-diffusers"),
        ("ltx_comfy_v0", Family.LTXV, "ltxv-0.9.0/0.9.1-encoder"),
        ("ltx_comfy_v1", Family.LTXV, "ltxv-0.9.0/0.9.1-encoder"),
        ("ltx_comfy_v2", Family.LTXV, "ltxv-0.9.5-encoder"),
    ],
)
def test_real_layouts_build_exactly(manifest, family, layout):
    """Every encoder key of the released files, with its shape, is a parameter of the module we build."""
    recipe = detect(_shape_source(manifest_shapes(load_manifest(manifest))), ENCODER_LAYOUTS, "encoder")
    assert (recipe.family, recipe.layout) == (family, layout)
    with torch.device("meta"):
        module = recipe.build()
    built = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert built == {k: recipe.source.shapes[k] for k in recipe.keys}


@pytest.mark.parametrize("wan22", [False, True])
def test_diffusers_wan_encoder_keys_map_onto_original(wan22):
    name = "22" if wan22 else "21"
    diffusers = manifest_shapes(load_manifest(f"diffusers_wan{name}"))
    original = manifest_shapes(load_manifest(f"wan{name}_comfy"))
    mapping = diffusers_wan_encoder_to_original(sorted(diffusers), wan22)
    assert {new: diffusers[old] for old, new in mapping.items()} == {
        k: v for k, v in original.items() if k.startswith(("encoder.", "conv1."))
    }


def test_diffusers_wan_state_dict_encodes_like_original(wan21_small):
    keys = sorted(manifest_shapes(load_manifest("diffusers_wan21")))
    mapping = diffusers_wan_encoder_to_original(keys, False)
    to_diffusers = {new: old for old, new in mapping.items()}
    sd = {to_diffusers[k]: v for k, v in wan21_small.items() if k in to_diffusers}
    enc = load_encoder(sd)
    assert enc.layout == "wan21-encoder-diffusers"
    x = _frames((1, 3, 5, 16, 16))
    torch.testing.assert_close(enc.encode(x), load_encoder(wan21_small).encode(x), rtol=0, atol=0)


def test_vae_prefix_is_stripped(wan21_small):
    enc = load_encoder({"vae." + k: v for k, v in wan21_small.items()})
    assert isinstance(enc, FlashEncoder) and enc.family is Family.WAN21


# ---- reading only what is needed ------------------------------------------------------------------


def test_encoder_reads_only_encoder_tensors(wan21_small):
    src, asked = _recording(wan21_small)
    build_encoder(src)
    assert asked and all(k.startswith(("encoder.", "conv1.")) for k in asked)
    config, weights = ltx_reduced(*LTX_CASES["v01-blocks"])
    src, asked = _recording(weights)
    src.metadata = {"config": json.dumps({"vae": config})}
    build_encoder(src)
    assert asked and all(k.startswith(("encoder.", "per_channel_statistics.")) for k in asked)
    assert not any("stds" in k or k.endswith("channel") for k in asked)


def test_decoder_reads_no_encoder_tensors(wan21_small):
    src, asked = _recording(wan21_small)
    build_decoder(src)
    assert asked and not any(k.startswith(("encoder.", "conv1.")) for k in asked)
    decoder_only = {k: v for k, v in wan21_small.items() if not k.startswith(("encoder.", "conv1."))}
    assert load_decoder(decoder_only).family is Family.WAN21
    with pytest.raises(CheckpointError, match="decoder but no encoder"):
        load_encoder(decoder_only)


# ---- strictness and errors ------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_named(wan21_small):
    missing = dict(wan21_small)
    del missing["encoder.middle.1.proj.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(first: encoder\.middle\.1\.proj\.weight"):
        load_encoder(missing)
    extra = {**wan21_small, "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(first: encoder\.extra\.weight"):
        load_encoder(extra)
    no_stats = {k: v for k, v in ltx_reduced(*LTX_CASES["v01-blocks"])[1].items() if "statistics" not in k}
    with pytest.raises(CheckpointError, match="per_channel_statistics"):
        load_encoder(no_stats)


def test_frame_checks_and_comfyui_fitting(wan21_small):
    enc = load_encoder(wan21_small)
    with pytest.raises(FrameError, match="1 \\+ 4k frames"):
        enc.encode(_frames((1, 3, 6, 16, 16)))
    with pytest.raises(FrameError, match="multiples of 8"):
        enc.encode(_frames((1, 3, 5, 20, 16)))
    with pytest.raises(FrameError, match="encode_images"):
        enc.encode(_frames((5, 16, 16, 3)))
    x = _frames((1, 3, 7, 20, 19))
    fitted = enc.encode(x, crop=True)
    torch.testing.assert_close(fitted, enc.encode(x[:, :, :5, 2:18, 1:17]), rtol=0, atol=0)
    rgba = _rand((5, 16, 16, 4), seed=1)
    rgb = rgba[..., :3].movedim(-1, 0)[None] * 2 - 1
    torch.testing.assert_close(enc.encode_images(rgba), enc.encode(rgb))


def test_ltx_frame_count_is_refused_even_with_crop():
    config, weights = ltx_reduced(*LTX_CASES["v01-blocks"])
    src = from_state_dict(weights, metadata={"config": json.dumps({"vae": config})})
    enc = build_encoder(src)
    assert enc.time_stride == 8 and enc.space_stride == 32
    with pytest.raises(FrameError, match="1 \\+ 8k frames"):
        enc.encode_images(_rand((5, 32, 32, 3), seed=2))
