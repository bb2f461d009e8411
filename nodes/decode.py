"""Flash-VAED Decode: FLASH_VAED + LATENT -> IMAGE, whole, streamed in chunks, or tiled; with run statistics."""

from __future__ import annotations

from comfy_api.latest import io

from ..flash_vaed.engine.decode import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX
from . import _glue
from ._choices import check_choices
from .sockets import FLASH_VAED


class FlashVAEDDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FlashVAEDDecode",
            display_name="Flash-VAED Decode (tiled/causal)",
            category="latent/video",
            description=(
                "Decodes a Wan or LTX-Video latent into frames with a Flash-VAED decoder. auto picks the fastest "
                "plan that fits in free memory (whole clip, then shorter chunks, then smaller tiles); any mode "
                "retries with smaller chunks/tiles on out-of-memory. Reports time, fps and peak memory."
            ),
            inputs=[
                FLASH_VAED.Input("flash_vaed", tooltip="The decoder from Load Flash-VAED."),
                io.Latent.Input("samples", tooltip="The video latent to decode (B, C, T, H, W)."),
                io.Combo.Input(
                    "mode", options=list(_glue.MODES), default="auto",
                    tooltip="auto: the fastest plan that fits in free memory. whole: the clip in one pass. "
                            "causal: chunk_frames latent frames at a time, carrying the stream state (same "
                            "frames as whole; LTX-Video uses overlapping windows). tiled: spatial tiles of "
                            "tile_px with overlap_px, each streamed in chunks of chunk_frames.",
                ),
                io.Int.Input(
                    "chunk_frames", default=4, min=1, max=4096, step=1,
                    tooltip="causal / tiled: latent frames per step (Wan: 1 latent frame = 4 video frames, "
                            "LTX-Video: 8). Smaller uses less memory, the frames stay the same.",
                ),
                io.Int.Input(
                    "tile_px", default=DEFAULT_TILE_PX, min=64, max=4096, step=32,
                    tooltip="tiled: tile edge in output pixels. Smaller uses less memory; tiles are blended "
                            "across their overlap.",
                ),
                io.Int.Input(
                    "overlap_px", default=DEFAULT_OVERLAP_PX, min=0, max=1024, step=8,
                    tooltip="tiled: pixels neighbouring tiles share and cross-fade over (hides seams).",
                ),
            ],
            outputs=[io.Image.Output("images", display_name="IMAGE",
                                     tooltip="All frames as an image batch (B*T, H, W, 3) in [0, 1].")],
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, mode: str | None = None) -> bool | str:
        return check_choices(cls, {"mode": mode})  # ComfyUI 0.3.75 does not check V3 combos

    @classmethod
    def execute(
        cls, flash_vaed, samples, mode: str, chunk_frames: int, tile_px: int, overlap_px: int
    ) -> io.NodeOutput:
        frames, stats = _glue.decode(flash_vaed, samples["samples"], mode, chunk_frames, tile_px, overlap_px)
        return io.NodeOutput(
            _glue.to_comfy_images(frames), ui={"flash_vaed_stats": [stats], "text": [_glue.stats_text(stats)]}
        )
