"""Decode memory: peak memory against clip length (whole clip vs streaming) and against tile size.

    python bench/decode_memory.py                                   # CPU, official Wan student, small shapes
    python bench/decode_memory.py --latent-hw 90x160 --frames 1,6,11,21 --tiles 256,512 --out-device cpu
                                                                    # CUDA: 720p, up to 81 frames
    python bench/decode_memory.py --markdown bench/results/decode_memory_cpu.md --json out.json
    python bench/decode_memory.py --decoder ltx-2.3-teacher --latent-hw 2x3 --frames 16,61 --chunks 4,8 \
        --tiles 32 --tile-chunk whole --verify          # the LTX-2.3 VAE decoder: windows vs whole clip

Every configuration runs in a FRESH subprocess (this script with --child), so one run's peak and allocator
caches cannot leak into the next. What is measured:

* CUDA: torch.cuda.max_memory_allocated during the decode. `peak_mb` is the absolute peak (weights, latent,
  output and activations: what the decode needs on the GPU, without the CUDA context and the caching
  allocator's slack); `peak_delta_mb` is that minus what was allocated right before the decode.
* CPU: the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs after malloc_trim,
  else a 1 ms RSS sampler), with glibc's mmap threshold fixed at 1 MB (MALLOC_MMAP_THRESHOLD_) so that freed
  tensors leave the resident set. torch's CPU allocations are invisible to tracemalloc, so RSS is what can be
  measured. `peak_mb` is the absolute peak RSS (includes Python, torch and the weights);
  `peak_delta_mb` the increase during the decode.

`state_mb` is DecodeState.nbytes() of the streaming runs (Wan family): the causal context carried between
chunks, its largest value over the decode. Modes: `whole` (chunk_frames=None), `stream-N`
(chunk_frames=N), and tiled streaming (chunk_frames=--tile-chunk with tile_px). Seconds are single,
un-interleaved decodes in a fresh process: see decode_speed.py for speed comparisons.

Decoders: a flash_vaed.presets name (a student), or the teacher of a released LTX-2 video VAE
(`ltx-2.0-teacher`, `ltx-2.3-teacher`: the layout its config describes, seeded weights). LTX decoders are not
causal: `stream-N` decodes windows of N latent frames plus the decoder's temporal context on both sides
(LTX-2.0: 22, LTX-2.3: 14 latent frames), so a window only holds less than the clip on long clips; the
engine decodes the whole clip at once where a window would span it (`policy.useful_plan`), and such a row
is marked `= whole`. `--verify` decodes the whole clip once more in the same process after the measurement
and records the largest difference of the run's frames from it (`max_abs_diff_vs_whole`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from decode_speed import (
    DTYPES,
    build_ours,
    memory_kind,
    parse_shape,
    seeded_latent,
    seeded_ltx_norm,
    video_of,
)

from flash_vaed import Family
from flash_vaed.arch.ltx2 import LTX2TeacherDecoder, released_decoder_config
from flash_vaed.decoder import FlashDecoder
from flash_vaed.engine.decode import DecodePlan
from flash_vaed.engine.memory import PeakMemory
from flash_vaed.policy import estimate_bytes, useful_plan
from flash_vaed.presets import resolve_spec

log = logging.getLogger("bench.decode_memory")

# defaults per device: CPU small enough to finish in minutes on a shared 2-core machine, CUDA the 720p target
DEFAULTS = {
    "cpu": {"latent_hw": "30x52", "frames": "1,2,4,8", "tiles": "128,256"},
    "cuda": {"latent_hw": "90x160", "frames": "1,6,11,21", "tiles": "256,512"},
}


class StateProbe:
    """The largest DecodeState.nbytes() of the streams a decode carries: a forward hook on the decoder
    module sees the state of every chunk right after the chunk went through."""

    def __init__(self, dec: FlashDecoder):
        self.max_nbytes = 0
        dec.module.register_forward_hook(self._record)

    def _record(self, _module, args: tuple, _output) -> None:
        if len(args) > 1 and args[1] is not None:
            self.max_nbytes = max(self.max_nbytes, args[1].nbytes())


# the released LTX-2 VAE decoders, by the --decoder name: the layout their config describes
LTX2_TEACHERS = {"ltx-2.0-teacher": "ltx-2.0", "ltx-2.3-teacher": "ltx-2.3"}


def build_decoder(name: str, seed: int = 1) -> FlashDecoder:
    """A student of a presets name, or an LTX-2 teacher of LTX2_TEACHERS, at full size with seeded weights."""
    if name in LTX2_TEACHERS:
        torch.manual_seed(seed)
        module = LTX2TeacherDecoder.from_comfy_config(released_decoder_config(LTX2_TEACHERS[name])).eval()
        return FlashDecoder(Family.LTX2, "teacher", module, seeded_ltx_norm(), layout=name)
    return build_ours("student", resolve_spec(name), seed=seed)


def family_of(name: str) -> Family:
    if name in LTX2_TEACHERS:
        return Family.LTX2
    spec = resolve_spec(name)
    return spec.family


# ---- child: one configuration in its own process -------------------------------------------------------


def child(cfg: dict) -> dict:
    device = torch.device(cfg["device"])
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    dec = build_decoder(cfg["decoder"]).to(device, DTYPES[cfg["dtype"]])
    z = seeded_latent(tuple(cfg["latent"])).to(device)
    probe = StateProbe(dec)
    memory = PeakMemory(device)
    peaks, bases, abs_peaks, times = [], [], [], []
    out_mb = None
    for _ in range(cfg["repeats"]):
        memory.start()
        start = time.perf_counter()
        plan = DecodePlan(cfg["chunk_frames"], cfg["tile_px"], cfg["overlap_px"])
        out = dec.decode(z, plan, out_device=cfg["out_device"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        peak = memory.stop()
        out_mb = out.numel() * out.element_size() / 2**20
        kept = out if cfg.get("verify") else None  # compared with the whole clip once the peak is taken
        del out
        if peak is not None:
            peaks.append(peak)
            bases.append(memory.base)
            abs_peaks.append(memory.peak)
    diff = None
    plan = DecodePlan(cfg["chunk_frames"], cfg["tile_px"], cfg["overlap_px"])
    if cfg.get("verify") and plan != DecodePlan():
        diff = (kept.to("cpu") - dec.decode(z, out_device="cpu")).abs().max().item()
    ran = useful_plan(plan, dec.module, z.shape[2])
    return {
        "max_abs_diff_vs_whole": diff,
        "ran_whole_clip_windows": ran.chunk_frames is None and plan.chunk_frames is not None,
        "seconds_median": statistics.median(times),
        "peak_mb": max(abs_peaks) / 2**20 if abs_peaks else None,
        "peak_delta_mb": max(peaks) / 2**20 if peaks else None,
        "base_mb": min(bases) / 2**20 if bases else None,
        "state_mb": probe.max_nbytes / 2**20 if dec.causal else None,
        "output_mb": out_mb,
        "weights_mb": sum(p.numel() * p.element_size() for p in dec.module.parameters()) / 2**20,
        "memory_kind": memory_kind(device, cpu_note="VmHWM in a fresh process per configuration"),
    }


def run_child(cfg: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    # glibc raises its mmap threshold after large frees, and from then on keeps freed activations in the
    # heap: a decode in many steps (windows, tiles) would show that as growth of the resident set. A fixed
    # threshold maps every large tensor on its own, so that the peak RSS follows the tensors alive.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        return {"error": f"child exited {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- parent ----------------------------------------------------------------------------------------------


def configs(args, device: torch.device) -> list[dict]:
    family = family_of(args.decoder)
    channels = family.latent_channels
    h, w = args.latent_hw
    base = {
        "decoder": args.decoder,
        "family": family.value,
        "device": str(device),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "threads": args.threads,
        "overlap_px": args.overlap,
        "out_device": args.out_device or str(device),
        "verify": args.verify,
    }
    out = []
    for t in args.frames:
        for chunk in [None, *args.chunks]:
            if chunk is not None and chunk >= t and chunk != 1:
                continue  # one chunk covering the clip is the whole-clip run again
            mode = "whole" if chunk is None else f"stream-{chunk}"
            out.append(
                {
                    **base,
                    "sweep": "frames",
                    "mode": mode,
                    "latent": [channels, t, h, w],
                    "chunk_frames": chunk,
                    "tile_px": None,
                }
            )
    t = args.tile_frames or max(args.frames)
    for tile in args.tiles:
        out.append(
            {
                **base,
                "sweep": "tiles",
                "mode": f"{'whole' if args.tile_chunk is None else f'stream-{args.tile_chunk}'} tile-{tile}",
                "latent": [channels, t, h, w],
                "chunk_frames": args.tile_chunk,
                "tile_px": tile,
            }
        )
    return out


def estimates(args, device: torch.device) -> str:
    """The memory policy's estimate of each configuration's peak (activations, state and the decode's own
    buffers; weights not included), from the decoder's meta-device profile: no decode runs, so any size is
    instant. What `auto` plans with, not a measurement."""
    with torch.device("meta"):
        dec = build_decoder(args.decoder)
    lines = [
        f"### Estimated decode memory, {args.decoder} ({args.dtype}; `flash_vaed.policy.estimate_bytes`, no decode run)",
        "",
        "| sweep | mode | latent | video | estimated peak MB |",
        "|---|---|---|---|---|",
    ]
    for cfg in configs(args, device):
        latent = (1, *cfg["latent"])
        plan = useful_plan(
            DecodePlan(cfg["chunk_frames"], cfg["tile_px"], cfg["overlap_px"]), dec.module, latent[2]
        )
        mb = estimate_bytes(dec.memory_profile, latent, DTYPES[cfg["dtype"]], plan) / 2**20
        mode = cfg["mode"] + (" (= whole)" if plan.chunk_frames is None and cfg["chunk_frames"] else "")
        f, h, w = video_of(Family(cfg["family"]), tuple(cfg["latent"]))
        lines.append(
            f"| {cfg['sweep']} | {mode} | {'x'.join(map(str, cfg['latent']))} | {f}x{h}x{w} | {mb:.0f} |"
        )
    return "\n".join([*lines, ""])


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"### Decode memory, {result['decoder']} ({result['dtype']}, {m['device_type']}: {m['device']})",
        "",
        f"Measured: {result['memory_kind']}; each row is a fresh process; {m['cpu_count']} cores, "
        f"load average {'/'.join(f'{x:.1f}' for x in m['loadavg_before'] or [])} at the start.",
        "",
        "| sweep | mode | latent | video | peak MB | peak over pre-decode MB | state MB | output MB | s | max abs "
        "diff vs whole |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        f, h, w = r["video"]
        if r.get("error"):
            lines.append(
                f"| {r['sweep']} | {r['mode']} | {'x'.join(map(str, r['latent']))} | {f}x{h}x{w} | "
                f"error: {r['error'][:60]} | | | | | |"
            )
            continue
        mode = r["mode"] + (" (= whole)" if r.get("ran_whole_clip_windows") else "")
        diff = r.get("max_abs_diff_vs_whole")
        lines.append(
            f"| {r['sweep']} | {mode} | {'x'.join(map(str, r['latent']))} | {f}x{h}x{w} | "
            f"{_n(r['peak_mb'])} | {_n(r['peak_delta_mb'])} | {_n(r['state_mb'], 2)} | "
            f"{_n(r['output_mb'], 1)} | {_n(r['seconds_median'], 2)} | {'-' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join([*lines, ""])


def _n(v, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    runs = [r for r in result["runs"] if not r.get("error") and r["peak_delta_mb"] is not None]
    fig, (ax_t, ax_tile) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in dict.fromkeys(r["mode"] for r in runs if r["sweep"] == "frames"):
        pts = sorted((r["latent"][1], r["peak_delta_mb"]) for r in runs if r["mode"] == mode)
        ax_t.plot(*zip(*pts, strict=True), marker="o", label=mode)
    ax_t.set(xlabel="latent frames T", ylabel="peak over pre-decode (MB)", title="memory vs clip length")
    ax_t.legend()
    tiled = [r for r in runs if r["sweep"] == "tiles"]
    if tiled:
        pts = sorted((r["tile_px"], r["peak_delta_mb"]) for r in tiled)
        ax_tile.plot(*zip(*pts, strict=True), marker="o", label="stream-1, tiled")
        # the untiled runs at the same clip length, as levels to compare the tiled points with
        for r in runs:
            if (
                r["sweep"] == "frames"
                and r["latent"] == tiled[0]["latent"]
                and r["mode"] in ("whole", "stream-1")
            ):
                ax_tile.axhline(
                    r["peak_delta_mb"], linestyle="--", color="gray" if r["mode"] == "whole" else "C1"
                )
                ax_tile.annotate(f"{r['mode']}, untiled", (pts[0][0], r["peak_delta_mb"]), fontsize=8)
        ax_tile.set(xlabel="tile px", ylabel="peak over pre-decode (MB)", title="memory vs tile size")
        ax_tile.legend()
    fig.suptitle(
        f"{result['decoder']}, {result['machine']['device_type']}: {result['memory_kind']}", fontsize=8
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--decoder",
        default="wan21-official",
        help=f"a flash_vaed.presets name, or one of {', '.join(LTX2_TEACHERS)} (default %(default)s)",
    )
    ap.add_argument(
        "--latent", type=parse_shape, help="CxTxHxW: one clip length (T) at this size; sets --frames"
    )
    ap.add_argument(
        "--latent-hw", help="latent H x W (default: 30x52 = 240x416 on CPU, 90x160 = 720p on CUDA)"
    )
    ap.add_argument("--frames", help="latent frame counts T to sweep (default: 1,2,4,8 CPU; 1,6,11,21 CUDA)")
    ap.add_argument("--chunks", default="1,2,4", help="streaming chunk_frames to compare with whole clip")
    ap.add_argument(
        "--tiles", help="tile sizes in px for the tile sweep (default: 128,256 CPU; 256,512 CUDA)"
    )
    ap.add_argument("--tile-frames", type=int, help="T of the tile sweep (default: the largest of --frames)")
    ap.add_argument(
        "--tile-chunk", default="1", help="chunk_frames of the tile sweep, or 'whole' (default %(default)s)"
    )
    ap.add_argument(
        "--verify",
        action="store_true",
        help="record each run's max abs difference from the whole-clip decode",
    )
    ap.add_argument(
        "--estimate",
        action="store_true",
        help="print the memory policy's estimates instead (meta device: no decode runs, any size, instant)",
    )
    ap.add_argument("--overlap", type=int, help="tile overlap px (default: the engine's, tile/4)")
    ap.add_argument(
        "--out-device", help="where frames are assembled (default: the decode device; cpu for GPU)"
    )
    ap.add_argument("--device", help="cpu or cuda[:N] (default: cuda if available)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--repeats", type=int, default=1, help="decodes per process (peak: max; time: median)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write the result as JSON (- = stdout)"
    )
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--plot", type=Path, help="PNG plot (default: next to --markdown, if given)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stream = sys.stderr if args.json == "-" or args.child else sys.stdout
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=stream)
    if args.child:
        sys.stdout.write(json.dumps(child(json.loads(args.child))) + "\n")
        return 0

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    if args.latent:
        args.latent_hw, args.frames = args.latent[2:], [args.latent[1]]
        args.tiles = args.tiles or ""
    else:
        args.latent_hw = tuple(int(v) for v in (args.latent_hw or defaults["latent_hw"]).split("x"))
        args.frames = _ints(args.frames or defaults["frames"])
    args.tiles = _ints(defaults["tiles"] if args.tiles is None else args.tiles)
    args.chunks = _ints(args.chunks)
    args.tile_chunk = None if args.tile_chunk == "whole" else int(args.tile_chunk)

    if args.estimate:
        text = estimates(args, device)
        log.info("\n%s", text)
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(text)
        return 0

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    runs = []
    for cfg in configs(args, device):
        log.info("%s %s latent %s ...", cfg["sweep"], cfg["mode"], "x".join(map(str, cfg["latent"])))
        res = run_child(cfg, args.timeout)
        fam = Family(cfg["family"])
        row = {**cfg, "video": list(video_of(fam, tuple(cfg["latent"]))), **res}
        runs.append(row)
        if res.get("error"):
            log.error("  failed: %s", res["error"][-400:])
        else:
            log.info(
                "  peak %.0f MB (+%.0f MB), state %s MB, %.2f s",
                row["peak_mb"] or -1,
                row["peak_delta_mb"] or -1,
                _n(row["state_mb"], 2),
                row["seconds_median"],
            )
    ok = [r for r in runs if not r.get("error")]
    result = {
        "bench": "decode_memory",
        "decoder": args.decoder,
        "dtype": args.dtype,
        "memory_kind": ok[0]["memory_kind"] if ok else None,
        "machine": {
            "device_type": device.type,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "runs": runs,
    }
    text = markdown(result)
    log.info("\n%s", text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    plot_path = args.plot or (args.markdown.with_suffix(".png") if args.markdown else None)
    if plot_path and plot(result, plot_path):
        result["plot"] = str(plot_path)
        log.info("plot: %s", plot_path)
    if args.json == "-":
        sys.stdout.write(json.dumps(result) + "\n")
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if len(ok) != len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
