"""A real ComfyUI `VAE` whose decoder is Flash-VAED: it plugs into VAE Decode, VAE Decode (Tiled), image-to-video
nodes and anything else that takes a VAE.

It is a `comfy.sd.VAE` subclass built without `VAE.__init__` (which would build a model from a state dict):
it sets the attributes ComfyUI's own Wan / LTX-Video branches set, with `first_stage_model` = the decoder
module wrapper and `patcher` = its ModelPatcher, both shared with the FLASH_VAED output. decode and
decode_tiled go through the same `_glue.decode` as the Flash-VAED Decode node, so VAE Decode gives the
node's frames. Encoding needs the original VAE: it is delegated to `teacher_vae`, or raises.

Because `VAE.__init__` never runs, every attribute it sets and every method a ComfyUI release adds must be
answered here too. The surfaces of ComfyUI 0.3.75, 0.38.1 and the hiddenswitch fork are recorded in
tests/data/comfy_vae/ and checked by tests/test_drop_in_vae_contract.py (docs/comfyui_versions.md says what
changed between them). Overrides take the newest signature plus **kwargs, so a keyword a later release adds
to decode/decode_tiled is accepted and ignored; encode keywords go to the teacher, a VAE of the same release.
"""

from __future__ import annotations

import copy
import math

import comfy.model_management as mm
import comfy.sd
import torch

from ..flash_vaed.arch.ltx2 import family_of_config
from ..flash_vaed.engine.decode import DecodePlan
from ..flash_vaed.policy import estimate_bytes
from ..flash_vaed.spec import Family
from . import _glue


def vae_family(vae) -> Family | None:
    """The latent family of a ComfyUI VAE where it can be told apart from another of the same shape: ours (Load
    Flash-VAED's), or an LTX VAE by the config ComfyUI built it from (newer ComfyUI keeps it on the model;
    without one, ComfyUI builds an LTX-Video 0.9 VAE); None for the others (their channels tell them apart)."""
    flash = getattr(vae, "flash", None)
    if flash is not None:
        return flash.family
    model = getattr(vae, "first_stage_model", None)
    if model is None or not hasattr(model, "per_channel_statistics"):  # not ComfyUI's LTX VideoVAE
        return None
    config = getattr(model, "config", None)
    return family_of_config(config) if isinstance(config, dict) else Family.LTXV


class TeacherVAEMissing(RuntimeError):
    """Something tried to encode with a Flash-VAED VAE that has no teacher VAE to encode with."""


