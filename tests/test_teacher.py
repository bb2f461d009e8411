"""The small real-architecture teacher: its layout, its training loop (split, resume, export) and the shipped
weights (opened by ComfyUI itself, and reconstructing held-out real clips)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flash_vaed import load_decoder, load_encoder
from flash_vaed.arch.wan_vae import WanVAE
from flash_vaed.distill import data as clipdata
from flash_vaed.distill.losses import psnr
from flash_vaed.errors import FlashVAEDError
from flash_vaed.spec import Family
from support.comfy_subprocess import comfy_vae_decode, load_outputs
from support.reference_weights import load_manifest, manifest_shapes
from support.tiny_clips import write_clips
from training.cpu import flushed_subnormals, keep_freed_memory
from training.teacher import (
    EMBEDDED_TEACHER,
    TEACHER_CARD_KEY,
    TeacherConfig,
    embedded_teacher,
    export_teacher,
    run,
    split,
    template_clips_dir,
    template_group,
)


def test_wan_vae_has_the_real_wan21_keys_at_width_96():
    real = manifest_shapes(load_manifest("wan21_comfy"))
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in WanVAE(96).real_state_dict().items()}
    assert ours == real


def test_template_siblings_stay_on_one_side_of_the_split(tmp_path):
    for name in ("a-1", "a-2", "b-1", "c-1", "c-2", "d-1", "e-1", "f-1"):
        write_clips(tmp_path / "clips" / name, count=1, frames=5, size=16)
        (tmp_path / "clips" / name / "clip0.webp").rename(tmp_path / "clips" / f"{name}.webp")
    cfg = TeacherConfig(data=str(tmp_path / "clips"), out=str(tmp_path / "out"), holdout=0.3)
    train, held = split(cfg, clipdata.ClipShape(5, 16))
    assert held and train
    assert {template_group(v.name) for v in train}.isdisjoint({template_group(v.name) for v in held})
    assert split(cfg, clipdata.ClipShape(5, 16)) == (train, held)  # seeded: the same every time


def _cfg(tmp_path: Path, out: str, steps: int) -> TeacherConfig:
    clips = tmp_path / "clips"
    if not clips.exists():
        write_clips(clips, count=4, frames=9, size=32, smooth=True)
    return TeacherConfig(
        data=str(clips),
        out=str(tmp_path / out),
        dim=4,
        steps=steps,
        clip_frames=5,
        crop_px=16,
        warmup_steps=1,
        holdout=0.25,
        eval_every=2,
        eval_frames=5,
        eval_px=16,
        checkpoint_every=2,
        threads=1,
    )


def test_training_lowers_the_loss(tmp_path):
    """Against a control run that sees the very same batches (crops depend on seed and step only) with
    a learning rate of almost zero, so the batch-to-batch noise cancels."""

    def last_losses(out: str, lr: float) -> float:
        cfg = _cfg(tmp_path, out, 60)
        cfg.crop_px, cfg.lr, cfg.eval_every, cfg.checkpoint_every = 32, lr, 60, 60
        return sum(h["loss"] for h in run(cfg)["history"][-20:])

    assert last_losses("trained", 2e-3) < 0.9 * last_losses("control", 1e-9)


def test_resume_is_exact(tmp_path):
    straight = run(_cfg(tmp_path, "straight", 4))
    run(_cfg(tmp_path, "split", 2))
    resumed = run(_cfg(tmp_path, "split", 4), resume=True)
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["loss"] == b["loss"]
    for (k, a), b in zip(
        straight["ema"].state_dict().items(), resumed["ema"].state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    assert [h["step"] for h in straight["evals"]] == [1, 3]


def test_resume_with_other_flags_is_refused(tmp_path):
    run(_cfg(tmp_path, "run", 2))
    changed = _cfg(tmp_path, "run", 4)
    changed.crop_px = 24
    with pytest.raises(FlashVAEDError, match="different config"):
        run(changed, resume=True)


def test_exported_teacher_opens_as_a_wan21_vae_with_its_card(tmp_path):
    result = run(_cfg(tmp_path, "run", 1))
    path = export_teacher(result["ema"], tmp_path / "teacher.safetensors", {"held_out": result["held_out"]})
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()[TEACHER_CARD_KEY])["held_out"] == result["held_out"]
    assert {t.dtype for t in load_file(str(path)).values()} == {torch.float16}
    dec, enc = load_decoder(path), load_encoder(path)
    assert dec.family is Family.WAN21 and enc.family is Family.WAN21
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    ema = result["ema"].float()
    with torch.no_grad():
        ref = ema.decode(ema.encode(x))
    # fp16 storage: close to the fp32 EMA, not equal
    assert (dec.decode(enc.encode(x)) - ref).abs().max().item() < 0.05


def test_subnormals_are_flushed_only_inside_the_block():
    tiny = torch.tensor([1e-39])  # subnormal in float32
    with flushed_subnormals():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0


def test_keep_freed_memory_takes_on_glibc():
    assert keep_freed_memory() in (True, False)
    if Path("/lib/x86_64-linux-gnu/libc.so.6").exists():
        assert keep_freed_memory() is True


# ---- the shipped weights ----------------------------------------------------------------------------


def test_shipped_teacher_is_small_and_has_its_card():
    path = embedded_teacher()
    assert path.stat().st_size <= 25 * 1024 * 1024
    with safe_open(str(path), "pt") as f:
        card = json.loads(f.metadata()[TEACHER_CARD_KEY])
    assert card["held_out"] and card["held_out_psnr"] > 13
    assert json.loads(EMBEDDED_TEACHER.with_suffix(".json").read_text())["held_out"] == card["held_out"]


def test_shipped_teacher_reconstructs_a_held_out_real_clip(one_thread):
    with safe_open(str(embedded_teacher()), "pt") as f:
        held = json.loads(f.metadata()[TEACHER_CARD_KEY])["held_out"]
    shape = clipdata.ClipShape(9, 64)
    videos = [v for v in clipdata.scan_videos(template_clips_dir(), shape)[0] if v.name == held[0]]
    x = clipdata.ClipReader(videos, shape).clip(clipdata.eval_crops(videos, shape, 1)[0]).unsqueeze(0)
    y = load_decoder(embedded_teacher()).decode(load_encoder(embedded_teacher()).encode(x))
    assert psnr(y, x) > 17  # never trained on this clip (22.2 dB); random weights of the layout give 12.0


@pytest.mark.comfy
def test_shipped_teacher_decodes_as_in_comfyui(tmp_path):
    latent = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    comfy_vae_decode(embedded_teacher(), latent, out_path=tmp_path / "comfy.safetensors")
    raw = load_outputs(tmp_path / "comfy.safetensors")["raw"]
    ours = load_decoder(embedded_teacher()).decode(latent)
    assert ours.shape == raw.shape
    assert (ours - raw).abs().max().item() < 5e-5


def test_every_config_field_has_a_documented_flag():
    import dataclasses
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_teacher", Path(__file__).parents[1] / "training" / "train_teacher.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.HELP) == {f.name for f in dataclasses.fields(TeacherConfig)}
    cfg, _ = module.parse(["--out", "x", "--data", "clips", "--steps", "7", "--crop-px", "32"])
    assert (cfg.steps, cfg.crop_px, cfg.out) == (7, 32, "x")


def test_stopping_early_from_a_checkpoint_evaluates_it(tmp_path):
    cfg = _cfg(tmp_path, "run", 4)
    cfg.eval_every = 100

    def interrupt(done: int, total: int, record: dict) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_progress=interrupt)  # the checkpoint of step 2 has no evaluation
    cfg.steps = 2
    with pytest.raises(FlashVAEDError, match="different config"):
        run(dataclasses.replace(cfg, lr=1.0), resume=True)
    stopped = run(cfg, resume=True)  # nothing left to train: evaluate the checkpoint, as a finished run
    assert [h["step"] for h in stopped["evals"]] == [1]
    assert len(stopped["history"]) == 2
