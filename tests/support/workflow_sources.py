"""How workflows/*.json were made: each graph below is built in the real frontend and saved by its Export.

    python tests/support/workflow_sources.py --server http://127.0.0.1:8188 [--only wan21_t2v] [--out workflows]
    python tests/support/workflow_sources.py --templates DIR    # ltx2_3_t2v, from ComfyUI's own template file

needs a running ComfyUI with this pack (tests/harness/serve.sh) and the browser (install_browser.sh). Each
graph is written here in API format plus a layout; the frontend loads it (app.loadApiJson), the layout
places the nodes and groups, and the frontend's own Workflow > Export writes the file, so what is shipped
is exactly what the UI saves. Edit a workflow here and rebuild it, or edit it in ComfyUI and export it
over the file: both give the same format. The model file names are those of ComfyUI's own examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `harness` and `support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import server  # noqa: E402
from support.frontend import open_frontend  # noqa: E402

log = logging.getLogger("workflow_sources")
REPO_ROOT = Path(__file__).resolve().parents[2]

WAN_POSITIVE = (
    "a fox moving quickly in a beautiful winter scenery nature trees mountains daytime tracking camera"
)
# The negative prompt of the Wan 2.1 release, which its models were tuned with.
WAN_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
LTX_POSITIVE = (
    "A red fox trots through fresh snow in a pine forest at sunrise, its breath visible in the cold air. The "
    "camera tracks alongside it at ground level. Soft golden light, long shadows, shallow depth of field."
)
LTX_NEGATIVE = "low quality, worst quality, deformed, distorted, disfigured, motion smear, motion artifacts"

FLASH_COLOR = "#8A8"  # LiteGraph's "green" group colour; stock-node groups keep the default blue
DECODE_H = 215  # Flash-VAED Decode with room for the 3 lines of stats it shows after a run
FLASH_DECODE = {"mode": "auto", "chunk_frames": 4, "tile_px": 512, "overlap_px": 64}

WAN_FILES = """\
**Model files** (ComfyUI's Wan 2.1 repackage: huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged)

* `models/diffusion_models/{unet}`
* `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`{extra}
* `models/flash_vaed/Flash_VAED_Wan.pth`: downloaded from huggingface.co/Aoko955/Flash-VAED on the first
  run (or put it there yourself)
"""


def _note(text: str) -> dict:
    return {"class_type": "MarkdownNote", "inputs": {"text": text}, "_meta": {"title": "Read me"}}


def _wan_sampling(unet: str) -> dict:
    """Nodes 1-7 shared by the Wan graphs: model, text encoder, prompts, shift, latent, sampler."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {
            "class_type": "CLIPLoader",
            "inputs": {
                "clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                "type": "wan",
                "device": "default",
            },
        },
        "3": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": WAN_POSITIVE, "clip": ["2", 0]},
            "_meta": {"title": "Positive prompt"},
        },
        "4": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": WAN_NEGATIVE, "clip": ["2", 0]},
            "_meta": {"title": "Negative prompt"},
        },
        "5": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
    }


def _ksampler(latent: list, positive: list, negative: list, steps: int) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": ["5", 0], "seed": 82628696717253, "control_after_generate": "randomize", "steps": steps,
            "cfg": 6.0, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0,
            "positive": positive, "negative": negative, "latent_image": latent,
        },
    }  # fmt: skip


def _save_video(images: list, fps: float, prefix: str) -> dict:
    return {
        "create": {"class_type": "CreateVideo", "inputs": {"images": images, "fps": fps}},
        "save": {
            "class_type": "SaveVideo",
            "inputs": {"filename_prefix": prefix, "format": "auto", "codec": "auto"},
        },
    }


