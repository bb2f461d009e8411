"""Bad input through a real ComfyUI 0.3.75 server's HTTP API (issue 16): each case failed before its fix.

One server for the module. Its models folder holds a user's own file where a student would go, a symlink
to a file outside the model folders, and a damaged official Flash_VAED_Wan.pth; beside it lies a JSON file
with a secret that no prompt may read back. The harness runs ComfyUI offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from flash_vaed import DecoderSpec, Family, FlashDecoder, Op, save_student
from flash_vaed.arch.wan import WanFamilyDecoder
from harness.server import InvalidWorkflow, PromptFailed, comfy_server, run_prompt
from support.comfy_subprocess import comfy_root
from support.reference_weights import generate, load_manifest
from support.tiny_clips import write_clips

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER = "tiny_wan21.safetensors"
SECRET = "hunter2-do-not-echo"
USERS_FILE = "my_wan_vae.safetensors"

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("reliability-server")
    models = base / "models"
    (models / "vae").mkdir(parents=True)
    students = models / "flash_vaed"
    students.mkdir()
    save_file(generate(load_manifest("wan21_comfy_dim8")), str(models / "vae" / TEACHER))
    save_file({"users.own": torch.ones(4)}, str(students / USERS_FILE))
    # an official file cut short, as an interrupted copy leaves it
    official = base / "official.pth"
    torch.save(generate(load_manifest("flashvaed_wan_official")), official)
    (students / "Flash_VAED_Wan.pth").write_bytes(official.read_bytes()[: official.stat().st_size // 2])
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    torch.manual_seed(0)
    tiny = FlashDecoder(Family.WAN21, "student", WanFamilyDecoder(DecoderSpec.tiny(Family.WAN21, Op.FULL_3D)))
    save_student(tiny, elsewhere / "linked.safetensors")
    (students / "linked.safetensors").symlink_to(elsewhere / "linked.safetensors")
    secret = base / "secret.json"
    secret.write_text(json.dumps({"db_password": SECRET, "stages": SECRET}))
    run_dir = base / "run"
    write_clips(run_dir / "input" / "clips", count=3, frames=9, size=32)
    write_clips(run_dir / "input" / "clips" / "nested", count=2, frames=9, size=32)  # a folder not listed
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        with comfy_server(comfy_root(), nodes=[REPO_ROOT], models_dir=models, run_dir=run_dir) as url:
            yield SimpleNamespace(url=url, students=students, secret=secret)


def distill(name: str = "t_student", **kw) -> dict:
    inputs = {"teacher_vae": ["1", 0], "videos": "clips", "preset": "tiny", "steps": 2, "seed": 0,
              "output_name": name, "crop_px": 32, "clip_frames": 5, "resume": False} | kw  # fmt: skip
    return {"1": {"class_type": "VAELoader", "inputs": {"vae_name": TEACHER}},
            "2": {"class_type": "FlashVAEDPruneDistill", "inputs": inputs}}  # fmt: skip


def load_and_decode(name: str, dtype: str = "auto", mode: str = "auto") -> dict:
    return {
        "1": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": name, "dtype": dtype}},
        "2": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}},
        "3": {"class_type": "FlashVAEDDecode",
              "inputs": {"flash_vaed": ["1", 0], "samples": ["2", 0], "mode": mode, "chunk_frames": 4,
                         "tile_px": 512, "overlap_px": 64}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }  # fmt: skip


def test_a_preset_naming_a_file_on_the_server_is_refused_and_never_read_back(server):
    # High 1: the execution error quoted the first 200 characters of any .json file named as the preset
    for preset in (str(server.secret), "../secret.json"):
        with pytest.raises(InvalidWorkflow) as info:
            run_prompt(server.url, distill(preset=preset))
        problems = "\n".join(info.value.problems)
        assert (
            "FlashVAEDPruneDistill" in problems and "preset" in problems and "never names a file" in problems
        )
        assert SECRET not in problems and "db_password" not in problems


@pytest.mark.parametrize(
    ("prompt", "node", "field"),
    [
        (load_and_decode("Flash_VAED_Wan.pth", dtype="fp64"), "FlashVAEDLoad", "dtype"),
        (load_and_decode("Flash_VAED_Wan.pth", mode="fastest"), "FlashVAEDDecode", "mode"),
        (distill(videos="clips/nested"), "FlashVAEDPruneDistill", "videos"),
    ],
    ids=["dtype", "mode", "videos"],
)
def test_every_combo_is_checked_against_its_options_when_queued(server, prompt, node, field):
    # ComfyUI 0.3.75 does not check V3 combos: dtype="fp64" ended in a KeyError when the node ran
    with pytest.raises(InvalidWorkflow) as info:
        run_prompt(server.url, prompt)
    assert any(node in p and field in p for p in info.value.problems), info.value.problems


def test_a_layout_line_passes_validation_and_a_bad_one_is_refused_before_training(server):
    # a layout line is still a preset from the node (Medium 4: a stage too few trained into a raw error)
    with pytest.raises(PromptFailed, match="refused before it is built: its 3 stages"):
        run_prompt(server.url, distill(preset="16:dw3d:1/8:frame2d:1/8:frame2d:1"))


def test_resume_never_replaces_a_users_file_of_the_output_name(server):
    # High 2: with no run folder, resume=True trained and replaced models/flash_vaed/my_wan_vae.safetensors
    before = (server.students / USERS_FILE).read_bytes()
    with pytest.raises(PromptFailed, match="my_wan_vae.safetensors already exists; resume found no run"):
        run_prompt(server.url, distill("my_wan_vae", resume=True))
    assert (server.students / USERS_FILE).read_bytes() == before


@pytest.mark.parametrize("name", ["CON", "evil\u202egpj", "a" * 300], ids=["CON", "U+202E", "300 chars"])
def test_an_output_name_unsafe_on_some_platform_is_refused(server, name):
    # Low 13 (and Low 9: 300 characters ended in a raw OSError)
    with pytest.raises(PromptFailed, match="is not a plain file name"):
        run_prompt(server.url, distill(name))
    assert not (server.students / "runs" / name[:50]).exists()


def test_a_symlink_out_of_the_model_folders_says_what_to_do(server):
    # Low 14: listed in the dropdown (as the stock VAE Loader lists and loads it), refused with no way out
    with pytest.raises(PromptFailed, match=r"linked.safetensors is a symlink to .*extra_model_paths.yaml"):
        run_prompt(server.url, load_and_decode("linked.safetensors"))


def test_a_damaged_official_file_names_its_path_and_that_deleting_it_helps(server):
    # Low 16: the error said "download it again" without the path or that the node downloads it itself
    with pytest.raises(PromptFailed) as info:
        run_prompt(server.url, load_and_decode("Flash_VAED_Wan.pth"))
    msg = str(info.value)
    assert f"{server.students.resolve() / 'Flash_VAED_Wan.pth'}" in msg
    assert "Delete" in msg and "Load Flash-VAED downloads it again" in msg and "HF_HUB_OFFLINE" in msg