class FlashVAE(comfy.sd.VAE):
    """comfy.sd.VAE with a Flash-VAED decoder and, optionally, a teacher VAE for encoding."""

    def __init__(self, model: _glue.FlashModel, teacher: comfy.sd.VAE | None = None):
        family = model.family
        s, ts = family.space_stride, family.time_stride
        if teacher is not None and getattr(teacher, "latent_channels", None) != family.latent_channels:
            raise ValueError(
                f"teacher_vae makes {getattr(teacher, 'latent_channels', '?')}-channel latents, but {model.name} "
                f"decodes {family.value} latents ({family.latent_channels} channels): connect the VAE of the same "
                "model family (e.g. wan_2.1_vae for Flash_VAED_Wan, the LTX-Video VAE for Flash_VAED_LTX)"
            )
        teacher_family = vae_family(teacher) if teacher is not None else None
        if teacher_family is not None and teacher_family is not family:
            raise ValueError(
                f"teacher_vae encodes {teacher_family.title} latents, but {model.name} decodes {family.title} "
                "latents: the same shape, another latent space, so its frames would be garbage. Connect the VAE "
                "of the same model (for LTX-2, Load Flash-VAED's VAE output with the LTX-2 VAE file works too)"
            )
        self.flash = model
        self.teacher = teacher
        self.first_stage_model = model.first_stage
        self.patcher = model.patcher
        self.device = model.patcher.load_device
        self.vae_dtype = model.dtype
        self.output_device = mm.intermediate_device()
        self.latent_channels = family.latent_channels
        self.latent_dim = 3
        self.output_channels = 3
        self.upscale_ratio = (lambda a: max(0, a * ts - (ts - 1)), s, s)
        self.upscale_index_formula = (ts, s, s)
        self.downscale_ratio = (lambda a: max(0, math.floor((a + ts - 1) / ts)), s, s)
        self.downscale_index_formula = (ts, s, s)
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.working_dtypes = list(_glue.WORKING_DTYPES[family])
        # a plain ModelPatcher, always loaded whole (force_full_load): ComfyUI 0.38 gives a VAE with this
        # flag a ModelPatcher instead of the dynamic-VRAM CoreModelPatcher, which needs comfy.ops layers
        self.disable_offload = True
        self.not_video = False
        self.extra_1d_channel = None
        self.crop_input = True
        self.size = None
        # set by VAE.__init__ from 0.38 on (read by its own methods and by nodes)
        self.handles_tiling = False  # ComfyUI's tiled paths are never taken: decode_tiled is ours
        self.format_encoded = None
        self.pad_channel_value = getattr(teacher, "pad_channel_value", None)
        self.audio_sample_rate = 44100  # the default every 0.38 VAE has; meaningless for video
        if family is Family.WAN21:
            self.conv_out_channels = 3  # what 0.38 sets for the Wan 2.1 VAE: RGB out of the head
        self.ckpt_name = model.name  # the hiddenswitch fork's VAE sets it and prints it in __str__
        self.memory_used_decode = self._memory_used_decode
        self.memory_used_encode = (
            teacher.memory_used_encode if teacher is not None else (lambda shape, dtype: 0)
        )
        self.model_size()

    def _memory_used_decode(self, shape, dtype) -> int:
        return estimate_bytes(self.flash.decoder.memory_profile, shape, dtype, DecodePlan())

    # ---- decoding: Flash-VAED ----

    def decode(self, samples_in: torch.Tensor, vae_options: dict | None = None, **_newer) -> torch.Tensor:
        """(B, C, T, H, W) latents -> (B, T_out, H_out, W_out, 3) in [0, 1], the plan chosen from free memory.

        vae_options (LTX-Video's timestep/noise) and keywords of later ComfyUI releases are ignored: the
        decoder is the one the Load Flash-VAED node configured."""
        frames, _stats = _glue.decode(self.flash, samples_in, "auto")
        return self._to_comfy(frames)

    def decode_tiled(
        self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None, **_newer
    ):
        """VAE Decode (Tiled): tiles of tile_x latent pixels, chunks of tile_t latent frames. Temporal overlap
        is not needed: streaming carries the causal context (Wan), windows carry their halo (LTX-Video)."""
        s = self.flash.family.space_stride
        tile = max(tile_x or 0, tile_y or 0) or None
        frames, _stats = _glue.decode(
            self.flash, samples, "tiled", chunk_frames=tile_t,
            tile_px=None if tile is None else tile * s, overlap_px=None if overlap is None else overlap * s,
        )  # fmt: skip
        return self._to_comfy(frames)

    def _to_comfy(self, frames: torch.Tensor) -> torch.Tensor:
        images = self.process_output(frames).to(self.output_device, dtype=self.vae_output_dtype())
        return images.movedim(1, -1)

    def vae_output_dtype(self) -> torch.dtype:
        """What a decode returns: ComfyUI's intermediate dtype (0.38), float32 where there is none (0.3.75)."""
        intermediate = getattr(mm, "intermediate_dtype", None)
        return intermediate() if intermediate is not None else torch.float32

    def prepare_decode(self, sample_shape, memory_required=None) -> int:
        """Load the decoder for a decode of `sample_shape` that bypasses decode() (ComfyUI 0.38's hook);
        returns how many batch items fit at once in the free memory."""
        need = (
            self.memory_used_decode(sample_shape, self.vae_dtype)
            if memory_required is None
            else memory_required
        )
        need = max(1, int(need))
        mm.load_models_gpu([self.patcher], memory_required=need, force_full_load=True)
        return max(1, int(_glue.free_memory(self.patcher, self.device) / need))

    def _tile_bounded_shape(self, shape, tile_x, tile_y, tile_t):
        """`shape` with the given tile sizes as upper bounds on (T, H, W): what one tile's memory depends on."""
        s = list(shape)
        for axis, tile in ((2, tile_t), (3, tile_y), (4, tile_x)):
            if tile is not None and axis < len(s):
                s[axis] = min(s[axis], tile)
        return tuple(s)

    def is_dynamic(self) -> bool:
        is_dynamic = getattr(self.patcher, "is_dynamic", None)
        return bool(is_dynamic()) if is_dynamic is not None else False

    def clone(self) -> FlashVAE:
        """The hiddenswitch fork's VAE.clone(): a FlashVAE holds nothing it changes, so a shallow copy that
        shares the decoder, its patcher and the teacher is a full clone."""
        return copy.copy(self)

    # ---- encoding: the teacher's ----

    def _teacher(self) -> comfy.sd.VAE:
        if self.teacher is None:
            raise TeacherVAEMissing(
                f"this VAE comes from Load Flash-VAED ({self.flash.name}), a decoder only: it cannot encode. "
                "Connect the original VAE of your model (Load VAE) to the teacher_vae input of Load Flash-VAED; "
                "encoding (VAE Encode, image-to-video nodes) then runs on it, decoding stays Flash-VAED."
            )
        return self.teacher

    def encode(self, pixel_samples, *args, **kwargs):
        return self._teacher().encode(pixel_samples, *args, **kwargs)

    def encode_tiled(
        self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None, **kwargs
    ):
        return self._teacher().encode_tiled(
            pixel_samples, tile_x, tile_y, overlap, tile_t, overlap_t, **kwargs
        )

    def vae_encode_crop_pixels(self, pixels):
        return self._teacher().vae_encode_crop_pixels(pixels)

    def spacial_compression_encode(self):
        if self.teacher is not None:
            return self.teacher.spacial_compression_encode()
        return super().spacial_compression_encode()

    def get_sd(self):
        return self.flash.decoder.module.state_dict()