def wan21_t2v() -> tuple[dict, dict]:
    video = _save_video(["9", 0], 16.0, "video/flash_vaed_wan21_t2v")
    graph = _wan_sampling("wan2.1_t2v_1.3B_fp16.safetensors") | {
        "6": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 832, "height": 480, "length": 33, "batch_size": 1},
        },
        "7": _ksampler(["6", 0], ["3", 0], ["4", 0], steps=30),
        "8": {
            "class_type": "FlashVAEDLoad",
            "inputs": {"decoder_name": "Flash_VAED_Wan.pth", "dtype": "auto"},
        },
        "9": {
            "class_type": "FlashVAEDDecode",
            "inputs": {"flash_vaed": ["8", 0], "samples": ["7", 0]} | FLASH_DECODE,
        },
        "10": video["create"],
        "11": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["10", 0]}},
        "12": _note(
            "# Wan 2.1 text to video, decoded by Flash-VAED\n\nThe stock Wan 2.1 pipeline; only the decode "
            "is Flash-VAED's. **Flash-VAED Decode** shows frames, time, fps and peak memory after each run. "
            "On little VRAM pick mode `causal` (less time memory) or `tiled` (less image memory).\n\n"
            + WAN_FILES.format(unet="wan2.1_t2v_1.3B_fp16.safetensors", extra="")
        ),
    }
    layout = {
        "columns": [["12"], ["1", "2"], ["3", "4"], ["5", "6", "7"], ["8", "9"], ["10", "11"]],
        "sizes": {"1": [320, 0], "2": [320, 0], "3": [420, 160], "4": [420, 160], "12": [380, 360],
                  "8": [320, 0], "9": [320, DECODE_H], "11": [280, 0]},
        "groups": [
            {"title": "Wan 2.1 sampling (stock nodes)", "nodes": ["1", "2", "3", "4", "5", "6", "7"]},
            {"title": "Flash-VAED decode", "nodes": ["8", "9"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


def wan21_i2v() -> tuple[dict, dict]:
    video = _save_video(["14", 0], 16.0, "video/flash_vaed_wan21_i2v")
    graph = _wan_sampling("wan2.1_i2v_480p_14B_fp16.safetensors") | {
        "6": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_h.safetensors"}},
        "7": {
            "class_type": "LoadImage",
            "inputs": {"image": "example.png"},
            "_meta": {"title": "Start image"},
        },
        "8": {
            "class_type": "CLIPVisionEncode",
            "inputs": {"clip_vision": ["6", 0], "image": ["7", 0], "crop": "none"},
        },
        "9": {
            "class_type": "VAELoader",
            "inputs": {"vae_name": "wan_2.1_vae.safetensors"},
            "_meta": {"title": "Load VAE (teacher, encodes)"},
        },
        "10": {
            "class_type": "FlashVAEDLoad",
            "inputs": {"decoder_name": "Flash_VAED_Wan.pth", "dtype": "auto", "teacher_vae": ["9", 0]},
        },
        "11": {
            "class_type": "WanImageToVideo",
            "inputs": {
                "positive": ["3", 0],
                "negative": ["4", 0],
                "vae": ["10", 1],
                "clip_vision_output": ["8", 0],
                "start_image": ["7", 0],
                "width": 832,
                "height": 480,
                "length": 33,
                "batch_size": 1,
            },
        },  # fmt: skip
        "12": _ksampler(["11", 2], ["11", 0], ["11", 1], steps=20),
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["10", 1]}},
        "15": video["create"],
        "16": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["15", 0]}},
        "17": _note(
            "# Wan 2.1 image to video with the Flash-VAED drop-in VAE\n\nThe **VAE** output of Load Flash-VAED "
            "goes wherever the Wan VAE would: Wan Image To Video encodes the start image with it (through "
            "`teacher_vae`, the original Wan VAE) and VAE Decode decodes with Flash-VAED.\n\n"
            + WAN_FILES.format(
                unet="wan2.1_i2v_480p_14B_fp16.safetensors",
                extra="\n* `models/clip_vision/clip_vision_h.safetensors`\n* `models/vae/wan_2.1_vae.safetensors`",
            )
        ),
    }
    layout = {
        "columns": [["17"], ["1", "2", "6"], ["3", "4"], ["7", "8"], ["9", "10", "11"], ["5", "12"],
                    ["14", "15", "16"]],
        "sizes": {"1": [320, 0], "2": [320, 0], "6": [320, 0], "3": [420, 160], "4": [420, 160],
                  "17": [380, 420], "7": [320, 360], "9": [320, 0], "10": [320, 0], "16": [280, 0]},
        "groups": [
            {"title": "Flash-VAED as the VAE", "nodes": ["9", "10"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


def ltxv_t2v() -> tuple[dict, dict]:
    video = _save_video(["12", 0], 25.0, "video/flash_vaed_ltxv_t2v")
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ltx-video-2b-v0.9.safetensors"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5xxl_fp16.safetensors", "type": "ltxv", "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": LTX_POSITIVE, "clip": ["2", 0]}, "_meta": {"title": "Positive prompt"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": LTX_NEGATIVE, "clip": ["2", 0]}, "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "LTXVConditioning", "inputs": {"positive": ["3", 0], "negative": ["4", 0], "frame_rate": 25.0}},
        "6": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 768, "height": 512, "length": 97, "batch_size": 1}},
        "7": {
            "class_type": "LTXVScheduler",
            "inputs": {"steps": 30, "max_shift": 2.05, "base_shift": 0.95, "stretch": True, "terminal": 0.1, "latent": ["6", 0]},
        },
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["1", 0], "add_noise": True, "noise_seed": 497797676867141, "control_after_generate": "randomize",
                "cfg": 3.0, "positive": ["5", 0], "negative": ["5", 1], "sampler": ["8", 0], "sigmas": ["7", 0],
                "latent_image": ["6", 0],
            },
        },
        "10": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": "Flash_VAED_LTX.pth", "dtype": "auto"}},
        "12": {"class_type": "FlashVAEDDecode", "inputs": {"flash_vaed": ["10", 0], "samples": ["9", 0]} | FLASH_DECODE},
        "13": video["create"],
        "14": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["13", 0]}},
        "15": _note(
            "# LTX-Video text to video, decoded by Flash-VAED\n\nThe stock LTX-Video pipeline; only the decode "
            "is Flash-VAED's. Flash-VAED's LTX student was distilled from the LTX-Video 0.9.0 VAE, so pair it "
            "with the 0.9.0 model.\n\n**Model files**\n\n"
            "* `models/checkpoints/ltx-video-2b-v0.9.safetensors` (huggingface.co/Lightricks/LTX-Video)\n"
            "* `models/text_encoders/t5xxl_fp16.safetensors` (huggingface.co/comfyanonymous/flux_text_encoders)\n"
            "* `models/flash_vaed/Flash_VAED_LTX.pth`: downloaded from huggingface.co/Aoko955/Flash-VAED on the "
            "first run (or put it there yourself)\n"
        ),
    }  # fmt: skip
    layout = {
        "columns": [["15"], ["1", "2"], ["3", "4"], ["5", "6", "7", "8"], ["9"], ["10", "12"], ["13", "14"]],
        "sizes": {"1": [320, 0], "2": [320, 0], "3": [420, 180], "4": [420, 120], "15": [380, 360],
                  "10": [320, 0], "12": [320, DECODE_H], "14": [280, 0]},
        "groups": [
            {"title": "LTX-Video sampling (stock nodes)", "nodes": ["1", "2", "3", "4", "5", "6", "7", "8", "9"]},
            {"title": "Flash-VAED decode", "nodes": ["10", "12"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


def wan21_compare_decoders() -> tuple[dict, dict]:
    video = _save_video(["14", 0], 16.0, "video/flash_vaed_compare")
    graph = _wan_sampling("wan2.1_t2v_1.3B_fp16.safetensors") | {
        "6": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 832, "height": 480, "length": 33, "batch_size": 1},
        },
        "7": _ksampler(["6", 0], ["3", 0], ["4", 0], steps=30),
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}, "_meta": {"title": "Load VAE (teacher)"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}, "_meta": {"title": "VAE Decode (teacher)"}},
        "10": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": "Flash_VAED_Wan.pth", "dtype": "auto"}},
        "11": {"class_type": "FlashVAEDDecode", "inputs": {"flash_vaed": ["10", 0], "samples": ["7", 0]} | FLASH_DECODE},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}, "_meta": {"title": "Teacher frames"}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}, "_meta": {"title": "Flash-VAED frames"}},
        "14": {
            "class_type": "ImageStitch",
            "inputs": {"image1": ["9", 0], "image2": ["11", 0], "direction": "right", "match_image_size": True,
                       "spacing_width": 8, "spacing_color": "white"},
            "_meta": {"title": "Side by side (teacher | Flash-VAED)"},
        },
        "15": video["create"],
        "16": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["15", 0]}},
        "17": {
            "class_type": "ImageBlend",
            "inputs": {"image1": ["9", 0], "image2": ["11", 0], "blend_factor": 1.0, "blend_mode": "difference"},
            "_meta": {"title": "|teacher - Flash-VAED|"},
        },
        "18": {"class_type": "PreviewImage", "inputs": {"images": ["17", 0]}, "_meta": {"title": "Difference frames"}},
        "19": _note(
            "# Compare the decoders on one latent\n\nOne Wan 2.1 latent, decoded by the original VAE (stock VAE "
            "Decode) and by Flash-VAED. The previews show both frame batches and their absolute difference "
            "(black = identical); the video puts them side by side. The run times are in the queue panel; "
            "Flash-VAED Decode also shows its own on the node.\n\n"
            + WAN_FILES.format(unet="wan2.1_t2v_1.3B_fp16.safetensors", extra="\n* `models/vae/wan_2.1_vae.safetensors`")
        ),
    }  # fmt: skip
    layout = {
        "columns": [["19"], ["1", "2"], ["3", "4"], ["5", "6", "7"], ["8", "9", "10", "11"], ["12", "13"],
                    ["17", "18"], ["14", "15", "16"]],
        "sizes": {"1": [320, 0], "2": [320, 0], "3": [420, 160], "4": [420, 160], "19": [380, 420],
                  "8": [320, 0], "9": [260, 0], "10": [320, 0], "11": [320, DECODE_H], "14": [320, 0], "16": [280, 0],
                  "12": [360, 330], "13": [360, 330], "18": [360, 330]},
        "groups": [
            {"title": "Teacher: stock VAE Decode", "nodes": ["8", "9"]},
            {"title": "Student: Flash-VAED", "nodes": ["10", "11"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


def wan21_prune_distill() -> tuple[dict, dict]:
    graph = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}, "_meta": {"title": "Load VAE (teacher)"}},
        "2": {
            "class_type": "FlashVAEDPruneDistill",
            "inputs": {"teacher_vae": ["1", 0], "videos": "training_clips", "preset": "auto", "steps": 2000, "seed": 0,
                       "output_name": "wan21_my_student", "crop_px": 128, "clip_frames": 17, "resume": False},
        },
        "3": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 256, "height": 256, "length": 17, "batch_size": 1}},
        "4": {"class_type": "FlashVAEDDecode", "inputs": {"flash_vaed": ["2", 0], "samples": ["3", 0]} | FLASH_DECODE},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}, "_meta": {"title": "Student frames"}},
        "6": _note(
            "# Distil your own Flash-VAED student (Wan 2.1)\n\n"
            "1. Put training clips (.mp4, .webm, animated .webp/.gif; at least 17 frames and 128 px) in "
            "`ComfyUI/input/training_clips/`, then press R so **videos** lists the folder.\n"
            "2. Run. The diffusion model is unloaded, the student is pruned from the Wan VAE and distilled; the "
            "loss curve is drawn on the node. A useful student takes thousands of steps on a GPU (see "
            "training/README.md); preset `tiny` with a few steps only checks that everything runs.\n"
            "3. **Cancel** saves a checkpoint in `models/flash_vaed/runs/wan21_my_student/`; turn on "
            "**resume** and run again to continue (steps may be raised).\n\n"
            "The student is saved as `models/flash_vaed/wan21_my_student.safetensors`, which Load Flash-VAED "
            "lists after R. Here Flash-VAED Decode decodes an empty latent with it, to show it runs: connect "
            "your sampler's latent instead.\n\n"
            "**Model files**\n\n* `models/vae/wan_2.1_vae.safetensors` (huggingface.co/Comfy-Org/"
            "Wan_2.1_ComfyUI_repackaged)\n"
        ),
    }  # fmt: skip
    layout = {
        "columns": [["6"], ["1"], ["2"], ["3", "4"], ["5"]],
        "sizes": {"6": [380, 460], "1": [320, 0], "3": [320, 0], "2": [360, 420], "4": [320, DECODE_H],
                  "5": [360, 360]},
        "groups": [
            {"title": "Prune & Distill a student", "nodes": ["1", "2"], "color": FLASH_COLOR},
            {"title": "Try the student", "nodes": ["3", "4", "5"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


# ---- Wan 2.2: the sampling of ComfyUI's own templates (comfyui-workflow-templates-json 0.1.123:
# video_wan2_2_14B_t2v.json, video_wan2_2_14B_i2v.json, video_wan2_2_5B_ti2v.json) at their defaults, flattened
# out of the templates' subgraphs with the Lightning-LoRA switch at its default (off: 20 steps, split at 10,
# cfg 3.5, euler/simple, shift 5); only the decode is changed.

WAN22_FILES = """\
**Model files** (ComfyUI's Wan 2.2 repackage: huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged)

{unets}
* `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`
{vae}"""
FLASH_WAN_FILE = (
    "* `models/flash_vaed/Flash_VAED_Wan.pth`: downloaded from huggingface.co/Aoko955/Flash-VAED on the first run "
    "(or put it there yourself)\n"
)


def _wan22_14b(kind: str) -> dict:
    """Nodes 1-8 of the 14B graphs: the high- and low-noise experts, text encoder, prompts, shifts."""
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": f"wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors",
                                                       "weight_dtype": "default"}, "_meta": {"title": "Load Diffusion Model (high noise)"}},
        "2": {"class_type": "UNETLoader", "inputs": {"unet_name": f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors",
                                                       "weight_dtype": "default"}, "_meta": {"title": "Load Diffusion Model (low noise)"}},
        "3": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan",
                                                       "device": "default"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": WAN_POSITIVE, "clip": ["3", 0]}, "_meta": {"title": "Positive prompt"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": WAN_NEGATIVE, "clip": ["3", 0]}, "_meta": {"title": "Negative prompt"}},
        "6": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 5.0}},
        "7": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["2", 0], "shift": 5.0}},
    }  # fmt: skip
    return graph


