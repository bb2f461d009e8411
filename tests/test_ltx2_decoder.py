"""The LTX-2 decoder's construction from configs, its strict loading, its exact temporal windows and tiles,
config errors, the diffusion decoder refusal and what ComfyUI does with a config-less file."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from flash_vaed import Family
from flash_vaed.arch.ltx import LTXTeacherDecoder
from flash_vaed.arch.ltx2 import (
    WHOLE_CLIP,
    LTX2ConfigError,
    LTX2TeacherDecoder,
    comfy_configless_behaviour,
    diffusion_decoder_error,
    is_diffusion_decoder,
    load_ltx2_decoder,
    vae_config_from_metadata,
)
from flash_vaed.decoder import FlashDecoder
from flash_vaed.engine.decode import DecodePlan
from flash_vaed.errors import CheckpointError, FlashVAEDError
from flash_vaed.latents import LatentNorm
from support.reference_weights import generate, load_manifest, manifest_shapes
from test_ltx2_reference import reference

REAL = ["ltx2_comfy", "ltx2_comfy_tc", "ltx23_comfy"]


def meta_decoder(config: dict) -> LTX2TeacherDecoder:
    with torch.device("meta"):
        return LTX2TeacherDecoder.from_comfy_config(config)


def random_flash(config: dict, seed: int = 0) -> FlashDecoder:
    """A decoder of `config` with seeded random weights, behind the public decode."""
    module = LTX2TeacherDecoder.from_comfy_config(config).eval()
    manifest = {k: list(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(generate(manifest, seed=seed), strict=True)
    g = torch.Generator().manual_seed(9)
    norm = LatentNorm(0.1 * torch.randn(128, generator=g), torch.exp(0.25 * torch.randn(128, generator=g)))
    return FlashDecoder(Family.LTXV, "teacher", module, norm, "ltx2")


def stored_config(name: str) -> dict:
    return vae_config_from_metadata(reference(name)[0])


def latent(t: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 128, t, h, w, generator=torch.Generator().manual_seed(seed))


# ---- the real layouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_real_configs_build_exactly_the_real_decoder_keys(name):
    manifest = load_manifest(name)
    module = meta_decoder(manifest["comfy_config"])
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: s for k, s in manifest_shapes(manifest).items() if k.startswith("decoder.")}
    assert ours == theirs
    assert sum(math.prod(s) for s in ours.values()) == manifest["num_decoder_values"]


@pytest.mark.parametrize(
    ("name", "context", "padding", "conditioned"),
    [
        ("ltx2_comfy", (22, 22), "reflect", False),
        ("ltx2_comfy_tc", (22, 22), "reflect", True),
        ("ltx23_comfy", (14, 14), "zeros", False),
    ],
)
def test_real_configs_geometry(name, context, padding, conditioned):
    module = meta_decoder(load_manifest(name)["comfy_config"])
    assert (module.time_stride, module.space_stride, module.latent_channels) == (8, 32, 128)
    assert module.temporal_context == context and module.temporal_halo == max(context)
    assert module.spatial_padding_mode == padding
    assert module.timestep_conditioned is conditioned and not module.injects_noise
    assert (module.decode_timestep, module.decode_noise_scale) == (0.05, 0.025)


def test_ltx23_upsamplers_divide_channels_by_their_multiplier():
    """compress_space/compress_time x2 halve the width; compress_all x1 keeps it (ComfyUI 2026-01 could not)."""
    up = meta_decoder(load_manifest("ltx23_comfy")["comfy_config"]).decoder.up_blocks
    widths = [(type(b).__name__, b.conv.conv.out_channels) for b in up if hasattr(b, "stride")]
    assert widths == [
        ("DepthToSpaceUp", 4096),
        ("DepthToSpaceUp", 4096),
        ("DepthToSpaceUp", 512),
        ("DepthToSpaceUp", 512),
    ]


# ---- windows and tiles ----------------------------------------------------------------------------


_TINY = {"latent_channels": 128, "norm_layer": "pixel_norm", "patch_size": 4, "decoder_base_channels": 4}
# small temporal contexts, so that windows of a short clip leave most of it out; latent (T, H, W)
WINDOW_CASES = {
    "ltx20-like": (
        {
            **_TINY,
            "decoder_blocks": [
                ["res_x", 1],
                ["compress_all", {"residual": True, "multiplier": 2}],
                ["res_x", 1],
            ],
        },
        (16, 2, 2),
    ),
    "ltx23-like": (
        {
            **_TINY,
            "spatial_padding_mode": "zeros",
            "decoder_blocks": [
                ["res_x", 1],
                ["compress_space", {"multiplier": 2}],
                ["res_x", 1],
                ["compress_time", {"multiplier": 2}],
                ["res_x", 1],
                ["compress_all", {"multiplier": 1}],
            ],
        },
        (14, 1, 2),
    ),
    "causal-conditioned-noisy": (
        {
            **_TINY,
            "causal_decoder": True,
            "timestep_conditioning": True,
            "decoder_blocks": [
                ["res_x", {"num_layers": 1, "inject_noise": True}],
                ["compress_time", {"multiplier": 2}],
                ["res_x_y", {"multiplier": 2}],
            ],
        },
        (16, 2, 2),
    ),
    "group-norm": (
        {
            **_TINY,
            "norm_layer": "group_norm",
            "decoder_base_channels": 32,
            "patch_size": 1,
            "decoder_blocks": [["res_x", 1], ["compress_all", {}]],
        },
        (6, 2, 2),
    ),
}


@pytest.mark.parametrize("name", list(WINDOW_CASES))
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_temporal_windows_equal_the_whole_clip(name, chunk):
    config, (t, h, w) = WINDOW_CASES[name]
    dec = random_flash(config)
    module = dec.module
    z = latent(t, h, w)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    whole = dec.decode(z, generator=gen())
    assert whole.shape[2] == module.time_stride * (t - 1) + 1
    windows = dec.decode(z, chunk_frames=chunk, generator=gen())
    torch.testing.assert_close(windows, whole, rtol=0, atol=1e-5)
    if module.config.norm_layer == "group_norm":
        # group norm pools over the whole clip: its windows are exact only because they span it
        assert module.temporal_halo == WHOLE_CLIP
    else:
        assert sum(module.temporal_context) + chunk < t  # the windows really leave frames out


def test_temporal_halo_is_tight():
    """One latent frame less context before a window than `temporal_context` says changes its frames."""
    module = random_flash(stored_config("ltx23_reduced")).module
    before, after = module.temporal_context
    z = torch.randn(1, 128, before + after + 4, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = module(z)
        s, a = module.time_stride, before + 1  # decode latent frame a alone, with context
        for short, expect_exact in ((0, True), (1, False)):
            window = module(z[:, :, a - before + short : a + 1 + after])
            first = (a - (a - before + short)) * s
            got = window[:, :, first - s + 1 : first + 1]
            want = whole[:, :, s * (a - 1) + 1 : s * a + 1]
            assert torch.allclose(got, want, atol=1e-5) is expect_exact


def test_tiles_are_close_and_feathering_hides_the_borders():
    """Spatial tiles are not exact for LTX decoders (their reach covers the whole image), as with ComfyUI's
    VAE Decode (Tiled): with random weights 6-latent tiles are ~24 dB from the whole frame."""
    dec = random_flash(stored_config("ltx23_reduced"))
    z = latent(1, 8, 8)
    whole = dec.decode(z)

    def psnr(tile_px, overlap_px):
        tiled = dec.decode(z, tile_px=tile_px, overlap_px=overlap_px)
        assert tiled.shape == whole.shape
        return 10 * torch.log10(4.0 / ((tiled - whole) ** 2).mean()).item()

    feathered = psnr(192, 96)
    assert feathered > 21, feathered
    assert feathered > psnr(192, 0) + 3


# ---- loading ------------------------------------------------------------------------------------


def reduced_weights(config: dict) -> dict[str, torch.Tensor]:
    module = meta_decoder(config)
    keys = {k: list(v.shape) for k, v in module.state_dict().items()}
    keys.update({f"per_channel_statistics.{s}": [128] for s in ("mean-of-means", "std-of-means")})
    return generate(keys)


def test_loading_is_strict():
    config = stored_config("ltx23_reduced")
    weights = reduced_weights(config)
    module, norm = load_ltx2_decoder(config, weights, "ok.safetensors")
    assert not module.training and norm.mean.shape == (128,)

    missing = dict(weights)
    del missing["decoder.up_blocks.1.conv.conv.weight"]
    with pytest.raises(CheckpointError, match=r"missing.*up_blocks\.1\.conv\.conv\.weight"):
        load_ltx2_decoder(config, missing, "cut.safetensors")

    extra = {**weights, "decoder.up_blocks.0.time_embedder.timestep_embedder.linear_1.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_ltx2_decoder(config, extra, "extra.safetensors")

    other = copy.deepcopy(config)
    other["decoder_blocks"][1][1]["multiplier"] = 1  # compress_space x1 instead of x2: other widths
    with pytest.raises(CheckpointError, match="other shapes"):
        load_ltx2_decoder(other, weights, "mismatch.safetensors")

    no_stats = {k: v for k, v in weights.items() if not k.startswith("per_channel")}
    with pytest.raises(CheckpointError, match="per-channel statistics"):
        load_ltx2_decoder(config, no_stats, "nostats.safetensors")


def test_comfyui_config_defaults(caplog):
    """Absent keys read as ComfyUI reads them; the decoder padding comes from spatial_padding_mode only."""
    config = {"latent_channels": 128, "decoder_blocks": [["res_x", 1], ["compress_all", {}], ["res_x", 1]]}
    module = meta_decoder(config)
    cfg = module.config
    assert (cfg.patch_size, cfg.norm_layer, cfg.base_channels, cfg.causal) == (1, "group_norm", 128, False)
    assert module.spatial_padding_mode == "reflect" and not module.timestep_conditioned
    with caplog.at_level(logging.WARNING):
        module = meta_decoder({**config, "decoder_spatial_padding_mode": "zeros"})
    assert module.spatial_padding_mode == "reflect"
    assert "decoder_spatial_padding_mode" in caplog.text


def test_metadata_config():
    assert vae_config_from_metadata({}) is None
    assert vae_config_from_metadata({"config": '{"vae": {"dims": 3}}'}) == {"dims": 3}
    assert vae_config_from_metadata({"config": '{"transformer": {}}'}) is None
    with pytest.raises(LTX2ConfigError, match="not valid JSON"):
        vae_config_from_metadata({"config": "{oops"}, "bad.safetensors")


# ---- config errors -------------------------------------------------------------------------------


def test_unknown_block_type_is_refused_with_its_name_and_the_config():
    config = load_manifest("ltx23_comfy")["comfy_config"]
    config = {**config, "decoder_blocks": [*config["decoder_blocks"], ["attn_res_x", {"num_layers": 2}]]}
    with pytest.raises(LTX2ConfigError) as err:
        LTX2TeacherDecoder.from_comfy_config(config, "ltx-2.9-video-vae.safetensors")
    message = str(err.value)
    assert isinstance(err.value, FlashVAEDError)
    assert "'attn_res_x'" in message and "block 9" in message
    assert "ltx-2.9-video-vae.safetensors" in message and '["compress_space",{"multiplier":2}]' in message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"decoder_blocks": [["res_x", {"inject_noise": True}]]}, "no 'num_layers'"),
        ({"decoder_blocks": [["compress_time", {"multiplier": 0}]]}, "positive integer"),
        ({"decoder_blocks": [["res_x", None]]}, "parameters None"),
        ({"decoder_blocks": "res_x"}, "no decoder_blocks"),
        ({"dims": 2}, "dims"),
        ({"norm_layer": "batch_norm"}, "norm_layer"),
        ({"spatial_padding_mode": "mirror"}, "spatial_padding_mode"),
        ({"decoder_base_channels": 4, "norm_layer": "group_norm"}, "32 groups"),
        ({"decoder_blocks": [["res_x_y", {"inject_noise": True}]]}, "injects noise"),
        ({"decoder_blocks": [["compress_all", {"residual": True, "multiplier": 3}]]}, "divide 8"),
        ({"latent_channels": None}, "latent_channels"),
    ],
)
def test_config_errors_name_the_problem(change, match):
    config = {**stored_config("ltx23_reduced"), **change}
    if config["latent_channels"] is None:
        del config["latent_channels"]
    with pytest.raises(LTX2ConfigError, match=match):
        meta_decoder(config)


# ---- what is not an LTX-2 conv VAE ------------------------------------------------------------------


def test_diffusion_decoder_is_recognised_and_refused_with_the_way_out():
    keys = {"decoder.conv_in_x_t.weight", "decoder.conv_in_x_t.bias", "decoder.t_embedder.linear_1.weight"}
    for prefix in ("", "vae."):
        assert is_diffusion_decoder({prefix + k for k in keys})
    err = diffusion_decoder_error(keys, "ltx-2.5-diffusion-decoder.safetensors")
    assert isinstance(err, CheckpointError)
    assert "diffusion" in str(err) and "conv video VAE" in str(err) and "supported" in str(err)
    for name in REAL:
        assert diffusion_decoder_error(manifest_shapes(load_manifest(name))) is None


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("ltx2_comfy", "warns 'Missing VAE keys' for 42 decoder tensors"),
        ("ltx2_comfy_tc", "decodes it exactly as that version"),
        ("ltx23_comfy", "fails to load it"),
    ],
)
def test_configless_files_as_comfyui_treats_them(name, says):
    """Without metadata ComfyUI guesses LTX-Video 0.9.5+ for all three (facts: tests/data/ltx2/README.md)."""
    shapes = manifest_shapes(load_manifest(name))
    text = comfy_configless_behaviour(shapes.keys(), shapes)
    assert "0.9.5+" in text and says in text


@pytest.mark.slow
def test_configless_timestep_conditioned_file_decodes_as_ltxv_095():
    """ComfyUI decodes a config-less LTX-2.0 timestep-conditioned file with its 0.9.5 guess, which is the
    same decoder: the existing ltxv-0.9.5 teacher reproduces the with-config reference."""
    meta, ref, manifest = reference("ltx20_tc_full")
    weights = generate(manifest, seed=0, include=("decoder.", "per_channel_statistics."))
    guess = LTXTeacherDecoder.for_version(2).eval()
    guess.load_state_dict({k: v for k, v in weights.items() if k.startswith("decoder.")}, strict=True)
    norm = LatentNorm(
        weights["per_channel_statistics.mean-of-means"], weights["per_channel_statistics.std-of-means"]
    )
    ours = FlashDecoder(Family.LTXV, "teacher", guess, norm, "ltxv-0.9.5").decode(
        ref["latent"], noise_scale=0.0
    )
    assert (ours - ref["video"]).abs().max().item() <= 5e-5


# ---- the memory policy --------------------------------------------------------------------------


def test_auto_never_chunks_a_whole_clip_decoder():
    """Group-norm decoders pool over the whole clip: chunks would decode it again per window. auto, the
    OOM retries and an explicit chunked plan all keep the whole clip in time and shrink tiles instead."""
    from flash_vaed.policy import candidate_plans, choose_plan, estimate_bytes, smaller_plan

    config, (t, h, w) = WINDOW_CASES["group-norm"]
    dec = random_flash(config)
    assert dec.module.temporal_halo == WHOLE_CLIP
    shape = (1, 128, t, 4, 4)
    plans = list(candidate_plans(shape, 32, dec.module.temporal_context))
    assert plans[0] == DecodePlan() and all(p.chunk_frames is None for p in plans)
    whole = estimate_bytes(dec.memory_profile, shape, torch.float32, DecodePlan())
    plan = choose_plan(dec, shape, torch.float32, whole // 2)
    assert plan.chunk_frames is None and plan.tile_px is not None
    lean = smaller_plan(DecodePlan(), shape, 32, dec.module.temporal_context)
    assert lean.chunk_frames is None and lean.tile_px == 64
    calls = []
    z = latent(t, h, w)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    chunked = dec.decode(z, chunk_frames=1, generator=gen(), on_progress=lambda d, n: calls.append(n))
    assert calls == [1]  # one window: the whole clip, decoded once
    torch.testing.assert_close(chunked, dec.decode(z, generator=gen()), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "context"), [("ltx2_comfy", 22), ("ltx23_comfy", 14)])
def test_auto_chunks_real_layouts_only_where_windows_are_shorter_than_the_clip(name, context):
    """LTX-2.0 / 2.3 windows carry 22 / 14 latent frames of context each side: a 121-frame clip (16 latent
    frames) is decoded whole in time (tiles make it fit), a 30 s one (91) in windows."""
    from flash_vaed.policy import candidate_plans, chunks_help

    module = meta_decoder(load_manifest(name)["comfy_config"])
    assert module.temporal_context == (context, context)
    short = list(candidate_plans((1, 128, 16, 16, 24), 32, module.temporal_context))
    assert all(p.chunk_frames is None for p in short) and any(p.tile_px for p in short)
    long = [p.chunk_frames for p in candidate_plans((1, 128, 91, 16, 24), 32, module.temporal_context)]
    assert any(long) and all(c is None or chunks_help(c, 91, module.temporal_context) for c in long)
