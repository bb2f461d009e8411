"""Decode speed: ComfyUI's own decoder vs our teacher vs Flash-VAED students, same latent, same run.

    python bench/decode_speed.py                                   # CPU: --preset cpu, both families
    python bench/decode_speed.py --preset gpu480 --dtype bf16 --json out.json   # on a CUDA machine
    python bench/decode_speed.py --latent 16x3x12x16 --repeats 3 --markdown bench/results/decode_speed_cpu.md

Every decoder is built at its real, full size with seeded random weights (speed does not depend on weight
values), so this runs offline without any model file:

* ComfyUI:  `comfy.ldm.wan.vae.WanVAE` (dim 96, as comfy.sd builds it for the Wan 2.1 VAE) and
            `comfy.ldm.lightricks.vae.causal_video_autoencoder.VideoVAE(version=...)`, imported from the
            installed ComfyUI ($FLASH_VAED_COMFYUI, else <repo>/.cache/comfyui, as the tests find it) and
            given the SAME weights as our teacher, so both compute the same function (the table's
            "vs teacher" check shows how close). Timed at the model level (`model.decode(z)`), i.e. without
            comfy.sd.VAE's memory planning, clamping and moving frames to the CPU.
* teacher:  ours (`DecoderSpec.wan21_teacher()`, `LTXTeacherDecoder.for_version(v)`) via FlashDecoder.decode.
* students: the official layouts (`DecoderSpec.flashvaed_wan21()`, `LTXStudentSpec.official()`), the other
            full-size presets of `flash_vaed.presets.PRESETS`, and the official Wan student streamed
            (`--stream-chunks`, one DecodeState carried across chunks).

Runs are interleaved (each round decodes every decoder once, rotating the order) after warm-up decodes,
so load from other processes hits all decoders alike. Speed-ups are within one family, three ways:
ratio of medians (`speedup_vs_comfy`), ratio of best times (noise only ever adds time), and the median of
per-round ratios (`_paired`: both decodes ran within one round, so slow drifts in load cancel). Memory per decode: CUDA `max_memory_allocated` minus what was
allocated before the decode (so the weights of the other loaded decoders are not counted; `weights_mb`
gives the decoder's own); CPU the increase of the process's peak RSS during the decode (VmHWM reset
through /proc/self/clear_refs after malloc_trim, else a 1 ms RSS sampler) -- in-process and indicative,
bench/decode_memory.py measures memory properly in a fresh process per configuration.

ComfyUI must not see our repository's `nodes/` package (it has its own nodes.py), so the repository root
is taken off sys.path before ComfyUI's root is put first. Run this file as a script, not with `-m`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flash_vaed import DecoderSpec, Family
from flash_vaed.arch.ltx import LTXTeacherDecoder
from flash_vaed.arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from flash_vaed.arch.protocol import decode_raw
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.decoder import FlashDecoder
from flash_vaed.engine.memory import PeakMemory
from flash_vaed.latents import LatentNorm
from flash_vaed.presets import PRESETS as NAMED_PRESETS

log = logging.getLogger("bench.decode_speed")

REPO = Path(__file__).resolve().parents[1]

# Wan latent C x T x H x W per preset; the LTX latent is derived to decode (at least) the same video
PRESETS = {
    "cpu": (16, 5, 30, 52),  # 17 frames of 240x416
    "gpu480": (16, 21, 60, 104),  # 81 frames of 480x832
    "gpu720": (16, 21, 90, 160),  # 81 frames of 720x1280
}
# presets of flash_vaed.presets that are benched under their own row already, or are test-sized
_COVERED_PRESETS = {"wan21-official", "wan21-teacher", "ltx-official"}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- shapes --------------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxTxHxW, e.g. 16x5x30x52, got {text!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive numbers CxTxHxW, got {text!r}")
    return dims


def video_of(family: Family, latent: tuple[int, ...]) -> tuple[int, int, int]:
    """(frames, height, width) decoded from a C x T x H x W latent of `family`."""
    _, t, h, w = latent
    s = family.space_stride
    return family.frames_out(t), h * s, w * s


def ltx_latent_for(wan_latent: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The LTX latent that decodes at least the video of a Wan 2.1 latent (LTX: 8x time, 32x space;
    at least 2x2, which ComfyUI's reflect padding needs)."""
    frames, h, w = video_of(Family.WAN21, wan_latent)
    t = 1 + math.ceil((frames - 1) / Family.LTXV.time_stride)
    s = Family.LTXV.space_stride
    return Family.LTXV.latent_channels, t, max(2, math.ceil(h / s)), max(2, math.ceil(w / s))