def _two_experts(latent: list, positive: list, negative: list) -> dict:
    """The templates' two KSamplerAdvanced: the high-noise expert for steps 0-10, the low-noise one after."""
    common = {
        "steps": 20,
        "cfg": 3.5,
        "sampler_name": "euler",
        "scheduler": "simple",
        "positive": positive,
        "negative": negative,
    }
    return {
        "high": {"class_type": "KSamplerAdvanced", "inputs": common | {
            "model": ["6", 0], "add_noise": "enable", "noise_seed": 82628696717253, "control_after_generate": "randomize",
            "start_at_step": 0, "end_at_step": 10, "return_with_leftover_noise": "enable", "latent_image": latent},
            "_meta": {"title": "KSampler (high noise expert)"}},
        "low": {"class_type": "KSamplerAdvanced", "inputs": common | {
            "model": ["7", 0], "add_noise": "disable", "noise_seed": 0, "control_after_generate": "fixed",
            "start_at_step": 10, "end_at_step": 10000, "return_with_leftover_noise": "disable"},
            "_meta": {"title": "KSampler (low noise expert)"}},
    }  # fmt: skip


def wan22_14b_t2v() -> tuple[dict, dict]:
    video = _save_video(["13", 0], 16.0, "video/flash_vaed_wan22_14b_t2v")
    experts = _two_experts(["8", 0], ["4", 0], ["5", 0])
    graph = _wan22_14b("t2v") | {
        "8": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 640, "height": 640, "length": 81, "batch_size": 1}},
        "9": experts["high"],
        "10": experts["low"] | {"inputs": experts["low"]["inputs"] | {"latent_image": ["9", 0]}},
        "12": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": "Flash_VAED_Wan.pth", "dtype": "auto"}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["12", 1]}},
        "14": video["create"],
        "15": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["14", 0]}},
        "16": _note(
            "# Wan 2.2 14B text to video, decoded by Flash-VAED\n\nComfyUI's Wan 2.2 14B template (two experts: "
            "high noise for the first 10 of 20 steps, low noise for the rest). The 14B models decode with the "
            "**Wan 2.1 VAE**, so the official Flash-VAED Wan student applies: the **VAE** output of Load Flash-VAED "
            "goes into the stock VAE Decode in place of `wan_2.1_vae.safetensors`.\n\n"
            + WAN22_FILES.format(
                unets="* `models/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors`\n"
                      "* `models/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors`",
                vae=FLASH_WAN_FILE)
        ),
    }  # fmt: skip
    layout = {
        "columns": [["16"], ["1", "2", "3"], ["4", "5"], ["6", "7", "8"], ["9"], ["10"], ["12", "13"], ["14", "15"]],
        "sizes": {"1": [360, 0], "2": [360, 0], "3": [360, 0], "4": [420, 160], "5": [420, 160], "16": [380, 460],
                  "12": [320, 0], "15": [280, 0]},
        "groups": [
            {"title": "Wan 2.2 14B sampling (ComfyUI's template)", "nodes": ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]},
            {"title": "Flash-VAED as the VAE", "nodes": ["12", "13"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


def wan22_14b_i2v() -> tuple[dict, dict]:
    video = _save_video(["13", 0], 16.0, "video/flash_vaed_wan22_14b_i2v")
    experts = _two_experts(["11", 2], ["11", 0], ["11", 1])
    graph = _wan22_14b("i2v") | {
        "8": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Start image"}},
        "17": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"},
               "_meta": {"title": "Load VAE (teacher, encodes)"}},
        "12": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": "Flash_VAED_Wan.pth", "dtype": "auto",
                                                         "teacher_vae": ["17", 0]}},
        "11": {"class_type": "WanImageToVideo", "inputs": {
            "positive": ["4", 0], "negative": ["5", 0], "vae": ["12", 1], "start_image": ["8", 0],
            "width": 640, "height": 640, "length": 81, "batch_size": 1}},
        "9": experts["high"],
        "10": experts["low"] | {"inputs": experts["low"]["inputs"] | {"latent_image": ["9", 0]}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["12", 1]}},
        "14": video["create"],
        "15": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["14", 0]}},
        "16": _note(
            "# Wan 2.2 14B image to video with the Flash-VAED drop-in VAE\n\nComfyUI's Wan 2.2 14B image-to-video "
            "template. The 14B models use the **Wan 2.1 VAE**: the **VAE** output of Load Flash-VAED goes wherever "
            "it would. Wan Image To Video encodes the start image through `teacher_vae` (the original "
            "`wan_2.1_vae.safetensors`), and VAE Decode decodes with the official Flash-VAED Wan student.\n\n"
            + WAN22_FILES.format(
                unets="* `models/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors`\n"
                      "* `models/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors`",
                vae="* `models/vae/wan_2.1_vae.safetensors`\n" + FLASH_WAN_FILE)
        ),
    }  # fmt: skip
    layout = {
        "columns": [["16"], ["1", "2", "3"], ["4", "5"], ["8", "17", "12"], ["6", "7", "11"], ["9"], ["10"],
                    ["13", "14", "15"]],
        "sizes": {"1": [360, 0], "2": [360, 0], "3": [360, 0], "4": [420, 160], "5": [420, 160], "16": [380, 460],
                  "8": [320, 360], "17": [320, 0], "12": [320, 0], "15": [280, 0]},
        "groups": [{"title": "Flash-VAED as the VAE", "nodes": ["17", "12"], "color": FLASH_COLOR}],
    }  # fmt: skip
    return graph, layout


