"""The node pack inside a real ComfyUI 0.3.75 server: registration, schemas, decoding through our node and through
stock VAE nodes with the drop-in VAE, progress, Cancel, and the errors a user meets.

One server for the whole module (start-up is most of the cost). Models: a seeded Wan 2.1 VAE at dim 8 (the
teacher, models/vae) and the official Flash-VAED Wan layout with seeded weights (models/flash_vaed, .pth).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from harness.server import (
    InvalidWorkflow,
    PromptFailed,
    comfy_server,
    download,
    get_json,
    listen,
    post_json,
    queue_prompt,
    run_prompt,
    wait_for_prompt,
)
from support.comfy_subprocess import comfy_root
from support.reference_weights import generate, load_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER = "tiny_wan21.safetensors"
OFFICIAL = "Flash_VAED_Wan.pth"
LATENT = "random.latent"
LATENT_SHAPE = (1, 16, 2, 8, 12)  # -> 5 frames of 64 x 96


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("nodes")
    models = base / "models"
    (models / "vae").mkdir(parents=True)
    (models / "flash_vaed").mkdir()
    save_file(generate(load_manifest("wan21_comfy_dim8")), str(models / "vae" / TEACHER))
    torch.save(generate(load_manifest("flashvaed_wan_official")), models / "flash_vaed" / OFFICIAL)
    run_dir = base / "run"
    (run_dir / "input").mkdir(parents=True)
    latent = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(3))
    # LoadLatent scales by 1/0.18215 unless this marker key is present
    save_file(
        {"latent_tensor": latent, "latent_format_version_0": torch.tensor([])},
        str(run_dir / "input" / LATENT),
    )
    with comfy_server(comfy_root(), nodes=[REPO_ROOT], models_dir=models, run_dir=run_dir) as url:
        yield SimpleNamespace(url=url, run_dir=run_dir, models=models, latent=latent)


# ---- prompt building ---------------------------------------------------------------------------------


def load(name: str = OFFICIAL, teacher: list | None = None, dtype: str = "auto") -> dict:
    inputs = {"decoder_name": name, "dtype": dtype} | ({"teacher_vae": teacher} if teacher else {})
    return {"class_type": "FlashVAEDLoad", "inputs": inputs}


def flash_decode(src: list, samples: list, mode: str = "auto", chunk: int = 4, tile: int = 512,
                 overlap: int = 64) -> dict:  # fmt: skip
    inputs = {"flash_vaed": src, "samples": samples, "mode": mode, "chunk_frames": chunk, "tile_px": tile,
              "overlap_px": overlap}  # fmt: skip
    return {"class_type": "FlashVAEDDecode", "inputs": inputs}


def video_latent(width: int = 64, height: int = 64, length: int = 9) -> dict:
    return {
        "class_type": "EmptyHunyuanLatentVideo",
        "inputs": {"width": width, "height": height, "length": length, "batch_size": 1},
    }


def save(images: list, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def frames_of(url: str, entry: dict, node: str, dest: Path) -> np.ndarray:
    """The PNGs a SaveImage node wrote, as one uint8 array (N, H, W, 3)."""
    records = entry["outputs"][node]["images"]
    return np.stack([np.asarray(Image.open(download(url, r, dest))) for r in records])


def failure(err: PromptFailed) -> str:
    return str(err)


# ---- the pack in the server --------------------------------------------------------------------------


@pytest.mark.comfy
def test_pack_imports_cleanly(server):
    log = (server.run_dir / "comfyui.log").read_text(errors="replace")
    pack = f"custom_nodes/{REPO_ROOT.name}"
    bad = [ln for ln in log.splitlines() if pack in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln)]
    assert not bad, "\n".join(bad)
    assert "Flash-VAED: this ComfyUI has no V3" not in log
    assert any(pack in ln and "seconds" in ln for ln in log.splitlines())  # listed as loaded


@pytest.mark.comfy
def test_object_info_lists_both_nodes_with_tooltips(server):
    info = get_json(server.url, "/object_info")
    loader, decoder = info["FlashVAEDLoad"], info["FlashVAEDDecode"]
    assert loader["display_name"] == "Load Flash-VAED"
    assert decoder["display_name"] == "Flash-VAED Decode (tiled/causal)"
    assert loader["input_order"] == {"required": ["decoder_name", "dtype"], "optional": ["teacher_vae"]}
    assert decoder["input_order"]["required"] == [
        "flash_vaed", "samples", "mode", "chunk_frames", "tile_px", "overlap_px"
    ]  # fmt: skip
    assert loader["output"] == ["FLASH_VAED", "VAE"] and decoder["output"] == ["IMAGE"]
    for node in (loader, decoder):
        assert node["category"] == "latent/video" and len(node["description"]) > 40
        assert node["python_module"].startswith("custom_nodes.")
        for group in node["input"].values():
            for name, spec in group.items():
                assert len(spec[1].get("tooltip", "")) > 10, f"{name} has no tooltip"
    names = loader["input"]["required"]["decoder_name"][1]["options"]
    assert names[:2] == ["Flash_VAED_Wan.pth", "Flash_VAED_LTX.pth"] and TEACHER in names
    assert decoder["input"]["required"]["mode"][1]["options"] == ["auto", "whole", "causal", "tiled"]


# ---- decoding ----------------------------------------------------------------------------------------


@pytest.mark.comfy
@pytest.mark.parametrize("name", [TEACHER, OFFICIAL])
def test_empty_video_latent_decodes_and_saves(server, name, tmp_path):
    prompt = {"1": video_latent(), "2": load(name), "3": flash_decode(["2", 0], ["1", 0]),
              "4": save(["3", 0], f"decode_{Path(name).stem}")}  # fmt: skip
    entry = run_prompt(server.url, prompt)
    frames = frames_of(server.url, entry, "4", tmp_path)
    assert frames.shape == (9, 64, 64, 3) and frames.std() > 1  # random biases: a pattern, not a flat image
    (stats,) = entry["outputs"]["3"]["flash_vaed_stats"]
    assert stats["frames"] == 9 and stats["seconds"] > 0 and stats["fps"] > 0
    assert stats["peak_mem_mb"] is None or stats["peak_mem_mb"] > 0
    assert stats["size"] == [64, 64] and stats["retries"] == 0
    assert "fps" in entry["outputs"]["3"]["text"][0]


@pytest.mark.comfy
def test_stock_vae_nodes_with_the_drop_in_vae_give_our_frames(server, tmp_path):
    lat = ["1", 0]
    prompt = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": LATENT}},
        "2": load(OFFICIAL),
        "3": flash_decode(["2", 0], lat), "4": save(["3", 0], "ours_auto"),
        "5": {"class_type": "VAEDecode", "inputs": {"vae": ["2", 1], "samples": lat}},
        "6": save(["5", 0], "stock_auto"),
        # VAE Decode (Tiled) 64 px / 32 overlap (ComfyUI lowers it to 16) / 8 frames = our tiled 64/16/2 latent
        "7": load(TEACHER),
        "8": flash_decode(["7", 0], lat, "tiled", chunk=2, tile=64, overlap=16), "9": save(["8", 0], "ours_tiled"),
        "10": {"class_type": "VAEDecodeTiled", "inputs": {"vae": ["7", 1], "samples": lat, "tile_size": 64,
                                                          "overlap": 32, "temporal_size": 8, "temporal_overlap": 4}},
        "11": save(["10", 0], "stock_tiled"),
    }  # fmt: skip
    entry = run_prompt(server.url, prompt)
    ours, stock = frames_of(server.url, entry, "4", tmp_path), frames_of(server.url, entry, "6", tmp_path)
    assert ours.shape == (5, 64, 96, 3)
    np.testing.assert_array_equal(ours, stock)
    tiled, stock_tiled = (
        frames_of(server.url, entry, "9", tmp_path),
        frames_of(server.url, entry, "11", tmp_path),
    )
    np.testing.assert_array_equal(tiled, stock_tiled)
    assert entry["outputs"]["8"]["flash_vaed_stats"][0]["tile_px"] == 64

    # and the node's frames are the library's, as SaveImage quantizes them
    from flash_vaed import load_decoder

    dec = load_decoder(server.models / "flash_vaed" / OFFICIAL)
    expected = torch.clamp((dec.decode(server.latent) + 1) / 2, 0, 1)[0].movedim(0, -1)
    expected = np.clip(255.0 * expected.numpy(), 0, 255).astype(np.uint8)
    assert np.abs(expected.astype(int) - ours.astype(int)).max() <= 1


@pytest.mark.comfy
def test_progress_arrives_per_chunk_and_tile(server):
    prompt = {"1": {"class_type": "LoadLatent", "inputs": {"latent": LATENT}}, "2": load(TEACHER),
              "3": flash_decode(["2", 0], ["1", 0], "tiled", chunk=1, tile=64, overlap=8),
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    with listen(server.url) as ws:
        run_prompt(server.url, prompt, client_id=ws.client_id)
        ours = [p for p in ws.of_type("progress") if p["node"] == "3"]
    # 2 tiles (96 px wide, 64 px tiles) x 2 latent frames, one step each
    assert [(p["value"], p["max"]) for p in ours] == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.comfy
def test_cancel_stops_a_long_decode_and_the_next_prompt_runs(server):
    # 256 x 256 px, 21 latent frames, 64 px tiles, 1 frame per step: 16 tiles x 21 = 336 steps
    long = {"1": video_latent(256, 256, 81), "2": load(TEACHER),
            "3": flash_decode(["2", 0], ["1", 0], "tiled", chunk=1, tile=64, overlap=0),
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    with listen(server.url) as ws:
        prompt_id = queue_prompt(server.url, long, client_id=ws.client_id)
        ws.wait_for(lambda m: m.get("type") == "progress" and m["data"].get("node") == "3", timeout_s=120)
        post_json(server.url, "/interrupt", {})
        start = time.monotonic()
        done = ws.wait_done(prompt_id, timeout_s=60)
        stopped_after_s = time.monotonic() - start
        steps = [p["value"] for p in ws.of_type("progress") if p["node"] == "3"]
    assert done["type"] == "execution_interrupted", done
    assert max(steps) < 336, f"ran to the end ({max(steps)} steps) in {stopped_after_s:.1f}s"
    entry = wait_for_prompt(server.url, prompt_id)
    assert entry["status"]["status_str"] == "error"
    # the next prompt is not affected
    after = {"1": video_latent(64, 64, 5), "2": load(TEACHER), "3": flash_decode(["2", 0], ["1", 0]),
             "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    assert run_prompt(server.url, after)["outputs"]["3"]["flash_vaed_stats"][0]["frames"] == 5


# ---- encoding through the teacher ---------------------------------------------------------------------


@pytest.mark.comfy
def test_encode_needs_the_teacher_vae_and_then_works(server):
    image = {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 5, "color": 0x3366CC},
    }
    preview = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    without = {"1": image, "2": load(TEACHER), "3": {"class_type": "VAEEncode", "inputs": {"vae": ["2", 1],
               "pixels": ["1", 0]}}, "4": flash_decode(["2", 0], ["3", 0]), "5": preview}  # fmt: skip
    with pytest.raises(PromptFailed) as info:
        run_prompt(server.url, without)
    assert "teacher_vae" in failure(info.value) and "cannot encode" in failure(info.value)
    with_teacher = {
        "0": {"class_type": "VAELoader", "inputs": {"vae_name": TEACHER}},
        "1": image, "2": load(TEACHER, teacher=["0", 0]),
        "3": {"class_type": "VAEEncode", "inputs": {"vae": ["2", 1], "pixels": ["1", 0]}},
        "4": flash_decode(["2", 0], ["3", 0]), "5": preview,
    }  # fmt: skip
    entry = run_prompt(server.url, with_teacher)
    assert entry["outputs"]["4"]["flash_vaed_stats"][0]["frames"] == 5


# ---- errors a user meets ------------------------------------------------------------------------------


@pytest.mark.comfy
def test_an_image_latent_gets_a_clear_error_naming_the_channels(server):
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": load(OFFICIAL), "3": flash_decode(["2", 0], ["1", 0]),
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    with pytest.raises(PromptFailed) as info:
        run_prompt(server.url, prompt)
    msg = failure(info.value)
    assert "FlashVAEDDecode" in msg and "LatentError" in msg
    assert "with 4 channels" in msg and "16 latent channels" in msg and "SD 1.x" in msg


@pytest.mark.comfy
def test_a_name_leaving_the_models_folder_is_refused(server):
    prompt = {"1": video_latent(), "2": load("../x.safetensors"), "3": flash_decode(["2", 0], ["1", 0]),
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    with pytest.raises(InvalidWorkflow) as info:
        run_prompt(server.url, prompt)
    problems = "\n".join(info.value.problems)
    assert "FlashVAEDLoad" in problems and "../x.safetensors" in problems and "refused" in problems


@pytest.mark.comfy
def test_a_missing_official_checkpoint_offline_says_how_to_get_it(server):
    prompt = {"1": video_latent(), "2": load("Flash_VAED_LTX.pth"), "3": flash_decode(["2", 0], ["1", 0]),
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    with pytest.raises(PromptFailed) as info:
        run_prompt(server.url, prompt)
    msg = failure(info.value)
    assert "https://huggingface.co/Aoko955/Flash-VAED/resolve/main/models/ltx/Flash_VAED_LTX.pth" in msg
    assert "flash_vaed/Flash_VAED_LTX.pth" in msg and "HF_HUB_OFFLINE" in msg
    assert sorted(p.name for p in (server.models / "flash_vaed").iterdir()) == [OFFICIAL]  # no half file


# ---- without the V3 API -------------------------------------------------------------------------------

GUARD_PROBE = """
import importlib.util, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
sys.modules["comfy_api"] = None  # an old ComfyUI: `import comfy_api.latest` raises ImportError
root = sys.argv[1]
spec = importlib.util.spec_from_file_location("flash_vaed_pack", root + "/__init__.py",
                                              submodule_search_locations=[root])
pack = importlib.util.module_from_spec(spec)
sys.modules["flash_vaed_pack"] = pack
spec.loader.exec_module(pack)
print(hasattr(pack, "comfy_entrypoint"), pack.NODE_CLASS_MAPPINGS, pack.WEB_DIRECTORY)
"""


def test_pack_without_the_v3_api_logs_the_needed_version_instead_of_crashing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", GUARD_PROBE, str(REPO_ROOT)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "{}", "./web"]
    assert "ERROR" in proc.stderr and "comfy_api.latest" in proc.stderr and "0.3.75" in proc.stderr
    assert "Traceback" not in proc.stderr
