"""Reconstruction quality of a teacher VAE and its distilled students on held-out real clips.

For each held-out clip: the teacher's encoder makes the latent, then the teacher's decoder and every
student decode it. Measured against the real frames (PSNR, SSIM) and the students also against the
teacher; retention = student PSNR / teacher PSNR (both against the real frames). Speed: the decoders
run on the same latent, interleaved, warm-up then the median of several.

    report = measure(encoder, teacher, students, clips)  # clips: (name, frames) pairs
    write_report(report, out_dir, strip_clip)       # quality.md, quality.json, quality_vs_speed.png, strip.png
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .decoder import LTX_DECODE_NOISE_SCALE, FlashDecoder
from .distill.losses import psnr, ssim
from .encoder import FlashEncoder


@dataclass
class DecoderQuality:
    name: str
    params_m: float
    psnr_gt: float  # mean over clips, dB, against the real frames
    ssim_gt: float
    psnr_teacher: float | None = None  # students only: against the teacher's decode
    ssim_teacher: float | None = None
    retention: float | None = None  # psnr_gt / teacher's psnr_gt
    seconds_median: float = 0.0
    speedup: float = 1.0  # teacher seconds / these seconds
    # the per-clip values behind the means, in clip order
    per_clip_psnr_gt: list[float] = field(default_factory=list)
    per_clip_ssim_gt: list[float] = field(default_factory=list)
    per_clip_psnr_teacher: list[float] = field(default_factory=list)
    per_clip_ssim_teacher: list[float] = field(default_factory=list)


@dataclass
class QualityReport:
    clips: list[str]
    clip_shape: tuple[int, int, int]  # frames, height, width
    speed_latent: tuple[int, ...]
    device: str
    rows: list[DecoderQuality]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def to_markdown(self) -> str:
        f, h, w = self.clip_shape
        header = ["decoder", "params (M)", "PSNR vs real (dB)", "SSIM vs real", "retention"]
        header += ["PSNR vs teacher (dB)", "SSIM vs teacher", "decode (s)", "speed-up"]
        rows = [
            [
                r.name,
                f"{r.params_m:.2f}",
                f"{r.psnr_gt:.2f}",
                f"{r.ssim_gt:.4f}",
                _number(r.retention and 100 * r.retention, "{:.1f} %"),
            ]
            + [_number(r.psnr_teacher, "{:.2f}"), _number(r.ssim_teacher, "{:.4f}")]
            + [f"{r.seconds_median:.3f}", f"{r.speedup:.2f}x"]
            for r in self.rows
        ]
        lines = [
            f"Held-out clips: {len(self.clips)} ({f} frames, {h}x{w}); speed: latent "
            f"{'x'.join(map(str, self.speed_latent))} on {self.device}, median of interleaved runs.",
            "",
            *markdown_table(header, rows),
        ]
        return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def time_decoders(
    decoders: Sequence[FlashDecoder],
    latent: torch.Tensor,
    repeats: int = 5,
    warmup: int = 1,
    noise_scale: float = LTX_DECODE_NOISE_SCALE,
) -> list[float]:
    """Median seconds of a whole-clip decode of `latent` for each decoder, runs interleaved so that
    drifting machine load hits all of them alike. noise_scale: LTX 0.9.1+ decode noise (FlashDecoder.decode)."""
    times: list[list[float]] = [[] for _ in decoders]

    def sync() -> None:
        if latent.device.type == "cuda":
            torch.cuda.synchronize()

    for rep in range(warmup + repeats):
        for i, dec in enumerate(decoders):
            sync()
            t0 = time.perf_counter()
            dec.decode(latent, noise_scale=noise_scale)
            sync()
            if rep >= warmup:
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure(
    encoder: FlashEncoder,
    teacher: FlashDecoder,
    students: dict[str, FlashDecoder],
    clips: Sequence[tuple[str, torch.Tensor]],
    *,
    speed_latent: torch.Tensor | None = None,
    repeats: int = 5,
    noise_scale: float = LTX_DECODE_NOISE_SCALE,
    on_clip: Callable[[int, int], None] | None = None,
) -> QualityReport:
    """clips: (name, frames (3, T, H, W) in [-1, 1]) pairs of one shape, on the decoders' device.
    speed_latent: what the decoders are timed on (default: the first clip's latent). noise_scale: LTX
    0.9.1+ decode noise (0: the deterministic decode)."""
    if not clips:
        raise ValueError("no held-out clips to measure on")
    names = ["teacher", *students]
    decoders = [teacher, *students.values()]
    scores = {n: {"psnr_gt": [], "ssim_gt": [], "psnr_teacher": [], "ssim_teacher": []} for n in names}
    latent0 = None
    for i, (_, frames) in enumerate(clips):
        x = frames.unsqueeze(0)
        z = encoder.encode(x)
        latent0 = z if latent0 is None else latent0
        ref = teacher.decode(z, noise_scale=noise_scale).clamp(-1, 1)
        for name, dec in zip(names, decoders, strict=True):
            y = ref if dec is teacher else dec.decode(z, noise_scale=noise_scale).clamp(-1, 1)
            s = scores[name]
            s["psnr_gt"].append(psnr(y, x))
            s["ssim_gt"].append(float(ssim(y, x)))
            if dec is not teacher:
                s["psnr_teacher"].append(psnr(y, ref))
                s["ssim_teacher"].append(float(ssim(y, ref)))
        if on_clip is not None:
            on_clip(i + 1, len(clips))
    lat = latent0 if speed_latent is None else speed_latent
    seconds = time_decoders(decoders, lat, repeats=repeats, noise_scale=noise_scale)
    rows = []
    teacher_psnr = statistics.fmean(scores["teacher"]["psnr_gt"])
    for name, dec, sec in zip(names, decoders, seconds, strict=True):
        s = scores[name]
        row = DecoderQuality(
            name=name,
            params_m=dec.num_parameters() / 1e6,
            psnr_gt=statistics.fmean(s["psnr_gt"]),
            ssim_gt=statistics.fmean(s["ssim_gt"]),
            seconds_median=sec,
            speedup=seconds[0] / sec,
            **{f"per_clip_{k}": v for k, v in s.items()},
        )
        if dec is not teacher:
            row.psnr_teacher = statistics.fmean(s["psnr_teacher"])
            row.ssim_teacher = statistics.fmean(s["ssim_teacher"])
            row.retention = row.psnr_gt / teacher_psnr
        rows.append(row)
    f, h, w = clips[0][1].shape[1:]
    return QualityReport(
        clips=[n for n, _ in clips],
        clip_shape=(f, h, w),
        speed_latent=tuple(lat.shape),
        device=str(lat.device),
        rows=rows,
    )


def held_out_clips(
    data: str | Path, names: Sequence[str], frames: int, px: int
) -> list[tuple[str, torch.Tensor]]:
    """(name, frames (3, T, px, px) in [-1, 1]) of the named clips: the first `frames` frames, centred
    crop at native resolution. Clips too short or small are skipped with a warning (scan_videos)."""
    from .distill import data as clipdata

    shape = clipdata.ClipShape(frames, px)
    wanted = set(names)
    videos = [v for v in clipdata.scan_videos(data, shape)[0] if v.name in wanted]
    reader = clipdata.ClipReader(videos, shape, keep_videos=0)
    crops = clipdata.eval_crops(videos, shape, per_video=1)
    return [(videos[c.video].name, reader.clip(c)) for c in crops]


# ---- pictures -----------------------------------------------------------------------------------


def plot_quality_vs_speed(report: QualityReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in report.rows:
        marker = "s" if r.name == "teacher" else "o"
        ax.scatter(r.speedup, r.psnr_gt, s=60, marker=marker)
        ax.annotate(r.name, (r.speedup, r.psnr_gt), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"decode speed-up vs the teacher ({report.device})")
    ax.set_ylabel("PSNR vs the real frames (dB)")
    ax.set_title("Quality vs speed on held-out clips")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _to_uint8(frame: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((frame.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


def frame_strip(
    frames: torch.Tensor,
    encoder: FlashEncoder,
    teacher: FlashDecoder,
    student: FlashDecoder,
    path: Path,
    frame_index: int | None = None,
    error_gain: float = 4.0,
) -> Path:
    """One frame side by side: real | teacher | student | mean |student - real| over RGB x error_gain."""
    from PIL import Image

    x = frames.unsqueeze(0)
    z = encoder.encode(x)
    t = teacher.decode(z)[0]
    s = student.decode(z)[0]
    k = frames.shape[1] // 2 if frame_index is None else frame_index
    # grey: the mean error over the colour channels (white = error of 2 / error_gain or more)
    err = ((s[:, k].clamp(-1, 1) - frames[:, k]).abs().mean(dim=0, keepdim=True) * error_gain - 1).clamp(
        -1, 1
    )
    err = err.expand(3, -1, -1)
    tiles = [_to_uint8(frames[:, k]), _to_uint8(t[:, k]), _to_uint8(s[:, k]), _to_uint8(err)]
    gap = torch.full((frames.shape[2], 4, 3), 255, dtype=torch.uint8)
    row = torch.cat([p for tile in tiles for p in (tile, gap)][:-1], dim=1)
    Image.fromarray(row.numpy()).save(path)
    return path


def write_report(
    report: QualityReport,
    out: Path,
    strip: tuple[torch.Tensor, FlashEncoder, FlashDecoder, FlashDecoder] | None = None,
) -> dict[str, Path]:
    """quality.md, quality.json, quality_vs_speed.png (needs matplotlib) and strip.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "quality.md", "json": out / "quality.json"}
    files["markdown"].write_text(report.to_markdown())
    files["json"].write_text(report.to_json() + "\n")
    try:
        files["plot"] = plot_quality_vs_speed(report, out / "quality_vs_speed.png")
    except ImportError:
        pass  # the table and JSON carry the numbers; the plot is a convenience
    if strip is not None:
        files["strip"] = frame_strip(*strip, out / "strip.png")
    return files
