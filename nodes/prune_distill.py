"""Prune & Distill: a stock VAE (the teacher) + training clips -> a new Flash-VAED student, saved and loaded."""

from __future__ import annotations

from comfy_api.latest import io

from ..flash_vaed.distill.job import PRESET_HINT, is_layout_line
from . import _distill_glue as glue
from ._choices import check_choices
from .sockets import FLASH_VAED


class FlashVAEDPruneDistill(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FlashVAEDPruneDistill",
            display_name="Prune & Distill (Flash-VAED)",
            category="latent/video",
            description=(
                "Trains a Flash-VAED student decoder from the connected VAE (Wan 2.1/2.2 or LTX-Video) on your "
                "clips: the student is pruned from the teacher, then distilled in three phases (deep, middle, "
                "shallow features + pixels). The diffusion model is unloaded first. Saves "
                "models/flash_vaed/<output_name>.safetensors; checkpoints go to models/flash_vaed/runs/"
                "<output_name>/, Cancel saves one there and resume continues from it. Draws the live loss."
            ),
            inputs=[
                io.Vae.Input(
                    "teacher_vae",
                    tooltip="The original VAE of your model (Load VAE): the teacher. Its weights are used as "
                            "loaded; its encoder makes the training latents. Load Flash-VAED's VAE output "
                            "works too when it loaded an original VAE file (LTX-2 on ComfyUI versions whose "
                            "Load VAE cannot open LTX-2 files).",
                ),
                io.Combo.Input(
                    "videos", options=glue.video_folder_names(),
                    tooltip="A folder in ComfyUI's input directory holding the training clips (.mp4 .webm "
                            ".mov .mkv need PyAV; animated .webp .gif), searched recursively; one in ten files "
                            "(at least one of two or more) is held out for the final report. Not used when "
                            "images is connected.",
                ),
                io.Combo.Input(
                    "preset", options=glue.preset_names(), default="auto",
                    tooltip="Student layout. auto: the official Flash-VAED layout of the teacher's family "
                            "(Wan 2.1 / LTX-Video 0.9), or the paper's recipe where none was released (Wan 2.2: "
                            "wan22-recipe; LTX-2: ltx2-recipe, following the teacher's layout); wan21-wide / "
                            "-narrow: wider or narrower Wan 2.1 students; tiny: a test-sized student of any "
                            "family.",
                ),
                io.Int.Input(
                    "steps", default=2000, min=1, max=1_000_000,
                    tooltip="Optimizer steps in all, one clip each. A resume may raise it: the schedules "
                            "stretch to the new length.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                    tooltip="Seed of the crops, the held-out split and the student's init.",
                ),
                io.String.Input(
                    "output_name", default="flash_vaed_student",
                    tooltip="File name of the student in models/flash_vaed (.safetensors is added; no "
                            "folders). Its checkpoints go to models/flash_vaed/runs/<output_name>/.",
                ),
                io.Int.Input(
                    "crop_px", default=128, min=8, max=2048, step=8,
                    tooltip="Square crop edge of a training clip in pixels: a multiple of 8 (Wan 2.1), 16 "
                            "(Wan 2.2) or 32 (LTX-Video); clips smaller than this are skipped.",
                ),
                io.Int.Input(
                    "clip_frames", default=17, min=1, max=1025,
                    tooltip="Frames per training clip: 4k+1 for Wan (5, 9, 17, ...), 8k+1 for LTX-Video "
                            "(9, 17, ...); shorter videos are skipped.",
                ),
                io.Boolean.Input(
                    "resume", default=False, optional=True,
                    tooltip="Continue the run in models/flash_vaed/runs/<output_name>/ (after Cancel, or with "
                            "more steps). Off: a run folder that already holds a run is an error.",
                ),
                io.Image.Input(
                    "images", optional=True,
                    tooltip="Optional: one clip as a batch of frames (e.g. Load Video -> Get Video Components), used instead of the "
                            "videos folder. Saved in the run folder as a lossless WebP.",
                ),
            ],
            outputs=[
                FLASH_VAED.Output("flash_vaed", display_name="FLASH_VAED",
                                  tooltip="The trained student, for Flash-VAED Decode."),
                io.String.Output("file_name", display_name="file_name",
                                 tooltip="The student's file name in models/flash_vaed (for Load Flash-VAED)."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, videos: str | None = None, preset: str | None = None) -> bool | str:
        # only the combos: ComfyUI 0.3.75 flags every argument of validate_inputs when it fails, and a missing
        # folder must not mark output_name too (output_name is checked first thing when the node runs).
        # ComfyUI 0.3.75 does not check V3 combos against their options: a preset from the API could be a path
        folder = glue.check_folder(videos)
        if folder is not True:
            return folder
        return check_choices(
            cls, {"videos": videos, "preset": preset}, also={"preset": is_layout_line},
            hints={"preset": PRESET_HINT},
        )  # fmt: skip

    @classmethod
    def execute(
        cls, teacher_vae, videos: str, preset: str, steps: int, seed: int, output_name: str, crop_px: int,
        clip_frames: int, resume: bool = False, images=None,
    ) -> io.NodeOutput:  # fmt: skip
        model, name, text = glue.distill(
            teacher_vae, videos, images, str(cls.hidden.unique_id), preset=preset, steps=steps, seed=seed,
            output_name=output_name, crop_px=crop_px, clip_frames=clip_frames, resume=resume,
        )  # fmt: skip
        return io.NodeOutput(model, name, ui={"text": [text]})
