"""The distillation loop, shared by `training/distill.py` and the Prune & Distill node.

    from flash_vaed.distill.loop import DistillConfig, run
    result = run(DistillConfig(teacher="wan_2.1_vae.safetensors", data="videos/", out="runs/wan21",
                               preset="official", steps=20000))
    result.student_path        # a safetensors student that flash_vaed.load_decoder opens

`run` reads top to bottom: set up (the run folder, devices, DDP, teacher, encoder, data, student, adapters,
optimizer, resume), then the three phases in order, each the same step (draw a batch, teacher targets and
features, student forward, weighted loss, step), then the final save and the evaluation report. What
changes between the phases is the weight vector from `schedule.loss_weights`, printed at the start of each
phase. The pieces live beside it: config.py, resume.py (checkpoints), student.py (layout, init,
adapters), batches.py (data and teacher targets), evaluate.py (the report).

Files in cfg.out: last.safetensors and last.state.safetensors (resume.py), config.json (the
DistillConfig), student.safetensors (the final student), report.json and report.md (evaluate.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import finite
from ..checkpoint.io import TensorSource
from ..checkpoint.load import load_decoder, save_student
from ..cost import decoder_cost
from ..decoder import FlashDecoder
from ..encoder import FlashEncoder, load_encoder
from ..errors import FlashVAEDError
from ..spec import Family
from . import data, limits, losses, resume, schedule
from .batches import FEATURE_TERMS, Batches
from .config import DistillConfig, DistillError
from .evaluate import evaluate, summarize_history, write_report
from .student import Trainee, fit_adapters, init_student, resolve_spec, to_raw

__all__ = ["DistillConfig", "DistillError", "DistillInterrupted", "DistillResult", "NoTrainingVideos", "run"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


class DistillInterrupted(DistillError):
    """Another rank was stopped; this one saved nothing and stops too."""


class NoTrainingVideos(DistillError):
    """No file in the data folder makes a training clip; `skipped` says why for each ("<name>: <why>")."""

    def __init__(self, folder: str, shape: data.ClipShape, skipped: list[str]):
        self.skipped = skipped
        super().__init__(
            f"no usable training videos in {folder} (need clips of {shape.frames} frames and {shape.size} px): "
            f"{data.list_skipped(skipped)}"
        )


@dataclass
class DistillResult:
    """student_path: the final student file; student: the trained decoder (eval mode, on its device);
    history: one record per step ({"step", "phase", "lr", "loss", <terms>, "time_s"}, rank means);
    report: the evaluation (report.json), None when not evaluated or on ranks other than 0."""

    student_path: Path
    history: list[dict]
    report: dict | None = None
    steps: int = 0
    student: FlashDecoder | None = None
    info: dict = field(default_factory=dict)


def run(
    cfg: DistillConfig,
    on_progress: ProgressFn | None = None,
    on_record: Callable[[dict], None] | None = None,
    *,
    teacher_weights: Mapping[str, torch.Tensor] | TensorSource | None = None,
) -> DistillResult:
    """Distil a student from cfg.teacher on the videos in cfg.data; see the module docstring.

    teacher_weights: the teacher VAE's state dict, already in memory (the Prune & Distill node passes the
    loaded ComfyUI VAE's; a `TensorSource` where it needs its file's metadata: LTX-2's config), used
    instead of reading cfg.teacher, which then only labels the teacher in the
    saved config (a resume must give the same label); cfg.encoder, when set, is still a file.

    on_progress(done, total) is called after every step (rank 0); an exception raised from it stops the
    run after a resumable checkpoint is written, and is re-raised. on_record(record) gets each step's
    history record first (rank 0), e.g. for a live loss plot (see flash_vaed.distill_messages). A NaN/Inf
    loss stops the run with a DistillError and leaves the last checkpoint as it was. Under torchrun, every
    rank calls run().
    """
    out = Path(cfg.out)
    saved = resume.saved_run(cfg)  # a run in the way, or a resume with other settings, fails before loading
    rank, world, device, started_dist = _ddp_setup(cfg.device)
    main = rank == 0
    if main:
        resume.remove_stale_temp_files(out)  # left by a run killed mid-write (kill -9, power loss)
    amp = cfg.amp and device.type == "cuda"
    try:
        # -- teacher, encoder, student layout, data ---------------------------------------------------
        teacher, encoder = _load_models(cfg, device, teacher_weights)
        spec = resolve_spec(cfg.preset, teacher.family, teacher.module)
        if not saved:  # before it is built: a layout line can ask for any size (a resumed one was checked)
            limits.check_layout(
                spec, teacher.family, batch=cfg.batch_size, clip_frames=cfg.clip_frames, crop_px=cfg.crop_px,
                device=device, preset=cfg.preset,
            )  # fmt: skip
        train_videos, held_videos, shape = _training_videos(cfg, teacher.family)
        reader = data.ClipReader(train_videos, shape, cfg.keep_videos)
        label = None if teacher_weights is None else cfg.teacher
        batches = Batches(cfg, reader, teacher, encoder, device, amp, teacher_label=label)

        # -- student and adapters, initialised on a calibration batch shared by all ranks -------------
        calib_latents = batches.calibration()
        init = "random" if saved else cfg.init  # a resumed student's weights come from its checkpoint
        student, how = init_student(init, teacher, saved.spec if saved else spec, calib_latents, cfg.seed)
        student.module.to(device).train()
        _, teacher_feats = batches.teacher_forward(calib_latents)
        adapters, groups = fit_adapters(student, teacher_feats, calib_latents)
        del calib_latents, teacher_feats
        trainee = Trainee(student.module, adapters)
        params = [p for p in trainee.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        start, history = resume.restore(saved, trainee, opt, world, cfg.steps) if saved else (0, [])
        how = "resumed" if saved else how
        model = _ddp_wrap(trainee, device) if world > 1 else trainee
        name = getattr(student.module.spec, "name", "custom")
        cost = decoder_cost(student.module).versus(decoder_cost(teacher.module))
        log.info("student %s (%s init): %s", name, how, cost)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            resume.write_text(out / "config.json", cfg.to_json())

        def save(step: int) -> None:
            if main:
                resume.save(out, step, cfg, trainee, student, opt, history, world)
            if world > 1:
                dist.barrier()

        sched = cfg.schedule
        saved_step = start
        slots = range(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)

        # -- the three phases: 1 deep stages, 2 middle stages, 3 shallow stages + pixels -------------
        for phase, first, end in schedule.phase_spans(cfg.steps, sched.fractions):
            if end <= start:
                continue
            w0 = schedule.loss_weights(max(first, start), cfg.steps, sched)
            log.info(
                "phase %d (%s), steps %d-%d, weights at start: %s",
                *(phase, schedule.PHASE_NAMES[phase], first + 1, end),
                {k: round(v, 3) for k, v in w0.items() if v},
            )
            for step in range(max(first, start), end):
                t_step = time.perf_counter()
                weights = schedule.loss_weights(step, cfg.steps, sched)
                lr = schedule.lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
                for g in opt.param_groups:
                    g["lr"] = lr

                # real clips -> latents -> the teacher's video and features; the student's, every term
                need_features = any(weights[k] > 0 for k in FEATURE_TERMS)
                frames, latents, target, t_feats = batches.draw(step, slots, need_features)
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    pred, terms = model(to_raw(student, latents), t_feats, groups if t_feats else {})
                terms |= losses.pixel_terms(pred.float(), target, frames)
                loss = losses.weighted_total(terms, weights)
                logged = _rank_means({"loss": loss} | dict(sorted(terms.items())), world)
                bad = [k for k, v in logged.items() if not math.isfinite(v)]
                if bad:
                    raise _diverged(f"non-finite loss in {', '.join(bad)}", step, phase, saved_step, out)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)):
                    raise _diverged("non-finite gradient", step, phase, saved_step, out)
                opt.step()
                if not finite.all_finite(params):  # a NaN optimizer state passes every loss check
                    raise _diverged("non-finite weights after the update", step, phase, saved_step, out)

                record = {"step": step + 1, "phase": phase, "lr": lr} | logged
                record["time_s"] = time.perf_counter() - t_step
                history.append(record)
                if main and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
                    _log_step(record, weights, cfg.steps)

                # progress and interruption: what stops the run is raised after a checkpoint
                stop = _callbacks(record, cfg.steps, on_progress, on_record, main, world, device)
                if stop is not None or (step + 1) % cfg.checkpoint_every == 0:
                    save(step + 1)
                    saved_step = step + 1
                if stop is not None:
                    if main:
                        log.info("stopped at step %d; resumable checkpoint in %s", step + 1, out)
                    raise stop

        # -- final save, evaluation -------------------------------------------------------------------
        if saved_step != cfg.steps:
            save(cfg.steps)
        student.module.eval().requires_grad_(False)
        student_path = out / "student.safetensors"
        report = None
        if main:
            save_student(student, student_path)
            if cfg.evaluate:
                report = evaluate(
                    cfg, student, teacher, encoder, held_videos or train_videos, not held_videos
                )
                report["training"] = summarize_history(history, cfg)
                write_report(out, report)
        if world > 1:
            dist.barrier()
        return DistillResult(student_path, history, report, cfg.steps, student, {"init": how, "world": world})
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


# ---- what run calls ---------------------------------------------------------------------------------


def _load_models(
    cfg: DistillConfig,
    device: torch.device,
    teacher_weights: Mapping[str, torch.Tensor] | TensorSource | None,
) -> tuple[FlashDecoder, FlashEncoder]:
    """The teacher decoder and the encoder that makes its latents (cfg.encoder, else the teacher's file)."""
    source = cfg.teacher if teacher_weights is None else teacher_weights
    teacher = load_decoder(source, device=device)
    try:
        encoder = load_encoder(cfg.encoder or source, device=device)
    except FlashVAEDError as err:
        raise DistillError(
            f"cannot load an encoder from {cfg.encoder or cfg.teacher} ({err}); pass --encoder with the "
            "full VAE file of the teacher's model"
        ) from err
    if encoder.family is not teacher.family:
        raise DistillError(f"encoder is {encoder.family.value}, the teacher decodes {teacher.family.value}")
    return teacher, encoder


def _training_videos(cfg: DistillConfig, family: Family) -> tuple[list, list, data.ClipShape]:
    """(training videos, held-out videos, clip shape); NoTrainingVideos when no file makes a clip."""
    shape = data.ClipShape(cfg.clip_frames, cfg.crop_px, cfg.resize_short)
    shape.check(family.time_stride, family.space_stride)
    videos, skipped = data.scan_videos(cfg.data, shape)
    train, held = data.split_holdout(videos, cfg.holdout, cfg.seed)
    if not train:
        raise NoTrainingVideos(cfg.data, shape, skipped)
    log.info("data: %d training videos, %d held out", len(train), len(held))
    return train, held, shape


def _diverged(what: str, step: int, phase: int, saved_step: int, out: Path) -> DistillError:
    return DistillError(
        f"step {step + 1} (phase {phase}): {what}; stopped before the update. The last good checkpoint "
        f"(step {saved_step}) is kept in {out}: resume from it with --resume and a lower --lr, or check the "
        "data and teacher."
    )


def _log_step(record: dict, weights: dict[str, float], total: int) -> None:
    terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if weights.get(k))
    log.info(
        "step %d/%d phase %d loss %.4f (%s) lr %.2e",
        record["step"],
        total,
        record["phase"],
        record["loss"],
        terms,
        record["lr"],
    )


