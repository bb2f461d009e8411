"""LTX-2 in a real ComfyUI 0.3.75 server: Load Flash-VAED lists and loads an LTX-2 video VAE from models/vae,
its drop-in VAE decodes LTX-2 latents through the stock VAE Decode and VAE Decode (Tiled) with the frames of
Flash-VAED Decode and of the library, and Prune & Distill trains an LTX-2 student from it.

ComfyUI 0.3.75's own Load VAE cannot open LTX-2 files (it passes no metadata, so it builds an LTX-Video 0.9
decoder that does not fit them); Load Flash-VAED reads the config from the file, and its VAE output is the
teacher for Prune & Distill. One server for the module; the model is the tiny LTX-2.3-layout file of
tests/support/tiny_models.py (1/8 of the released widths, seeded).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flash_vaed import Family, load_decoder
from flash_vaed.presets import ltx2_recipe
from harness.server import PromptFailed, comfy_server, download, get_json, run_prompt
from support.comfy_subprocess import comfy_root
from support.tiny_clips import write_clips
from support.tiny_models import LTX2_CHECKPOINT, LTX2_VAE, write_ltx2_vae, write_ltx_student

REPO_ROOT = Path(__file__).resolve().parents[1]
LATENT = "ltx2.latent"
LATENT_SHAPE = (1, 128, 3, 2, 3)  # -> 17 frames of 64 x 96
CLIPS = "clips"
LTXV_STUDENT = "ltxv_student.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("ltx2-nodes")
    models = base / "models"
    for sub in ("vae", "flash_vaed", "checkpoints"):
        (models / sub).mkdir(parents=True)
    write_ltx2_vae(models / "vae" / LTX2_VAE)
    write_ltx2_vae(models / "checkpoints" / LTX2_CHECKPOINT, all_in_one=True)
    write_ltx_student(models / "flash_vaed" / LTXV_STUDENT)  # an LTX-Video 0.9 student (tiny)
    run_dir = base / "run"
    (run_dir / "input").mkdir(parents=True)
    latent = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(3))
    # LoadLatent scales by 1/0.18215 unless this marker key is present
    save_file(
        {"latent_tensor": latent, "latent_format_version_0": torch.tensor([])},
        str(run_dir / "input" / LATENT),
    )
    write_clips(run_dir / "input" / CLIPS, count=3, frames=9, size=32)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # tiny convs train faster on one thread on a shared machine
        with comfy_server(comfy_root(), nodes=[REPO_ROOT], models_dir=models, run_dir=run_dir) as url:
            yield SimpleNamespace(url=url, run_dir=run_dir, models=models, latent=latent)


def load(name: str = LTX2_VAE) -> dict:
    return {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": name, "dtype": "auto"}}


def flash_decode(src: list, samples: list, mode: str = "auto", chunk: int = 4, tile: int = 512,
                 overlap: int = 64) -> dict:  # fmt: skip
    inputs = {"flash_vaed": src, "samples": samples, "mode": mode, "chunk_frames": chunk, "tile_px": tile,
              "overlap_px": overlap}  # fmt: skip
    return {"class_type": "FlashVAEDDecode", "inputs": inputs}


def save(images: list, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def frames_of(url: str, entry: dict, node: str, dest: Path) -> np.ndarray:
    records = entry["outputs"][node]["images"]
    return np.stack([np.asarray(Image.open(download(url, r, dest))) for r in records])


def quantized(frames: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in about [-1, 1] -> the uint8 (T, H, W, 3) SaveImage writes."""
    images = torch.clamp((frames + 1) / 2, 0, 1)[0].movedim(0, -1)
    return np.clip(255.0 * images.numpy(), 0, 255).astype(np.uint8)


@pytest.mark.comfy
def test_load_flash_vaed_lists_and_loads_an_ltx2_vae(server):
    names = get_json(server.url, "/object_info/FlashVAEDLoad")["FlashVAEDLoad"]["input"]["required"]
    assert LTX2_VAE in names["decoder_name"][1]["options"]
    prompt = {
        "1": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                               "batch_size": 1}},
        "2": load(), "3": flash_decode(["2", 0], ["1", 0]),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }  # fmt: skip
    (stats,) = run_prompt(server.url, prompt)["outputs"]["3"]["flash_vaed_stats"]
    assert stats["frames"] == 9 and stats["size"] == [64, 64] and stats["dtype"] == "float32"


@pytest.mark.comfy
def test_the_vae_inside_an_all_in_one_checkpoint_decodes_as_the_standalone_file(server, tmp_path):
    """LTX-2's templates load one all-in-one checkpoint (models/checkpoints): Load Flash-VAED lists it after
    the VAE files and reads only its VAE decoder."""
    names = get_json(server.url, "/object_info/FlashVAEDLoad")["FlashVAEDLoad"]["input"]["required"]
    options = names["decoder_name"][1]["options"]
    assert options.index(LTX2_CHECKPOINT) > options.index(LTX2_VAE)
    lat = ["1", 0]
    prompt = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": LATENT}},
        "2": load(LTX2_CHECKPOINT), "3": flash_decode(["2", 0], lat), "4": save(["3", 0], "ltx2_ckpt"),
        "5": load(), "6": flash_decode(["5", 0], lat), "7": save(["6", 0], "ltx2_file"),
    }  # fmt: skip
    entry = run_prompt(server.url, prompt)
    np.testing.assert_array_equal(
        frames_of(server.url, entry, "4", tmp_path), frames_of(server.url, entry, "7", tmp_path)
    )


