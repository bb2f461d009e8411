"""The distillation loop, shared by `training/distill.py` and the Prune & Distill node.

    from flash_vaed.distill.loop import DistillConfig, run
    result = run(DistillConfig(teacher="wan_2.1_vae.safetensors", data="videos/", out="runs/wan21",
                               preset="flashvaed-wan21", steps=20000))
    result.student_path        # a safetensors student that flash_vaed.load_decoder opens

`run` reads top to bottom: set up (devices, DDP, teacher, encoder, data, student, adapters, optimizer,
resume), then the three phases in order, each the same step (draw a batch, teacher targets and features,
student forward, weighted loss, step), then the final save and the evaluation report. What changes between
the phases is the weight vector from `schedule.loss_weights`, printed at the start of each phase.

Files in cfg.out:
    last.safetensors          the student after the last checkpoint (load_decoder opens it)
    last.state.safetensors    everything a resume needs, in one file written atomically: student.*,
                              adapter.* and optim.* tensors, rng.* states; metadata: step, config JSON,
                              loss history JSON, optimizer hyper-parameters, the student spec
    config.json               the DistillConfig of the run
    student.safetensors       the final student
    report.json, report.md    held-out evaluation: PSNR/SSIM vs teacher and vs the real frames, speed
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from ..checkpoint.io import atomic_save
from ..checkpoint.load import load_decoder, save_student
from ..decoder import LTX_DECODE_TIMESTEP, FlashDecoder
from ..encoder import FlashEncoder, load_encoder
from ..engine.state import DecodeState
from ..errors import FlashVAEDError
from ..spec import DecoderSpec, Family
from . import data, losses, schedule

log = logging.getLogger(__name__)

STATE_FORMAT = "flash-vaed-distill-state/1"
ProgressFn = Callable[[int, int], None]

# fields a resumed run may change; anything else must match the checkpoint's config
RESUMABLE_CHANGES = {
    "resume",
    "steps",
    "checkpoint_every",
    "log_every",
    "evaluate",
    "eval_crops",
    "eval_px",
    "device",
    "keep_videos",
}


class DistillError(FlashVAEDError, RuntimeError):
    """Training cannot go on (bad config, diverged loss, mismatched resume)."""


class DistillInterrupted(DistillError):
    """Another rank was stopped; this one saved nothing and stops too."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything a run depends on; saved as JSON with every checkpoint (`to_json` / `from_json`).

    Paths are strings so the JSON is plain. See training/README.md for the reasons behind the defaults.
    """

    teacher: str  # the teacher VAE (or any decoder file load_decoder opens)
    data: str  # folder of videos (.mp4 .webm .mov .mkv .webp .gif), searched recursively
    out: str  # run folder: checkpoints, final student, report
    preset: str = "auto"  # student layout: a PRESETS name, a JSON spec file, "tiny", "official", "auto"
    encoder: str | None = None  # the VAE whose encoder makes latents (default: the teacher file)
    init: str = "auto"  # student init: "prune" (from the teacher), "random", a student file; "auto"
    steps: int = 2000
    batch_size: int = 1  # clips per rank per step
    lr: float = 2e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    phases: tuple[float, float, float] = (0.25, 0.25, 0.5)
    blend: float = 0.2
    keep: float = 0.1
    w_feat: float = 1.0
    w_l1: float = 1.0
    w_l2: float = 1.0
    w_ssim: float = 0.2
    w_gt: float = 0.0
    clip_frames: int = 17  # 4k+1 (Wan) or 8k+1 (LTX)
    crop_px: int = 128  # multiple of 8 (Wan 2.1), 16 (Wan 2.2), 32 (LTX)
    resize_short: int | None = None
    flip: bool = True
    holdout: float = 0.1  # share of files held out for the evaluation
    eval_crops: int = 2  # per held-out video
    eval_px: int | None = None  # evaluation crop (default crop_px)
    evaluate: bool = True
    seed: int = 0
    device: str = "auto"  # "auto": cuda:LOCAL_RANK if available, else cpu
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    checkpoint_every: int = 100
    log_every: int = 10
    resume: bool = False
    cache: bool = False  # keep (latent, target) of pool crops on disk in out/cache
    crop_pool: int = 0  # > 0: draw crops from this many fixed ones (what makes the cache pay)
    keep_videos: int = 8  # decoded .webp/.gif files kept in memory
    calib_batches: int = 2  # batches used to initialise the student (pruning) and the adapters

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise DistillError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise DistillError("checkpoint_every and log_every must be >= 1")
        if not self.lr > 0:
            raise DistillError(f"lr must be > 0, got {self.lr}")
        try:
            schedule.PhaseSchedule(**self._schedule_fields())
        except ValueError as err:
            raise DistillError(str(err)) from None

    def _schedule_fields(self) -> dict:
        names = [f.name for f in dataclasses.fields(schedule.PhaseSchedule)]
        own = {"fractions": tuple(self.phases)} | {k: getattr(self, k) for k in names if k != "fractions"}
        return own

    @property
    def phase_schedule(self) -> schedule.PhaseSchedule:
        return schedule.PhaseSchedule(**self._schedule_fields())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DistillConfig:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DistillError(f"unknown DistillConfig fields {unknown}")
        raw["phases"] = tuple(raw.get("phases", (0.25, 0.25, 0.5)))
        return cls(**raw)


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


# ---- pieces the loop calls ----------------------------------------------------------------------


def run_decoder(module: nn.Module, z_raw: torch.Tensor) -> torch.Tensor:
    """Any of our decoder modules on raw latents (B, C, T, H, W) -> video (B, 3, T', H', W'), with grad if
    enabled. Wan: one fresh DecodeState (whole clip); LTX: ComfyUI's decode timestep, zero injected noise
    (the teacher's noise-free output is the target)."""
    if getattr(module, "causal", False):
        return module(z_raw, DecodeState(module))
    kwargs = {}
    if getattr(module, "timestep_conditioned", False):
        kwargs["timestep"] = LTX_DECODE_TIMESTEP
    if getattr(module, "injects_noise", False):
        gen = torch.Generator(device=z_raw.device)
        noise = module.draw_spatial_noise(tuple(z_raw.shape[-2:]), gen, z_raw.device, z_raw.dtype)
        kwargs["spatial_noise"] = [torch.zeros_like(n) for n in noise]
    return module(z_raw, **kwargs)


def to_raw(decoder: FlashDecoder, latents: torch.Tensor) -> torch.Tensor:
    return latents if decoder.latent_norm is None else decoder.latent_norm.to_raw(latents)


class Trainee(nn.Module):
    """The student and its feature adapters as one module: what DDP wraps and the optimizer steps.

    forward(z_raw, teacher_feats, groups) -> (video, {"feat_deep", "feat_middle", "feat_shallow"}).
    """

    def __init__(self, student: nn.Module, adapters: losses.FeatureAdapters):
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, z_raw, teacher_feats, groups):
        with losses.StageRecorder(self.student) as rec:
            rec.start(z_raw.shape[0])
            video = run_decoder(self.student, z_raw)
        return video, losses.feature_terms(rec.features, teacher_feats, groups, self.adapters)


def resolve_spec(preset: str, family: Family):
    """The student layout for `preset` and the teacher's family: a JSON spec file; "tiny", "official" or
    "auto" (= official) for the teacher's family; else flash_vaed.presets (a PRESETS name or a custom
    layout line such as "384:dw3d:3/384:dw3d:3/24:frame2d:3/12:frame2d:3")."""
    from ..arch.ltx_student import LTXStudentSpec

    ltx = family is Family.LTXV
    if preset.endswith(".json") and Path(preset).is_file():
        return (LTXStudentSpec if ltx else DecoderSpec).from_json(Path(preset).read_text())
    if preset == "tiny":
        return LTXStudentSpec.tiny() if ltx else DecoderSpec.tiny(family)
    if preset in ("official", "auto") and family is not Family.WAN22:
        return LTXStudentSpec.official() if ltx else DecoderSpec.flashvaed_wan21()
    try:
        from ..presets import resolve_spec as preset_spec
    except ImportError as err:
        raise DistillError(f"unknown preset {preset!r} (flash_vaed.presets unavailable: {err})") from err
    try:
        spec = preset_spec(preset, family)
    except (KeyError, ValueError) as err:
        raise DistillError(f"preset {preset!r}: {err.args[0] if err.args else err}") from None
    if isinstance(spec, LTXStudentSpec) != ltx or getattr(spec, "family", family) is not family:
        kind = "an LTX-Video" if isinstance(spec, LTXStudentSpec) else f"a {spec.family.value}"
        raise DistillError(f"preset {preset!r} is {kind} student; the teacher is {family.value}")
    return spec


def build_module(spec) -> nn.Module:
    from ..arch.ltx_student import LTXStudentDecoder
    from ..arch.wan import WanFamilyDecoder

    return WanFamilyDecoder(spec) if isinstance(spec, DecoderSpec) else LTXStudentDecoder(spec)


def init_student(
    how: str, teacher: FlashDecoder, spec, calib_latents: torch.Tensor, seed: int
) -> tuple[FlashDecoder, str]:
    """The student before training, and how it was made.

    "prune": flash_vaed.prune.build_student_from_teacher (channel selection + least-squares fold from the
    teacher, on the calibration latents). "random": the spec's layers with PyTorch's default init.
    "auto": prune when flash_vaed.prune provides it, else random. A path: that student file.
    """
    if how not in ("auto", "prune", "random"):
        student = load_decoder(how, device=teacher.device)
        student.module.requires_grad_(True)
        student.role = "student"
        return student, f"file {how}"
    if how in ("auto", "prune"):
        # the pruning hook: channels are selected on the teacher's activations for the calibration latents
        # and the dropped ones folded into the next convs (flash_vaed.prune: Wan 2.1 family and LTX-Video)
        try:
            from ..prune import PruneConfig, build_student_from_teacher

            config = PruneConfig(holdout=1 if calib_latents.shape[0] > 1 else 0, seed=seed)
            # pruning runs the bare modules, which take raw latents (LTX's LATENT is normalized)
            raw = to_raw(teacher, calib_latents)
            student, report = build_student_from_teacher(teacher, spec, raw, config)
        except (ImportError, TypeError, ValueError, NotImplementedError) as err:
            if how == "prune":
                raise DistillError(f"init='prune' failed: {err}") from err
            log.warning(
                "cannot prune the teacher into %s (%s): the student starts from random weights",
                getattr(spec, "name", "custom"),
                err,
            )
        else:
            student.module.to(teacher.device).requires_grad_(True).train()
            student.latent_norm = teacher.latent_norm
            log.info("student pruned from the teacher: PSNR vs teacher before training %s dB", report.psnr_db)
            return student, "prune"
    torch.manual_seed(seed)
    module = build_module(spec).to(teacher.device)
    return FlashDecoder(teacher.family, "student", module, teacher.latent_norm, "flash-vaed"), "random"


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


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t
    return tensors, json.dumps(sd["param_groups"])


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups_json: str) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = json.loads(groups_json)
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out: Path, step: int, cfg: DistillConfig, trainee: Trainee, student: FlashDecoder, opt, history, world
) -> None:
    """Write last.state.safetensors (atomic, all resume state in one file), then last.safetensors."""
    tensors = {f"student.{k}": v for k, v in trainee.student.state_dict().items()}
    tensors |= {f"adapter.{k}": v for k, v in trainee.adapters.state_dict().items()}
    optim_tensors, groups = flatten_optimizer(opt)
    tensors |= optim_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    spec = trainee.student.spec
    meta = {
        "format": STATE_FORMAT,
        "step": str(step),
        "world_size": str(world),
        "config": cfg.to_json(),
        "history": json.dumps(history),
        "optim_groups": groups,
        "student_arch": "wan" if isinstance(spec, DecoderSpec) else "ltx",
        "student_spec": spec.to_json(),
    }
    atomic_save(tensors, out / "last.state.safetensors", meta)
    save_student(student, out / "last.safetensors")


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise DistillError(f"{path}: unreadable checkpoint ({err}); start a new --out or restore it") from err
    if meta.get("format") != STATE_FORMAT:
        raise DistillError(f"{path}: not a Flash-VAED training state (format {meta.get('format')!r})")
    return tensors, meta


