"""`make demo`: distil the shipped teacher into a Flash-VAED student on real clips, then measure both.

    python -m flash_vaed.demo                       # about 10 minutes on a 2-core CPU
    python -m flash_vaed.demo --steps 2000 --out runs/demo-long
    python -m flash_vaed.demo --resume              # continue a stopped run

1. The teacher is the VAE we ship (`flash_vaed/assets`: the Wan 2.1 layout at width 24, trained on the
   template clips of the PyPI package comfyui-workflow-templates-media-video). Its held-out clips are
   never seen by the student either: the student trains on a folder of links to the other clips.
2. Prune & Distill (`flash_vaed.distill.loop.run`, the same loop as training/distill.py and the node):
   channels pruned from the teacher, deep stages depthwise-separable 3D, shallow stages per-frame 2D, then
   the three distillation phases.
3. `flash_vaed.quality` on the held-out clips: teacher and student against the real frames, retention,
   student against teacher, decode speed in one interleaved run. Writes quality.md/.json, a
   quality-vs-speed plot and a frame strip into OUT/report, and prints the table.
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

from . import load_decoder, load_encoder
from .distill import data as clipdata
from .distill.loop import DistillConfig, run
from .engine.malloc import keep_freed_memory
from .errors import FlashVAEDError
from .quality import measure, write_report
from .teacher import TEACHER_CARD_KEY, embedded_teacher
from .teacher.clips import template_clips_dir

log = logging.getLogger("flash_vaed.demo")

# The released Flash-VAED student's recipe at our teacher's width (24; the real Wan 2.1 VAE has 96):
# bottleneck and deep stages at full width as depthwise-separable causal 3D, the two shallow stages
# per-frame 2D at a quarter of the teacher's width (the official student keeps an eighth of 96, i.e.
# 12 channels; an eighth of 24 would leave 3).
DEMO_LAYOUT = "mid=96:dw3d/96:dw3d/96:dw3d/12:frame2d/6:frame2d"


def held_out_names(teacher: Path) -> list[str]:
    """The clips the teacher was not trained on, from the card `training/train_teacher.py` writes into
    the file's metadata."""
    from safetensors import safe_open

    with safe_open(str(teacher), "pt") as f:
        card = (f.metadata() or {}).get(TEACHER_CARD_KEY)
    if card is None:
        raise FlashVAEDError(
            f"{teacher} has no training card (metadata {TEACHER_CARD_KEY!r}), so its held-out clips are "
            "unknown; use a teacher written by training/train_teacher.py"
        )
    return list(json.loads(card)["held_out"])


def link_training_clips(data: Path, held_out: list[str], folder: Path) -> Path:
    """A folder of links to every clip but the held-out ones (copies where links are not allowed)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    held = set(held_out)
    for path in sorted(p for p in data.iterdir() if p.suffix.lower() in clipdata.VIDEO_SUFFIXES):
        if path.name in held:
            continue
        target = folder / path.name
        try:
            os.symlink(path, target)
        except OSError:
            shutil.copy2(path, target)
    return folder


def held_out_clips(data: Path, names: list[str], frames: int, px: int) -> list[tuple[str, torch.Tensor]]:
    shape = clipdata.ClipShape(frames, px)
    videos = [
        v for v in clipdata.scan_videos(data, shape) if v.name in set(names)
    ]  # scan skips (and warns about) clips too short or small for the shape
    reader = clipdata.ClipReader(videos, shape, keep_videos=0)
    return [(videos[c.video].name, reader.clip(c)) for c in clipdata.eval_crops(videos, shape, per_video=1)]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    ap.add_argument("--steps", type=int, default=600, help="distillation steps (default %(default)s)")
    ap.add_argument("--layout", default=DEMO_LAYOUT, help="student layout (a preset name or layout line)")
    ap.add_argument("--teacher", default=None, help="teacher file (default: the shipped one)")
    ap.add_argument("--data", default=None, help="clip folder (default: the template clips)")
    ap.add_argument("--eval-frames", type=int, default=17, help="frames of each held-out clip")
    ap.add_argument("--eval-px", type=int, default=256, help="edge of the centred held-out crop")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    from tqdm import tqdm

    teacher_path = Path(args.teacher) if args.teacher else embedded_teacher()
    data = Path(args.data) if args.data else template_clips_dir()
    out = Path(args.out)
    held = held_out_names(teacher_path)
    train_dir = link_training_clips(data, held, out / "train_clips")
    log.info("teacher %s; %d held-out clips; training clips in %s", teacher_path.name, len(held), train_dir)

    cfg = DistillConfig(
        teacher=str(teacher_path),
        data=str(train_dir),
        out=str(out / "student"),
        preset=args.layout,
        init="prune",
        steps=args.steps,
        lr=1e-3,
        warmup_steps=min(50, args.steps // 10),
        clip_frames=9,
        crop_px=64,
        keep_videos=64,
        holdout=0.0,  # the teacher's held-out clips are already out of train_clips
        evaluate=False,  # the quality report below evaluates on the teacher's own held-out clips
        checkpoint_every=100,
        resume=args.resume,
    )
    bar = tqdm(total=cfg.steps, desc="distil", unit="step")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    result = run(cfg, on_progress=progress)
    bar.close()
    try:
        from .distill.plot import plot_losses

        plot_losses(result.history, out / "report" / "loss.png", cfg)
    except ImportError:
        log.warning("matplotlib is not installed: no loss plot (pip install matplotlib)")

    log.info("measuring on the held-out clips")
    encoder = load_encoder(teacher_path)
    teacher = load_decoder(teacher_path)
    student = load_decoder(result.student_path)
    clips = held_out_clips(data, held, args.eval_frames, args.eval_px)
    report = measure(encoder, teacher, {"flash-vaed": student}, clips)
    files = write_report(report, out / "report", strip=(clips[0][1], encoder, teacher, student))
    sys.stdout.write("\n" + report.to_markdown() + "\n")
    sys.stdout.write("".join(f"{kind:>9}: {path}\n" for kind, path in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