def _ddp_setup(device_choice: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, we_initialised) from torchrun's environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_choice)
    started = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return rank, world, device, started


def _ddp_wrap(trainee: Trainee, device: torch.device) -> nn.Module:
    return nn.parallel.DistributedDataParallel(
        trainee, device_ids=[device.index] if device.type == "cuda" else None
    )


def _rank_means(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Each loss's mean over the ranks, as floats (one all-reduce; a NaN on any rank reaches every rank)."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if world > 1:
        dist.all_reduce(stacked)
        stacked = stacked / world
    return dict(zip(values, stacked.tolist(), strict=True))


def _callbacks(
    record: dict,
    total: int,
    on_progress: ProgressFn | None,
    on_record: Callable[[dict], None] | None,
    main: bool,
    world: int,
    device: torch.device,
) -> BaseException | None:
    """Calls on_record and on_progress (rank 0). Returns what stops the run: the exception one of them
    raised on rank 0, DistillInterrupted on the other ranks then, None to go on."""
    stop: BaseException | None = None
    if main:
        try:
            if on_record is not None:
                on_record(record)
            if on_progress is not None:
                on_progress(record["step"], total)
        except BaseException as err:  # noqa: B036 - raised by run after a checkpoint
            stop = err
    if world > 1:
        flag = torch.tensor([float(stop is not None)], device=device)
        dist.all_reduce(flag)
        if flag.item() and stop is None:
            stop = DistillInterrupted("rank 0 stopped the run")
    return stop
