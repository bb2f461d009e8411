"""Everything that touches ComfyUI: model folders, ModelPatcher, progress bars, Cancel, OOM, image layout.

The nodes call one function here each; the decoding itself is `flash_vaed`'s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ..flash_vaed import CheckpointError, FlashDecoder, LatentError, load_decoder
from ..flash_vaed.checkpoint.io import find_model_file
from ..flash_vaed.engine.decode import DecodePlan
from ..flash_vaed.engine.memory import PeakMemory
from ..flash_vaed.hub import OFFICIAL, fetch_official, recheck_official
from ..flash_vaed.latents import check_latents
from ..flash_vaed.policy import decode_with_fallback, estimate_bytes, is_torch_oom
from ..flash_vaed.spec import Family

log = logging.getLogger(__name__)

FOLDER = "flash_vaed"  # models/flash_vaed; models/vae is listed too, then models/checkpoints
# where the original VAEs are: standalone files, and all-in-one checkpoints (LTX-2's templates load only one)
VAE_FOLDERS = ("vae", "checkpoints")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What ComfyUI's own VAE lets each family run in (comfy/sd.py working_dtypes): LTX-Video overflows in fp16.
WORKING_DTYPES = {
    Family.WAN21: [torch.bfloat16, torch.float16, torch.float32],
    Family.WAN22: [torch.bfloat16, torch.float16, torch.float32],
    Family.LTXV: [torch.bfloat16, torch.float32],
    Family.LTX2: [torch.bfloat16, torch.float32],
}
MODES = ("auto", "whole", "causal", "tiled")


# ---- model folders ---------------------------------------------------------------------------------


def register_model_folder() -> None:
    """models/flash_vaed as a ComfyUI model folder (kept after paths from extra_model_paths.yaml)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    entry = folder_paths.folder_names_and_paths.get(FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(folder_paths.supported_pt_extensions))
        return
    paths, exts = entry
    if default not in paths:
        paths.append(default)
    if not exts:  # a folder first named in extra_model_paths.yaml has no extension filter
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


def decoder_names() -> list[str]:
    """The official checkpoints (downloaded on first use), then every file in models/flash_vaed and models/vae,
    then the all-in-one checkpoints of models/checkpoints (whose VAE is read from inside them)."""
    found = set(folder_paths.get_filename_list(FOLDER)) | set(folder_paths.get_filename_list("vae"))
    checkpoints = set(folder_paths.get_filename_list("checkpoints")) - found - set(OFFICIAL)
    return list(OFFICIAL) + sorted(found - set(OFFICIAL)) + sorted(checkpoints)


def resolve_decoder_path(name: str) -> Path:
    """The file `name` in models/flash_vaed, models/vae or models/checkpoints; an official one is downloaded
    when missing."""
    roots = folder_paths.get_folder_paths(FOLDER)
    for folder in VAE_FOLDERS:
        roots += folder_paths.get_folder_paths(folder)
    path = find_model_file(roots, name)  # raises for names that leave the folders, links out of them
    if path is not None:
        return path
    if name in OFFICIAL:
        dest = folder_paths.get_folder_paths(FOLDER)[0]
        bar = comfy.utils.ProgressBar(1)
        return fetch_official(name, dest, lambda done, total: bar.update_absolute(done, max(total, done, 1)))
    raise FileNotFoundError(
        f"{name!r} is in none of {', '.join(roots)}; put the file in models/{FOLDER}/ "
        "and press R (refresh) in the browser"
    )


# ---- loading ---------------------------------------------------------------------------------------


class FlashFirstStage(torch.nn.Module):
    """The module ComfyUI's model management moves, counts and offloads: the decoder's own module.

    `decode` makes it usable where ComfyUI code calls a VAE's ``first_stage_model.decode(z)`` directly:
    (B, C, T, H, W) ComfyUI latents -> (B, 3, T_out, H_out, W_out) in about [-1, 1].
    """

    def __init__(self, decoder: FlashDecoder):
        super().__init__()
        self.decoder_module = decoder.module
        self._flash = decoder

    def decode(self, z: torch.Tensor, **_vae_options) -> torch.Tensor:
        return self._flash.decode(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)


@dataclass
class FlashModel:
    """The FLASH_VAED payload: a loaded decoder, its ModelPatcher, and what it was loaded from."""

    decoder: FlashDecoder
    patcher: comfy.model_patcher.ModelPatcher
    name: str
    dtype: torch.dtype
    info: dict = field(default_factory=dict)

    @property
    def family(self) -> Family:
        return self.decoder.family

    @property
    def first_stage(self) -> FlashFirstStage:
        return self.patcher.model