def wan22_5b_ti2v() -> tuple[dict, dict]:
    video = _save_video(["10", 0], 24.0, "video/flash_vaed_wan22_5b_ti2v")
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "wan2.2_ti2v_5B_fp16.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan",
                                                       "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": WAN_POSITIVE, "clip": ["2", 0]}, "_meta": {"title": "Positive prompt"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": WAN_NEGATIVE, "clip": ["2", 0]}, "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": "wan2.2_vae.safetensors"},
              "_meta": {"title": "Load VAE (encodes a start image)"}},
        "7": {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["6", 0], "width": 1280, "height": 704,
                                                                   "length": 121, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "seed": 82628696717253, "control_after_generate": "randomize", "steps": 20, "cfg": 5.0,
            "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0, "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["7", 0]}},
        "9": {"class_type": "FlashVAEDLoad", "inputs": {"decoder_name": "wan2.2_vae.safetensors", "dtype": "auto"},
              "_meta": {"title": "Load Flash-VAED (Wan 2.2 VAE or a Wan 2.2 student)"}},
        "10": {"class_type": "FlashVAEDDecode", "inputs": {"flash_vaed": ["9", 0], "samples": ["8", 0], "mode": "causal",
                                                           "chunk_frames": 2, "tile_px": 512, "overlap_px": 64}},
        "11": video["create"],
        "12": video["save"] | {"inputs": video["save"]["inputs"] | {"video": ["11", 0]}},
        "13": _note(
            "# Wan 2.2 TI2V-5B, decoded by Flash-VAED\n\nComfyUI's Wan 2.2 5B template (text to video; for image to "
            "video connect a Load Image to `start_image` of Wan22 Image To Video Latent). The 5B model uses the "
            "**Wan 2.2 VAE** (48 channels), for which there is no official Flash-VAED student: Load Flash-VAED loads "
            "the Wan 2.2 VAE itself as the decoder, and Flash-VAED Decode streams it (`causal`, 2 latent frames "
            "at a time): the frames are the VAE's own, in memory that does not grow with the clip's length. To "
            "decode faster, train a Wan 2.2 student with Prune & Distill (preset `auto`, teacher "
            "`wan2.2_vae.safetensors`) and pick its file in Load Flash-VAED.\n\n"
            + WAN22_FILES.format(unets="* `models/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors`",
                                 vae="* `models/vae/wan2.2_vae.safetensors`\n")
        ),
    }  # fmt: skip
    layout = {
        "columns": [["13"], ["1", "2"], ["3", "4"], ["5", "6", "7"], ["8"], ["9", "10"], ["11", "12"]],
        "sizes": {"1": [320, 0], "2": [320, 0], "3": [420, 160], "4": [420, 160], "13": [380, 460], "6": [320, 0],
                  "9": [320, 0], "10": [320, DECODE_H], "12": [280, 0]},
        "groups": [
            {"title": "Wan 2.2 5B sampling (ComfyUI's template)", "nodes": ["1", "2", "3", "4", "5", "6", "7", "8"]},
            {"title": "Flash-VAED decode", "nodes": ["9", "10"], "color": FLASH_COLOR},
        ],
    }  # fmt: skip
    return graph, layout