def seeded_latent(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def seeded_ltx_norm(seed: int = 9) -> LatentNorm:
    """Per-channel statistics standing in for a file's mean-of-means / std-of-means."""
    g = torch.Generator().manual_seed(seed)
    return LatentNorm(0.1 * torch.randn(128, generator=g), torch.exp(0.25 * torch.randn(128, generator=g)))


# ---- our decoders, full size, seeded ---------------------------------------------------------------------


def build_ours(kind: str, spec, seed: int) -> FlashDecoder:
    """A FlashDecoder for a Wan `DecoderSpec`, an `LTXStudentSpec`, or an int (LTX teacher version)."""
    torch.manual_seed(seed)
    if isinstance(spec, DecoderSpec):
        return FlashDecoder(spec.family, kind, WanFamilyDecoder(spec).eval(), layout=spec.name)
    if isinstance(spec, LTXStudentSpec):
        return FlashDecoder(
            Family.LTXV, kind, LTXStudentDecoder(spec).eval(), seeded_ltx_norm(), layout=spec.name
        )
    module = LTXTeacherDecoder.for_version(int(spec)).eval()
    return FlashDecoder(Family.LTXV, kind, module, seeded_ltx_norm(), layout=f"ltxv-teacher-v{spec}")


def extra_presets(family: Family) -> list[tuple[str, object]]:
    """The full-size layouts of flash_vaed.presets of this family."""
    out = []
    for name, factory in NAMED_PRESETS.items():
        if name in _COVERED_PRESETS or "tiny" in name:
            continue
        spec = factory()
        spec_family = spec.family if isinstance(spec, DecoderSpec) else Family.LTXV
        if spec_family is family:
            out.append((name, spec))
    return out


# ---- ComfyUI's decoders ------------------------------------------------------------------------------------


def comfy_root(arg: str | None) -> Path | None:
    """The installed ComfyUI the tests use too (`arg`, else $FLASH_VAED_COMFYUI, else <repo>/.cache/comfyui),
    or None when there is none."""
    sys.path.insert(0, str(REPO / "tests"))
    from harness.server import comfy_installed
    from harness.server import comfy_root as harness_root

    root = harness_root(arg)
    return root if comfy_installed(root) else None


def import_comfy(root: Path, device: torch.device):
    """Import ComfyUI's VAE model modules from `root` (and nothing of our node pack)."""
    # our repository's nodes/ would shadow ComfyUI's nodes.py: take the repo root (and "" = cwd, when the
    # cwd is the repo root) off the path before ComfyUI's root goes first
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != REPO]
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    # comfy.model_management picks its device when first imported: keep it off CUDA for a CPU bench
    if device.type == "cpu":
        args.cpu = True
    import comfy.ldm.lightricks.vae.causal_video_autoencoder as ltx_vae
    import comfy.ldm.wan.vae as wan_vae

    try:
        from comfyui_version import __version__ as version
    except ImportError:
        version = "unknown"
    return wan_vae, ltx_vae, version


def comfy_wan21(wan_vae, teacher: FlashDecoder) -> torch.nn.Module:
    # the config comfy.sd.VAE builds for a Wan 2.1 VAE file (dim read from the file: 96)
    model = wan_vae.WanVAE(
        dim=96,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    )
    return _load_decoder_weights(model, teacher.module.state_dict())


