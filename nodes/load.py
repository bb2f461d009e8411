"""Load Flash-VAED: a decoder file -> FLASH_VAED, plus a drop-in VAE for stock nodes."""

from __future__ import annotations

from comfy_api.latest import io

from . import _glue
from ._choices import check_choices
from .drop_in_vae import FlashVAE
from .sockets import FLASH_VAED


class FlashVAEDLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FlashVAEDLoad",
            display_name="Load Flash-VAED",
            category="latent/video",
            description=(
                "Loads a Flash-VAED decoder (or an original Wan 2.1/2.2, LTX-Video 0.9 or LTX-2 video VAE as "
                "its teacher) from models/flash_vaed, models/vae or an all-in-one checkpoint in "
                "models/checkpoints. The official Flash_VAED_Wan.pth / Flash_VAED_LTX.pth are "
                "downloaded from Hugging Face (Aoko955/Flash-VAED) into models/flash_vaed on first use. "
                "Outputs the decoder for Flash-VAED Decode and a drop-in VAE for VAE Decode and other VAE nodes."
            ),
            inputs=[
                io.Combo.Input(
                    "decoder_name", options=_glue.decoder_names(), default="Flash_VAED_Wan.pth",
                    tooltip="Decoder file in models/flash_vaed or models/vae, or an all-in-one checkpoint in "
                            "models/checkpoints (its VAE decoder is read). The family (Wan 2.1, Wan 2.2, "
                            "LTX-Video 0.9, LTX-2) is detected from the weights and the file's metadata. "
                            "Flash_VAED_Wan.pth / Flash_VAED_LTX.pth (an LTX-Video 0.9 student: not for LTX-2 "
                            "latents) are downloaded when missing.",
                ),
                io.Combo.Input(
                    "dtype", options=["auto", "fp32", "bf16", "fp16"], default="auto",
                    tooltip="Precision the decoder runs in. auto: what ComfyUI picks for this family's VAE on "
                            "your device (fp32 on CPU, bf16 or fp16 on most GPUs; never fp16 for LTX).",
                ),
                io.Vae.Input(
                    "teacher_vae", optional=True,
                    tooltip="Optional: the original VAE of the same model (Load VAE). The drop-in VAE output "
                            "encodes with it (VAE Encode, image-to-video); without it, encoding raises an error.",
                ),
            ],
            outputs=[
                FLASH_VAED.Output("flash_vaed", display_name="FLASH_VAED",
                                  tooltip="The decoder, for Flash-VAED Decode."),
                io.Vae.Output("vae", display_name="VAE",
                              tooltip="A ComfyUI VAE that decodes with Flash-VAED and encodes with teacher_vae."),
            ],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, decoder_name: str | None = None, dtype: str | None = None) -> bool | str:
        # V3 combos are not checked against their options by ComfyUI 0.3.75; a name from the API could be anything
        hint = (
            "it is not a file in models/flash_vaed, models/vae or models/checkpoints (names that leave those "
            "folders are refused); pick one from the list or refresh it (R)"
        )
        return check_choices(
            cls, {"decoder_name": decoder_name, "dtype": dtype}, hints={"decoder_name": hint}
        )

    @classmethod
    def execute(cls, decoder_name: str, dtype: str, teacher_vae=None) -> io.NodeOutput:
        model = _glue.load_flash_model(decoder_name, dtype)
        return io.NodeOutput(model, FlashVAE(model, teacher_vae))
