"""Decode and encode with the REAL ComfyUI, each call in a fresh subprocess.

ComfyUI is never imported into the pytest process: its ``nodes.py`` and our ``nodes/`` package cannot live in
one interpreter, and its model management keeps global state. ``comfy_vae_worker.py`` does the work with the
same interpreter (``sys.executable``), which is the environment ComfyUI's dependencies were installed into.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.server import comfy_env, comfy_installed, comfy_root

WORKER = Path(__file__).with_name("comfy_vae_worker.py")
# Environment for a ComfyUI child process (offline, no PYTHONPATH); kept under this name for callers.
worker_env = comfy_env
__all__ = ["comfy_installed", "comfy_root", "worker_env"]  # re-exported for the tests


class ComfyWorkerError(RuntimeError):
    """The worker process failed; the message carries the end of its output."""


def run_worker(args: list[str], *, root: Path | None = None, timeout_s: float = 600) -> None:
    root = root or comfy_root()
    if not comfy_installed(root):
        raise ComfyWorkerError(
            f"no ComfyUI at {root}: run tests/harness/install.sh or set FLASH_VAED_COMFYUI"
        )
    cmd = [sys.executable, str(WORKER), "--comfy", str(root), *args]
    with tempfile.TemporaryDirectory(prefix="flash-vaed-worker-") as cwd:
        proc = subprocess.run(
            cmd, cwd=cwd, env=worker_env(), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise ComfyWorkerError(
            f"ComfyUI worker failed (exit {proc.returncode}): {' '.join(args[:1])}\n{tail}"
        )


def _metadata_arg(metadata: Mapping[str, str] | str | None) -> list[str]:
    if metadata is None:
        return []
    return ["--metadata", metadata if metadata == "file" else json.dumps(dict(metadata))]


def comfy_vae_decode(
    state_dict_path: Path,
    latent: torch.Tensor,
    *,
    out_path: Path,
    metadata: Mapping[str, str] | str | None = None,
    seed: int | None = None,
    extra: Mapping[str, object] | None = None,
    root: Path | None = None,
) -> torch.Tensor:
    """Decode ``latent`` with the VAE file at ``state_dict_path`` exactly as ComfyUI's VAELoader + VAEDecode.

    latent:   (B, C, T, H, W) in ComfyUI's LATENT space (raw for Wan, normalized for LTX-Video).
    metadata: None loads like VAELoader (no metadata); a dict is passed as ``VAE(metadata=...)``; the string
              ``"file"`` passes the safetensors header, as ComfyUI's checkpoint loaders do.
    seed:     ``torch.manual_seed(seed)`` right before decode (LTX 0.9.1+ decoders draw noise).
    extra:    passed as ``VAE.decode(vae_options=extra)``.
    Returns frames (B, T', H', W', 3) in [0, 1], float32. ``out_path`` (safetensors) keeps them as ``images``
    and, when ComfyUI decoded in one call, the unclamped decoder output (B, 3, T', H', W') as ``raw``;
    read both with ``load_outputs(out_path)``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    latent_path = out_path.with_name(out_path.stem + ".latent.safetensors")
    save_file({"latent": latent.detach().float().contiguous().cpu()}, str(latent_path))
    args = ["decode", "--vae", str(state_dict_path), "--latent", str(latent_path), "--out", str(out_path)]
    args += _metadata_arg(metadata)
    if seed is not None:
        args += ["--seed", str(seed)]
    if extra:
        args += ["--vae-options", json.dumps(dict(extra))]
    try:
        run_worker(args, root=root)
    finally:
        latent_path.unlink(missing_ok=True)
    return load_outputs(out_path)["images"]


def comfy_vae_encode(
    state_dict_path: Path,
    images: torch.Tensor,
    *,
    out_path: Path,
    metadata: Mapping[str, str] | str | None = None,
    root: Path | None = None,
) -> torch.Tensor:
    """Encode frames (T, H, W, 3) in [0, 1] as VAEEncode does; returns the latent (1, C, T', H', W')."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    images_path = out_path.with_name(out_path.stem + ".images.safetensors")
    save_file({"images": images.detach().float().contiguous().cpu()}, str(images_path))
    args = ["encode", "--vae", str(state_dict_path), "--images", str(images_path), "--out", str(out_path)]
    try:
        run_worker(args + _metadata_arg(metadata), root=root)
    finally:
        images_path.unlink(missing_ok=True)
    return load_outputs(out_path)["latent"]


def comfy_vae_manifest(out_path: Path, *, dim: int, family: str = "wan21", root: Path | None = None) -> dict:
    """Key manifest of ComfyUI's own VAE model built at width ``dim`` (written to ``out_path`` too)."""
    run_worker(["shapes", "--family", family, "--dim", str(dim), "--out", str(out_path)], root=root)
    return json.loads(Path(out_path).read_text())


def load_outputs(out_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_path))