def comfy_ltxv(ltx_vae, teacher: FlashDecoder, version: int) -> torch.nn.Module:
    model = ltx_vae.VideoVAE(version=version)
    state = dict(teacher.module.state_dict())
    state["per_channel_statistics.mean-of-means"] = teacher.latent_norm.mean
    state["per_channel_statistics.std-of-means"] = teacher.latent_norm.std
    return _load_decoder_weights(model, state)


def _load_decoder_weights(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    # ComfyUI builds its layers with torch.empty (comfy.ops.disable_weight_init): every tensor decode
    # touches must come from our teacher; the encoder is never run, so it is dropped rather than copied
    # to the device
    model.encoder = torch.nn.Identity()
    result = model.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not k.startswith(("encoder.", "conv1.", "per_channel_statistics."))
    ]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"ComfyUI's decoder and our teacher disagree on keys: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


# ---- memory --------------------------------------------------------------------------------------------


def memory_kind(device: torch.device, cpu_note: str = "process-wide, in-process: indicative") -> str:
    """What the peak_mem_mb of a `PeakMemory` measured on `device` counts, for the report."""
    if device.type == "cuda":
        return "cuda max_memory_allocated during the decode minus allocated before it"
    return f"cpu peak RSS increase during the decode ({cpu_note})"


# ---- the bench -------------------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    family: Family
    kind: str  # comfy | teacher | student
    layout: str
    latent: tuple[int, ...]
    run: Callable[[torch.Tensor], torch.Tensor]
    module: torch.nn.Module
    variants: list[str]
    chunk_frames: int | None = None
    times: dict[int, float] = field(default_factory=dict)  # round -> seconds
    peaks: list[int] = field(default_factory=list)
    error: str | None = None
    check: dict = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def weights_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def apply_variants(module: torch.nn.Module, args, device: torch.device) -> list[str]:
    """channels-last / torch.compile on a module in place; returns what was applied."""
    applied = []
    if args.channels_last:
        # 5-D weights (3D convs) and 4-D weights (per-frame 2D convs) each get their own layout
        for p in module.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            elif p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        applied.append("channels_last")
    if args.compile:
        module.compile(dynamic=False)
        applied.append("compile")
    return applied