def pick_dtype(choice: str, family: Family, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return mm.vae_dtype(device, WORKING_DTYPES[family])
    if choice not in DTYPES:  # validate_inputs refuses it when queued; a caller from Python may not
        raise ValueError(f"dtype {choice!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[choice]


def load_flash_model(name: str, dtype_choice: str) -> FlashModel:
    """Load `name` (see `resolve_decoder_path`) on ComfyUI's VAE offload device in the chosen dtype."""
    path = resolve_decoder_path(name)
    load_device, offload_device = mm.vae_device(), mm.vae_offload_device()
    try:
        decoder = load_decoder(path, offload_device, torch.float32)
    except CheckpointError as err:
        if name not in OFFICIAL:
            raise
        # an official file that does not load: compared with the Hub's, replaced when it differs
        bar = comfy.utils.ProgressBar(1)
        path = recheck_official(
            name, path.parent, str(err), lambda d, t: bar.update_absolute(d, max(t, d, 1))
        )
        decoder = load_decoder(path, offload_device, torch.float32)
    dtype = pick_dtype(dtype_choice, decoder.family, load_device)
    decoder.to(offload_device, dtype)
    patcher = comfy.model_patcher.ModelPatcher(
        FlashFirstStage(decoder), load_device=load_device, offload_device=offload_device
    )
    log.info(
        "Flash-VAED: loaded %s (%s %s, %.1f M parameters) for %s in %s",
        path.name,
        decoder.family.value,
        decoder.role,
        decoder.num_parameters() / 1e6,
        load_device,
        dtype,
    )
    return FlashModel(decoder, patcher, path.name, dtype, {"layout": decoder.layout, "role": decoder.role})


# ---- decoding --------------------------------------------------------------------------------------


def comfy_progress():
    """on_progress(done, total) for the engine: drives a ProgressBar of the running node, honours Cancel."""
    bar = comfy.utils.ProgressBar(1)

    def on_progress(done: int, total: int) -> None:
        bar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    return on_progress


def free_memory(patcher, device) -> int:
    """Bytes free for a decode on `device`. ComfyUI 0.38 asks the patcher (with dynamic VRAM, the weights it
    may evict count as free); older releases only have model_management's."""
    ask = getattr(patcher, "get_free_memory", None)
    return int(ask(device)) if ask is not None else int(mm.get_free_memory(device))


def is_oom(err: BaseException) -> bool:
    oom = mm.OOM_EXCEPTION
    return is_torch_oom(err) or (oom is not Exception and isinstance(err, oom))


def _check(model: FlashModel, z: torch.Tensor) -> None:
    try:
        check_latents(z, model.family)
    except LatentError as err:
        channels = z.shape[1] if isinstance(z, torch.Tensor) and z.dim() >= 2 else "?"
        raise LatentError(
            f"{model.name} ({model.family.value}, {model.family.latent_channels} latent channels) "
            f"cannot decode a latent of shape {tuple(getattr(z, 'shape', ()))} with {channels} "
            f"channels: {err}"
        ) from None


def requested_plan(
    mode: str, chunk_frames: int | None, tile_px: int | None, overlap_px: int | None
) -> DecodePlan | Literal["auto"]:
    """The plan the user asked for; "auto" is chosen from free memory once the model is loaded."""
    if mode == "auto":
        return "auto"
    if mode == "whole":
        return DecodePlan()
    if mode == "causal":
        return DecodePlan(chunk_frames=chunk_frames)
    if mode == "tiled":
        return DecodePlan(chunk_frames, tile_px, overlap_px)
    raise ValueError(f"unknown decode mode {mode!r}; one of {', '.join(MODES)}")


def decode(
    model: FlashModel,
    latents: torch.Tensor,
    mode: str = "auto",
    chunk_frames: int | None = None,
    tile_px: int | None = None,
    overlap_px: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Decode ComfyUI latents (B, C, T, H, W) -> (float32 (B, 3, T_out, H_out, W_out) in about [-1, 1], stats).

    Loads the model through ComfyUI's model management with a memory estimate, picks the plan ("auto":
    what fits in free memory), shrinks it on out-of-memory, drives the node's progress bar and Cancel.
    """
    _check(model, latents)
    decoder = model.decoder
    plan = requested_plan(mode, chunk_frames, tile_px, overlap_px)
    # "auto" asks for the whole clip's need, so that ComfyUI frees what it can, then fits in what is free
    asked = plan if isinstance(plan, DecodePlan) else DecodePlan()
    need = estimate_bytes(decoder.memory_profile, latents.shape, model.dtype, asked)
    mm.load_models_gpu([model.patcher], memory_required=need, force_full_load=True)
    device = model.patcher.load_device
    with PeakMemory(device) as peak:
        result = decode_with_fallback(
            decoder,
            latents,
            plan,
            comfy_progress(),
            is_oom,
            free_bytes=free_memory(model.patcher, device),
            on_retry=lambda *_: mm.soft_empty_cache(),
            out_device=mm.intermediate_device(),
        )
    frames = result.frames
    peak_mb = round(peak.peak / 2**20, 1) if peak.peak else None
    n = frames.shape[0] * frames.shape[2]
    stats = {
        "frames": n,
        "seconds": round(result.seconds, 4),
        "fps": round(n / max(result.seconds, 1e-9), 2),
        "peak_mem_mb": peak_mb,
        "peak_mem_kind": peak.kind,
        "mode": mode,
        "chunk_frames": result.plan.chunk_frames,
        "tile_px": result.plan.tile_px,
        "overlap_px": result.plan.overlap_px,
        "retries": result.retries,
        "device": str(device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "decoder": model.name,
        "size": [int(frames.shape[3]), int(frames.shape[4])],
    }
    log.info(
        "Flash-VAED: %d frames %dx%d in %.2f s (%.1f fps), plan %s, peak %s MB (%s)",
        n,
        frames.shape[4],
        frames.shape[3],
        result.seconds,
        stats["fps"],
        result.plan,
        stats["peak_mem_mb"],
        peak.kind,
    )
    return frames, stats


def stats_text(stats: dict) -> str:
    mem = "n/a" if stats["peak_mem_mb"] is None else f"{stats['peak_mem_mb']:.0f} MB"
    return (
        f"{stats['frames']} frames in {stats['seconds']:.2f} s ({stats['fps']:.1f} fps), peak {mem}, "
        f"chunk {stats['chunk_frames'] or 'all'}, tile {stats['tile_px'] or 'none'}"
    )


def to_comfy_images(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in about [-1, 1] -> IMAGE (B*T, H, W, 3) in [0, 1], exactly as VAE Decode lays it out."""
    images = torch.clamp((frames + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)
    return images.reshape(-1, *images.shape[-3:])
