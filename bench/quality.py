"""Reconstruction quality vs speed of the shipped teacher and students distilled from it, on held-out clips.

    python bench/quality.py --student quarter=runs/demo/student/student.safetensors
    python bench/quality.py --distill quarter --distill half --steps 600 --out bench/results/quality_cpu
    python bench/quality.py --teacher my_vae.safetensors --student a=a.safetensors --data clips/

The held-out clips are the ones the teacher was not trained on (its card, written by
training/train_teacher.py); `--distill` students train on the other clips only. For each decoder:
PSNR/SSIM against the real frames, retention (student PSNR / teacher PSNR), PSNR/SSIM against the
teacher, and decode time on one latent (interleaved runs, median). Writes quality.md, quality.json,
quality_vs_speed.png and strip.png (real | teacher | first student | error x4) into --out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flash_vaed import load_decoder, load_encoder  # noqa: E402
from flash_vaed.distill.loop import run  # noqa: E402
from flash_vaed.quality import held_out_clips, measure, write_report  # noqa: E402
from training.cpu import fast_cpu_training  # noqa: E402
from training.demo import HALF_LAYOUT, QUARTER_LAYOUT, demo_config, held_out_names, link_training_clips  # noqa: E402
from training.teacher import embedded_teacher, template_clips_dir  # noqa: E402

LAYOUTS = {"quarter": QUARTER_LAYOUT, "half": HALF_LAYOUT}
log = logging.getLogger("bench.quality")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--teacher", default=None, help="teacher file with a training card (default: the shipped one)"
    )
    ap.add_argument(
        "--student", action="append", default=[], metavar="NAME=PATH", help="a student file to measure"
    )
    ap.add_argument(
        "--distill",
        action="append",
        default=[],
        metavar="LAYOUT",
        help=f"distil a student first: {', '.join(LAYOUTS)} or a layout line (flash_vaed.presets)",
    )
    ap.add_argument("--steps", type=int, default=600, help="distillation steps per --distill student")
    ap.add_argument("--data", default=None, help="clip folder (default: the template clips)")
    ap.add_argument("--eval-frames", type=int, default=17)
    ap.add_argument("--eval-px", type=int, default=256)
    ap.add_argument("--speed-latent", default="16x5x30x52", help="C x T x H x W timed for speed")
    ap.add_argument("--repeats", type=int, default=5, help="timed decodes per decoder (median)")
    ap.add_argument("--out", default="runs/quality", help="report folder (default %(default)s)")
    args = ap.parse_args(argv)
    if not args.student and not args.distill:
        ap.error("give at least one --student NAME=PATH or --distill LAYOUT")
    return args


def main(argv: list[str] | None = None) -> int:
    # CPU runs: no fresh zeroed pages every step, no slow subnormal arithmetic (training/cpu.py)
    with fast_cpu_training():
        return _main(parse(argv))


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    teacher_path = Path(args.teacher) if args.teacher else embedded_teacher()
    data = Path(args.data) if args.data else template_clips_dir()
    out = Path(args.out)
    held = held_out_names(teacher_path)
    paths: dict[str, Path] = {}
    for spec in args.student:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--student wants NAME=PATH, got {spec!r}")
        paths[name] = Path(path)
    if args.distill:
        train_dir = link_training_clips(data, held, out / "train_clips")
        for layout in args.distill:
            name = layout if layout in LAYOUTS else f"custom{len(paths)}"
            cfg = demo_config(
                teacher_path, train_dir, out / name, LAYOUTS.get(layout, layout), args.steps, False
            )
            log.info("distilling %s (%s), %d steps", name, cfg.preset, cfg.steps)
            paths[name] = run(cfg).student_path
    encoder, teacher = load_encoder(teacher_path), load_decoder(teacher_path)
    students = {name: load_decoder(p) for name, p in paths.items()}
    clips = held_out_clips(data, held, args.eval_frames, args.eval_px)
    c, t, h, w = (int(v) for v in args.speed_latent.lower().split("x"))
    latent = torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(0))
    report = measure(encoder, teacher, students, clips, speed_latent=latent, repeats=args.repeats)
    first = next(iter(students.values()))
    files = write_report(report, out, strip=(clips[0][1], encoder, teacher, first))
    sys.stdout.write(report.to_markdown() + "\n")
    sys.stdout.write("".join(f"{kind:>9}: {path}\n" for kind, path in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
