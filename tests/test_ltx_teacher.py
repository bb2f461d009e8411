"""The LTX-Video teacher against the real ComfyUI 0.3.75 code (run in a subprocess), plus its halo and keys.

Fast tests use reduced LTX decoders (fewer resnets, base width 8) that ComfyUI builds from a metadata
config; the full-size 0.9.0/0.9.1/0.9.5 decoders are compared in `slow` tests on a tiny latent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flash_vaed.arch.ltx import (
    LTXTeacherDecoder,
    ltx_version_from_keys,
    mix_decode_noise,
    temporal_context,
    un_normalize,
)
from support.comfy_subprocess import comfy_installed, comfy_root, worker_env
from support.reference_weights import generate, load_manifest, manifest_shapes

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPT = REPO / "tests" / "support" / "comfy_ltx_reference.py"
COMFY_ROOT = comfy_root()
needs_comfy = pytest.mark.skipif(
    not comfy_installed(COMFY_ROOT) and os.environ.get("FLASH_VAED_REQUIRE_COMFY", "") in ("", "0"),
    reason=f"no ComfyUI 0.3.75 at {COMFY_ROOT}",
)

TOL = 5e-5
STATS = ("std-of-means", "mean-of-means", "mean-of-stds", "mean-of-stds_over_std-of-means", "channel")
BASE = 4  # decoder base width of the reduced models (ComfyUI always builds 128)


def reduced_config(version: int, padding: str | None = None) -> dict:
    """A ComfyUI VAE config with the block kinds of `version` but one or two resnets per stage."""
    if version == 0:
        blocks = [
            ["res_x", 1],
            ["compress_all", 1],
            ["res_x_y", 1],
            ["res_x", 1],
            ["compress_all", 1],
            ["res_x_y", 1],
            ["res_x", 1],
            ["compress_all", 1],
            ["res_x", 1],
        ]
    else:
        noisy = version == 1
        up = ["compress_all", {"residual": True, "multiplier": 2}]
        blocks = [
            ["res_x", {"num_layers": 1, "inject_noise": noisy}],
            up,
            ["res_x", {"num_layers": 2, "inject_noise": noisy}],
            up,
            ["res_x", {"num_layers": 1, "inject_noise": noisy}],
            up,
            ["res_x", {"num_layers": 1, "inject_noise": False}],
        ]
    config = {
        "dims": 3,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "decoder_blocks": blocks,
        "encoder_blocks": [["res_x", {"num_layers": 1}]],
        "norm_layer": "pixel_norm",
        "patch_size": 4,
        "latent_log_var": "uniform",
        "causal_decoder": False,
        "timestep_conditioning": version > 0,
    }
    if padding is not None:
        config["spatial_padding_mode"] = padding
    return config


def reduced_weights(model: LTXTeacherDecoder, seed: int = 0, zero: tuple[str, ...] = ()) -> dict:
    manifest = {k: list(v.shape) for k, v in model.state_dict().items()}
    manifest.update({f"per_channel_statistics.{name}": [128] for name in STATS})
    return generate(manifest, seed=seed, zero=zero)


def our_decode(
    model: LTXTeacherDecoder, sd: dict, latent: torch.Tensor, seed: int | None, noise_scale: float = 0.025
) -> torch.Tensor:
    """The engine's order: mix noise (normalized latent), un-normalize, pre-draw spatial noise, decode."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    z = latent
    if model.timestep_conditioned:
        z = mix_decode_noise(z, noise_scale, gen)
    z = un_normalize(z, sd["per_channel_statistics.mean-of-means"], sd["per_channel_statistics.std-of-means"])
    noise = model.draw_spatial_noise(tuple(z.shape[-2:]), gen, z.device, z.dtype)
    with torch.no_grad():
        return model(z, timestep=0.05, spatial_noise=noise)


