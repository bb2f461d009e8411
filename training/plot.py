"""The loss plot of a distillation run (loss.png): needs matplotlib (the `train` extra)."""

from __future__ import annotations

from pathlib import Path

from flash_vaed.distill import schedule
from flash_vaed.distill.config import DistillConfig


def _ema(values: list[float], span: int) -> list[float]:
    alpha, out, acc = 2.0 / (span + 1), [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot_losses(history: list[dict], path: Path, cfg: DistillConfig) -> Path:
    """The weighted total and every term that has a weight at some step (log scale; raw values faint,
    an exponential moving average on top), the phases shaded, the LR below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sched = cfg.schedule
    weighted = {
        t for s in range(cfg.steps) for t, w in schedule.loss_weights(s, cfg.steps, sched).items() if w
    }
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 1))
    steps = [h["step"] for h in history]
    span = max(1, len(history) // 30)
    for i, name in enumerate(n for n in ("loss", *schedule.TERMS) if n == "loss" or n in weighted):
        values = [h.get(name) for h in history]
        if not values or any(v is None or not v > 0 for v in values):
            continue
        color = f"C{i}"
        if span > 1:
            ax.plot(steps, values, color=color, lw=0.5, alpha=0.25)
        ax.plot(steps, _ema(values, span), color=color, label=name, lw=2.0 if name == "loss" else 1.0)
    for phase, first, end in schedule.phase_spans(cfg.steps, sched.fractions):
        if end > first:
            ax.axvspan(first + 0.5, end + 0.5, alpha=0.06 * phase, color="tab:blue")
            ax.text(
                first + 1, 1.0, f"phase {phase}", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8
            )
    ax.set_yscale("log")
    ax.set_ylabel("loss (weighted total and terms)")
    ax.legend(fontsize=7, ncol=4)
    ax_lr.plot(steps, [h["lr"] for h in history], color="k", lw=1)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
