"""The GPU check: one command that measures what only a GPU can tell us, within a fixed time budget.

    bench/gpu/run.sh                                  # on the GPU machine: everything, results under $OUT
    python bench/gpu/check.py --smoke --out /tmp/g    # CPU, toy sizes, seconds (CI runs this)

Stages, in order of value; each is timed, and skipped with a note when the budget cannot cover it:

1. correctness  ComfyUI's own decoder models (imported from the harness install) vs ours on the same seeded
                weights in the real layouts (Wan 2.1, Wan 2.2, LTX-Video 0.9.0/0.9.1/0.9.5 at full width,
                small latents): fp32 max abs error, bf16 error vs fp32. The official Flash-VAED students vs
                the official code's stored outputs (tests/data/official), and in fp32/bf16/fp16. Streaming,
                LTX windows and tiles vs the whole clip.
2. speed        bench/decode_speed.py's interleaved run (ComfyUI vs our teacher vs the official students)
                at Wan 480x832x81 and LTX 768x512x97, bf16.
3. memory       peak CUDA allocation at Wan 720x1280x81: our streamed student and teacher vs the whole clip,
                ComfyUI's model decode, and ComfyUI's VAE Decode (Tiled) at its node defaults.
4. variants     channels-last, CUDA graphs and torch.compile of the official Wan student (each checked
                against the plain path before it is timed), and depthwise 3D conv implementations.
5. training     steps/s of training/distill.py (official Wan layout from a full-size Wan 2.1 teacher, batch
                2, 17 frames, 256 px, bf16 autocast) and of the teacher trainer.
6. speed720     decode_speed at 720x1280x81 (with time left).

Writes gpu_<date>.md and gpu_<date>.json into --out after every stage, so a run cut off by its time limit
still leaves what it measured. The JSON's `speed` rows are bench/decode_speed.py's rows. Exit status: 0 when
every stage that ran passed its checks, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (REPO, REPO / "bench", REPO / "tests"):  # flash_vaed, decode_speed, support.reference_weights
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

log = logging.getLogger("bench.gpu")

# fp32 agreement of two implementations of one decoder (the CPU tests use 5e-5 too)
EXACT_FP32 = 5e-5


# ---- budget and report ------------------------------------------------------------------------------------


class Budget:
    """Seconds left of the run; a stage starts only when its estimate fits."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


class Report:
    """Everything measured, written as markdown and JSON after every stage."""

    def __init__(self, out: Path, device: torch.device, smoke: bool):
        self.out = out
        self.date = datetime.date.today().isoformat()
        self.stem = f"gpu_{self.date}" + ("_smoke" if smoke else "")
        self.data: dict = {
            "bench": "gpu_check",
            "date": self.date,
            "smoke": smoke,
            "machine": machine(device),
        }
        self.data["stages"] = {}
        self.lines: list[str] = []
        self.failed = False

    def stage(self, name: str, status: str, seconds: float, **fields) -> None:
        self.data["stages"][name] = {"status": status, "seconds": round(seconds, 1), **fields}
        if status == "failed":
            self.failed = True

    def section(self, title: str, lines: list[str]) -> None:
        self.lines += [f"## {title}", "", *lines, ""]

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        m = self.data["machine"]
        head = [
            f"# GPU check, {self.date}",
            "",
            f"{m['device']} ({m['device_type']}), torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}. "
            "Written by `bench/gpu/check.py`; every decoder has seeded random weights in its real layout "
            "(speed and memory do not depend on weight values).",
            "",
            "| stage | status | seconds | note |",
            "|---|---|---|---|",
        ]
        for name, s in self.data["stages"].items():
            head.append(f"| {name} | {s['status']} | {s['seconds']} | {s.get('note', '')} |")
        _write(self.out / f"{self.stem}.md", "\n".join(head + [""] + self.lines) + "\n")
        _write(self.out / f"{self.stem}.json", json.dumps(self.data, indent=1, default=str) + "\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def machine(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu"),
        "device_type": device.type,
        "memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        if cuda
        else None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


