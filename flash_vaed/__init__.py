"""Flash-VAED: fast drop-in video VAE decoders for Wan 2.1/2.2, LTX-Video and LTX-2 latents.

    from flash_vaed import load_decoder
    dec = load_decoder("wan_2.1_vae.safetensors")
    video = dec.decode(latents)          # (B, 3, T_out, H_out, W_out), about [-1, 1]

This package never imports ComfyUI.
"""

from .checkpoint.load import load_decoder, save_student
from .decoder import FlashDecoder
from .encoder import FlashEncoder, load_encoder
from .engine.decode import DecodePlan
from .errors import CheckpointError, FlashVAEDError, LatentError
from .spec import DecoderSpec, Family, Op, StageSpec

__all__ = [
    "CheckpointError",
    "DecodePlan",
    "DecoderSpec",
    "Family",
    "FlashDecoder",
    "FlashEncoder",
    "FlashVAEDError",
    "LatentError",
    "Op",
    "StageSpec",
    "load_decoder",
    "load_encoder",
    "save_student",
]