def _check_resume_config(saved: DistillConfig, cfg: DistillConfig, path: Path) -> None:
    a, b = dataclasses.asdict(saved), dataclasses.asdict(cfg)
    a["phases"], b["phases"] = list(a["phases"]), list(b["phases"])
    differ = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if differ:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in differ)
        raise DistillError(
            f"{path} was made with another config ({detail}); a resume must use the same settings "
            "(only steps and logging/eval options may change). Use the original flags or a new --out."
        )
    if saved.steps != cfg.steps:
        log.warning(
            "steps %d -> %d: the LR and phase schedules stretch to the new length", saved.steps, cfg.steps
        )


def _all_mean(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)
        values = values / world
    return values


# ---- the run ------------------------------------------------------------------------------------


def run(
    cfg: DistillConfig,
    on_progress: ProgressFn | None = None,
    on_record: Callable[[dict], None] | None = None,
    *,
    teacher_weights: Mapping[str, torch.Tensor] | None = None,
) -> DistillResult:
    """Distil a student from cfg.teacher on the videos in cfg.data; see the module docstring.

    teacher_weights: the teacher VAE's state dict, already in memory (the Prune & Distill node passes the
    loaded ComfyUI VAE's), used instead of reading cfg.teacher, which then only labels the teacher in the
    saved config (a resume must give the same label); cfg.encoder, when set, is still a file.

    on_progress(done, total) is called after every step (rank 0); an exception raised from it stops the
    run after a resumable checkpoint is written, and is re-raised. on_record(record) gets each step's
    history record first (rank 0), e.g. for a live loss plot (see flash_vaed.distill_messages). A NaN/Inf loss stops the run with a
    DistillError and leaves the last checkpoint as it was. Under torchrun, every rank calls run().
    """
    out = Path(cfg.out)
    rank, world, device, started_dist = _ddp_setup(cfg.device)
    main = rank == 0
    amp = cfg.amp and device.type == "cuda"
    state_path = out / "last.state.safetensors"
    try:
        # -- teacher, encoder, data --------------------------------------------------------------
        teacher_source = cfg.teacher if teacher_weights is None else teacher_weights
        teacher = load_decoder(teacher_source, device=device)
        try:
            encoder: FlashEncoder = load_encoder(cfg.encoder or teacher_source, device=device)
        except FlashVAEDError as err:
            raise DistillError(
                f"cannot load an encoder from {cfg.encoder or cfg.teacher} ({err}); pass --encoder with the "
                "full VAE file of the teacher's model"
            ) from err
        family = teacher.family
        if encoder.family is not family:
            raise DistillError(f"encoder is {encoder.family.value}, the teacher decodes {family.value}")
        shape = data.ClipShape(cfg.clip_frames, cfg.crop_px, cfg.resize_short)
        shape.check(family.time_stride, family.space_stride)
        videos = data.scan_videos(cfg.data, shape)
        train_videos, held_videos = data.split_holdout(videos, cfg.holdout, cfg.seed)
        if not train_videos:
            raise DistillError(
                f"no usable training videos in {cfg.data} ({len(videos)} usable in all; the warnings above "
                f"say why the others were skipped): need clips of {shape.frames} frames and {shape.size} px"
            )
        log.info("data: %d training videos, %d held out", len(train_videos), len(held_videos))
        reader = data.ClipReader(train_videos, shape, cfg.keep_videos)
        cache = data.PairCache(out / "cache") if cfg.cache and cfg.crop_pool > 0 else None
        if cfg.cache and cfg.crop_pool == 0:
            log.warning("--cache needs --crop-pool > 0 (fresh random crops never repeat); not caching")
        models_id = (
            data.file_fingerprint(cfg.teacher, cfg.encoder)
            if teacher_weights is None
            else f"{cfg.teacher}-{data.file_fingerprint(cfg.encoder)}"
        ) + ("-bf16" if amp else "-fp32")

        def encode(frames: torch.Tensor) -> torch.Tensor:
            # clone: encode runs in inference mode, and its tensors cannot enter the autograd graph
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                return encoder.encode(frames.to(device), chunk_frames=None).float().clone()

        def teacher_forward(latents: torch.Tensor):
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                with losses.StageRecorder(teacher.module) as rec:
                    rec.start(latents.shape[0])
                    target = run_decoder(teacher.module, to_raw(teacher, latents)).float()
            return target, {r: f.float() for r, f in rec.features.items()}

        # -- student and adapters, initialised on a calibration batch shared by all ranks --------
        spec = resolve_spec(cfg.preset, family)
        calib_frames = torch.cat(
            [
                data.draw_batch(reader, cfg.seed, -1 - i, range(cfg.batch_size), flip=False)[0]
                for i in range(cfg.calib_batches)
            ]
        )
        calib_latents = encode(calib_frames)
        resume_from = state_path if cfg.resume and state_path.is_file() else None
        if not cfg.resume and state_path.exists():
            raise DistillError(
                f"{out} already holds a run ({state_path.name}); pass --resume or pick a new --out"
            )
        if resume_from is not None:
            saved_tensors, meta = read_checkpoint(resume_from)
            _check_resume_config(DistillConfig.from_json(meta["config"]), cfg, resume_from)
            spec = type(spec).from_json(meta["student_spec"])
            torch.manual_seed(cfg.seed)
            student = FlashDecoder(family, "student", build_module(spec).to(device), teacher.latent_norm)
            how = "resumed"
        else:
            student, how = init_student(cfg.init, teacher, spec, calib_latents, cfg.seed)
            spec = student.module.spec
        student.module.to(device).train()
        with torch.no_grad():
            t_target, t_feats = teacher_forward(calib_latents)
            with losses.StageRecorder(student.module) as rec:
                rec.start(calib_latents.shape[0])
                run_decoder(student.module, to_raw(student, calib_latents))
            s_feats = {r: f.float() for r, f in rec.features.items()}
        pairs = losses.pair_resolutions(s_feats, t_feats)
        if not pairs:
            log.warning("teacher and student share no stage resolution: feature terms are 0, pixels only")
        groups = losses.depth_groups(pairs)
        adapters = losses.FeatureAdapters({r: (s_feats[r].shape[1], t_feats[r].shape[1]) for r in pairs})
        adapters.fit({r: s_feats[r] for r in pairs}, {r: t_feats[r] for r in pairs})
        trainee = Trainee(student.module, adapters.to(device))
        del calib_frames, t_target, t_feats, s_feats
        params = [p for p in trainee.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        history: list[dict] = []
        start = 0
        if resume_from is not None:
            tensors = saved_tensors
            trainee.student.load_state_dict(
                {k[8:]: v for k, v in tensors.items() if k.startswith("student.")}
            )
            trainee.adapters.load_state_dict(
                {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")}
            )
            opt.load_state_dict(unflatten_optimizer(tensors, meta["optim_groups"]))
            torch.set_rng_state(tensors["rng.torch"])
            cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
            start, history = int(meta["step"]), json.loads(meta["history"])
            if int(meta.get("world_size", 1)) != world:
                log.warning("resumed with %s ranks, saved with %s: batches differ", world, meta["world_size"])
            log.info("resumed from %s at step %d", resume_from, start)
        model = trainee
        if world > 1:
            model = nn.parallel.DistributedDataParallel(
                trainee, device_ids=[device.index] if device.type == "cuda" else None
            )
        log.info(
            "student %s (%s init): %.2fM parameters, teacher %.2fM; %d feature resolutions %s",
            getattr(spec, "name", "custom"),
            how,
            student.num_parameters() / 1e6,
            teacher.num_parameters() / 1e6,
            len(pairs),
            {losses._key(r): g for r, g in groups.items()},
        )
        if main:
            out.mkdir(parents=True, exist_ok=True)
            _write_text(out / "config.json", cfg.to_json())

        def save(step: int) -> None:
            if main:
                save_checkpoint(out, step, cfg, trainee, student, opt, history, world)
            if world > 1:
                dist.barrier()

        sched = cfg.phase_schedule
        saved_step = start
        slots = range(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)

        # -- the three phases: 1 deep stages, 2 middle stages, 3 shallow stages + pixels ---------
        for phase, first, end in schedule.phase_spans(cfg.steps, sched.fractions):
            if end <= start:
                continue
            w0 = schedule.loss_weights(max(first, start), cfg.steps, sched)
            log.info(
                "phase %d (%s), steps %d-%d, weights at start: %s",
                phase,
                schedule.PHASE_NAMES[phase],
                first + 1,
                end,
                {k: round(v, 3) for k, v in w0.items() if v},
            )
            for step in range(max(first, start), end):
                t_step = time.perf_counter()
                weights = schedule.loss_weights(step, cfg.steps, sched)
                lr = schedule.lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
                for g in opt.param_groups:
                    g["lr"] = lr

                # data: real clips -> latents (teacher's encoder, cached for pool crops)
                frames, crops, pool_ids = data.draw_batch(
                    reader, cfg.seed, step, slots, flip=cfg.flip, pool=cfg.crop_pool
                )
                keys = [
                    data.cache_key(reader.videos[c.video], c, shape, models_id) if cache else None
                    for c in crops
                ]
                cached = [cache.get(k) if cache else None for k in keys]
                if all(c is not None for c in cached):
                    latents = torch.stack([c["latent"] for c in cached]).to(device)
                else:
                    latents = encode(frames)

                # teacher: targets and stage features (a cached target suffices when no feature term is on)
                need_features = any(weights[k] > 0 for k in ("feat_deep", "feat_middle", "feat_shallow"))
                if need_features or any(c is None or "target" not in c for c in cached):
                    target, t_feats = teacher_forward(latents)
                else:
                    target, t_feats = torch.stack([c["target"] for c in cached]).to(device), {}
                if cache:
                    for k, c, lat, tgt in zip(keys, cached, latents, target, strict=True):
                        if c is None:
                            cache.put(k, {"latent": lat, "target": tgt})

                # student: forward, every loss term, the weighted total
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    pred, terms = model(to_raw(student, latents), t_feats, groups if t_feats else {})
                terms |= losses.pixel_terms(pred.float(), target, frames.to(device))
                loss = losses.weighted_total(terms, weights)
                names = sorted(terms)
                logged = torch.stack([loss.detach().float(), *[terms[k].detach().float() for k in names]])
                logged = _all_mean(logged, world)
                if not bool(torch.isfinite(logged).all()):
                    bad = [
                        k
                        for k, v in zip(["loss", *names], logged.tolist(), strict=True)
                        if not math.isfinite(v)
                    ]
                    raise DistillError(
                        f"step {step + 1} (phase {phase}): non-finite loss in {', '.join(bad)}; stopped. "
                        f"The last good checkpoint (step {saved_step}) is kept in {out}: resume from it with "
                        "--resume and a lower --lr, or check the data and teacher."
                    )

                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(grad_norm):
                    raise DistillError(
                        f"step {step + 1} (phase {phase}): non-finite gradient; stopped before the update. "
                        f"The last good checkpoint (step {saved_step}) is kept in {out}."
                    )
                opt.step()

                values = logged.tolist()
                record = {"step": step + 1, "phase": phase, "lr": lr, "loss": values[0]}
                record |= {k: v for k, v in zip(names, values[1:], strict=True)}
                record["time_s"] = time.perf_counter() - t_step
                history.append(record)
                if main and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
                    log.info(
                        "step %d/%d phase %d loss %.4f (%s) lr %.2e",
                        step + 1,
                        cfg.steps,
                        phase,
                        values[0],
                        " ".join(f"{k} {record[k]:.4f}" for k in names if weights.get(k)),
                        lr,
                    )

                # progress and interruption: an exception from on_progress saves, then propagates
                stop: BaseException | None = None
                if main and (on_progress is not None or on_record is not None):
                    try:
                        if on_record is not None:
                            on_record(record)
                        if on_progress is not None:
                            on_progress(step + 1, cfg.steps)
                    except BaseException as err:  # noqa: B036 - saved and re-raised below
                        stop = err
                if world > 1:
                    flag = torch.tensor([float(stop is not None)], device=device)
                    dist.all_reduce(flag)
                    stopped = bool(flag.item())
                else:
                    stopped = stop is not None
                if stopped or (step + 1) % cfg.checkpoint_every == 0:
                    save(step + 1)
                    saved_step = step + 1
                if stopped:
                    if main:
                        log.info("stopped at step %d; resumable checkpoint in %s", step + 1, out)
                    raise stop if stop is not None else DistillInterrupted("rank 0 stopped the run")

        # -- final save, evaluation -----------------------------------------------------------------
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
                _write_text(out / "report.json", json.dumps(report, indent=1))
                _write_text(out / "report.md", report_markdown(report))
        if world > 1:
            dist.barrier()
        return DistillResult(student_path, history, report, cfg.steps, student, {"init": how, "world": world})
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- evaluation ---------------------------------------------------------------------------------


def _timed(fn: Callable[[], torch.Tensor], device: torch.device, reps: int = 3) -> tuple[torch.Tensor, float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = fn()  # warm-up (and the output)
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def evaluate(
    cfg: DistillConfig,
    student: FlashDecoder,
    teacher: FlashDecoder,
    encoder: FlashEncoder,
    videos: list[data.VideoInfo],
    on_train_videos: bool = False,
) -> dict:
    """PSNR/SSIM of the student against the teacher and the real frames, and of the teacher against the
    real frames, on fixed crops of `videos`; decode times through FlashDecoder.decode (the deployed path,
    whole clip, noise-free LTX decode). Speed ratio = student time / teacher time (< 1 is faster)."""
    shape = data.ClipShape(cfg.clip_frames, cfg.eval_px or cfg.crop_px, cfg.resize_short)
    usable = [v for v in videos if min(v.height, v.width) >= shape.size and v.frames >= shape.frames]
    reader = data.ClipReader(usable, shape, cfg.keep_videos)
    crops = data.eval_crops(usable, shape, cfg.eval_crops)
    rows = []
    t_teacher, t_student = [], []
    for crop in crops:
        real = reader.clip(crop).unsqueeze(0).to(student.device)
        latents = encoder.encode(real, chunk_frames=None).float()
        tv, tt = _timed(lambda lat=latents: teacher.decode(lat, noise_scale=0.0), student.device)
        sv, ts = _timed(lambda lat=latents: student.decode(lat, noise_scale=0.0), student.device)
        t_teacher.append(tt)
        t_student.append(ts)
        rows.append(
            {
                "video": usable[crop.video].name,
                "t0": crop.t0,
                "psnr_vs_teacher": losses.psnr(sv, tv),
                "ssim_vs_teacher": float(losses.ssim(sv.clamp(-1, 1), tv.clamp(-1, 1))),
                "psnr_vs_real": losses.psnr(sv, real),
                "ssim_vs_real": float(losses.ssim(sv.clamp(-1, 1), real)),
                "teacher_psnr_vs_real": losses.psnr(tv, real),
                "teacher_ssim_vs_real": float(losses.ssim(tv.clamp(-1, 1), real)),
            }
        )
    mean = (
        {k: statistics.fmean(r[k] for r in rows) for k in rows[0] if k not in ("video", "t0")} if rows else {}
    )
    teacher_s, student_s = sum(t_teacher), sum(t_student)
    return {
        "family": student.family.value,
        "student_spec": getattr(student.module.spec, "name", "custom"),
        "student_parameters": student.num_parameters(),
        "teacher_parameters": teacher.num_parameters(),
        "split": "training videos (no held-out file)" if on_train_videos else "held-out videos",
        "videos": sorted({r["video"] for r in rows}),
        "crops": len(rows),
        "clip": {"frames": shape.frames, "px": shape.size},
        "device": str(student.device),
        "mean": mean,
        "per_crop": rows,
        "speed": {
            "teacher_s": teacher_s,
            "student_s": student_s,
            "ratio_student_over_teacher": student_s / teacher_s if teacher_s else None,
            "speedup": teacher_s / student_s if student_s else None,
        },
    }


def summarize_history(history: list[dict], cfg: DistillConfig) -> dict:
    """Per phase: its steps and, for each term weighted in it (and the weighted total), the mean over the
    phase's first and last tenth of steps (the weights move inside a phase, so compare terms, not totals
    across phases). Also the mean step time."""
    phases = {}
    for phase, _, end in schedule.phase_spans(cfg.steps, cfg.phases):
        rows = [h for h in history if h["phase"] == phase]
        if not rows:
            continue
        k = max(1, len(rows) // 10)
        weights = schedule.loss_weights(end - 1, cfg.steps, cfg.phase_schedule)
        names = ["loss", *(t for t in schedule.TERMS if weights[t] > 0 and t in rows[0])]
        phases[str(phase)] = {
            "steps": [rows[0]["step"], rows[-1]["step"]],
            "first": {n: statistics.fmean(r[n] for r in rows[:k]) for n in names},
            "last": {n: statistics.fmean(r[n] for r in rows[-k:]) for n in names},
        }
    times = [h["time_s"] for h in history if "time_s" in h]
    return {
        "steps": cfg.steps,
        "phases": phases,
        "mean_step_s": statistics.fmean(times) if times else None,
        "clips_per_step": cfg.batch_size,
    }


def report_markdown(report: dict) -> str:
    m, sp = report["mean"], report["speed"]

    def f(key: str, unit: str = "") -> str:
        return f"{m[key]:.3f}{unit}" if key in m else "-"

    lines = [
        f"# Flash-VAED distillation report ({report['family']}, {report['student_spec']})",
        "",
        f"Evaluated on {report['crops']} crops ({report['clip']['frames']} frames, {report['clip']['px']} px) "
        f"of {len(report['videos'])} {report['split']} on {report['device']}.",
        "",
        "| | PSNR (dB) | SSIM |",
        "|---|---|---|",
        f"| student vs teacher | {f('psnr_vs_teacher')} | {f('ssim_vs_teacher')} |",
        f"| student vs real frames | {f('psnr_vs_real')} | {f('ssim_vs_real')} |",
        f"| teacher vs real frames | {f('teacher_psnr_vs_real')} | {f('teacher_ssim_vs_real')} |",
        "",
        f"Parameters: student {report['student_parameters'] / 1e6:.2f}M, teacher "
        f"{report['teacher_parameters'] / 1e6:.2f}M.",
        "",
        f"Decode time (whole clips, median of 3 after a warm-up, summed): student {sp['student_s']:.4f} s, "
        f"teacher {sp['teacher_s']:.4f} s; student/teacher = "
        + (f"{sp['ratio_student_over_teacher']:.3f}" if sp["ratio_student_over_teacher"] else "-")
        + (f" (speedup {sp['speedup']:.2f}x)." if sp["speedup"] else "."),
    ]
    train = report.get("training")
    if train:
        lines += [
            "",
            "Training (means over the first and last tenth of each phase; 'loss' is the weighted total):",
            "",
            "| phase | steps | term | first | last |",
            "|---|---|---|---|---|",
        ]
        for p, row in train["phases"].items():
            for name, first in row["first"].items():
                lines.append(
                    f"| {p} ({schedule.PHASE_NAMES[int(p)]}) | {row['steps'][0]}-{row['steps'][1]} | {name} | "
                    f"{first:.4f} | {row['last'][name]:.4f} |"
                )
    return "\n".join(lines) + "\n"
