"""Our Wan 2.1 / 2.2 teacher decoders equal ComfyUI 0.3.75's own decode on the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flash_vaed import load_decoder
from support.comfy_subprocess import (
    comfy_root,
    comfy_vae_decode,
    comfy_vae_manifest,
    load_outputs,
    worker_env,
)
from support.reference_weights import generate, load_manifest

TOL = 5e-5
MODEL_WORKER = Path(__file__).parent / "support" / "comfy_model_worker.py"


def _latent(shape: tuple[int, ...], seed: int = 7) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _comfy_model(cmd: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(MODEL_WORKER), "--comfy", str(comfy_root()), *cmd],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _vaeloader_vs_ours(tmp_path: Path, weights: dict, latent: torch.Tensor) -> float:
    path = tmp_path / "vae.safetensors"
    save_file(weights, str(path))
    comfy_vae_decode(path, latent, out_path=tmp_path / "comfy.safetensors")
    raw = load_outputs(tmp_path / "comfy.safetensors")["raw"]
    ours = load_decoder(path).decode(latent)
    assert ours.shape == raw.shape
    return (ours - raw).abs().max().item()


@pytest.mark.comfy
def test_wan21_small_equals_comfyui_vaeloader(tmp_path):
    manifest = comfy_vae_manifest(tmp_path / "m.json", dim=8)
    err = _vaeloader_vs_ours(tmp_path, generate(manifest, seed=1), _latent((1, 16, 4, 3, 5)))
    assert err < TOL, err


@pytest.mark.comfy
def test_wan21_full_size_equals_comfyui_vaeloader(tmp_path):
    """The released Wan 2.1 layout (dim 96, 127M parameters), through ComfyUI's VAELoader path."""
    weights = generate(load_manifest("wan21_comfy"), seed=0)
    err = _vaeloader_vs_ours(tmp_path, weights, _latent((1, 16, 3, 2, 3)))
    assert err < TOL, err


@pytest.mark.comfy
@pytest.mark.parametrize("family,dim,channels", [("wan21", 16, 16), ("wan22", 16, 48)])
def test_wan_model_equals_comfyui_model(tmp_path, family, dim, channels):
    """Direct call of ComfyUI's WanVAE.decode (Wan 2.2 at reduced width: VAELoader only builds full size)."""
    _comfy_model(["shapes", "--family", family, "--dim", str(dim), "--out", str(tmp_path / "s.json")])
    shapes = json.loads((tmp_path / "s.json").read_text())
    weights = generate(shapes, seed=3)
    save_file(weights, str(tmp_path / "w.safetensors"))
    latent = _latent((1, channels, 4, 3, 2))
    save_file({"latent": latent}, str(tmp_path / "z.safetensors"))
    _comfy_model(
        [
            "decode",
            "--family",
            family,
            "--dim",
            str(dim),
            "--weights",
            str(tmp_path / "w.safetensors"),
            "--latent",
            str(tmp_path / "z.safetensors"),
            "--out",
            str(tmp_path / "o.safetensors"),
        ]
    )
    theirs = load_file(str(tmp_path / "o.safetensors"))["video"]
    dec = load_decoder(weights)
    assert dec.family.value == family and dec.role == "teacher"
    ours = dec.decode(latent)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < TOL
    # and streamed one latent frame at a time, as ComfyUI itself runs it
    assert (dec.decode(latent, chunk_frames=1) - theirs).abs().max().item() < TOL


@pytest.mark.comfy
@pytest.mark.slow
def test_wan22_full_size_equals_comfyui_vaeloader(tmp_path):
    weights = generate(load_manifest("wan22_comfy"), seed=0)
    err = _vaeloader_vs_ours(tmp_path, weights, _latent((1, 48, 2, 1, 2)))
    assert err < TOL, err