@pytest.mark.comfy
def test_stock_vae_decode_and_tiled_give_flash_vaed_frames(server, tmp_path):
    lat = ["1", 0]
    prompt = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": LATENT}},
        "2": load(),
        "3": flash_decode(["2", 0], lat), "4": save(["3", 0], "ltx2_ours"),
        "5": {"class_type": "VAEDecode", "inputs": {"vae": ["2", 1], "samples": lat}},
        "6": save(["5", 0], "ltx2_stock"),
        # VAE Decode (Tiled) 64 px / 32 overlap (ComfyUI lowers it to 16 px, 0 latent pixels at 32x) / 16 frames
        # = our tiled 64 px, no overlap, 2 latent frames
        "7": flash_decode(["2", 0], lat, "tiled", chunk=2, tile=64, overlap=0), "8": save(["7", 0], "ltx2_tiled"),
        "9": {"class_type": "VAEDecodeTiled", "inputs": {"vae": ["2", 1], "samples": lat, "tile_size": 64,
                                                         "overlap": 32, "temporal_size": 16, "temporal_overlap": 8}},
        "10": save(["9", 0], "ltx2_stock_tiled"),
    }  # fmt: skip
    entry = run_prompt(server.url, prompt)
    ours, stock = frames_of(server.url, entry, "4", tmp_path), frames_of(server.url, entry, "6", tmp_path)
    assert ours.shape == (17, 64, 96, 3)
    np.testing.assert_array_equal(ours, stock)
    tiled, stock_tiled = (
        frames_of(server.url, entry, "8", tmp_path),
        frames_of(server.url, entry, "10", tmp_path),
    )
    np.testing.assert_array_equal(tiled, stock_tiled)
    assert entry["outputs"]["7"]["flash_vaed_stats"][0]["tile_px"] == 64
    # the library's frames, from the same file, as SaveImage quantizes them
    dec = load_decoder(server.models / "vae" / LTX2_VAE)
    assert dec.family is Family.LTX2
    assert np.abs(quantized(dec.decode(server.latent)).astype(int) - ours.astype(int)).max() <= 1
    whole_tiled = quantized(dec.decode(server.latent, chunk_frames=2, tile_px=64, overlap_px=0))
    assert np.abs(whole_tiled.astype(int) - tiled.astype(int)).max() <= 1


@pytest.mark.comfy
def test_prune_and_distill_trains_an_ltx2_student_from_load_flash_vaed(server, tmp_path):
    """The teacher is Load Flash-VAED's VAE (the original LTX-2 file): auto = the LTX-2 recipe for it, pruned,
    trained a few steps, saved as an LTX-2 student and decoding in the same prompt."""
    node = {
        "class_type": "FlashVAEDPruneDistill",
        "inputs": {"teacher_vae": ["1", 1], "videos": CLIPS, "preset": "auto", "steps": 2, "seed": 0,
                   "output_name": "ltx2_student", "crop_px": 32, "clip_frames": 9, "resume": False},
    }  # fmt: skip
    prompt = {
        "1": load(), "2": node,
        "3": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                               "batch_size": 1}},
        "4": flash_decode(["2", 0], ["3", 0]), "5": save(["4", 0], "ltx2_student"),
    }  # fmt: skip
    entry = run_prompt(server.url, prompt, timeout_s=600)
    assert frames_of(server.url, entry, "5", tmp_path).shape == (9, 64, 64, 3)
    student = load_decoder(server.models / "flash_vaed" / "ltx2_student.safetensors")
    assert student.family is Family.LTX2 and student.role == "student"
    assert student.module.spec == ltx2_recipe(load_decoder(server.models / "vae" / LTX2_VAE).module)


@pytest.mark.comfy
def test_a_teacher_vae_of_the_other_ltx_latent_space_is_refused(server):
    """Same shape, another latent space: an LTX-Video 0.9 student cannot encode with an LTX-2 VAE."""
    prompt = {
        "1": load(), "2": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": LTXV_STUDENT, "dtype": "auto",
                                                                      "teacher_vae": ["1", 1]}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 9, "color": 0}},
        "4": {"class_type": "VAEEncode", "inputs": {"vae": ["2", 1], "pixels": ["3", 0]}},
        "5": flash_decode(["2", 0], ["4", 0]), "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }  # fmt: skip
    with pytest.raises(PromptFailed) as err:
        run_prompt(server.url, prompt)
    message = str(err.value)
    assert "teacher_vae encodes LTX-2 latents" in message and "LTX-Video 0.9 latents" in message
