"""Seeded random weights in the real checkpoint layouts, for tests.

A manifest (``tests/data/manifests/<name>.json``) lists every key of a real checkpoint with its shape.
``generate`` fills those keys with float32 CPU tensors that depend only on ``(seed, key, shape)``: each key
draws from its own mt19937 ``torch.Generator``, so the global RNG, key order and subsets never change a
tensor. The stream is the one of ``shared/reference/weights.py`` (same seeding and scales), so a file made
here is bit-identical to one made there; ``check_generator`` proves the installed torch still draws it.

Scales keep a deep random decoder's activations bounded; ``z ~ N(0, 1)`` from the key's generator:

=========================================================  ============================================
key                                                        value
=========================================================  ============================================
last part ``timestep_scale_multiplier``                    1000.0 (what real LTX files hold)
``statistics`` in key, or last part ``latents_mean/std``   ``exp(0.25 z)`` if the last part says std,
                                                           else ``0.1 z``
last part contains ``scale_shift_table``                   ``z / sqrt(shape[-1])`` (LTX AdaLN)
last part contains ``per_channel_scale``                   ``0.1 z`` (LTX 0.9.1 noise injection)
``*.gamma``, or a 1-D ``*.weight`` (norm affine)            ``1 + 0.1 z``
``*.bias`` or any other tensor with ndim <= 1              ``0.02 z``
anything else (conv / linear weight)                       ``z * gain / sqrt(fan_in)``
=========================================================  ============================================
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

MANIFEST_DIR = Path(__file__).resolve().parents[1] / "data" / "manifests"

# standard_normal((4,), "fingerprint", seed=0) as drawn by torch 2.13.0+cpu.
FINGERPRINT = (1.4296538829803467, -0.9381709098815918, 0.09138447791337967, -0.5383177399635315)


def load_manifest(name_or_path: str | Path) -> dict:
    """A manifest by bare name (``"wan21_comfy"`` -> tests/data/manifests/wan21_comfy.json) or by path."""
    path = Path(name_or_path)
    if path.suffix != ".json" and len(path.parts) == 1:
        path = MANIFEST_DIR / f"{path}.json"
    if not path.is_file():
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))
        raise FileNotFoundError(f"no manifest {path}; known names: {', '.join(known)}")
    return json.loads(path.read_text())


def manifest_shapes(manifest: Mapping) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a manifest that is either ``{"keys": {...}, ...}`` or already flat."""
    keys = manifest["keys"] if "keys" in manifest else manifest
    return {k: tuple(int(s) for s in shape) for k, shape in keys.items()}


def key_seed(key: str, seed: int = 0) -> int:
    """Generator seed of one key: the first 8 bytes of sha256(f"{seed}:{key}"), little-endian, 63 bits."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def standard_normal(shape: Iterable[int], key: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(key_seed(key, seed))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def _scaled(key: str, shape: tuple[int, ...], z: torch.Tensor, gain: float) -> torch.Tensor:
    last = key.rpartition(".")[2]
    if last == "timestep_scale_multiplier":
        return torch.full_like(z, 1000.0)
    if "statistics" in key or last in ("latents_mean", "latents_std"):
        # Standard deviations must stay positive; means are small offsets.
        return torch.exp(0.25 * z) if "std" in last else 0.1 * z
    if "scale_shift_table" in last:
        return z / math.sqrt(shape[-1])
    if "per_channel_scale" in last:
        return 0.1 * z
    if last == "gamma" or (last == "weight" and len(shape) == 1):
        return 1.0 + 0.1 * z
    if last == "bias" or len(shape) <= 1:
        return 0.02 * z
    fan_in = math.prod(shape[1:])
    return z * (gain / math.sqrt(fan_in))


def generate(
    manifest: Mapping,
    seed: int = 0,
    gain: float = 1.0,
    include: Iterable[str] | None = None,
    zero: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Float32 CPU state dict for the keys of ``manifest``, in manifest order.

    include: key prefixes to keep (every key when None).
    zero:    substrings; matching keys are all zeros (``("per_channel_scale",)`` turns off LTX 0.9.1 noise).
    """
    prefixes = None if include is None else tuple(include)
    zero = tuple(zero)
    out: dict[str, torch.Tensor] = {}
    for key, shape in manifest_shapes(manifest).items():
        if prefixes is not None and not key.startswith(prefixes):
            continue
        if any(part in key for part in zero):
            out[key] = torch.zeros(shape, dtype=torch.float32)
        else:
            out[key] = _scaled(key, shape, standard_normal(shape, key, seed), gain).contiguous()
    return out


def check_generator() -> None:
    """Raise if this torch draws a different stream than torch 2.13.0 did (the weights would differ)."""
    got = tuple(standard_normal((4,), "fingerprint").tolist())
    if any(abs(a - b) > 1e-6 for a, b in zip(got, FINGERPRINT, strict=True)):
        raise RuntimeError(
            f"torch {torch.__version__} draws {got} for the fingerprint key, expected {FINGERPRINT}: "
            "seeded test weights would differ from those made with torch 2.13.0"
        )