def cuda_graph(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> Callable:
    """Capture one whole decode of a fixed-shape latent; replaying it skips every Python-side launch.

    Needs a decode with no host sync inside, so callers pass the module-level call (FlashDecoder.decode
    checks its latent for NaNs on the host). The graph's pool keeps all intermediates, which raises peak
    memory: read peak_mem_mb of --cuda-graphs runs accordingly.
    """
    static_z = z.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(2):  # warm-up on a side stream, as CUDA graph capture requires
            fn(static_z)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = fn(static_z)

    def replay(latent: torch.Tensor) -> torch.Tensor:
        static_z.copy_(latent)
        graph.replay()
        return static_out

    return replay


def module_call(dec: FlashDecoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoder's whole-clip module call (`decode_raw`), without FlashDecoder's host-side latent check."""
    norm = dec.latent_norm
    return lambda z: decode_raw(dec.module, (z if norm is None else norm.to_raw(z)).to(dec.dtype))


def build_entries(args, device: torch.device, dtype: torch.dtype) -> tuple[list[Entry], dict]:
    families = [Family.WAN21, Family.LTXV] if args.family == "all" else [Family(args.family)]
    wan_latent = args.latent or PRESETS[args.preset]
    if wan_latent[0] != Family.WAN21.latent_channels:
        raise SystemExit(f"--latent is a Wan 2.1 latent: 16 channels, got {wan_latent[0]}")
    latents = {Family.WAN21: wan_latent, Family.LTXV: args.ltx_latent or ltx_latent_for(wan_latent)}
    if latents[Family.LTXV][0] != Family.LTXV.latent_channels:
        raise SystemExit(f"--ltx-latent needs 128 channels, got {latents[Family.LTXV][0]}")

    comfy = None
    info = {"comfyui": None}
    if not args.no_comfy:
        root = comfy_root(args.comfyui)
        if root is None:
            if args.require_comfy:
                raise SystemExit("no ComfyUI found: pass --comfyui ROOT or set FLASH_VAED_COMFYUI")
            log.warning("no ComfyUI found (--comfyui / FLASH_VAED_COMFYUI): ComfyUI rows skipped")
        else:
            comfy = import_comfy(root, device)
            info["comfyui"] = {"root": str(root), "version": comfy[2]}

    entries: list[Entry] = []

    def ours(name: str, dec: FlashDecoder, family: Family, chunk: int | None = None) -> None:
        dec.to(device, dtype)
        variants = apply_variants(dec.module, args, device)
        if args.cuda_graphs:
            run = cuda_graph(module_call(dec), seeded_latent(latents[family]).to(device))
            variants.append("cuda_graphs(module call)")
        else:

            def run(z: torch.Tensor, dec=dec, chunk=chunk) -> torch.Tensor:
                return dec.decode(z, chunk_frames=chunk)

        entries.append(
            Entry(name, family, dec.role, dec.layout, latents[family], run, dec.module, variants, chunk)
        )

    def stock(name: str, model: torch.nn.Module, family: Family, inner: torch.nn.Module) -> None:
        model.to(device=device, dtype=dtype)
        variants = apply_variants(inner, args, device) if args.variants_on_comfy else []

        def run(z: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model.decode(z.to(dtype))

        if args.cuda_graphs and args.variants_on_comfy:
            run = cuda_graph(run, seeded_latent(latents[family]).to(device))
            variants.append("cuda_graphs")
        entries.append(
            Entry(name, family, "comfy", type(model).__name__, latents[family], run, inner, variants)
        )

    if Family.WAN21 in families:
        teacher = build_ours("teacher", DecoderSpec.wan21_teacher(), seed=0)
        if comfy is not None:
            model = comfy_wan21(comfy[0], teacher)
            stock("comfyui-wan21", model, Family.WAN21, model.decoder)
        name = "teacher-wan21" + (f"[chunk={args.teacher_chunk}]" if args.teacher_chunk else "")
        ours(name, teacher, Family.WAN21, args.teacher_chunk)
        official = build_ours("student", DecoderSpec.flashvaed_wan21(), seed=1)
        ours("student-wan21-official", official, Family.WAN21)
        for chunk in args.stream_chunks:
            if not args.cuda_graphs:  # a captured graph is one whole-clip call: nothing to stream
                ours(f"student-wan21-official[chunk={chunk}]", official, Family.WAN21, chunk)
        if args.presets:
            for i, (name, spec) in enumerate(extra_presets(Family.WAN21)):
                ours(f"student-{name}", build_ours("student", spec, seed=10 + i), Family.WAN21)
    if Family.LTXV in families:
        teacher = build_ours("teacher", args.ltx_version, seed=2)
        if comfy is not None:
            model = comfy_ltxv(comfy[1], teacher, args.ltx_version)
            stock(f"comfyui-ltxv-v{args.ltx_version}", model, Family.LTXV, model.decoder)
        ours(f"teacher-ltxv-v{args.ltx_version}", teacher, Family.LTXV)
        ours("student-ltxv-official", build_ours("student", LTXStudentSpec.official(), seed=3), Family.LTXV)
        if args.presets:
            for i, (name, spec) in enumerate(extra_presets(Family.LTXV)):
                ours(f"student-{name}", build_ours("student", spec, seed=20 + i), Family.LTXV)
    if args.only:
        # filtered after building: ComfyUI's models need the teacher's weights even when not timed
        entries = [e for e in entries if any(part in e.name for part in args.only)]
    return entries, info


def _timed(entry: Entry, z: torch.Tensor, device: torch.device, memory: PeakMemory | None):
    if memory is not None:
        memory.start()
    _sync(device)
    start = time.perf_counter()
    out = entry.run(z)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = memory.stop() if memory is not None else None
    return out, seconds, peak


def _release(device: torch.device) -> None:
    # after an out-of-memory error the caching allocator still holds the failed decode's blocks: give them
    # back so the decoders after it are measured on a clean device
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compare_to_comfy(entries: list[Entry], outputs: dict[str, torch.Tensor]) -> None:
    """Max |ours - ComfyUI| of each teacher (same weights, same latent): the two compute one function."""
    for e in entries:
        if e.kind != "teacher" or e.name not in outputs:
            continue
        ref = next((c for c in entries if c.kind == "comfy" and c.family is e.family), None)
        if ref is None or ref.name not in outputs:
            continue
        a, b = outputs[e.name].float(), outputs[ref.name].float().to(outputs[e.name].device)
        if a.shape != b.shape:
            e.check = {"vs": ref.name, "error": f"shape {tuple(a.shape)} vs {tuple(b.shape)}"}
        elif _draws_noise(e):
            e.check = {"vs": ref.name, "note": "decode noise drawn differently; not compared"}
        else:
            e.check = {"vs": ref.name, "max_abs_diff": (a - b).abs().max().item()}


def _draws_noise(entry: Entry) -> bool:
    return entry.module.timestep_conditioned


def run_bench(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and args.cuda_graphs:
        raise SystemExit("--cuda-graphs needs a CUDA device")
    dtype = DTYPES[args.dtype]
    if args.preset is None:
        args.preset = "gpu480" if device.type == "cuda" else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    entries, info = build_entries(args, device, dtype)
    zs = {
        fam: seeded_latent(shape).to(device) for fam, shape in {e.family: e.latent for e in entries}.items()
    }
    memory = PeakMemory(device) if not args.no_memory else None

    outputs: dict[str, torch.Tensor] = {}
    for e in entries:  # warm-up: allocator growth, kernel selection, torch.compile all happen here
        log.info("warm-up %s on latent %s", e.name, "x".join(map(str, e.latent)))
        try:
            for i in range(args.warmup):
                out, seconds, _ = _timed(e, zs[e.family], device, None)
                log.info("  warm-up %d: %.3f s", i + 1, seconds)
                if i == 0 and e.kind in ("comfy", "teacher"):
                    outputs[e.name] = out.detach().float().cpu()
                if not bool(torch.isfinite(out).all()):
                    log.warning(
                        "  %s produced non-finite values (random weights): timing still valid", e.name
                    )
                del out
        except Exception as err:  # a GPU OOM at 720p, say: record it and bench the others
            e.error = f"{type(err).__name__}: {err}"[:500]
            log.error("  %s failed: %s", e.name, e.error)
            _release(device)
    compare_to_comfy(entries, outputs)
    outputs.clear()

    live = [e for e in entries if e.error is None]
    for r in range(args.repeats):  # interleaved rounds, order rotated so no decoder always goes first
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for e in order:
            try:
                out, seconds, peak = _timed(e, zs[e.family], device, memory)
                del out
            except Exception as err:
                e.error = f"{type(err).__name__}: {err}"[:500]
                log.error("%s failed in round %d: %s", e.name, r + 1, e.error)
                _release(device)
                continue
            e.times[r] = seconds
            if peak is not None:
                e.peaks.append(peak)
        log.info("round %d/%d done", r + 1, args.repeats)
        live = [e for e in live if e.error is None]

    return report(entries, args, device, dtype, info, memory, load_before)


def ratios(ref: Entry | None, e: Entry) -> dict[str, float | None]:
    """How many times faster `e` is than `ref`: ratio of medians, ratio of best times (noise only ever
    adds time), and the median of per-round ratios (both ran within one round, so slow drifts in the
    machine's load cancel)."""
    if ref is None or not ref.times or not e.times:
        return {"median": None, "best": None, "paired": None}
    paired = [ref.times[r] / e.times[r] for r in e.times if r in ref.times]
    return {
        "median": statistics.median(ref.times.values()) / statistics.median(e.times.values()),
        "best": min(ref.times.values()) / min(e.times.values()),
        "paired": statistics.median(paired) if paired else None,
    }


def report(entries, args, device, dtype, info, memory, load_before) -> dict:
    comfy = {e.family: e for e in entries if e.kind == "comfy"}
    teacher = {e.family: e for e in entries if e.kind == "teacher"}
    whole = {e.layout: e for e in entries if e.kind != "comfy" and e.chunk_frames is None}
    rows = []
    for e in entries:
        frames, h, w = video_of(e.family, e.latent)
        med = statistics.median(e.times.values()) if e.times else None
        vs_comfy, vs_teacher = ratios(comfy.get(e.family), e), ratios(teacher.get(e.family), e)
        row = {
            "name": e.name,
            "family": e.family.value,
            "kind": e.kind,
            "layout": e.layout,
            "latent_shape": list(e.latent),
            "video": [frames, h, w],
            "chunk_frames": e.chunk_frames,
            "variants": e.variants,
            "params_m": round(e.params / 1e6, 2),
            "weights_mb": round(e.weights_bytes / 2**20, 1),
            "seconds_median": med,
            "seconds_min": min(e.times.values()) if e.times else None,
            "seconds_all": [e.times[r] for r in sorted(e.times)],
            "fps": frames / med if med else None,
            "peak_mem_mb": round(max(e.peaks) / 2**20, 1) if e.peaks else None,
            "peak_mem_kind": memory_kind(device) if memory is not None else None,
            "speedup_vs_comfy": vs_comfy["median"],
            "speedup_vs_comfy_best": vs_comfy["best"],
            "speedup_vs_comfy_paired": vs_comfy["paired"],
            "speedup_vs_teacher": vs_teacher["median"],
            "speedup_vs_teacher_paired": vs_teacher["paired"],
            "error": e.error,
        }
        if e.chunk_frames is not None and e.layout in whole:
            slow = ratios(e, whole[e.layout])  # streamed time / whole-clip time
            row["streaming_slowdown_vs_whole"] = slow["median"] - 1.0 if slow["median"] else None
            row["streaming_slowdown_vs_whole_paired"] = slow["paired"] - 1.0 if slow["paired"] else None
        if e.check:
            row["check_vs_comfy"] = e.check
        rows.append(row)
    machine = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    return {
        "bench": "decode_speed",
        "preset": None if args.latent else args.preset,
        "dtype": args.dtype,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "interleaved": True,
        "peak_mem_kind": memory_kind(device) if memory is not None else None,
        "machine": machine,
        **info,
        "decoders": rows,
    }


def markdown(result: dict, title: str | None = None) -> str:
    m = result["machine"]
    head = title or "Decode speed"
    lines = [
        f"### {head}",
        "",
        f"{m['device_type']} ({m['device']}), {m['cpu_count']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads, {result['dtype']}; {result['warmup']} warm-up + median of "
        f"{result['repeats']} interleaved rounds; load average {_load(m['loadavg_before'])} before, "
        f"{_load(m['loadavg_after'])} after. ComfyUI: "
        f"{result['comfyui']['version'] if result.get('comfyui') else 'not run'}.",
        "",
        "| decoder | latent | video (frames x H x W) | params M | median s | best s | fps | "
        "x vs ComfyUI (median / best / paired) | x vs teacher | peak mem MB* | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["decoders"]:
        note = []
        if r["error"]:
            note.append(f"error: {r['error'][:80]}")
        if "streaming_slowdown_vs_whole" in r:
            note.append(
                f"streaming {_pct(r['streaming_slowdown_vs_whole'])} vs whole clip "
                f"(paired {_pct(r['streaming_slowdown_vs_whole_paired'])})"
            )
        chk = r.get("check_vs_comfy")
        if chk and "max_abs_diff" in chk:
            note.append(f"max abs diff vs ComfyUI {chk['max_abs_diff']:.1e}")
        if r["variants"]:
            note.append("+".join(r["variants"]))
        f, h, w = r["video"]
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['latent_shape']))} | {f}x{h}x{w} | {r['params_m']:.1f} | "
            f"{_num(r['seconds_median'], 3)} | {_num(r['seconds_min'], 3)} | {_num(r['fps'], 2)} | "
            f"{_num(r['speedup_vs_comfy'], 2, 'x')} / {_num(r['speedup_vs_comfy_best'], 2, 'x')} / "
            f"{_num(r['speedup_vs_comfy_paired'], 2, 'x')} | {_num(r['speedup_vs_teacher'], 2, 'x')} | "
            f"{_num(r['peak_mem_mb'], 0)} | {'; '.join(note)} |"
        )
    lines += ["", f"\\* {result['peak_mem_kind'] or 'not measured'}.", ""]
    return "\n".join(lines)


