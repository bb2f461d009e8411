"""Prune & Distill (FlashVAEDPruneDistill) in a real ComfyUI 0.3.75 server, and its library side
(flash_vaed.distill.job).

One server for the module. The teacher is a seeded Wan 2.1 VAE at dim 8 loaded by the stock Load VAE; the
clips are 9-frame 32 px animated WebPs in the input folder; the student is the "tiny" preset, trained on
5-frame 32 px crops, a few steps each (a step is a fraction of a second on a CPU).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from flash_vaed import load_decoder
from flash_vaed.distill import data
from flash_vaed.distill.job import (
    JobError,
    job_paths,
    student_file_name,
    teacher_label,
    teacher_weights,
    write_clip,
)
from flash_vaed.distill_messages import EVENT
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
from support.tiny_clips import write_clips

REPO_ROOT = Path(__file__).resolve().parents[1]
TEACHER = "tiny_wan21.safetensors"
NODE = "FlashVAEDPruneDistill"
CLIPS, BROKEN = "clips", "broken"


# ---- the library side: names, frames, the teacher's weights (no server) ---------------------------------


def test_output_names_are_plain_file_names_in_the_folder(tmp_path):
    assert student_file_name(" wan21_student ") == "wan21_student.safetensors"
    assert student_file_name("a.safetensors") == "a.safetensors"
    student, run_dir = job_paths(tmp_path, "mine")
    assert student == tmp_path.resolve() / "mine.safetensors"
    assert run_dir == tmp_path.resolve() / "runs" / "mine"
    for bad in ("", " ", "../up", "a/b", "a\\b", ".hidden", "x:y", "nul\x00"):
        with pytest.raises(JobError, match="output_name"):
            student_file_name(bad)


def test_frames_become_a_lossless_clip(tmp_path):
    frames = torch.rand(7, 24, 40, 3, generator=torch.Generator().manual_seed(0))
    path = write_clip(frames, tmp_path / "images" / "clip.webp")
    back = data.read_video(path)
    expected = (frames * 255).round().to(torch.uint8)
    assert back.shape == (7, 24, 40, 3) and torch.equal(back, expected)


def test_inference_mode_weights_become_trainable_copies_with_a_stable_label():
    with torch.inference_mode():  # how ComfyUI loads a VAE and runs nodes
        sd = {"w": torch.randn(3, 4, dtype=torch.bfloat16), "n": torch.arange(3)}
    weights = teacher_weights(sd)
    assert not any(t.is_inference() for t in weights.values())
    assert weights["w"].dtype == torch.float32 and weights["n"].dtype == torch.int64
    torch.nn.Parameter(weights["w"])  # an inference tensor would refuse requires_grad
    assert teacher_label(weights) == teacher_label(teacher_weights(sd)) != teacher_label({"w": weights["w"]})


# ---- the server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("prune-distill")
    models = base / "models"
    (models / "vae").mkdir(parents=True)
    (models / "flash_vaed").mkdir()
    save_file(generate(load_manifest("wan21_comfy_dim8")), str(models / "vae" / TEACHER))
    run_dir = base / "run"
    write_clips(run_dir / "input" / CLIPS, count=3, frames=9, size=32)
    (run_dir / "input" / BROKEN).mkdir()
    (run_dir / "input" / BROKEN / "corrupt.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPnonsense")
    # tiny convs on a shared 2-core machine train several times faster on one thread (read at launch)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        with comfy_server(comfy_root(), nodes=[REPO_ROOT], models_dir=models, run_dir=run_dir) as url:
            yield SimpleNamespace(url=url, run_dir=run_dir, students=models / "flash_vaed")


def distill(name: str, videos: str = CLIPS, steps: int = 4, resume: bool = False, **kw) -> dict:
    inputs = {"teacher_vae": ["1", 0], "videos": videos, "preset": "tiny", "steps": steps, "seed": 0,
              "output_name": name, "crop_px": 32, "clip_frames": 5, "resume": resume} | kw  # fmt: skip
    return {"class_type": NODE, "inputs": inputs}


def graph(node: dict, decode: bool = False) -> dict:
    """Load VAE -> Prune & Distill (node "2") [-> Flash-VAED Decode of an empty 64 px latent -> SaveImage]."""
    prompt = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": TEACHER}}, "2": node}
    if decode:
        prompt |= {
            "3": {"class_type": "EmptyHunyuanLatentVideo",
                  "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}},
            "4": {"class_type": "FlashVAEDDecode",
                  "inputs": {"flash_vaed": ["2", 0], "samples": ["3", 0], "mode": "auto", "chunk_frames": 4,
                             "tile_px": 512, "overlap_px": 64}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "distilled"}},
        }  # fmt: skip
    return prompt


def losses_sent(ws, node: str = "2") -> list[dict]:
    return [m for m in ws.of_type(EVENT) if m.get("node") == node]


def state_step(run_dir: Path) -> int:
    with safe_open(str(run_dir / "last.state.safetensors"), "pt") as f:
        return int(f.metadata()["step"])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.comfy
def test_schema_lists_the_node_with_tooltips_and_the_input_folders(server):
    node = get_json(server.url, "/object_info")[NODE]
    assert node["display_name"] == "Prune & Distill (Flash-VAED)" and node["category"] == "latent/video"
    assert len(node["description"]) > 80 and node["output_node"] is True
    order = node["input_order"]
    assert order["required"] == [
        "teacher_vae", "videos", "preset", "steps", "seed", "output_name", "crop_px", "clip_frames"
    ]  # fmt: skip
    assert order["optional"] == ["resume", "images"] and "unique_id" in order["hidden"]
    assert node["output"] == ["FLASH_VAED", "STRING"]
    for group in ("required", "optional"):
        for name, spec in node["input"][group].items():
            assert len(spec[1].get("tooltip", "")) > 20, f"{name} has no tooltip"
    required = node["input"]["required"]
    assert required["seed"][1]["control_after_generate"] is False  # a queued run must not re-seed itself
    assert required["videos"][1]["options"] == [BROKEN, CLIPS, "(none)"]
    assert required["preset"][1]["options"][:2] == ["auto", "wan21-official"]
    assert "tiny" in required["preset"][1]["options"]


@pytest.mark.comfy
def test_trains_saves_and_the_student_decodes_in_the_same_prompt(server, tmp_path):
    with listen(server.url) as ws:
        entry = run_prompt(
            server.url, graph(distill("t_train", steps=4), decode=True), client_id=ws.client_id
        )
        sent = losses_sent(ws)
        progress = [p for p in ws.of_type("progress") if p["node"] == "2"]
    # the student file, as Load Flash-VAED and the library open it
    path = server.students / "t_train.safetensors"
    student = load_decoder(path)
    assert student.role == "student" and student.family.value == "wan21"
    assert (server.students / "runs" / "t_train" / "last.state.safetensors").is_file()
    assert (server.students / "runs" / "t_train" / "report.json").is_file()
    assert "t_train.safetensors" in entry["outputs"]["2"]["text"][0]
    # one loss message per logged step (every step of a short run), then done, in the documented format
    steps, done = sent[:-1], sent[-1]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        assert set(m) == {"v", "node", "step", "total", "phase", "losses", "lr"}
        assert m["v"] == 1 and m["node"] == "2" and m["total"] == 4 and m["phase"] in (1, 2, 3)
        assert "loss" in m["losses"] and all(isinstance(v, float) for v in m["losses"].values())
        assert m["lr"] > 0
    assert [m["phase"] for m in steps] == sorted(m["phase"] for m in steps)
    assert done == {"v": 1, "node": "2", "done": True, "out": "t_train.safetensors"}
    assert [(p["value"], p["max"]) for p in progress][-1] == (4, 4)
    # the FLASH_VAED output decoded the empty latent as the saved file does
    records = entry["outputs"]["5"]["images"]
    frames = np.stack([np.asarray(Image.open(download(server.url, r, tmp_path))) for r in records])
    expected = torch.clamp((student.decode(torch.zeros(1, 16, 3, 8, 8)) + 1) / 2, 0, 1)[0].movedim(0, -1)
    expected = np.clip(255.0 * expected.numpy(), 0, 255).astype(np.uint8)
    assert frames.shape == (9, 64, 64, 3)
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.comfy
def test_cancel_keeps_a_checkpoint_bad_data_keeps_it_and_resume_continues(server):
    clips = server.run_dir / "input" / "cancel_clips"
    write_clips(clips, count=2, frames=9, size=32)
    run_dir = server.students / "runs" / "t_cancel"
    with listen(server.url) as ws:
        prompt_id = queue_prompt(
            server.url, graph(distill("t_cancel", "cancel_clips", steps=3000)), ws.client_id
        )
        ws.wait_for(lambda m: m.get("type") == EVENT and m["data"].get("step", 0) >= 2, timeout_s=120)
        post_json(server.url, "/interrupt", {})
        assert ws.wait_done(prompt_id, timeout_s=60)["type"] == "execution_interrupted"
        sent = losses_sent(ws)
    assert wait_for_prompt(server.url, prompt_id)["status"]["status_str"] == "error"
    stopped = state_step(run_dir)
    assert 2 <= stopped < 3000 and stopped >= max(m["step"] for m in sent)
    assert not any(m.get("done") for m in sent)
    assert load_decoder(run_dir / "last.safetensors").role == "student"
    assert not (server.students / "t_cancel.safetensors").exists()
    before = digest(run_dir / "last.state.safetensors")

    # the same run again without resume, or resumed with other settings: refused, naming the fix
    with pytest.raises(PromptFailed, match="already holds a run.*turn on resume"):
        run_prompt(server.url, graph(distill("t_cancel", "cancel_clips", steps=3000)))
    with pytest.raises(PromptFailed, match=r"other settings \(seed: 0 -> 1\)"):
        run_prompt(server.url, graph(distill("t_cancel", "cancel_clips", steps=3000, resume=True, seed=1)))

    # the clips went bad: a clear error naming the file, and the checkpoint is kept as it was
    hidden = clips.parent / ".cancel_clips_hidden"
    clips.rename(hidden)
    clips.mkdir()
    (clips / "corrupt.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPnonsense")
    with pytest.raises(PromptFailed) as info:
        run_prompt(server.url, graph(distill("t_cancel", "cancel_clips", steps=3000, resume=True)))
    assert "no usable training clips" in str(info.value) and "corrupt.webp: unreadable" in str(info.value)
    assert digest(run_dir / "last.state.safetensors") == before
    shutil.rmtree(clips)
    hidden.rename(clips)

    # resumed (with fewer steps in all, so it ends soon): it continues at the next step and finishes
    with listen(server.url) as ws:
        entry = run_prompt(
            server.url,
            graph(distill("t_cancel", "cancel_clips", steps=stopped + 2, resume=True)),
            client_id=ws.client_id,
        )
        sent = losses_sent(ws)
    assert [m["step"] for m in sent if not m.get("done")] == [stopped + 1, stopped + 2]
    assert sent[-1] == {"v": 1, "node": "2", "done": True, "out": "t_cancel.safetensors"}
    assert f"resumed from {stopped}" in entry["outputs"]["2"]["text"][0]
    assert state_step(run_dir) == stopped + 2
    assert load_decoder(server.students / "t_cancel.safetensors").role == "student"


@pytest.mark.comfy
def test_a_folder_of_only_a_corrupt_file_is_a_clear_error(server):
    start = time.monotonic()
    with pytest.raises(PromptFailed) as info:
        run_prompt(server.url, graph(distill("t_bad", BROKEN)))
    msg = str(info.value)
    assert NODE in msg and "no usable training clips" in msg and "corrupt.webp: unreadable" in msg
    assert not (server.students / "t_bad.safetensors").exists()
    assert not (server.students / "runs" / "t_bad" / "last.state.safetensors").exists()
    assert time.monotonic() - start < 60


@pytest.mark.comfy
@pytest.mark.parametrize(
    ("videos", "says"), [("../models", "tries to leave"), ("missing", "is not a folder")]
)
def test_a_videos_folder_outside_the_input_folder_is_refused_when_queued(server, videos, says):
    with pytest.raises(InvalidWorkflow) as info:
        run_prompt(server.url, graph(distill("t_names", videos)))
    # ComfyUI 0.3.75 reports a failed validate_inputs once per input it takes (videos and preset here)
    problems = [p for p in info.value.problems if NODE in p]
    assert problems and all(says in p for p in problems)
    assert any(p.split(f"({NODE}) ")[1].startswith("videos") for p in problems)


@pytest.mark.comfy
@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
def test_an_output_name_that_is_no_plain_file_name_fails_before_training(server, name):
    with pytest.raises(PromptFailed, match="is not a plain file name") as info:
        run_prompt(server.url, graph(distill(name)))
    assert NODE in str(info.value)
    assert not any(p.suffix == ".safetensors" for p in server.students.parent.rglob("*escape*"))


@pytest.mark.comfy
def test_no_folder_and_no_images_says_what_to_connect(server):
    with pytest.raises(PromptFailed, match="pick a folder of clips in videos, or connect a batch of frames"):
        run_prompt(server.url, graph(distill("t_none", "(none)")))


@pytest.mark.comfy
def test_a_preset_of_another_family_names_the_ones_that_fit(server):
    with pytest.raises(PromptFailed, match="pick one of auto, wan21-official, .*tiny") as info:
        run_prompt(server.url, graph(distill("t_preset", preset="ltx-official")))
    assert "a student of LTX-Video 0.9 latents; the teacher is Wan 2.1" in str(info.value)


@pytest.mark.comfy
def test_an_image_batch_trains_instead_of_a_folder(server):
    # Load Image reads every frame of an animated WebP: a (9, 32, 32, 3) batch
    node = distill("t_images", "(none)", steps=2)
    node["inputs"]["images"] = ["3", 0]
    prompt = graph(node) | {"3": {"class_type": "LoadImage", "inputs": {"image": f"{CLIPS}/clip1.webp"}}}
    run_prompt(server.url, prompt)
    clip = server.students / "runs" / "t_images" / "images" / "clip.webp"
    assert data.probe_video(clip) == (9, 32, 32)
    assert load_decoder(server.students / "t_images.safetensors").role == "student"
