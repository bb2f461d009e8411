"""Distil a Flash-VAED student from a Wan/LTX teacher.

    python training/distill.py --teacher wan_2.1_vae.safetensors --data videos/ --out runs/wan21 \\
        --preset official --steps 20000 --batch-size 2 --crop-px 256 --clip-frames 17
    python -m training.distill --teacher tiny_vae.safetensors --data clips/ --out runs/smoke \\
        --preset tiny --steps 4 --crop-px 32 --clip-frames 5          # CPU, seconds
    torchrun --nproc_per_node 8 training/distill.py ...             # DDP, one GPU per process

Writes into --out: student.safetensors (open it with flash_vaed.load_decoder or the Flash-VAED Load node),
last.safetensors + last.state.safetensors (resume with --resume), config.json, loss.png, report.md and
report.json. Ctrl+C (or SIGTERM) once stops at the end of the current step after saving a resumable
checkpoint.
See training/README.md for the design.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # run as a file from a fresh clone: make `flash_vaed` importable without installing it. This process
    # never imports ComfyUI, so the repository root on sys.path cannot shadow ComfyUI's own nodes.py.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from flash_vaed.distill.config import DistillConfig, DistillError, flat_fields  # noqa: E402
from flash_vaed.distill.loop import DistillResult, run  # noqa: E402
from flash_vaed.distill.resume import STATE_FILE  # noqa: E402
from training.cpu import fast_cpu_training  # noqa: E402
from training.plot import plot_losses  # noqa: E402

log = logging.getLogger("training.distill")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Distil a Flash-VAED student decoder from a Wan 2.1/2.2 or LTX-Video teacher.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, f, _ in flat_fields():  # one flag per setting, its help from the field's metadata
        flag = "--" + name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        kwargs: dict = {"help": f.metadata["help"], "dest": name}
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **kwargs)
            continue
        if name == "phases":
            kwargs |= {"nargs": 3, "type": float, "metavar": ("P1", "P2", "P3")}
        elif "int" in str(f.type):
            kwargs["type"] = int
        elif "float" in str(f.type):
            kwargs["type"] = float
        parser.add_argument(flag, required=required, default=default, **kwargs)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out folder that holds other files (they may be overwritten); without "
        "it a new run needs an empty or new folder",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write loss.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[DistillConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    return DistillConfig.from_dict({name: getattr(args, name) for name, _, _ in flat_fields()}), args


def check_out_folder(out: Path, overwrite: bool) -> None:
    """A new run (no checkpoint in `out`: a resume finds one there) needs an empty or new folder, or
    --overwrite: --out may name a folder of someone's files by mistake (a diffusers model holds config.json
    and often report.md or a student.safetensors), which the run would replace."""
    if overwrite or (out / STATE_FILE).exists() or not out.is_dir():
        return
    found = sorted(p.name for p in out.iterdir())
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise DistillError(
            f"--out {out} is not empty ({shown}) and holds no run to resume: a new run writes config.json, "
            "report.md, student.safetensors and more there. Pick a new or empty folder, or pass --overwrite."
        )


# Ctrl+C, and SIGTERM: what `kill`, systemd, Docker, Slurm and torchrun send to stop a process
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopOnSignal:
    """First Ctrl+C or SIGTERM: stop at the end of the current step (the loop saves first). Second: stop now."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s: stopping after this step (a checkpoint will be saved); send it again (or Ctrl+C) to stop now",
            signal.Signals(signum).name,
        )


def tqdm_progress(stop: _StopOnSignal, enabled: bool = True):
    """on_progress(done, total): a tqdm bar; raises KeyboardInterrupt at a step boundary after Ctrl+C."""
    from tqdm import tqdm

    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if enabled and bar is None:
            bar = tqdm(total=total, initial=done - 1, unit="step", dynamic_ncols=True)
        if bar is not None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
        if stop.requested:
            if bar is not None:
                bar.close()
            raise KeyboardInterrupt("stopped by Ctrl+C or SIGTERM")

    return on_progress


class _TqdmHandler(logging.Handler):
    """Log lines through tqdm.write, so they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> Path:
    import os

    cfg, args = parse_config(argv)
    check_out_folder(Path(cfg.out), args.overwrite)
    rank0 = os.environ.get("RANK", "0") == "0"
    show_bar = rank0 and not args.no_progress
    handler = _TqdmHandler() if show_bar else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=args.log_level.upper() if rank0 else "WARNING", handlers=[handler], force=True)
    stop = _StopOnSignal()
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        # CPU runs: no fresh zeroed pages every step, no slow subnormal arithmetic (training/cpu.py)
        with fast_cpu_training():
            result: DistillResult = run(cfg, on_progress=tqdm_progress(stop, show_bar))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    out = Path(cfg.out)
    if rank0:
        if not args.no_plot:
            plot_losses(result.history, out / "loss.png", cfg)
        log.info("student: %s", result.student_path)
        if result.report:
            m = result.report["mean"]
            log.info(
                "held-out: student vs teacher %.2f dB PSNR, SSIM %.4f; student/teacher time %.3f (report.md)",
                m.get("psnr_vs_teacher", float("nan")),
                m.get("ssim_vs_teacher", float("nan")),
                result.report["speed"]["ratio_student_over_teacher"] or float("nan"),
            )
    return out


if __name__ == "__main__":
    main()