def _num(v, digits: int, suffix: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def _load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["wan21", "ltxv", "all"], default="all")
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="latent size: cpu 16x5x30x52 (17x240x416), gpu480 16x21x60x104 (81x480x832), "
        "gpu720 16x21x90x160 (81x720x1280); default cpu on CPU, gpu480 on CUDA",
    )
    ap.add_argument("--latent", type=parse_shape, help="Wan latent CxTxHxW, overrides --preset")
    ap.add_argument(
        "--ltx-latent", type=parse_shape, help="LTX latent CxTxHxW (default: one decoding the Wan video)"
    )
    ap.add_argument(
        "--ltx-version", type=int, choices=[0, 1, 2], default=0, help="LTX teacher: 0.9.0/0.9.1/0.9.5+"
    )
    ap.add_argument("--device", help="cpu or cuda[:N] (default: cuda if available)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="every decoder, ComfyUI's too")
    ap.add_argument("--channels-last", action="store_true", help="channels-last weights (our decoders)")
    ap.add_argument("--compile", action="store_true", help="torch.compile our decoder modules")
    ap.add_argument(
        "--cuda-graphs", action="store_true", help="CUDA only: replay a captured whole-clip module call"
    )
    ap.add_argument(
        "--variants-on-comfy",
        action="store_true",
        help="apply --channels-last/--compile/--cuda-graphs to ComfyUI's decoders too (default: stock)",
    )
    ap.add_argument(
        "--stream-chunks",
        type=lambda s: [int(v) for v in s.split(",") if v.strip()],
        default=[1],
        help="also time the official Wan student streamed with these chunk_frames (default 1; '' for none)",
    )
    ap.add_argument(
        "--teacher-chunk",
        type=int,
        help="stream our Wan teacher with this chunk_frames (ComfyUI decodes one latent frame at a time; "
        "whole clip at 720p x 81 in fp32: ~29 GB per full-resolution activation, likely too much for 80 GB)",
    )
    ap.add_argument(
        "--only",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        help="time only decoders whose name contains one of these (comma-separated)",
    )
    ap.add_argument(
        "--no-presets", dest="presets", action="store_false", help="skip flash_vaed.presets layouts"
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed full-size decodes per decoder")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--comfyui", help="ComfyUI root (default $FLASH_VAED_COMFYUI, else .cache/comfyui)")
    ap.add_argument("--no-comfy", action="store_true", help="do not import ComfyUI (no speedup_vs_comfy)")
    ap.add_argument("--require-comfy", action="store_true", help="fail instead of skipping without ComfyUI")
    ap.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    ap.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the result as one JSON object (- = stdout)",
    )
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--title", help="markdown table title")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # with --json on stdout, the log goes to stderr so stdout is exactly one JSON object
    stream = sys.stderr if args.json == "-" else sys.stdout
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=stream)
    result = run_bench(args)
    text = markdown(result, args.title)
    log.info("\n%s", text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json == "-":
        sys.stdout.write(json.dumps(result) + "\n")
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if any(r["error"] for r in result["decoders"]) else 0


if __name__ == "__main__":
    sys.exit(main())