# ---- shared helpers ----------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def psnr_db(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of `a` against `ref` on ref's own peak-to-peak range (random-weight outputs are not [-1, 1])."""
    a, ref = a.float().cpu(), ref.float().cpu()
    mse = (a - ref).pow(2).mean().item()
    peak = (ref.max() - ref.min()).item()
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Peak:
    """Peak CUDA memory above what was allocated before (CPU: not measured, None)."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.mb = round((torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20, 1)


@contextlib.contextmanager
def full_fp32():
    """fp32 convs and matmuls in full precision: PyTorch lets cuDNN convolutions use TF32 (10-bit
    mantissa) by default on Ampere and later, which alone moves a Wan decode by ~3e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def seeded(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- ComfyUI's model classes ---------------------------------------------------------------------------------


class Comfy:
    """ComfyUI's VAE model modules, imported from its root without our nodes/ package shadowing nodes.py."""

    def __init__(self, root: Path, device: torch.device):
        import decode_speed

        self.wan, self.ltx, self.version = decode_speed.import_comfy(root, device)
        import comfy.ldm.wan.vae2_2 as wan22
        import comfy.utils

        self.wan22, self.utils = wan22, comfy.utils

    def model(self, family: str, width: int | None):
        """ComfyUI's model as comfy.sd.VAE builds it for that file (`width`: Wan's dim, for smoke runs)."""
        common = dict(
            dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True]
        )
        if family == "wan21":
            return self.wan.WanVAE(dim=width or 96, z_dim=16, dropout=0.0, **common)
        if family == "wan22":
            return self.wan22.WanVAE(dim=16 if width else 160, dec_dim=width or 256, z_dim=48, **common)
        return self.ltx.VideoVAE(version={"ltxv-0.9.0": 0, "ltxv-0.9.1": 1, "ltxv-0.9.5": 2}[family])

    def decode(self, model, family: str, z: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if family.startswith("ltxv"):
                return model.decode(z, noise_scale=0.0)  # ComfyUI's timestep 0.05; noise off on both sides
            return model.decode(z)

    def decode_tiled_node_defaults(self, model, z: torch.Tensor, out_device) -> torch.Tensor:
        """What VAE Decode (Tiled) runs at its defaults (tile 512, overlap 64, temporal 64/8) on a Wan 2.1
        VAE: the node's parameter conversion, then VAE.decode_tiled_3d's tiled_scale_multidim call."""
        tile, overlap = 512 // 8, 64 // 8
        tile_t = max(2, 64 // 4)
        overlap_t = max(1, min(tile_t // 2, 8 // 4))
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device

        def decode_fn(a):
            return model.decode(a.to(dtype).to(device)).float()

        with torch.inference_mode():
            return self.utils.tiled_scale_multidim(
                z,
                decode_fn,
                tile=(tile_t, tile, tile),
                overlap=(overlap_t, overlap, overlap),
                upscale_amount=(lambda a: max(0, a * 4 - 3), 8, 8),
                out_channels=3,
                index_formulas=(4, 8, 8),
                output_device=out_device,
            )


def seeded_pair(comfy: Comfy, family: str, width: int | None, seed: int = 0):
    """ComfyUI's model and our loaded teacher, both holding the same seeded weights (real key layout)."""
    from flash_vaed import load_decoder
    from support.reference_weights import generate

    model = comfy.model(family, width)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    # LTX 0.9.1's injected spatial noise scales are zeroed so both decodes are deterministic
    state = generate(shapes, seed=seed, zero=("per_channel_scale",))
    model.load_state_dict(state, strict=True)
    ours = load_decoder(state)
    return model.eval(), ours


def import_training():
    """The repository's `training` package. Importing ComfyUI took the repository root off sys.path (our
    nodes/ would shadow ComfyUI's nodes.py); put it back at the END, where ComfyUI's own modules win."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    import training.teacher

    return training.teacher


# ---- stage 1: correctness --------------------------------------------------------------------------------------


def stage_correctness(ctx) -> dict:
    dev, smoke = ctx.device, ctx.smoke
    rows, lines, ok = [], [], True
    families = {
        "wan21": ((1, 16, 5, 16, 16), 8 if smoke else None),
        "wan22": ((1, 48, 3, 8, 8) if not smoke else (1, 48, 2, 2, 2), 16 if smoke else None),
        "ltxv-0.9.0": ((1, 128, 3, 4, 4) if not smoke else (1, 128, 2, 2, 2), None),
        "ltxv-0.9.1": ((1, 128, 3, 4, 4), None),
        "ltxv-0.9.5": ((1, 128, 3, 4, 4), None),
    }
    if smoke:
        families.pop("ltxv-0.9.1")
        families.pop("ltxv-0.9.5")
    lines += [
        "Teachers: ComfyUI's own model class vs ours, same seeded weights (full width unless noted), "
        "ComfyUI's decode timestep for LTX with the noise off; fp32 with TF32 off. bf16 rows: each decoder in bf16 against its "
        "own fp32 output.",
        "",
        "| decoder | latent | fp32 max abs vs ComfyUI | ours bf16 vs fp32 (max / PSNR dB) | "
        "ComfyUI bf16 vs fp32 (max / PSNR dB) | streamed/windows vs whole (max) |",
        "|---|---|---|---|---|---|",
    ]
    for family, (shape, width) in families.items():
        if ctx.comfy is None:
            lines.append(f"| {family} | - | no ComfyUI | | | |")
            continue
        z = seeded(shape, seed=1).to(dev)
        model, ours = seeded_pair(ctx.comfy, family, width)
        model.to(dev)
        ours.to(dev)
        with full_fp32():
            theirs32 = ctx.comfy.decode(model, family, z).float()
            ours32 = ours.decode(z, noise_scale=0.0)
            err = max_err(ours32, theirs32)
            streamed = max_err(ours.decode(z, chunk_frames=1, noise_scale=0.0), ours32)
        ok &= err <= EXACT_FP32 and streamed <= EXACT_FP32
        model.to(torch.bfloat16)
        ours.to(dtype=torch.bfloat16)
        theirs16 = ctx.comfy.decode(model, family, z.to(torch.bfloat16)).float()
        ours16 = ours.decode(z, noise_scale=0.0)
        finite = bool(torch.isfinite(ours16).all())
        ok &= finite
        row = {
            "decoder": family + (f" (width {width})" if width else ""),
            "latent": list(shape),
            "fp32_max_abs_vs_comfy": err,
            "bf16_vs_fp32_max_abs": max_err(ours16, ours32),
            "bf16_vs_fp32_psnr_db": psnr_db(ours16, ours32),
            "comfy_bf16_vs_fp32_max_abs": max_err(theirs16, theirs32),
            "comfy_bf16_vs_fp32_psnr_db": psnr_db(theirs16, theirs32),
            "streamed_vs_whole_max_abs": streamed,
            "bf16_finite": finite,
        }
        rows.append(row)
        lines.append(
            f"| {row['decoder']} | {'x'.join(map(str, shape[1:]))} | {err:.1e} | "
            f"{row['bf16_vs_fp32_max_abs']:.2e} / {row['bf16_vs_fp32_psnr_db']:.1f} | "
            f"{row['comfy_bf16_vs_fp32_max_abs']:.2e} / {row['comfy_bf16_vs_fp32_psnr_db']:.1f} | "
            f"{streamed:.1e} |"
        )
        del model, ours, theirs32, theirs16, ours32, ours16
        free(dev)

    students, student_lines, student_ok = check_students(ctx)
    tiles, tile_lines = check_tiles(ctx)
    ok &= student_ok
    lines += ["", *student_lines, "", *tile_lines]
    return {"ok": ok, "teachers": rows, "students": students, "tiles": tiles, "lines": lines}


def check_students(ctx) -> tuple[list, list, bool]:
    """The official students vs the official code's stored outputs, then in bf16/fp16 vs fp32."""
    from safetensors.torch import load_file

    from flash_vaed import load_decoder
    from support.reference_weights import generate, load_manifest

    dev = ctx.device
    refs = REPO / "tests" / "data" / "official"
    cases = [
        (
            "official Wan student",
            "flashvaed_wan_official",
            refs / "wan_student_ref.safetensors",
            "latent_raw",
        ),
        (
            "official LTX student",
            "flashvaed_ltx_official",
            refs / "ltx_student_ref.safetensors",
            "latent_raw",
        ),
    ]
    lines = [
        "Students: the official layouts on the weights the stored reference outputs were made with "
        "(`tests/data/official`, from the official Flash-VAED code on CPU fp32), decoded here.",
        "",
        "| student | fp32 max abs vs official | bf16 vs fp32 (max / PSNR dB) | fp16 vs fp32 (max / PSNR dB) | "
        "finite | streamed vs whole (max) |",
        "|---|---|---|---|---|---|",
    ]
    rows, ok = [], True
    for name, manifest, ref_path, latent_key in cases:
        ref = load_file(str(ref_path))
        dec = load_decoder(generate(load_manifest(manifest), seed=0))
        # LTX references are raw latents; our decode takes ComfyUI's normalized ones
        z = ref[latent_key]
        if dec.latent_norm is not None:
            z = (z - dec.latent_norm.mean.view(1, -1, 1, 1, 1)) / dec.latent_norm.std.view(1, -1, 1, 1, 1)
        dec.to(dev)
        z = z.to(dev)
        with full_fp32():
            out32 = dec.decode(z)
            err = max_err(out32, ref["video"])
            streamed = max_err(dec.decode(z, chunk_frames=1), out32)
        row = {"student": name, "fp32_max_abs_vs_official": err, "streamed_vs_whole_max_abs": streamed}
        finite = True
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            dec.to(dtype=dtype)
            out = dec.decode(z)
            finite &= bool(torch.isfinite(out).all())
            row[f"{label}_vs_fp32_max_abs"] = max_err(out, out32)
            row[f"{label}_vs_fp32_psnr_db"] = psnr_db(out, out32)
        row["finite"] = finite
        ok &= err <= 1e-4 and finite and streamed <= EXACT_FP32
        rows.append(row)
        lines.append(
            f"| {name} | {err:.1e} | {row['bf16_vs_fp32_max_abs']:.2e} / {row['bf16_vs_fp32_psnr_db']:.1f} | "
            f"{row['fp16_vs_fp32_max_abs']:.2e} / {row['fp16_vs_fp32_psnr_db']:.1f} | {finite} | "
            f"{streamed:.1e} |"
        )
        del dec
        free(dev)
    return rows, lines, ok


def check_tiles(ctx) -> tuple[dict, list]:
    """Tiled streaming vs the whole clip for the official Wan student (tiles blend: close, not exact)."""
    from flash_vaed import load_decoder
    from support.reference_weights import generate, load_manifest

    dev = ctx.device
    dec = load_decoder(generate(load_manifest("flashvaed_wan_official"), seed=0)).to(dev)
    z = seeded((1, 16, 5, 24, 32) if not ctx.smoke else (1, 16, 3, 16, 16), seed=2).to(dev)
    tile_px = 128
    with full_fp32():
        whole = dec.decode(z)
        tiled = dec.decode(z, chunk_frames=1, tile_px=tile_px, overlap_px=32)
    row = {"latent": list(z.shape[1:]), "tile_px": tile_px, "overlap_px": 32}
    row |= {"max_abs": max_err(tiled, whole), "psnr_db": psnr_db(tiled, whole)}
    lines = [
        f"Tiles: official Wan student, latent {'x'.join(map(str, z.shape[1:]))}, {tile_px} px tiles with 32 px "
        f"overlap, streamed one latent frame at a time, vs the whole clip: max abs {row['max_abs']:.2e}, "
        f"PSNR {row['psnr_db']:.1f} dB."
    ]
    return row, lines


# ---- stage 2 and 6: speed ----------------------------------------------------------------------------------------


def stage_speed(ctx, runs: list[list[str]]) -> dict:
    import decode_speed

    results, lines, ok = [], [], True
    for argv in runs:
        args = decode_speed.parse_args(argv)
        if ctx.comfy_root is not None:
            args.comfyui = str(ctx.comfy_root)
        result = decode_speed.run_bench(args)
        results.append(result)
        ok &= not any(r["error"] for r in result["decoders"])
        lines += [decode_speed.markdown(result, title=" ".join(argv)), ""]
        free(ctx.device)
    rows = [
        r | {"dtype": res["dtype"], "device": res["machine"]["device"]}
        for res in results
        for r in res["decoders"]
    ]
    return {"ok": ok, "rows": rows, "lines": lines}


def speed_runs(ctx, which: str) -> list[list[str]]:
    dtype = "fp32" if ctx.smoke else "bf16"
    common = ["--dtype", dtype, "--no-presets", "--warmup", "1"]
    if ctx.smoke:
        common += ["--repeats", "2", "--no-memory"]
        return [["--family", "wan21", "--latent", "16x2x4x4", "--ltx-latent", "128x2x2x2", *common]]
    common += ["--repeats", "5"]
    if which == "main":
        return [
            ["--family", "wan21", "--preset", "gpu480", *common],
            ["--family", "ltxv", "--ltx-latent", "128x13x16x24", "--ltx-version", "0", *common],
        ]
    return [["--family", "wan21", "--preset", "gpu720", "--stream-chunks", "1", *common]]


# ---- stage 3: memory ---------------------------------------------------------------------------------------------


def stage_memory(ctx) -> dict:
    from flash_vaed import load_decoder
    from support.reference_weights import generate, load_manifest

    dev = ctx.device
    shape = (1, 16, 21, 90, 160) if not ctx.smoke else (1, 16, 3, 8, 8)
    dtype = torch.bfloat16 if not ctx.smoke else torch.float32
    z = seeded(shape, seed=3).to(dev)
    out_device = "cpu"  # ComfyUI's IMAGE lives on the host
    student = load_decoder(generate(load_manifest("flashvaed_wan_official"), seed=0)).to(dev, dtype)
    runs: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("student, whole clip", lambda: student.decode(z, out_device=out_device)),
        (
            "student, streamed (1 latent frame)",
            lambda: student.decode(z, chunk_frames=1, out_device=out_device),
        ),
    ]
    model = teacher = None
    if ctx.comfy is not None:
        model, teacher = seeded_pair(ctx.comfy, "wan21", 8 if ctx.smoke else None)
        model.to(dev, dtype)
        teacher.to(dev, dtype)
        runs += [
            (
                "teacher, streamed (1 latent frame)",
                lambda: teacher.decode(z, chunk_frames=1, out_device=out_device),
            ),
            (
                "ComfyUI model decode (whole clip)",
                lambda: ctx.comfy.decode(model, "wan21", z.to(dtype)).cpu(),
            ),
            (
                "ComfyUI VAE Decode (Tiled), node defaults",
                lambda: ctx.comfy.decode_tiled_node_defaults(model, z, out_device),
            ),
            ("teacher, whole clip", lambda: teacher.decode(z, out_device=out_device)),
        ]
    rows, lines = [], []
    frames = 4 * shape[2] - 3
    lines += [
        f"Wan 2.1, latent {'x'.join(map(str, shape[1:]))} -> {frames}x{shape[3] * 8}x{shape[4] * 8}, "
        f"{str(dtype).replace('torch.', '')}, frames assembled on the host. Peak = CUDA max_memory_allocated "
        "during the decode minus what was allocated before it (weights excluded).",
        "",
        "| decode | peak MB | seconds | max abs vs ComfyUI model decode |",
        "|---|---|---|---|",
    ]
    reference = None
    for name, fn in runs:
        if not ctx.budget.fits(20):
            lines.append(f"| {name} | skipped: budget | | |")
            continue
        try:
            with Peak(dev) as peak:
                sync(dev)
                t = time.perf_counter()
                out = fn()
                sync(dev)
                seconds = time.perf_counter() - t
        except Exception as err:  # out of memory at 720p, say: a finding, and the other decodes go on
            rows.append({"decode": name, "error": f"{type(err).__name__}: {err}"[:300]})
            lines.append(f"| {name} | {type(err).__name__}: {str(err)[:60]} | | |")
            free(dev)
            continue
        out = out.float().cpu()
        if name.startswith("ComfyUI model"):
            reference = out
        diff = max_err(out, reference) if reference is not None and out.shape == reference.shape else None
        rows.append({"decode": name, "peak_mem_mb": peak.mb, "seconds": seconds, "max_abs_vs_comfy": diff})
        lines.append(f"| {name} | {peak.mb} | {seconds:.2f} | {'-' if diff is None else f'{diff:.2e}'} |")
        del out
        free(dev)
    return {"ok": True, "rows": rows, "lines": lines}


# ---- stage 4: variants -------------------------------------------------------------------------------------------


def stage_variants(ctx) -> dict:
    import decode_speed

    from flash_vaed import load_decoder
    from support.reference_weights import generate, load_manifest

    dev = ctx.device
    dtype = torch.bfloat16 if not ctx.smoke else torch.float32
    shape = (1, 16, 21, 60, 104) if not ctx.smoke else (1, 16, 3, 8, 8)
    repeats = 5 if not ctx.smoke else 2
    z = seeded(shape, seed=4).to(dev)
    state = generate(load_manifest("flashvaed_wan_official"), seed=0)
    with full_fp32():
        reference = load_decoder(state).to(dev).decode(z)  # the fp32 truth every variant is judged by
    plain = load_decoder(state).to(dev, dtype)
    plain_err = max_err(plain.decode(z), reference)
    # another kernel may round bf16 differently: a variant is exact when it is no further from the fp32
    # decode than the plain path is (with 50 % slack); in fp32 when it agrees to EXACT_FP32
    tol = EXACT_FP32 if dtype == torch.float32 else 1.5 * plain_err
    rows = []
    lines = [
        f"Official Wan student, latent {'x'.join(map(str, shape[1:]))}, {str(dtype).replace('torch.', '')}, "
        f"median of {repeats}. Errors are max abs differences from the fp32 decode (TF32 off); the plain "
        f"{str(dtype).replace('torch.', '')} path's is {plain_err:.3g}, and a variant counts as exact within "
        f"{tol:.3g}.",
        "",
        "| variant | median s | x vs plain | max abs vs fp32 | exact | note |",
        "|---|---|---|---|---|---|",
    ]
    base_s = median_seconds(lambda: plain.decode(z), dev, repeats)
    rows.append({"variant": "plain", "seconds_median": base_s, "max_abs": plain_err, "exact": True})
    lines.append(f"| plain | {base_s:.4f} | 1.00x | {plain_err:.2e} | True | |")

    def variant(name: str, make: Callable[[], Callable[[], torch.Tensor]], estimate: float) -> None:
        if not ctx.budget.fits(estimate):
            lines.append(f"| {name} | | | | | skipped: budget |")
            return
        try:
            fn = make()
            out = fn()
            diff = max_err(out, reference)
            seconds = median_seconds(fn, dev, repeats)
        except Exception as err:  # a variant that fails is a finding, not a crash of the check
            rows.append({"variant": name, "error": f"{type(err).__name__}: {err}"[:300]})
            lines.append(f"| {name} | | | | | error: {type(err).__name__}: {str(err)[:80]} |")
            free(dev)
            return
        exact = diff <= tol
        rows.append({"variant": name, "seconds_median": seconds, "max_abs": diff, "exact": exact})
        lines.append(f"| {name} | {seconds:.4f} | {base_s / seconds:.2f}x | {diff:.2e} | {exact} | |")
        free(dev)

    def channels_last():
        dec = load_decoder(state).to(dev, dtype)
        decode_speed.apply_variants(dec.module, argparse.Namespace(channels_last=True, compile=False), dev)
        return lambda: dec.decode(z)

    def cuda_graphs():
        dec = load_decoder(state).to(dev, dtype)
        return functools_partial(decode_speed.cuda_graph(decode_speed.module_call(dec), z), z)

    def compiled():
        dec = load_decoder(state).to(dev, dtype)
        dec.module.compile(dynamic=False)
        return lambda: dec.decode(z)

    variant("channels-last", channels_last, 10)
    if dev.type == "cuda":
        variant("CUDA graphs (whole-clip module call)", cuda_graphs, 15)
    variant("torch.compile", compiled, 120 if not ctx.smoke else 5)
    dw_rows, dw_lines = depthwise_impls(ctx, plain, z)
    lines += ["", *dw_lines]
    return {"ok": True, "rows": rows, "depthwise": dw_rows, "lines": lines}


def functools_partial(fn, arg):
    return lambda: fn(arg)


def depthwise_impls(ctx, dec, z) -> tuple[list, list]:
    """The depthwise causal 3D convs of a decode, at their real input shapes: PyTorch's grouped Conv3d vs a
    sum of per-tap depthwise 2D convs vs channels-last-3d input."""
    import torch.nn.functional as F

    dev = ctx.device
    shapes: dict[tuple, torch.nn.Conv3d] = {}

    def hook(mod, inputs, _out):
        shapes.setdefault(tuple(inputs[0].shape), mod)

    handles = [
        m.register_forward_hook(hook)
        for m in dec.module.modules()
        if isinstance(m, torch.nn.Conv3d) and m.groups > 1 and m.groups == m.in_channels
    ]
    dec.decode(z)
    for h in handles:
        h.remove()

    def grouped(x, w, b):
        return F.conv3d(x, w, b, groups=w.shape[0])

    def per_tap(x, w, b):
        # (B, C, T+2, H+2, W+2) padded input: out[t] = sum_k conv2d(x[t+k], w[:, :, k])
        bsz, c, tp, h, wd = x.shape
        kt = w.shape[2]
        t = tp - kt + 1
        frames = x.permute(0, 2, 1, 3, 4)  # B, T, C, H, W
        out = None
        for k in range(kt):
            xs = frames[:, k : k + t].reshape(bsz * t, c, h, wd)
            y = F.conv2d(xs, w[:, :, k], None, groups=c)
            out = y if out is None else out + y
        out = out + b.view(1, -1, 1, 1)
        return out.reshape(bsz, t, c, out.shape[-2], out.shape[-1]).permute(0, 2, 1, 3, 4)

    def channels_last(x, w, b):
        return F.conv3d(
            x.contiguous(memory_format=torch.channels_last_3d),
            w.contiguous(memory_format=torch.channels_last_3d),
            b,
            groups=w.shape[0],
        )

    impls = {
        "grouped Conv3d": grouped,
        "per-tap depthwise 2D": per_tap,
        "grouped Conv3d, channels-last-3d": channels_last,
    }
    rows, lines = (
        [],
        [
            "Depthwise causal 3D convs of that decode, at their real (padded) input shapes; milliseconds per call "
            "(median of 10 after a warm-up), max abs vs grouped Conv3d.",
            "",
            "| input shape | " + " | ".join(impls) + " |",
            "|---|" + "---|" * len(impls),
        ],
    )
    for shape, mod in sorted(shapes.items(), key=lambda kv: -math.prod(kv[0])):
        x = torch.randn(shape, device=dev, dtype=mod.weight.dtype)
        ref = grouped(x, mod.weight, mod.bias)
        cells, row = [], {"input_shape": list(shape)}
        for name, fn in impls.items():
            with torch.inference_mode():
                out = fn(x, mod.weight, mod.bias)
                ms = 1000 * median_seconds(lambda fn=fn, x=x, m=mod: fn(x, m.weight, m.bias), dev, 10)
            diff = max_err(out, ref)
            row[name] = {"ms": ms, "max_abs": diff}
            cells.append(f"{ms:.3f} ms ({diff:.0e})")
        rows.append(row)
        lines.append(f"| {'x'.join(map(str, shape))} | " + " | ".join(cells) + " |")
    free(dev)
    return rows, lines


# ---- stage 5: training throughput -----------------------------------------------------------------------------------


def stage_training(ctx) -> dict:
    from safetensors.torch import save_file

    from flash_vaed.distill.loop import DistillConfig
    from flash_vaed.distill.loop import run as distill_run
    from support.reference_weights import generate, load_manifest

    lines, rows = [], []
    data = ctx.clips
    if data is None:
        return {
            "ok": True,
            "rows": [],
            "lines": ["No training clips found (--clips): training not measured."],
        }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher_file = tmp / "wan21_teacher.safetensors"
        manifest = load_manifest("wan21_comfy" if not ctx.smoke else "wan21_comfy_dim8")
        save_file(generate(manifest, seed=0), str(teacher_file))
        steps = 12 if not ctx.smoke else 2
        cfg = DistillConfig(
            teacher=str(teacher_file),
            data=str(data),
            out=str(tmp / "distill"),
            preset="official" if not ctx.smoke else "tiny",
            init="random",
            steps=steps,
            batch_size=2,
            clip_frames=17 if not ctx.smoke else 5,
            crop_px=256 if not ctx.smoke else 32,
            warmup_steps=1,
            evaluate=False,
            checkpoint_every=10_000,
            log_every=4,
            holdout=0.0,
            device=str(ctx.device),
            amp=True,
        )
        t = time.perf_counter()
        result = distill_run(cfg)
        wall = time.perf_counter() - t
        per_step = [h["time_s"] for h in result.history[2:]] or [h["time_s"] for h in result.history]
        s = statistics.median(per_step)
        rows.append(
            {"job": "distill", "steps": steps, "seconds_per_step": s, "steps_per_s": 1 / s, "wall_s": wall}
        )
        lines.append(
            f"- `training/distill.py`: {cfg.preset} layout from a {'full-size' if not ctx.smoke else 'dim-8'} "
            f"Wan 2.1 teacher, batch {cfg.batch_size}, {cfg.clip_frames} frames, {cfg.crop_px} px, "
            f"bf16 autocast: **{1 / s:.2f} steps/s** ({s:.3f} s/step, median after 2 steps; {wall:.0f} s "
            f"for {steps} steps with set-up)."
        )
        if ctx.budget.fits(60):
            # the path users take (init auto = pruned from the teacher) must run on CUDA too: 2 steps
            pruned = dataclasses.replace(cfg, out=str(tmp / "distill_pruned"), init="auto", steps=2)
            t = time.perf_counter()
            distill_run(pruned)
            lines.append(
                f"- the same with `--init auto` (pruned from the teacher), 2 steps: ran in "
                f"{time.perf_counter() - t:.0f} s with set-up."
            )
        teacher = import_training()
        tcfg = teacher.TeacherConfig(
            data=str(data),
            out=str(tmp / "teacher"),
            steps=20 if not ctx.smoke else 2,
            eval_every=10_000,
            checkpoint_every=10_000,
            holdout=0.3,
            eval_frames=5,
            eval_px=32,
            device=str(ctx.device),
        )
        t = time.perf_counter()
        result = teacher.run(tcfg)
        wall = time.perf_counter() - t
        hist = result["history"]
        per_step = [h["time_s"] for h in hist[2:]] or [h["time_s"] for h in hist]
        s = statistics.median(per_step)
        rows.append(
            {"job": "train_teacher", "steps": tcfg.steps, "seconds_per_step": s, "steps_per_s": 1 / s}
        )
        lines.append(
            f"- `training/train_teacher.py` (dim {tcfg.dim}, batch {tcfg.batch_size} x {tcfg.clip_frames} "
            f"frames at {tcfg.crop_px} px, a {tcfg.long_frames}-frame clip every {tcfg.long_every}th step): "
            f"**{1 / s:.2f} steps/s** ({s:.3f} s/step; {wall:.0f} s for {tcfg.steps} steps with set-up)."
        )
    return {"ok": True, "rows": rows, "lines": lines}


# ---- stage: profile -------------------------------------------------------------------------------------------------


def stage_profile(ctx) -> dict:
    """Where the time of one decode goes: the top CUDA kernels by self time, and GPU-busy vs wall time."""
    from torch.profiler import ProfilerActivity, profile

    from flash_vaed import load_decoder
    from support.reference_weights import generate, load_manifest

    dev = ctx.device
    dtype = torch.bfloat16 if not ctx.smoke else torch.float32
    shape = (1, 16, 21, 60, 104) if not ctx.smoke else (1, 16, 3, 8, 8)
    z = seeded(shape, seed=5).to(dev)
    student = load_decoder(generate(load_manifest("flashvaed_wan_official"), seed=0)).to(dev, dtype)
    teacher = load_decoder(
        generate(load_manifest("wan21_comfy" if not ctx.smoke else "wan21_comfy_dim8"))
    ).to(dev, dtype)
    runs = {
        "student, whole clip": lambda: student.decode(z),
        "student, streamed": lambda: student.decode(z, chunk_frames=1),
        "teacher, whole clip": lambda: teacher.decode(z),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    rows, lines = (
        [],
        [
            f"Wan 2.1 latent {'x'.join(map(str, shape[1:]))}, {str(dtype).replace('torch.', '')}, one decode after "
            "a warm-up, torch.profiler. 'busy' is the summed self time of the device kernels over the wall time.",
            "",
        ],
    )
    for name, fn in runs.items():
        fn()
        sync(dev)
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            fn()
            sync(dev)
            wall = time.perf_counter() - t
        events = prof.key_averages()
        attr = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        if dev.type == "cuda":
            # kernels only: the aten ops that launch them report the same device time again
            events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(getattr(e, attr) for e in events) or 1
        top = sorted(events, key=lambda e: -getattr(e, attr))[:10]
        row = {
            "decode": name,
            "wall_s": wall,
            "busy_s": total / 1e6,
            "top": [{"op": e.key, "ms": getattr(e, attr) / 1e3, "calls": e.count} for e in top],
        }
        rows.append(row)
        lines += [
            f"**{name}**: {wall * 1000:.0f} ms wall, {total / 1e3:.0f} ms busy ({100 * total / 1e6 / wall:.0f} %).",
            "",
            "| op | ms | share | calls |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{e['op'][:70]}` | {e['ms']:.1f} | {100 * e['ms'] * 1e3 / total:.0f} % | {e['calls']} |"
            for e in row["top"]
        ]
        lines.append("")
    return {"ok": True, "rows": rows, "lines": lines}


# ---- driver --------------------------------------------------------------------------------------------------------


class Context:
    def __init__(self, args, device: torch.device, budget: Budget):
        import decode_speed

        self.args, self.device, self.budget, self.smoke = args, device, budget, args.smoke
        self.comfy_root = decode_speed.comfy_root(args.comfyui)
        self.comfy = Comfy(self.comfy_root, device) if self.comfy_root is not None else None
        self.clips = find_clips(args.clips)


def find_clips(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    with contextlib.suppress(Exception):
        return Path(import_training().template_clips_dir())
    return None


# name, estimated seconds on the GPU (smoke: 10 each), function
STAGES: list[tuple[str, float, Callable]] = [
    ("correctness", 90, stage_correctness),
    ("speed", 150, lambda ctx: stage_speed(ctx, speed_runs(ctx, "main"))),
    ("memory", 90, stage_memory),
    ("variants", 60, stage_variants),
    ("training", 60, stage_training),
    ("profile", 40, stage_profile),
    ("speed720", 120, lambda ctx: stage_speed(ctx, speed_runs(ctx, "720"))),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="toy sizes (CPU is fine): checks the script runs")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "results"))
    ap.add_argument("--budget", type=float, default=480, help="seconds for all stages together")
    ap.add_argument("--device", help="default: cuda if available, else cpu")
    ap.add_argument("--comfyui", help="ComfyUI root (default: $FLASH_VAED_COMFYUI, .cache/comfyui)")
    ap.add_argument(
        "--clips", help="folder of training clips (default: comfyui-workflow-templates-media-video)"
    )
    ap.add_argument("--only", help="comma-separated stage names to run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        ap.error("without CUDA only --smoke runs (the sizes are GPU sizes)")
    budget = Budget(args.budget)
    torch.backends.cudnn.benchmark = False  # cudnn autotuning would make the first decode of every shape slow
    report = Report(args.out, device, args.smoke)
    ctx = Context(args, device, budget)
    report.data["comfyui"] = {
        "root": str(ctx.comfy_root),
        "version": ctx.comfy.version if ctx.comfy else None,
    }
    only = set(args.only.split(",")) if args.only else None
    for name, estimate, fn in STAGES:
        if only is not None and name not in only:
            continue
        if not budget.fits(10 if args.smoke else estimate):
            report.stage(
                name, "skipped", 0, note=f"budget: {budget.left():.0f} s left, needs ~{estimate:.0f} s"
            )
            report.section(
                name,
                [f"Skipped: {budget.left():.0f} s of the budget left, the stage needs ~{estimate:.0f} s."],
            )
            report.save()
            continue
        log.info("=== %s (%.0f s left)", name, budget.left())
        t = time.perf_counter()
        try:
            result = fn(ctx)
        except Exception as err:
            seconds = time.perf_counter() - t
            log.error("%s failed:\n%s", name, traceback.format_exc())
            report.stage(name, "failed", seconds, note=f"{type(err).__name__}: {str(err)[:150]}")
            report.section(name, ["```", traceback.format_exc()[-3000:], "```"])
            free(device)
            report.save()
            continue
        seconds = time.perf_counter() - t
        free(device)
        lines = result.pop("lines")
        ok = result.pop("ok")
        report.stage(name, "passed" if ok else "failed", seconds, note="" if ok else "a check did not hold")
        report.data[name] = result
        report.section(f"{name} ({seconds:.0f} s)", lines)
        report.save()
        log.info("\n".join(lines))
    log.info("written: %s", report.out / f"{report.stem}.md")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
