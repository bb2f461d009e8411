"""`make demo`: distil the shipped teacher into a Flash-VAED student on real clips, then measure both.

    python -m training.demo                       # about 10 minutes on a 2-core CPU
    python -m training.demo --steps 2000 --out runs/demo-long
    python -m training.demo --resume              # continue a stopped run

1. The teacher is the VAE we ship (`assets/`: the Wan 2.1 layout at width 24, trained on the
   template clips of the PyPI package comfyui-workflow-templates-media-video). Its held-out clips are
   never seen by the student either: the student trains on a folder of links to the other clips.
2. Prune & Distill (`flash_vaed.distill.loop.run`, the same loop as training/distill.py and the node):
   channels pruned from the teacher, deep stages depthwise-separable 3D, shallow stages per-frame 2D, then
   the three distillation phases.
3. `flash_vaed.quality` on the held-out clips: teacher and student against the real frames, retention,
   student against teacher, decode speed in one interleaved run. Writes quality.md/.json, a
   quality-vs-speed plot and a frame strip into OUT/report, and prints the table.

The recipe (`demo_config`, the layouts, the held-out split) is bench/quality.py's too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from flash_vaed import load_decoder, load_encoder
from flash_vaed.distill import data as clipdata
from flash_vaed.distill.config import DistillConfig
from flash_vaed.distill.loop import run
from flash_vaed.errors import FlashVAEDError
from flash_vaed.quality import held_out_clips, measure, write_report

from .cpu import fast_cpu_training
from .plot import plot_losses
from .teacher import TEACHER_CARD_KEY, embedded_teacher, template_clips_dir

log = logging.getLogger("training.demo")

# The released Flash-VAED student's recipe at our teacher's width (24; the real Wan 2.1 VAE has 96):
# bottleneck and deep stages at full width as depthwise-separable causal 3D, the two shallow stages
# per-frame 2D at a quarter of the teacher's width (the official student keeps an eighth of 96, i.e.
# 12 channels; an eighth of 24 would leave 3).
QUARTER_LAYOUT = "mid=96:dw3d/96:dw3d/96:dw3d/12:frame2d/6:frame2d"
# Half of the teacher's shallow width: slower, closer to the teacher.
HALF_LAYOUT = "mid=96:dw3d/96:dw3d/96:dw3d/24:frame2d/12:frame2d"


def held_out_names(teacher: str | os.PathLike) -> list[str]:
    """The clips the teacher was not trained on, from the card training/train_teacher.py writes into the
    file's metadata."""
    with safe_open(str(teacher), "pt") as f:
        card = (f.metadata() or {}).get(TEACHER_CARD_KEY)
    if card is None:
        raise FlashVAEDError(
            f"{teacher} has no training card (metadata {TEACHER_CARD_KEY!r}), so its held-out clips are "
            "unknown; use a teacher written by training/train_teacher.py"
        )
    return list(json.loads(card)["held_out"])


def link_training_clips(data: Path, held_out: list[str], folder: Path) -> Path:
    """A folder of links to every clip in `data` but the held-out ones (copies where links fail)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    held = set(held_out)
    for path in sorted(p for p in data.iterdir() if p.suffix.lower() in clipdata.VIDEO_SUFFIXES):
        if path.name in held:
            continue
        try:
            os.symlink(path, folder / path.name)
        except OSError:
            shutil.copy2(path, folder / path.name)
    return folder


def demo_config(
    teacher: Path, train_dir: Path, out: Path, layout: str, steps: int, resume: bool
) -> DistillConfig:
    """Prune & Distill settings for a short CPU run: pruned init, a short warmup, small crops, no
    held-out evaluation inside the loop (the quality report uses the teacher's own held-out clips). The
    learning rate stays in the range the Wan layout's RMS norms tolerate (training/README.md)."""
    return DistillConfig(
        teacher=str(teacher),
        data=str(train_dir),
        out=str(out),
        preset=layout,
        init="prune",
        steps=steps,
        lr=3e-4,
        warmup_steps=min(50, steps // 10),
        clip_frames=9,
        crop_px=64,
        keep_videos=64,
        holdout=0.0,
        evaluate=False,
        checkpoint_every=100,
        resume=resume,
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    ap.add_argument("--steps", type=int, default=600, help="distillation steps (default %(default)s)")
    ap.add_argument("--layout", default=QUARTER_LAYOUT, help="student layout (a preset name or layout line)")
    ap.add_argument("--teacher", default=None, help="teacher file (default: the shipped one)")
    ap.add_argument("--data", default=None, help="clip folder (default: the template clips)")
    ap.add_argument("--eval-frames", type=int, default=17, help="frames of each held-out clip")
    ap.add_argument("--eval-px", type=int, default=256, help="edge of the centred held-out crop")
    ap.add_argument(
        "--speed-latent",
        default="16x5x30x52",
        help="C x T x H x W of the latent timed for speed (default %(default)s: 17 frames of 240x416)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # CPU runs: no fresh zeroed pages every step, no slow subnormal arithmetic (training/cpu.py)
    with fast_cpu_training():
        return _main(parse(argv))


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm import tqdm

    teacher_path = Path(args.teacher) if args.teacher else embedded_teacher()
    data = Path(args.data) if args.data else template_clips_dir()
    out = Path(args.out)
    held = held_out_names(teacher_path)
    train_dir = link_training_clips(data, held, out / "train_clips")
    log.info("teacher %s; %d held-out clips; training clips in %s", teacher_path.name, len(held), train_dir)

    cfg = demo_config(teacher_path, train_dir, out / "student", args.layout, args.steps, args.resume)
    bar = tqdm(total=cfg.steps, desc="distil", unit="step")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    result = run(cfg, on_progress=progress)
    bar.close()
    try:
        plot_losses(result.history, out / "report" / "loss.png", cfg)
    except ImportError:
        log.warning("matplotlib is not installed: no loss plot (pip install matplotlib)")

    log.info("measuring on the held-out clips")
    encoder = load_encoder(teacher_path)
    teacher = load_decoder(teacher_path)
    student = load_decoder(result.student_path)
    clips = held_out_clips(data, held, args.eval_frames, args.eval_px)
    c, t, h, w = (int(v) for v in args.speed_latent.lower().split("x"))
    speed_latent = torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(0))
    report = measure(encoder, teacher, {"flash-vaed": student}, clips, speed_latent=speed_latent)
    files = write_report(report, out / "report", strip=(clips[0][1], encoder, teacher, student))
    sys.stdout.write("\n" + report.to_markdown() + "\n")
    sys.stdout.write("".join(f"{kind:>9}: {path}\n" for kind, path in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
