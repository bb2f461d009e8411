"""One distillation as an application runs it: the Prune & Distill node's side of `loop.run`.

    job = DistillJob(models_dir="models/flash_vaed", output_name="my_student", data="input/clips",
                     preset="tiny", steps=200)
    result = run_job(job, vae_state_dict, on_progress=..., on_losses=...)
    result.student_path                        # models/flash_vaed/my_student.safetensors

What it adds to the loop: a teacher VAE already in memory (its state dict in the original key layout, as
ComfyUI's ``vae.first_stage_model.state_dict()`` gives it), a named student file with its run folder
``<models_dir>/runs/<name>/`` (checkpoints: a resume finds them there), a frame batch written as a training
clip, the losses of each logged step, and errors worded for the node's inputs. No ComfyUI here: the node
passes callables.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.io import from_state_dict, safe_child
from ..decoder import FlashDecoder
from ..errors import FlashVAEDError
from ..names import name_problem
from ..presets import PRESETS, parse_spec
from . import data, schedule
from .config import DistillConfig, describe_mismatch
from .loop import NoTrainingVideos, run
from .resume import RunInTheWay, SettingsChanged, saved_run

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
RUNS = "runs"  # <models_dir>/runs/<output name>/: the loop's checkpoints, config, report
IMAGES = "images"  # <run folder>/images/clip.webp: a frame batch, as the loop reads clips from a folder
APP_FOLDERS = {"clipspace", "3d"}  # made by ComfyUI in its input folder
MAX_PLOT_POINTS = 500  # loss messages per run (each one redraws the plot in the browser)
# node input names of the config fields a resume must keep
INPUT_NAMES = {
    "teacher": "teacher_vae",
    "data": "videos / images",
    "preset": "preset",
    "seed": "seed",
    "crop_px": "crop_px",
    "clip_frames": "clip_frames",
}
LossesFn = Callable[[int, int, int, dict[str, float], float], None]
PRESET_NAMES = ("auto", "official", *PRESETS)
MAX_LAYOUT_CHARS = 1000
PRESET_HINT = (
    "pick one from the list, or write a layout line such as '384:dw3d:3/384:dw3d:3/24:frame2d:3/12:frame2d:3' "
    "(a preset here never names a file)"
)


class JobError(FlashVAEDError, ValueError):
    """The job's inputs cannot make a run (bad name, no data, a run in the way)."""


@dataclass(frozen=True)
class DistillJob:
    """What the node asks for. data: a folder of clips (searched recursively); frames: (T, H, W, 3) in
    [0, 1], one clip, used instead of data when given. device: a torch device string. Raises JobError when
    there is no data, or frames that make no clip."""

    models_dir: str | os.PathLike
    output_name: str
    data: str | os.PathLike | None = None
    frames: torch.Tensor | None = None
    preset: str = "auto"
    steps: int = 2000
    seed: int = 0
    crop_px: int = 128
    clip_frames: int = 17
    resume: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        check_preset(self.preset)
        if self.frames is not None:
            _check_frames(self.frames, self.clip_frames, self.crop_px)
        elif self.data is None:
            raise JobError(
                "no training data: pick a folder of clips in videos, or connect a batch of frames to images"
            )


@dataclass
class JobResult:
    student_path: Path  # <models_dir>/<name>.safetensors
    run_dir: Path
    student: FlashDecoder  # eval mode, float32, on the training device
    history: list[dict]
    report: dict | None
    resumed_from: int  # the step the run continued from (0: a new run)


def is_layout_line(text: str) -> bool:
    """Whether `text` is a custom student layout line (flash_vaed.presets.parse_spec's format)."""
    if len(text) > MAX_LAYOUT_CHARS or ":" not in text:
        return False
    try:
        parse_spec(text)
    except ValueError:
        return False
    return True


def check_preset(preset: str) -> None:
    """Raise JobError unless `preset` is a preset name or a layout line. The node's preset never names a
    file: the loop reads a JSON spec file for a preset that is one, and a path from the HTTP API must not
    make the server read (and quote back) a file of its own."""
    if not isinstance(preset, str) or not (preset in PRESET_NAMES or is_layout_line(preset)):
        shown = preset[:120] if isinstance(preset, str) else preset
        raise JobError(f"preset {shown!r} is neither a preset name nor a layout line: {PRESET_HINT}")


