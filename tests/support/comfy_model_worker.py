"""Run ComfyUI's own Wan VAE model classes at any width (subprocess worker; never imported by pytest).

VAELoader can build Wan 2.1 at any dim but Wan 2.2 only at the released size, so tests that need a small
Wan 2.2 (or a direct model call) use this: it builds comfy.ldm.wan.vae(2_2).WanVAE, loads a state dict,
and writes `decode(latent)` (unclamped) or `encode(frames)` (the latent mean). Usage:

    python comfy_model_worker.py --comfy ROOT decode --family wan22 --dim 16 --weights W --latent L --out O
    python comfy_model_worker.py --comfy ROOT encode --family wan22 --dim 16 --weights W --frames F --out O
    python comfy_model_worker.py --comfy ROOT shapes --family wan22 --dim 16 --out O.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build(family: str, dim: int):
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2

    common = dict(
        dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True]
    )
    if family == "wan21":
        return comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, **common)
    if family == "wan22":
        return comfy.ldm.wan.vae2_2.WanVAE(dim=16, dec_dim=dim, z_dim=48, **common)
    raise SystemExit(f"unknown family {family!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True, type=Path)
    ap.add_argument("cmd", choices=["decode", "encode", "shapes"])
    ap.add_argument("--family", required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--latent", type=Path)
    ap.add_argument("--frames", type=Path, help="safetensors holding 'frames' (B, 3, T, H, W) in [-1, 1]")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    sys.path.insert(0, str(a.comfy))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # before comfy.model_management is imported, or it asks CUDA for a device
    import torch
    from safetensors.torch import load_file, save_file

    model = build(a.family, a.dim)
    if a.cmd == "shapes":
        a.out.write_text(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))
        return
    model.load_state_dict(load_file(str(a.weights)), strict=True)
    if a.cmd == "encode":
        with torch.inference_mode():
            latent = model.encode(load_file(str(a.frames))["frames"])
        save_file({"latent": latent.float().contiguous()}, str(a.out))
        return
    with torch.inference_mode():
        video = model.decode(load_file(str(a.latent))["latent"])
    save_file({"video": video.float().contiguous()}, str(a.out))


if __name__ == "__main__":
    main()
