"""Regenerate the measured tables of docs/pruning.md (CPU, about a minute).

    python bench/prune_table.py                                              # prints markdown
    python bench/prune_table.py --markdown bench/results/prune_table_cpu.md  # and writes it
    python bench/prune_table.py --dim 16                                     # a wider teacher (slower)

Teacher: the Wan 2.1 decoder layout at dim 8 (widths 32/32/16/8, 3 blocks per stage, the real block,
attention and upsample structure), seeded random weights; once as initialised ("plain") and once with
half the channels of every channel space made noisy copies ("redundant", `make_redundant_`), the
structure a trained VAE has and a random one lacks. Calibration: 4 random latent clips to fit, 2 held
out for the PSNR (student vs teacher, before any training).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.prune import PruneConfig, build_student_from_teacher, psnr_db
from flash_vaed.prune.calibrate import decode_clips
from flash_vaed.prune.synthetic import make_redundant_
from flash_vaed.spec import DecoderSpec, Op

log = logging.getLogger("prune_table")

METHODS = [("qr", True), ("l1", True), ("random", True), ("qr", False), ("l1", False)]
FRACTIONS = [0.75, 0.5, 0.25]


def make_teacher(dim: int, redundant: bool, noise: float = 0.01) -> WanFamilyDecoder:
    torch.manual_seed(0)
    teacher = WanFamilyDecoder(DecoderSpec.wan21_teacher(dim)).eval().requires_grad_(False)
    if redundant:
        make_redundant_(teacher, originals=0.5, noise=noise, seed=0)
    return teacher


def zeros_psnr(teacher: WanFamilyDecoder, held: torch.Tensor) -> float:
    """The floor: PSNR of an all-zero video against the teacher's."""
    want = decode_clips(teacher, held)
    return psnr_db(torch.zeros_like(want), want)


def scaled(
    spec: DecoderSpec, fraction: float, deep: Op = Op.FULL_3D, shallow: Op = Op.FULL_3D
) -> DecoderSpec:
    """Every width times `fraction`; stages with time upsamples (and the bottleneck) get `deep`, the
    others `shallow`."""

    def w(c: int | None) -> int | None:
        return None if c is None else max(1, round(c * fraction))

    stages = tuple(
        dataclasses.replace(s, width=w(s.width), up_out=w(s.up_out), op=deep if s.up_time else shallow)
        for s in spec.stages
    )
    return dataclasses.replace(
        spec, middle_width=w(spec.middle_width), middle_op=deep, stages=stages, name=f"{fraction:g}x"
    )


def prune_table(dim: int, latents: torch.Tensor) -> str:
    lines = [
        "| teacher (zeros floor) | kept | "
        + " | ".join(f"{s}{'+fold' if f else ''}" for s, f in METHODS)
        + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in METHODS) + " |",
    ]
    for redundant in (True, False):
        teacher = make_teacher(dim, redundant)
        floor = zeros_psnr(teacher, latents[-2:])
        for fraction in FRACTIONS:
            cells = []
            for selection, fold in METHODS:
                cfg = PruneConfig(selection=selection, fold=fold, holdout=2, rows=1024, patch_rows=512)
                _, report = build_student_from_teacher(teacher, scaled(teacher.spec, fraction), latents, cfg)
                cells.append(f"{report.psnr_db:.1f} ({report.channel_error():.2f})")
                log.info("%s %s %s: %s", redundant, fraction, (selection, fold), cells[-1])
            name = "redundant" if redundant else "plain"
            lines.append(f"| {name} ({floor:.1f}) | {fraction:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def operator_table(dim: int, latents: torch.Tensor, sequential: bool = False) -> str:
    teacher = make_teacher(dim, redundant=True)
    held = latents[-2:]
    want = decode_clips(teacher, held)
    lines = [
        "| student | parameters | mean conv error of the init | fitted init (ours) | random init | zeros |"
        + (" sequential refit |" if sequential else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if sequential else ""),
    ]
    cases = [
        (
            "ops only: deep dw3d, shallow frame2d, full width",
            scaled(teacher.spec, 1.0, Op.DEPTHWISE_3D, Op.FRAME_2D),
        ),
        ("ops + 50% widths", scaled(teacher.spec, 0.5, Op.DEPTHWISE_3D, Op.FRAME_2D)),
    ]
    for label, spec in cases:
        cfg = PruneConfig(holdout=2, rows=1024, patch_rows=512)
        _, report = build_student_from_teacher(teacher, spec, latents, cfg)
        torch.manual_seed(0)
        random_student = WanFamilyDecoder(spec).eval()
        random_psnr = psnr_db(decode_clips(random_student, held), want)
        ops = [r.error for r in report.layers if r.kind == "operator"]
        line = (
            f"| {label} | {report.student_parameters:,} of {report.teacher_parameters:,} | "
            f"{sum(ops) / len(ops):.2f} | {report.psnr_db:.1f} dB | {random_psnr:.1f} dB | "
            f"{psnr_db(torch.zeros_like(want), want):.1f} dB |"
        )
        if sequential:
            seq = build_student_from_teacher(
                teacher, spec, latents, dataclasses.replace(cfg, sequential=True)
            )
            line += f" {seq[1].psnr_db:.1f} dB |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8, help="teacher dim (Wan 2.1 is 96)")
    parser.add_argument("--frames", type=int, default=2, help="latent frames per calibration clip")
    parser.add_argument("--size", type=int, default=4, help="latent height and width")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument(
        "--sequential", action="store_true", help="add a sequential-refit column to the operator table (slow)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_grad_enabled(False)
    latents = torch.randn(
        6, 16, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(1)
    )
    start = time.perf_counter()
    out = (
        f"Teacher: Wan 2.1 layout at dim {args.dim}; latents (6, 16, {args.frames}, {args.size}, {args.size}), "
        "4 fit + 2 held out. Cells: held-out PSNR of the untrained student vs the teacher in dB "
        "(mean relative channel reconstruction error over the pruned sites); in brackets after the teacher, "
        "the PSNR of an all-zero video, the floor.\n\n"
        + prune_table(args.dim, latents)
        + "\nOperator replacement (selection qr+fold), whole-student PSNR vs the redundant teacher:\n\n"
        + operator_table(args.dim, latents, args.sequential)
    )
    log.info("done in %.0f s", time.perf_counter() - start)
    sys.stdout.write(out)
    if args.markdown is not None:
        args.markdown.write_text(out)
    return out


if __name__ == "__main__":
    main()
