"""The end-of-run report (report.json, report.md): `flash_vaed.quality.measure` on fixed crops of the
held-out videos, and what the losses did in each phase."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..decoder import FlashDecoder
from ..encoder import FlashEncoder
from ..quality import markdown_table, measure
from . import data, schedule
from .config import DistillConfig
from .resume import write_text


def evaluate(
    cfg: DistillConfig,
    student: FlashDecoder,
    teacher: FlashDecoder,
    encoder: FlashEncoder,
    videos: list[data.VideoInfo],
    on_train_videos: bool = False,
) -> dict:
    """PSNR/SSIM of the student against the teacher and the real frames, and of the teacher against the
    real frames, on fixed crops of `videos` (decoded frames clamped to [-1, 1]); decode times through
    FlashDecoder.decode (the deployed path, whole clip, noise-free LTX decode), median of 3 interleaved
    runs on the first crop. Speed ratio = student time / teacher time (< 1 is faster)."""
    shape = data.ClipShape(cfg.clip_frames, cfg.eval_px or cfg.crop_px, cfg.resize_short)
    usable = [v for v in videos if min(v.height, v.width) >= shape.size and v.frames >= shape.frames]
    reader = data.ClipReader(usable, shape, cfg.keep_videos)
    crops = data.eval_crops(usable, shape, cfg.eval_crops)
    clips = [(usable[c.video].name, reader.clip(c).to(student.device)) for c in crops]
    report = {
        "family": student.family.value,
        "student_spec": getattr(student.module.spec, "name", "custom"),
        "student_parameters": student.num_parameters(),
        "teacher_parameters": teacher.num_parameters(),
        "split": "training videos (no held-out file)" if on_train_videos else "held-out videos",
        "videos": sorted({name for name, _ in clips}),
        "crops": len(clips),
        "clip": {"frames": shape.frames, "px": shape.size},
        "device": str(student.device),
        "mean": {},
        "per_crop": [],
        "speed": {"teacher_s": None, "student_s": None, "ratio_student_over_teacher": None, "speedup": None},
    }
    if not clips:  # every held-out video is smaller or shorter than the evaluation crop
        return report
    t, s = measure(encoder, teacher, {"student": student}, clips, repeats=3, noise_scale=0.0).rows
    per_crop = {
        "psnr_vs_teacher": s.per_clip_psnr_teacher,
        "ssim_vs_teacher": s.per_clip_ssim_teacher,
        "psnr_vs_real": s.per_clip_psnr_gt,
        "ssim_vs_real": s.per_clip_ssim_gt,
        "teacher_psnr_vs_real": t.per_clip_psnr_gt,
        "teacher_ssim_vs_real": t.per_clip_ssim_gt,
    }
    report["mean"] = {k: statistics.fmean(v) for k, v in per_crop.items()}
    report["per_crop"] = [
        {"video": name, "t0": crop.t0} | {k: v[i] for k, v in per_crop.items()}
        for i, ((name, _), crop) in enumerate(zip(clips, crops, strict=True))
    ]
    report["speed"] = {
        "teacher_s": t.seconds_median,
        "student_s": s.seconds_median,
        "ratio_student_over_teacher": s.seconds_median / t.seconds_median,
        "speedup": t.seconds_median / s.seconds_median,
    }
    return report


def summarize_history(history: list[dict], cfg: DistillConfig) -> dict:
    """Per phase: its steps and, for each term weighted in it (and the weighted total), the mean over the
    phase's first and last tenth of steps (the weights move inside a phase, so compare terms, not totals
    across phases). Also the mean step time."""
    phases = {}
    for phase, _, end in schedule.phase_spans(cfg.steps, cfg.schedule.fractions):
        rows = [h for h in history if h["phase"] == phase]
        if not rows:
            continue
        k = max(1, len(rows) // 10)
        weights = schedule.loss_weights(end - 1, cfg.steps, cfg.schedule)
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

    def f(key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "-"

    def seconds(key: str) -> str:
        return "-" if sp[key] is None else f"{sp[key]:.4f} s"

    lines = [
        f"# Flash-VAED distillation report ({report['family']}, {report['student_spec']})",
        "",
        f"Evaluated on {report['crops']} crops ({report['clip']['frames']} frames, {report['clip']['px']} px) "
        f"of {len(report['videos'])} {report['split']} on {report['device']}.",
        "",
        *markdown_table(
            ["", "PSNR (dB)", "SSIM"],
            [
                ["student vs teacher", f("psnr_vs_teacher"), f("ssim_vs_teacher")],
                ["student vs real frames", f("psnr_vs_real"), f("ssim_vs_real")],
                ["teacher vs real frames", f("teacher_psnr_vs_real"), f("teacher_ssim_vs_real")],
            ],
        ),
        "",
        f"Parameters: student {report['student_parameters'] / 1e6:.2f}M, teacher "
        f"{report['teacher_parameters'] / 1e6:.2f}M.",
        "",
        f"Decode time (one whole clip, median of 3 interleaved runs after a warm-up): student "
        f"{seconds('student_s')}, teacher {seconds('teacher_s')}; student/teacher = "
        + (f"{sp['ratio_student_over_teacher']:.3f}" if sp["ratio_student_over_teacher"] else "-")
        + (f" (speedup {sp['speedup']:.2f}x)." if sp["speedup"] else "."),
    ]
    train = report.get("training")
    if train:
        rows = [
            [f"{p} ({schedule.PHASE_NAMES[int(p)]})", f"{row['steps'][0]}-{row['steps'][1]}", name]
            + [f"{first:.4f}", f"{row['last'][name]:.4f}"]
            for p, row in train["phases"].items()
            for name, first in row["first"].items()
        ]
        lines += [
            "",
            "Training (means over the first and last tenth of each phase; 'loss' is the weighted total):",
            "",
            *markdown_table(["phase", "steps", "term", "first", "last"], rows),
        ]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """report.json and report.md into the run folder."""
    write_text(out / "report.json", json.dumps(report, indent=1))
    write_text(out / "report.md", report_markdown(report))