# ---- LTX-2.3: ComfyUI's own template (comfyui-workflow-templates-json 0.1.123: video_ltx2_3_t2v.json) with
# the video decode replaced. Its nodes (LTXAVTextEncoderLoader, the audio VAE, the latent upsampler, ...) are
# not in ComfyUI 0.3.75, so the harness's frontend cannot build it from an API graph: the template itself
# (a frontend export) is edited instead, keeping its subgraph, widgets and layout; only the video VAE Decode
# (Tiled) inside it becomes Load Flash-VAED + Flash-VAED Decode, in the node format the frontend exports.

LTX2_TEMPLATE = "video_ltx2_3_t2v.json"
LTX2_CHECKPOINT = (
    "ltx-2.3-22b-dev-fp8.safetensors"  # the template's all-in-one checkpoint (models/checkpoints)
)
LTX2_NOTE = """# LTX-2.3 text to video, decoded by Flash-VAED

ComfyUI's LTX-2.3 template (open the subgraph to see it all): sampling, latent upscaling and the **audio** decode
are the template's own; only the **video** decode inside the subgraph is Flash-VAED's (group *Flash-VAED video
decode*, in place of the template's VAE Decode (Tiled)).

**Load Flash-VAED** reads the LTX-2.3 video VAE from the template's checkpoint (only its decoder, from the 27 GB
file) and **Flash-VAED Decode** decodes with it in `auto`: the whole clip where it fits in free memory, else
spatial tiles, so the frames are the VAE's own (tiles blend at their seams) and it never runs out of memory.
LTX-2 windows in time need 14 latent frames of context on each side, so a 5 s clip decodes whole in time.

For speed, train an **LTX-2 student**: Prune & Distill with this checkpoint as teacher (Load Flash-VAED's
VAE output into `teacher_vae`, preset `auto` = `ltx2-recipe`), then pick the student's file here. The official
`Flash_VAED_LTX.pth` is an LTX-Video 0.9 student: LTX-2 latents are another latent space, it would decode
them into garbage.

Needs a ComfyUI with the LTX-2 nodes (the template's); the LTX-2.4/2.5 *diffusion* decoder is not supported.

**Model files**: as the template's note (`models/checkpoints/ltx-2.3-22b-dev-fp8.safetensors`, the text
encoder, LoRAs and latent upscaler).
"""


