"""The test tooling itself: seeded reference weights, the ComfyUI server harness and subprocess worker."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.server import get_json, listen, output_files, run_prompt
from support import reference_weights as rw
from support.comfy_subprocess import comfy_vae_decode, comfy_vae_encode, comfy_vae_manifest, load_outputs

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO_ROOT.parent / "shared" / "reference" / "weights.py"
MANIFESTS = sorted(rw.MANIFEST_DIR.glob("*.json"))
SMALL = 16384  # values; the small tensors of all manifests together hit every scale rule


def small_keys_manifest() -> dict:
    """Every tensor of at most SMALL values from every manifest, keyed as in the real files."""
    keys = {}
    for path in MANIFESTS:
        for key, shape in rw.manifest_shapes(rw.load_manifest(path)).items():
            if math.prod(shape) <= SMALL:
                keys[key] = list(shape)
    return {"keys": keys}


@pytest.fixture(scope="module")
def tiny_wan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded Wan 2.1 VAE at dim=8 in the real key layout (194 tensors, 0.9 M values)."""
    path = tmp_path_factory.mktemp("vae") / "tiny_wan21.safetensors"
    save_file(rw.generate(rw.load_manifest("wan21_comfy_dim8")), str(path))
    return path


def test_generator_draws_the_torch_2_13_stream():
    rw.check_generator()
    assert rw.standard_normal((4,), "fingerprint").tolist() == list(rw.FINGERPRINT)


def test_manifests_resolve_by_name_and_are_complete():
    assert {p.stem for p in MANIFESTS} >= {"wan21_comfy", "wan22_comfy", "ltx_comfy_v0", "wan21_comfy_dim8"}
    for path in MANIFESTS:
        manifest = rw.load_manifest(path.stem)
        assert len(rw.manifest_shapes(manifest)) == manifest["num_tensors"], path.name
    with pytest.raises(FileNotFoundError, match="known names"):
        rw.load_manifest("no_such_layout")


def test_generate_is_per_key_and_honours_include_and_zero():
    manifest = rw.load_manifest("wan21_comfy_dim8")
    full = rw.generate(manifest, seed=1)
    part = rw.generate(manifest, seed=1, include=("decoder.head.",), zero=("head.2.bias",))
    assert set(part) == {k for k in full if k.startswith("decoder.head.")}
    for key, tensor in part.items():
        if key == "decoder.head.2.bias":
            assert not tensor.any()
        else:
            assert torch.equal(tensor, full[key])
    assert torch.equal(
        full["decoder.head.0.gamma"], 1 + 0.1 * rw.standard_normal((8, 1, 1, 1), "decoder.head.0.gamma", 1)
    )
    assert not torch.equal(rw.generate(manifest, seed=2)["conv2.weight"], full["conv2.weight"])


@pytest.mark.skipif(
    not SHARED_WEIGHTS.exists(), reason="needs ../shared/reference/weights.py beside the repo"
)
def test_bit_identical_to_shared_reference_generator():
    spec = importlib.util.spec_from_file_location("shared_reference_weights", SHARED_WEIGHTS)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    manifest = small_keys_manifest()
    for kwargs in ({}, {"seed": 7, "gain": 0.5, "zero": ("per_channel_scale",)}):
        ours, theirs = rw.generate(manifest, **kwargs), reference.generate(manifest, **kwargs)
        assert list(ours) == list(theirs)
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key


def test_repo_nodes_package_is_not_installed_top_level(tmp_path: Path):
    """pip install -e . must install flash_vaed only: a top-level `nodes` would shadow ComfyUI's nodes.py."""
    code = "import importlib.util as u; s = u.find_spec('nodes'); print(s.origin if s else '')"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert not found.stdout.strip().startswith(str(REPO_ROOT)), found.stdout


@pytest.mark.comfy
def test_tiny_wan_manifest_is_what_comfyui_builds(tmp_path: Path):
    built = comfy_vae_manifest(tmp_path / "dim8.json", dim=8)
    assert built["keys"] == rw.load_manifest("wan21_comfy_dim8")["keys"]


@pytest.mark.comfy
def test_comfy_vae_decode_tiny_wan(tiny_wan_file: Path, tmp_path: Path):
    latent = torch.randn(1, 16, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out_path = tmp_path / "decoded.safetensors"
    frames = comfy_vae_decode(tiny_wan_file, latent, out_path=out_path)
    assert frames.shape == (1, 4 * 3 - 3, 8 * 4, 8 * 5, 3)
    assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0.05  # a pattern, not a flat field
    raw = load_outputs(out_path)["raw"]
    assert raw.shape == (1, 3, 9, 32, 40)
    torch.testing.assert_close(frames, ((raw + 1) / 2).clamp(0, 1).movedim(1, -1), rtol=0, atol=0)


@pytest.mark.comfy
def test_comfy_vae_encode_tiny_wan(tiny_wan_file: Path, tmp_path: Path):
    images = torch.rand(9, 32, 40, 3, generator=torch.Generator().manual_seed(0))
    latent = comfy_vae_encode(tiny_wan_file, images, out_path=tmp_path / "encoded.safetensors")
    assert latent.shape == (1, 16, 3, 4, 5)


@pytest.mark.comfy
def test_server_with_empty_custom_nodes_runs_stock_vae_decode(
    comfy_server, tmp_models_dir: Path, tiny_wan_file
):
    (tmp_models_dir / "vae" / tiny_wan_file.name).symlink_to(tiny_wan_file)
    url = comfy_server(nodes=(), models_dir=tmp_models_dir)
    info = get_json(url, "/object_info")
    assert "VAEDecode" in info and "VAELoader" in info
    assert not [k for k, v in info.items() if v.get("python_module", "").startswith("custom_nodes.")]
    assert tiny_wan_file.name in info["VAELoader"]["input"]["required"]["vae_name"][0]

    prompt = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": tiny_wan_file.name}},
        "2": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1},
        },
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "harness"}},
    }
    with listen(url) as ws:
        entry = run_prompt(url, prompt, client_id=ws.client_id, timeout_s=120)
        done = ws.wait_done(entry["prompt"][1], timeout_s=30)
    assert done["type"] == "execution_success"
    assert {m["node"] for m in ws.of_type("executed")} == {"4"}
    assert len(output_files(entry)) == 5  # 5 frames from 2 latent frames (4T-3)