# ---- names and folders ----------------------------------------------------------------------------------


def student_file_name(name: str) -> str:
    """`name` as a file name in the students' folder, .safetensors added; raises JobError for names that
    are empty, hidden, too long, or unsafe on some platform (flash_vaed.names)."""
    text = (name or "").strip() if isinstance(name, str) else ""
    stem = text[: -len(SUFFIX)] if text.lower().endswith(SUFFIX) else text
    why = name_problem(stem)  # unsafe on any platform ComfyUI runs on (Windows device names, U+202E, ...)
    if why:
        shown = name[:120] + "..." if isinstance(name, str) and len(name) > 120 else name
        raise JobError(f"output_name {shown!r} is not a plain file name ({why}); e.g. 'wan21_student'")
    return stem + SUFFIX


def job_paths(models_dir: str | os.PathLike, output_name: str) -> tuple[Path, Path]:
    """(student file, run folder) of `output_name`, both checked to stay inside `models_dir`."""
    file_name = student_file_name(output_name)
    stem = file_name[: -len(SUFFIX)]
    return safe_child(models_dir, file_name), safe_child(models_dir, f"{RUNS}/{stem}")


def data_folder(input_dir: str | os.PathLike, name: str) -> Path:
    """The folder `name` inside `input_dir`; raises (CheckpointError / JobError) for names that leave it or
    folders that do not exist."""
    path = safe_child(input_dir, name)
    if not path.is_dir():
        raise JobError(f"videos: {name!r} is not a folder in {input_dir}; put your clips in one there")
    return path


def folder_choices(input_dir: str | os.PathLike) -> list[str]:
    """The folders directly inside `input_dir`, sorted; hidden ones and those ComfyUI makes for itself
    (the mask editor's clipspace, Load 3D's 3d) left out."""
    root = Path(input_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in APP_FOLDERS
    )


# ---- the teacher ----------------------------------------------------------------------------------------