def ltx2_3_t2v_from_template(template: dict) -> dict:
    """ComfyUI's LTX-2.3 text-to-video template with its video decode replaced by Flash-VAED (see above)."""
    w = json.loads(json.dumps(template))
    w["extra"].pop("prompt", None)  # an API prompt of the template author's own graph, not this one
    (sg,) = w["definitions"]["subgraphs"]
    nodes = {n["id"]: n for n in sg["nodes"]}
    (old,) = [n for n in sg["nodes"] if n["type"] == "VAEDecodeTiled"]
    links = {link["id"]: link for link in sg["links"]}
    samples, vae = (i["link"] for i in old["inputs"])
    (images,) = old["outputs"][0]["links"]
    # the checkpoint's VAE no longer reaches the video decode (it still encodes the image-to-video start image)
    for node in nodes.values():
        for out in node.get("outputs", []):
            if out.get("links") and vae in out["links"]:
                out["links"].remove(vae)
    del links[vae]
    state = sg["state"]
    load_id, decode_id, link_id = state["lastNodeId"] + 1, state["lastNodeId"] + 2, state["lastLinkId"] + 1
    x, y = old["pos"]
    load = {
        "id": load_id, "type": "FlashVAEDLoad", "pos": [x, y - 190], "size": [320, 102], "flags": {},
        "order": old["order"], "mode": 0,
        "inputs": [{"name": "teacher_vae", "shape": 7, "type": "VAE", "link": None}],
        "outputs": [{"name": "FLASH_VAED", "type": "FLASH_VAED", "links": [link_id]},
                    {"name": "VAE", "type": "VAE", "links": None}],
        "title": "Load Flash-VAED (the LTX-2.3 VAE, or an LTX-2 student)",
        "properties": {"Node name for S&R": "FlashVAEDLoad"},
        "widgets_values": [LTX2_CHECKPOINT, "auto"],
    }  # fmt: skip
    decode = {
        "id": decode_id, "type": "FlashVAEDDecode", "pos": [x, y], "size": [320, DECODE_H], "flags": {},
        "order": old["order"] + 1, "mode": 0,
        "inputs": [{"name": "flash_vaed", "type": "FLASH_VAED", "link": link_id},
                   {"name": "samples", "type": "LATENT", "link": samples}],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [images]}],
        "properties": {"Node name for S&R": "FlashVAEDDecode"},
        "widgets_values": [FLASH_DECODE[k] for k in ("mode", "chunk_frames", "tile_px", "overlap_px")],
    }  # fmt: skip
    links[samples].update(target_id=decode_id, target_slot=1)
    links[images].update(origin_id=decode_id, origin_slot=0)
    links[link_id] = {"id": link_id, "origin_id": load_id, "origin_slot": 0, "target_id": decode_id,
                      "target_slot": 0, "type": "FLASH_VAED"}  # fmt: skip
    sg["nodes"] = [n for n in sg["nodes"] if n is not old] + [load, decode]
    sg["links"] = list(links.values())
    group_id = state["lastGroupId"] + 1
    sg["groups"].append({"id": group_id, "title": "Flash-VAED video decode", "color": FLASH_COLOR, "flags": {},
                         "bounding": [x - 20, y - 264, 360, DECODE_H + 284]})  # fmt: skip
    state.update(lastNodeId=decode_id, lastLinkId=link_id, lastGroupId=group_id)
    note_id = decode_id + 1
    (instance,) = [n for n in w["nodes"] if n["type"] == sg["id"]]
    ix, iy = instance["pos"]
    w["nodes"].append({
        "id": note_id, "type": "MarkdownNote", "pos": [ix - 460, iy], "size": [420, 720], "flags": {},
        "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": "Read me (Flash-VAED)", "properties": {},
        "widgets_values": [LTX2_NOTE],
    })  # fmt: skip
    w["last_node_id"] = max(w["last_node_id"], note_id)
    return w


