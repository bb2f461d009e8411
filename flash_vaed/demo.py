"""`make demo`: decode one latent with the Wan 2.1 teacher and the Flash-VAED Wan student, side by side.

    python -m flash_vaed.demo                         # full-size layouts, seeded random weights, CPU
    python -m flash_vaed.demo --teacher wan_2.1_vae.safetensors --student Flash_VAED_Wan.pth

Without files it builds both decoders at their real sizes with seeded random weights (decode speed does not
depend on weight values), so it runs anywhere offline. It prints time, FPS and the speed ratio measured in
one run (interleaved, after a warm-up), and checks that streaming one latent frame at a time gives the
whole-clip frames. Quality needs trained weights: see training/ and bench/.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch

from . import DecoderSpec, Family, load_decoder
from .arch.wan import WanFamilyDecoder
from .decoder import FlashDecoder

log = logging.getLogger("flash_vaed.demo")


def _seeded(spec: DecoderSpec, role: str, seed: int) -> FlashDecoder:
    torch.manual_seed(seed)
    return FlashDecoder(Family.WAN21, role, WanFamilyDecoder(spec).eval(), layout=spec.name)


def _time(dec: FlashDecoder, z: torch.Tensor) -> float:
    start = time.perf_counter()
    dec.decode(z)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="a Wan 2.1 VAE file (default: the real layout, seeded random weights)")
    ap.add_argument("--student", help="a Flash-VAED Wan student file (default: the official layout, seeded)")
    ap.add_argument(
        "--latent-shape", default="16x3x16x24", help="C x T x H x W of the latent (default %(default)s)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per decoder (median is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.threads:
        torch.set_num_threads(args.threads)

    c, t, h, w = (int(v) for v in args.latent_shape.lower().split("x"))
    teacher = (
        load_decoder(args.teacher) if args.teacher else _seeded(DecoderSpec.wan21_teacher(), "teacher", 0)
    )
    student = (
        load_decoder(args.student) if args.student else _seeded(DecoderSpec.flashvaed_wan21(), "student", 1)
    )
    z = torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(0))
    frames = Family.WAN21.frames_out(t)
    log.info("latent %s -> %d frames of %dx%d on %s", tuple(z.shape), frames, 8 * h, 8 * w, teacher.device)
    log.info("teacher %-28s %7.1f M parameters", teacher.layout, teacher.num_parameters() / 1e6)
    log.info("student %-28s %7.1f M parameters", student.layout, student.num_parameters() / 1e6)

    for dec in (teacher, student):  # warm-up: first calls pay for allocator and kernel selection
        _time(dec, z[:, :, :1])
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    for _ in range(args.repeats):  # interleaved, so machine load hits both alike
        times["teacher"].append(_time(teacher, z))
        times["student"].append(_time(student, z))
    med = {k: statistics.median(v) for k, v in times.items()}
    log.info("")
    log.info("%-8s %10s %8s", "decoder", "median s", "fps")
    for k, s in med.items():
        log.info("%-8s %10.3f %8.2f", k, s, frames / s)
    log.info(
        "speed-up of the student over the teacher: %.2fx (same run, same latent)",
        med["teacher"] / med["student"],
    )

    whole = student.decode(z)
    streamed = student.decode(z, chunk_frames=1)
    err = (whole - streamed).abs().max().item()
    log.info("student streamed one latent frame at a time vs whole clip: max |diff| %.2e", err)
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