def teacher_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached float32 copies outside inference mode: ComfyUI loads (and runs nodes) under
    torch.inference_mode, and its inference tensors cannot become trainable parameters (a pruned student
    starts from teacher weights). The copies also keep the run from touching the loaded VAE."""
    with torch.inference_mode(False):
        return {
            k: v.detach().to(torch.float32, copy=True) if v.is_floating_point() else v.detach().clone()
            for k, v in state_dict.items()
        }


def teacher_label(weights: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """'vae-sha256:<16 hex>' over the keys, shapes and float32 values (and the VAE config of the metadata,
    where there is one: LTX-2's architecture): the saved config's teacher, so a resume with another VAE is
    refused."""
    digest = hashlib.sha256()
    if metadata and "config" in metadata:
        digest.update(metadata["config"].encode())
    for key in sorted(weights):
        t = weights[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return f"vae-sha256:{digest.hexdigest()[:16]}"


# ---- data -----------------------------------------------------------------------------------------------


def write_clip(frames: torch.Tensor, path: Path) -> Path:
    """frames (T, H, W, 3) in [0, 1] -> a lossless animated WebP at `path` (written atomically)."""
    from PIL import Image

    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise JobError(f"images must be a batch of RGB frames (T, H, W, 3), got shape {tuple(frames.shape)}")
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in pixels]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], lossless=True, duration=40)
    os.replace(tmp, path)
    return path


def _check_frames(frames: torch.Tensor, clip_frames: int, crop_px: int) -> None:
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise JobError(f"images must be a batch of RGB frames (T, H, W, 3), got shape {tuple(frames.shape)}")
    t, h, w = frames.shape[:3]
    if t < clip_frames or min(h, w) < crop_px:
        raise JobError(
            f"images: {t} frames of {w}x{h}, but a training clip takes {clip_frames} frames and a {crop_px} px "
            "square crop: give more or larger frames, or lower clip_frames / crop_px"
        )


# ---- the run --------------------------------------------------------------------------------------------


def job_config(job: DistillJob, data_dir: Path, run_dir: Path, teacher: str) -> DistillConfig:
    """The loop's config for `job`. Only fields a resume may change (log_every, device) depend on steps."""
    return DistillConfig(
        teacher=teacher,
        data=str(data_dir),
        out=str(run_dir),
        preset=job.preset,
        steps=job.steps,
        seed=job.seed,
        crop_px=job.crop_px,
        clip_frames=job.clip_frames,
        resume=job.resume,
        device=job.device,
        log_every=-(-job.steps // MAX_PLOT_POINTS),  # ceil: at most MAX_PLOT_POINTS logged steps
    )


def plotted_losses(record: Mapping, cfg: DistillConfig) -> dict[str, float]:
    """The weighted total and every term weighted at the record's step: what the loss plot draws."""
    weights = schedule.loss_weights(record["step"] - 1, cfg.steps, cfg.schedule)
    return {"loss": record["loss"]} | {t: record[t] for t in schedule.TERMS if weights[t] > 0 and t in record}


def run_job(
    job: DistillJob,
    vae_state_dict: Mapping[str, torch.Tensor],
    on_progress: Callable[[int, int], None] | None = None,
    on_losses: LossesFn | None = None,
    vae_metadata: Mapping[str, str] | None = None,
) -> JobResult:
    """Distil a student from the VAE whose state dict is given, save it as <models_dir>/<name>.safetensors.

    vae_metadata: the metadata of the VAE's file where the state dict alone does not describe the model
    (LTX-2: {"config": ...} with its VAE config, as ComfyUI built it).

    on_progress(done, total) after every step; an exception from it stops the run after a resumable
    checkpoint in the run folder and is re-raised. on_losses(step, total, phase, losses, lr) every logged
    step (at most MAX_PLOT_POINTS per run). Runs with autograd on even when called in inference mode.
    """
    student_path, run_dir = job_paths(job.models_dir, job.output_name)
    data_dir = run_dir / IMAGES if job.frames is not None else Path(job.data)
    weights = teacher_weights(vae_state_dict)
    cfg = job_config(job, data_dir, run_dir, teacher_label(weights, vae_metadata))
    try:
        saved = saved_run(cfg)  # checked here too: a frame batch must not overwrite another run's clip
    except RunInTheWay as err:
        raise JobError(
            f"{run_dir} already holds a run of {student_path.name} (step {err.step} of {err.steps}): turn on "
            "resume to continue it (steps may be raised), or pick another output_name"
        ) from None
    except SettingsChanged as err:
        raise JobError(
            f"the run in {run_dir} was started with other settings "
            f"({describe_mismatch(err.saved, err.cfg, INPUT_NAMES)}). A resume continues it with the same "
            "teacher, data, preset, seed, crop_px and clip_frames (only steps may change); set them back, or "
            "pick another output_name for a new run"
        ) from None
    if saved is None and student_path.exists():
        # resume continues a run; with no run to continue, it must not start one over a file that is there
        no_run = f"; resume found no run to continue in {run_dir}" if job.resume else ""
        raise JobError(
            f"{student_path} already exists{no_run}: pick another output_name, or move the file away first "
            "(a new run never overwrites a file)"
        )
    tmp = student_path.with_name(f".{student_path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a copy an earlier run was killed while writing
    if job.frames is not None:
        write_clip(job.frames, data_dir / "clip.webp")

    def on_record(record: dict) -> None:
        step = record["step"]
        if on_losses is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            on_losses(step, cfg.steps, record["phase"], plotted_losses(record, cfg), record["lr"])

    try:
        with torch.inference_mode(False), torch.enable_grad():
            source = from_state_dict(weights, vae_metadata) if vae_metadata else weights
            result = run(cfg, on_progress, on_record, teacher_weights=source)
    except NoTrainingVideos as err:
        raise JobError(
            f"no usable training clips in {data_dir} (a clip takes {job.clip_frames} frames and a "
            f"{job.crop_px} px crop): {data.list_skipped(err.skipped)}"
        ) from err
    shutil.copyfile(result.student_path, tmp)
    os.replace(tmp, student_path)
    log.info("Prune & Distill: saved %s (run folder %s)", student_path, run_dir)
    return JobResult(
        student_path, run_dir, result.student, result.history, result.report, saved.step if saved else 0
    )