def template_workflows(templates: Path, out_dir: Path) -> list[Path]:
    """Write the workflows made from ComfyUI's template files in `templates` (a folder of the
    comfyui-workflow-templates-json package's templates/, e.g. unpacked from `pip download`)."""
    path = out_dir / "ltx2_3_t2v.json"
    workflow = ltx2_3_t2v_from_template(json.loads((templates / LTX2_TEMPLATE).read_text()))
    path.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s from %s", path, LTX2_TEMPLATE)
    return [path]


WORKFLOWS = {
    "wan21_t2v": wan21_t2v,
    "wan21_i2v": wan21_i2v,
    "ltxv_t2v": ltxv_t2v,
    "wan21_compare_decoders": wan21_compare_decoders,
    "wan21_prune_distill": wan21_prune_distill,
    "wan22_14b_t2v": wan22_14b_t2v,
    "wan22_14b_i2v": wan22_14b_i2v,
    "wan22_5b_ti2v": wan22_5b_ti2v,
}

# Places the nodes column by column (sizes: [w, h], 0 keeps the computed size) and draws groups around them.
LAYOUT_JS = """
([layout, LiteGraph]) => {
  const graph = window.app.graph;
  // a node's title bar (30 px) is drawn above its pos; a group's title bar (font 24) above that
  const GAP_X = 60, GAP_Y = 50, TOP = 100, NODE_TITLE = 30, GROUP_TITLE = 44, GROUP_GAP = 100;
  const groupOf = (id) => layout.groups.findIndex((g) => g.nodes.includes(id));
  let x = 40;
  for (const column of layout.columns) {
    let y = TOP, width = 0;
    column.forEach((id, i) => {
      // room for a group's title bar and frame where a column enters or leaves a group
      if (i > 0 && groupOf(id) !== groupOf(column[i - 1])) y += GROUP_GAP;
      const node = graph.getNodeById(id);
      const want = layout.sizes[id] || [0, 0];
      const min = node.computeSize();
      node.setSize([Math.max(want[0], min[0]), Math.max(want[1], min[1])]);
      node.pos = [x, y];
      y += node.size[1] + GAP_Y;
      width = Math.max(width, node.size[0]);
    });
    x += width + GAP_X;
  }
  for (const g of layout.groups) {
    const nodes = g.nodes.map((id) => graph.getNodeById(id));
    const group = new window.LiteGraph.LGraphGroup(g.title);
    if (g.color) group.color = g.color;
    graph.add(group);
    const pad = 20, title = NODE_TITLE + GROUP_TITLE;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])) - pad;
    const y0 = Math.min(...nodes.map((n) => n.pos[1])) - title;
    const x1 = Math.max(x0 + 14 * g.title.length + 2 * pad, ...nodes.map((n) => n.pos[0] + n.size[0] + pad));
    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + pad;
    group.pos = [x0, y0];
    group.size = [x1 - x0, y1 - y0];
  }
  graph.setDirtyCanvas(true, true);
  return graph.nodes.length;
}
"""


