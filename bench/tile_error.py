"""How far tiled decoding is from whole-clip decoding, at the default tile size and a few others.

    python bench/tile_error.py                      # official Flash-VAED Wan layout, seeded weights, CPU
    python bench/tile_error.py --decoder FILE --latent-hw 90x160 --markdown bench/results/tile_error_cpu.md

Reports max and mean absolute error (frames in [-1, 1]), PSNR against the whole-clip decode, and the
error near tile borders vs elsewhere (a seam shows up as border error >> interior error).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from flash_vaed import DecoderSpec, Family, load_decoder
from flash_vaed.arch.wan import WanFamilyDecoder
from flash_vaed.decoder import FlashDecoder
from flash_vaed.engine.decode import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX, DecodePlan, tiles_for

log = logging.getLogger("bench.tile_error")


def border_mask(
    dec: FlashDecoder, latent_hw: tuple[int, int], plan: DecodePlan, band_px: int = 4
) -> torch.Tensor:
    """(H, W) True within band_px of a tile edge that is not the image edge."""
    s = dec.family.space_stride
    tiles, _ = tiles_for(plan, latent_hw, s)
    h, w = latent_hw[0] * s, latent_hw[1] * s
    mask = torch.zeros(h, w, dtype=torch.bool)
    for t in tiles:
        for edge, size, axis in ((t.y0 * s, h, 0), (t.y1 * s, h, 0), (t.x0 * s, w, 1), (t.x1 * s, w, 1)):
            if 0 < edge < size:
                lo, hi = max(0, edge - band_px), min(size, edge + band_px)
                if axis == 0:
                    mask[lo:hi, :] = True
                else:
                    mask[:, lo:hi] = True
    return mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", help="a decoder file (default: official Flash-VAED Wan layout, seeded)")
    ap.add_argument("--latent-hw", default="96x96", help="latent H x W (default %(default)s: 768x768 px)")
    ap.add_argument("--frames", type=int, default=2, help="latent frames")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    if args.decoder:
        dec = load_decoder(args.decoder)
    else:
        torch.manual_seed(0)
        dec = FlashDecoder(Family.WAN21, "student", WanFamilyDecoder(DecoderSpec.flashvaed_wan21()).eval())
    h, w = (int(v) for v in args.latent_hw.split("x"))
    z = torch.randn(
        1, dec.family.latent_channels, args.frames, h, w, generator=torch.Generator().manual_seed(0)
    )
    whole = dec.decode(z)
    rows = [
        "| tile px | overlap px | tiles | max abs err | mean abs err | PSNR vs whole (dB) | border / interior err |",
        "|---|---|---|---|---|---|---|",
    ]
    for tile, overlap in ((DEFAULT_TILE_PX, DEFAULT_OVERLAP_PX), (DEFAULT_TILE_PX, 128), (256, 64), (256, 0)):
        plan = DecodePlan(None, tile, overlap)
        tiled = dec.decode(z, tile_px=tile, overlap_px=overlap)
        err = (tiled - whole).abs()
        psnr = 10 * torch.log10(4.0 / (err**2).mean()).item()
        band = border_mask(dec, (h, w), plan)
        per_px = err.mean(dim=(0, 1, 2))
        ratio = (
            (per_px[band].mean() / per_px[~band].mean()).item()
            if band.any() and (~band).any()
            else float("nan")
        )
        n = len(tiles_for(plan, (h, w), dec.family.space_stride)[0])
        rows.append(
            f"| {tile} | {overlap} | {n} | {err.max():.4f} | {err.mean():.5f} | {psnr:.1f} | {ratio:.2f} |"
        )
    title = f"Tiled vs whole-clip decode, {dec.layout if args.decoder else 'flashvaed-wan21-official (seeded weights)'}, latent {tuple(z.shape)}, {dec.device}"
    text = "\n".join([f"### {title}", "", *rows, ""])
    log.info("%s", text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
