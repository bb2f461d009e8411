"""What a pruning run did and how close its untrained student is to the teacher."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def psnr_db(video: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of `video` against `reference`, both (B, 3, T, H, W) in about [-1, 1], after clamping both
    to [-1, 1] as image conversion does; peak-to-peak 2 (= PSNR of the [0, 1] images)."""
    a = video.detach().double().clamp(-1, 1)
    b = reference.detach().double().clamp(-1, 1)
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@dataclass(frozen=True)
class LayerReport:
    """One line of the report.

    name:     a channel site ("decoder.upsamples.3.mid") or a replaced conv ("decoder.upsamples.3.residual.2").
    kind:     "channels" (what was kept of a site) or "operator" (an op replacement's initialisation).
    teacher_channels, kept_channels: widths before and after.
    error:    relative error, 0 = exact. channels: mean over the site's consumers of the fold's
              ||X - X_hat||_F / ||X||_F on their inputs; operator: ||y - y_teacher||_F / ||y_teacher||_F
              of the new operator's output on calibration patches.
    note:     selection method or "full3d->dw3d" etc.
    kept:     the kept teacher channel indices (channels lines), ascending.
    """

    name: str
    kind: str
    teacher_channels: int
    kept_channels: int
    error: float
    note: str = ""
    kept: torch.Tensor | None = field(default=None, repr=False, compare=False)


@dataclass
class PruneReport:
    """Everything `prune_` / `build_student_from_teacher` measured.

    psnr_db: the pruned student's PSNR against the teacher on held-out calibration latents, before any
             training (None when no latents were held out).
    """

    teacher: str
    student: str
    selection: str
    fold: bool
    layers: list[LayerReport]
    psnr_db: float | None = None
    teacher_parameters: int = 0
    student_parameters: int = 0

    def channel_error(self) -> float:
        """Mean reconstruction error over the pruned sites (sites that keep everything count 0)."""
        errs = [r.error for r in self.layers if r.kind == "channels"]
        return sum(errs) / len(errs) if errs else 0.0

    def to_markdown(self) -> str:
        """A markdown summary and one table row per site / replaced conv."""
        psnr = "n/a" if self.psnr_db is None else f"{self.psnr_db:.2f} dB"
        lines = [
            f"**{self.teacher} -> {self.student}** (selection `{self.selection}`, "
            f"fold {'on' if self.fold else 'off'}): parameters {self.teacher_parameters:,} -> "
            f"{self.student_parameters:,}, PSNR vs teacher before training {psnr}",
            "",
            "| layer | kind | channels | rel. error | note |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for r in self.layers:
            lines.append(
                f"| `{r.name}` | {r.kind} | {r.kept_channels}/{r.teacher_channels} | {r.error:.4f} | {r.note} |"
            )
        return "\n".join(lines) + "\n"


def build_report(
    teacher_name: str,
    student_name: str,
    cfg,
    sites,
    op_lines: list[LayerReport],
    psnr: float | None,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
) -> PruneReport:
    """The report of a finished pruning run, for any family's pruner: one "channels" line per site (the
    site's name, teacher and student widths, fold errors and kept indices), then the operator lines."""
    method = cfg.selection + ("+fold" if cfg.fold else "")
    lines = [
        LayerReport(
            site.name,
            "channels",
            site.teacher,
            site.student,
            sum(site.errors) / len(site.errors) if site.errors else 0.0,
            method,
            site.kept,
        )
        for site in sites
    ]
    return PruneReport(
        teacher=teacher_name,
        student=student_name,
        selection=cfg.selection,
        fold=cfg.fold,
        layers=lines + list(op_lines),
        psnr_db=psnr,
        teacher_parameters=sum(p.numel() for p in teacher.parameters()),
        student_parameters=sum(p.numel() for p in student.parameters()),
    )