# The sampler bypassed, so its input latent (the workflow's empty latent, made small) reaches the decoders.
BYPASS_SAMPLERS_JS = """
(size) => {
  for (const node of window.app.graph.nodes) {
    if (["KSampler", "SamplerCustom"].includes(node.type)) node.mode = 4;
    if (node.type.startsWith("Empty") && node.type.endsWith("LatentVideo")) {
      for (const [name, value] of Object.entries(size)) node.widgets.find((w) => w.name === name).value = value;
    }
  }
}
"""
FRAME_NODES_JS = """
(ids) => {
  // page-pixel box around the nodes (title bars included) and the groups that hold them
  const app = window.app, pad = 16;
  const boxes = ids.map((id) => app.graph.getNodeById(id)).map((n) => [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]);
  for (const g of app.graph.groups) {
    const inside = boxes.some(([x, y]) => x >= g.pos[0] && y >= g.pos[1] && x <= g.pos[0] + g.size[0] && y <= g.pos[1] + g.size[1]);
    if (inside) boxes.push([g.pos[0], g.pos[1], g.size[0], g.size[1]]);
  }
  const gx0 = Math.min(...boxes.map((b) => b[0])), gy0 = Math.min(...boxes.map((b) => b[1]));
  const gx1 = Math.max(...boxes.map((b) => b[0] + b[2])), gy1 = Math.max(...boxes.map((b) => b[1] + b[3]));
  // zoom so that the box fills the canvas, then return where it is on the page
  const r = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
  ds.scale = Math.min((r.width - 2 * pad) / (gx1 - gx0), (r.height - 2 * pad) / (gy1 - gy0));
  ds.offset = [pad / ds.scale - gx0, pad / ds.scale - gy0];
  app.canvas.setDirty(true, true);
  const [x0, y0] = ds.convertOffsetToCanvas([gx0, gy0]);
  const [x1, y1] = ds.convertOffsetToCanvas([gx1, gy1]);
  return { x: r.left + x0 - pad, y: r.top + y0 - pad, width: x1 - x0 + 2 * pad, height: y1 - y0 + 2 * pad };
}
"""


def screenshot(url: str, path: Path, name: str = "wan21_compare_decoders") -> None:
    """The README image: workflow ``name`` as shipped, its sampler bypassed, run, and its decode part shown.

    The server needs the files the decode part names (tests/support/tiny_models.py writes seeded ones, so
    the frames are those of random weights).
    """
    # no pack-name badges (the harness links the pack under its checkout's folder name), no canvas info
    server.post_json(url, "/settings/Comfy.NodeBadge.NodeSourceBadgeMode", "None")
    server.post_json(url, "/settings/Comfy.Graph.CanvasInfo", False)
    server.free_models(url)
    with open_frontend(url, viewport=(1600, 760)) as ui:
        ui.load(json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text()))
        ui.js(BYPASS_SAMPLERS_JS, {"width": 128, "height": 96, "length": 9})
        ui.run()
        ui.js("() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        ui.fit_view()
        ui.page.wait_for_timeout(500)
        clip = ui.js(FRAME_NODES_JS, [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18])
        ui.page.wait_for_timeout(500)  # DOM widgets follow the canvas on the next frame
        ui.page.screenshot(path=str(path), clip=clip)
    from PIL import Image  # a ComfyUI dependency; 256 flat colours keep the README image near 100 kB

    Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    server.post_json(url, "/settings/Comfy.NodeBadge.NodeSourceBadgeMode", "Hide built-in")
    server.post_json(url, "/settings/Comfy.Graph.CanvasInfo", True)
    log.info("wrote %s", path)


def build(url: str, out_dir: Path, names: list[str]) -> list[Path]:
    written = []
    with open_frontend(url) as ui:
        for name in names:
            graph, layout = WORKFLOWS[name]()
            ui.load(graph)
            ui.js(LAYOUT_JS, [layout, None])
            ui.fit_view()
            # saved, opened and saved again: a file the frontend re-exports unchanged (the first export
            # still lacks the empty widgets_values the frontend adds when it loads a file)
            ui.load(ui.export_workflow())
            saved = ui.export_workflow()
            path = out_dir / f"{name}.json"
            path.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
            log.info("wrote %s (%d nodes, %d links)", path, len(saved["nodes"]), len(saved["links"]))
            written.append(path)
        if ui.console_errors:
            log.warning("browser console errors: %s", ui.console_errors[:3])
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default="http://127.0.0.1:8188")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "workflows")
    ap.add_argument("--screenshot", type=Path, help="instead: write the README image here (see screenshot())")
    ap.add_argument(
        "--only", action="append", choices=sorted(WORKFLOWS), help="build just these (repeatable)"
    )
    ap.add_argument(
        "--templates",
        type=Path,
        help="instead: write the workflows made from ComfyUI's template files in this folder (the "
        "templates/ of comfyui-workflow-templates-json 0.1.123; no server needed): ltx2_3_t2v",
    )
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if a.screenshot:
        screenshot(a.server, a.screenshot)
    elif a.templates:
        template_workflows(a.templates, a.out)
    else:
        build(a.server, a.out, a.only or list(WORKFLOWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
