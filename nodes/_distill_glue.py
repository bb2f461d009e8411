"""The ComfyUI side of Prune & Distill: the input and model folders, the teacher VAE's weights, freeing the
diffusion model, progress and Cancel, the websocket loss messages, and the trained student as FLASH_VAED.

The training is `flash_vaed.distill.job.run_job` (and through it the same `loop.run` as training/distill.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch
from server import PromptServer

from ..flash_vaed.checkpoint.io import open_tensors
from ..flash_vaed.checkpoint.load import strip_model_prefix
from ..flash_vaed.distill.job import (
    DistillJob,
    JobError,
    JobResult,
    data_folder,
    folder_choices,
    job_paths,
    run_job,
)
from ..flash_vaed.distill_messages import EVENT, done_message, loss_message
from ..flash_vaed.errors import FlashVAEDError
from ..flash_vaed.presets import PRESETS
from . import _glue

log = logging.getLogger(__name__)

NO_FOLDER = "(none)"  # the videos choice when the frames come from the images input


def video_folder_names() -> list[str]:
    """The folders in ComfyUI's input directory, then NO_FOLDER."""
    return [*folder_choices(folder_paths.get_input_directory()), NO_FOLDER]


def preset_names() -> list[str]:
    """ "auto" (the official student layout of the teacher's family, or its recipe), then flash_vaed.presets."""
    return ["auto", *PRESETS]


def students_dir() -> Path:
    """models/flash_vaed (the first folder of that name, where Load Flash-VAED looks first)."""
    return Path(folder_paths.get_folder_paths(_glue.FOLDER)[0])


def check_folder(videos: str | None) -> bool | str:
    """True, or why `videos` is not a folder in the input directory. None (no value, or a link, whose value
    ComfyUI does not know while it validates) is refused: pick the folder on the node."""
    if videos == NO_FOLDER:
        return True
    if not isinstance(videos, str):
        return f"videos: no folder chosen ({videos!r}); pick a folder of clips in ComfyUI's input directory"
    try:
        data_folder(folder_paths.get_input_directory(), videos)
    except FlashVAEDError as err:
        return str(err)
    return True


def vae_weights(vae) -> tuple[Mapping[str, torch.Tensor], dict[str, str] | None]:
    """The teacher VAE's weights in its checkpoint's original key layout (what ComfyUI built it from), and
    the metadata the state dict alone lacks: the VAE config that newer ComfyUI builds LTX-2 VAEs from.

    Load Flash-VAED's VAE output counts as a teacher when its file is an original VAE (ComfyUI 0.3.75's
    Load VAE cannot open LTX-2 files; Load Flash-VAED can): its VAE tensors and metadata are read from that
    file. A Flash-VAED student is refused."""
    flash = getattr(vae, "flash", None)  # our drop-in VAE (Load Flash-VAED)
    if flash is not None:
        if flash.decoder.role != "teacher":
            raise JobError(
                f"teacher_vae is the VAE output of Load Flash-VAED with {flash.name}, a Flash-VAED student; "
                "connect the original VAE of your model (Load VAE, or Load Flash-VAED with the original VAE "
                "file)"
            )
        src = strip_model_prefix(open_tensors(_glue.resolve_decoder_path(flash.name)))
        return src.load(sorted(src.keys())), src.metadata or None
    model = vae.first_stage_model
    config = getattr(model, "config", None)  # newer ComfyUI keeps the config an LTX VAE was built from
    metadata = {"config": json.dumps({"vae": config})} if isinstance(config, dict) else None
    return model.state_dict(), metadata


def _send(message: dict) -> None:
    """One websocket message to the browser that queued the prompt (flash_vaed.distill_messages)."""
    server = PromptServer.instance
    server.send_sync(EVENT, message, server.client_id)


def summary(result: JobResult) -> str:
    last = result.history[-1] if result.history else None
    text = f"{result.student_path.name}: step {last['step'] if last else result.resumed_from}"
    if result.resumed_from:
        text += f" (resumed from {result.resumed_from})"
    if last:
        text += f", loss {last['loss']:.4f}"
    mean = (result.report or {}).get("mean", {})
    if "psnr_vs_teacher" in mean:
        text += f", held-out PSNR vs teacher {mean['psnr_vs_teacher']:.2f} dB"
    return text + f"; run folder {result.run_dir}"


def distill(
    vae,
    videos: str,
    images: torch.Tensor | None,
    node_id: str,
    **settings,
) -> tuple[_glue.FlashModel, str, str]:
    """Train a student of `vae` on the clips in input/<videos> (or the `images` frames), save it in
    models/flash_vaed; returns (FLASH_VAED, file name, summary). settings: DistillJob's preset, steps, seed,
    output_name, crop_px, clip_frames, resume."""
    job_paths(students_dir(), settings["output_name"])  # a bad name fails before anything is loaded
    if images is not None and videos != NO_FOLDER:
        log.info("Prune & Distill: training on the images input; the videos folder %r is not used", videos)
    folder = None
    if images is None and videos != NO_FOLDER:
        folder = data_folder(folder_paths.get_input_directory(), videos)
    # no data, or frames that make no clip, fail here: before the models are unloaded
    job = DistillJob(
        students_dir(), data=folder, frames=images, device=str(mm.get_torch_device()), **settings
    )
    weights, metadata = vae_weights(vae)
    mm.unload_all_models()  # the diffusion model (and every other) leaves the GPU for the training
    mm.soft_empty_cache()
    result = run_job(
        job,
        weights,
        on_progress=_glue.comfy_progress(),
        on_losses=lambda *step: _send(loss_message(node_id, *step)),
        vae_metadata=metadata,
    )
    _send(done_message(node_id, result.student_path.name))
    name, text = result.student_path.name, summary(result)
    del result  # the trained copy on the training device: the output is loaded from the saved file
    mm.soft_empty_cache()
    return _glue.load_flash_model(name, "auto"), name, text