class ComfyReference:
    """The ComfyUI reference process, started at once so that its slow import overlaps our own work."""

    def __init__(self, folder: Path):
        env = {**worker_env(), "FLASH_VAED_COMFYUI": str(COMFY_ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(REFERENCE_SCRIPT), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
        )

    def run(self, jobs: list[dict]) -> None:
        try:
            _, err = self.proc.communicate(json.dumps(jobs), timeout=1800)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        if self.proc.returncode != 0:
            raise AssertionError(f"ComfyUI reference failed:\n{err[-4000:]}")


# name: (version, padding in config, batch, seed, vae_options, zeroed weights)
FAST_CASES = {
    "v0-reflect": (0, None, 1, None, {}, ()),
    "v0-zeros-batch2": (0, "zeros", 2, None, {}, ()),
    "v1-reflect-seeded": (1, None, 1, 11, {}, ()),
    "v1-zeros-seeded": (1, "zeros", 1, 12, {}, ()),
    "v1-no-noise": (1, None, 1, None, {"noise_scale": 0.0}, ("per_channel_scale",)),
    "v2-reflect-seeded": (2, None, 1, 13, {}, ()),
    "v2-zeros-noise0": (2, "zeros", 1, None, {"noise_scale": 0.0}, ()),
}


@pytest.fixture(scope="module")
def comfy_fast(tmp_path_factory):
    """Run every fast case through ComfyUI in one subprocess (its import alone takes seconds)."""
    folder = tmp_path_factory.mktemp("comfy_ltx")
    comfy = ComfyReference(folder)
    jobs, ours = [], {}
    for name, (version, padding, batch, seed, options, zero) in FAST_CASES.items():
        config = reduced_config(version, padding)
        model = LTXTeacherDecoder.from_comfy_config(config, base_channels=BASE).eval()
        sd = reduced_weights(model, seed=version, zero=zero)
        model.load_state_dict({k: v for k, v in sd.items() if k.startswith("decoder.")}, strict=True)
        latent = torch.randn((batch, 128, 3, 2, 2), generator=torch.Generator().manual_seed(100 + version))
        save_file(sd, folder / f"{name}.safetensors")
        save_file({"latent": latent}, folder / f"{name}_latent.safetensors")
        jobs.append(
            {
                "weights": str(folder / f"{name}.safetensors"),
                "config": config,
                "base_channels": BASE,
                "latent": str(folder / f"{name}_latent.safetensors"),
                "seed": seed,
                "vae_options": options,
                "out": str(folder / f"{name}_out.safetensors"),
            }
        )
        ours[name] = our_decode(model, sd, latent, seed, options.get("noise_scale", 0.025))
    comfy.run(jobs)
    return {name: (ours[name], load_file(folder / f"{name}_out.safetensors")) for name in FAST_CASES}


@needs_comfy
@pytest.mark.parametrize("name", list(FAST_CASES))
def test_matches_comfyui_reduced(comfy_fast, name):
    ours, theirs = comfy_fast[name]
    assert "raw" in theirs, "ComfyUI split the decode; no single raw output to compare"
    assert ours.shape == theirs["raw"].shape
    err = (ours - theirs["raw"]).abs().max().item()
    assert err < TOL, f"{name}: max abs error {err:.3g} vs ComfyUI"
    # What VAE.decode hands the user: clamp((x + 1) / 2) as (B, F, H, W, 3).
    images = ((ours + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert (images - theirs["images"]).abs().max().item() < TOL


@needs_comfy
def test_seed_changes_the_decode(comfy_fast):
    """The seeded cases really do depend on the noise (so matching them checks the draw order)."""
    ours, theirs = comfy_fast["v1-reflect-seeded"]
    version, padding, _, seed, _, _ = FAST_CASES["v1-reflect-seeded"]
    model = LTXTeacherDecoder.from_comfy_config(reduced_config(version, padding), base_channels=BASE).eval()
    sd = reduced_weights(model, seed=version)
    model.load_state_dict({k: v for k, v in sd.items() if k.startswith("decoder.")})
    latent = torch.randn((1, 128, 3, 2, 2), generator=torch.Generator().manual_seed(100 + version))
    other = our_decode(model, sd, latent, seed + 1)
    assert (other - theirs["raw"]).abs().max().item() > 1e-2


# ---- real layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("version,halo", [(0, 24), (1, 31), (2, 22)])
def test_real_layout_keys_and_geometry(version, halo):
    with torch.device("meta"):
        model = LTXTeacherDecoder.for_version(version)
    manifest = manifest_shapes(load_manifest(f"ltx_comfy_v{version}"))
    want = {k: v for k, v in manifest.items() if k.startswith("decoder.")}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want
    assert (model.latent_channels, model.time_stride, model.space_stride) == (128, 8, 32)
    assert model.timestep_conditioned == (version > 0)
    assert model.temporal_halo == halo
    assert model.injects_noise == (version == 1)
    assert ltx_version_from_keys(manifest, manifest) == version


def test_version_detection_like_comfyui():
    v2 = manifest_shapes(load_manifest("ltx_comfy_v2"))
    decoder_only = {k: v for k, v in v2.items() if k.startswith("decoder.")}
    assert ltx_version_from_keys(decoder_only, decoder_only) == 1  # ComfyUI's misreading
    assert ltx_version_from_keys(decoder_only, decoder_only, like_comfyui=False) == 2
    v1 = manifest_shapes(load_manifest("ltx_comfy_v1"))
    assert ltx_version_from_keys(v1, v1, like_comfyui=False) == 1
    with pytest.raises(ValueError):
        ltx_version_from_keys(["encoder.conv_in.conv.weight"], {})


def test_spatial_noise_plan_of_091():
    with torch.device("meta"):
        model = LTXTeacherDecoder.for_version(1)
    noise = model.draw_spatial_noise((3, 5), torch.Generator().manual_seed(0), "cpu", torch.float32)
    shapes = [tuple(n.shape) for n in noise]
    assert shapes == [(6, 10)] * 14 + [(12, 20)] * 12 + [(24, 40)] * 10
    crop = model.crop_spatial_noise(noise, 1, 3, 2, 4)
    assert [tuple(n.shape) for n in crop] == [(4, 4)] * 14 + [(8, 8)] * 12 + [(16, 16)] * 10
    assert torch.equal(crop[-1], noise[-1][8:24, 16:32])
    with torch.device("meta"):
        assert LTXTeacherDecoder.for_version(2).draw_spatial_noise((3, 5), None, "cpu", torch.float32) is None


def test_mix_decode_noise_draws_like_randn_like():
    z = torch.randn(1, 128, 2, 3, 4)
    torch.manual_seed(5)
    want = torch.randn_like(z) * 0.025 + 0.975 * z
    got = mix_decode_noise(z, 0.025, torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    torch.manual_seed(5)
    assert torch.equal(mix_decode_noise(z, 0.025, None), want)


# ---- temporal halo ------------------------------------------------------------------------------


def test_temporal_context_arithmetic():
    # One +-1 conv per rate, three 2x upsamples: 8 + 4 + 2 + 1 = 15 output frames -> 2 latent frames.
    assert temporal_context([(1, 1), "up", (1, 1), "up", (1, 1), "up", (1, 1)]) == (2, 2)
    assert temporal_context([(2, 0), (2, 0)]) == (4, 0)
    assert temporal_context([]) == (0, 0)


def _window(model, z, start, stop, halo_before, halo_after, noise):
    """Decode latent frames start:stop with context, and crop to exactly their frames."""
    lo, hi = max(start - halo_before, 0), min(stop + halo_after, z.shape[2])
    out = model(z[:, :, lo:hi], spatial_noise=noise)
    stride = model.time_stride
    # local frame 0 of a window starting at lo > 0 is global frame stride*lo; frames of latent t > 0
    # are stride*t-stride+1 .. stride*t.
    first = 0 if start == 0 else stride * start - stride + 1
    last = stride * (stop - 1)
    origin = 0 if lo == 0 else stride * lo
    return out[:, :, first - origin : last - origin + 1]


def _halo_setup(version: int, dtype: torch.dtype):
    # zeros padding allows a 1x1 latent (reflect needs 2x2); space does not matter for time context
    model = LTXTeacherDecoder.from_comfy_config(reduced_config(version, "zeros"), base_channels=4)
    model = model.eval().to(dtype)
    sd = reduced_weights(model)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items() if k.startswith("decoder.")})
    before, after = model.temporal_context
    t = before + after + 6
    z = torch.randn(1, 128, t, 1, 1, generator=torch.Generator().manual_seed(1)).to(dtype)
    noise = model.draw_spatial_noise((1, 1), torch.Generator().manual_seed(2), "cpu", dtype)
    return model, z, noise, before, after


@pytest.mark.parametrize("version", [0, 1, 2])
def test_temporal_halo_is_sufficient(version):
    model, z, noise, before, after = _halo_setup(version, torch.float32)
    t, cut = z.shape[2], before + 3
    with torch.no_grad():
        whole = model(z, spatial_noise=noise)
        parts = [
            _window(model, z, 0, cut, before, after, noise),
            _window(model, z, cut, t, before, after, noise),
        ]
    assert whole.shape[2] == 8 * t - 7
    assert (torch.cat(parts, dim=2) - whole).abs().max().item() < 1e-5


@pytest.mark.parametrize("version", [0, 1, 2])
def test_temporal_halo_is_tight(version):
    """In float64 (float32 rounding would hide it) the halo is exact and one frame less is not."""
    model, z, noise, before, after = _halo_setup(version, torch.float64)
    t, cut = z.shape[2], before + 3
    with torch.no_grad():
        whole = model(z, spatial_noise=noise)
        exact = _window(model, z, cut, t, before, after, noise)
        short_after = _window(model, z, 0, cut, before, after - 1, noise)
        short_before = _window(model, z, cut, t, before - 1, after, noise)
    assert (exact - whole[:, :, -exact.shape[2] :]).abs().max().item() < 1e-12
    assert (short_after - whole[:, :, : short_after.shape[2]]).abs().max().item() > 1e-9
    assert (short_before - whole[:, :, -short_before.shape[2] :]).abs().max().item() > 1e-9


def test_conditioned_batch_is_per_sample():
    """ComfyUI's conditioned decoder raises for a batch > 1 (it views one timestep embedding as B); ours
    broadcasts it, so a batch decodes as its samples would one by one."""
    model = LTXTeacherDecoder.from_comfy_config(reduced_config(1, "zeros"), base_channels=4).eval()
    model.load_state_dict({k: v for k, v in reduced_weights(model).items() if k.startswith("decoder.")})
    z = torch.randn(2, 128, 2, 1, 2, generator=torch.Generator().manual_seed(6))
    noise = model.draw_spatial_noise((1, 2), torch.Generator().manual_seed(7), "cpu", torch.float32)
    with torch.no_grad():
        both = model(z, spatial_noise=noise)
        one = torch.cat([model(z[i : i + 1], spatial_noise=noise) for i in range(2)])
    assert (both - one).abs().max().item() < 1e-5


def test_spatial_noise_is_checked():
    model = LTXTeacherDecoder.from_comfy_config(reduced_config(1), base_channels=4).eval()
    z = torch.zeros(1, 128, 2, 2, 2)
    with pytest.raises(ValueError):
        model(z, spatial_noise=[])
    wrong = model.draw_spatial_noise((3, 2), None, "cpu", torch.float32)
    with pytest.raises(ValueError):
        model(z, spatial_noise=wrong)


# ---- full size (slow) ----------------------------------------------------------------------------


@needs_comfy
@pytest.mark.slow
@pytest.mark.parametrize("version", [0, 1, 2])
def test_matches_comfyui_full_size(version, tmp_path):
    """The released layouts through ComfyUI's own detection (no config), reflect padding, seeded noise."""
    include = ["decoder.", "per_channel_statistics.", "encoder.down_blocks.1.conv.conv.bias"]
    latent = torch.randn((1, 128, 2, 2, 2), generator=torch.Generator().manual_seed(7))
    save_file({"latent": latent}, tmp_path / "latent.safetensors")
    seed = 21 + version
    job = {
        "generate": {"manifest": f"ltx_comfy_v{version}", "seed": 0, "include": include},
        "latent": str(tmp_path / "latent.safetensors"),
        "seed": seed,
        "out": str(tmp_path / "out.safetensors"),
    }
    ComfyReference(tmp_path).run([job])
    theirs = load_file(tmp_path / "out.safetensors")["raw"]
    sd = generate(
        load_manifest(f"ltx_comfy_v{version}"), seed=0, include=["decoder.", "per_channel_statistics."]
    )
    with torch.device("meta"):
        model = LTXTeacherDecoder.for_version(version)
    model.load_state_dict({k: v for k, v in sd.items() if k.startswith("decoder.")}, strict=True, assign=True)
    ours = our_decode(model.eval(), sd, latent, seed)
    assert ours.shape == theirs.shape == (1, 3, 9, 64, 64)
    err = (ours - theirs).abs().max().item()
    assert err < TOL, f"version {version}: max abs error {err:.3g} vs ComfyUI"
