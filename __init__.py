"""ComfyUI entry point of the Flash-VAED node pack (V3 nodes through `comfy_entrypoint`).

Only ComfyUI imports this file. If this ComfyUI lacks the V3 node API (`comfy_api.latest`) or a dependency
is missing, the pack logs what to do and registers no nodes instead of breaking ComfyUI's start-up.
"""

import logging

log = logging.getLogger(__name__)

WEB_DIRECTORY = "./web"
MIN_COMFYUI = "0.3.75"  # the version the pack is tested with; older ones may lack comfy_api.latest parts

try:
    from comfy_api.latest import ComfyExtension
except ImportError as err:
    log.error(
        "Flash-VAED: this ComfyUI has no V3 node API (comfy_api.latest: %s). Flash-VAED needs ComfyUI %s or "
        "newer: update ComfyUI (git pull, or the ComfyUI Manager's 'Update ComfyUI'). No Flash-VAED nodes "
        "were loaded.",
        err,
        MIN_COMFYUI,
    )
    NODE_CLASS_MAPPINGS = {}  # an empty V1 pack: ComfyUI goes on starting without our nodes
else:
    try:
        from .nodes import FlashVAEDExtension
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in ("safetensors", "einops", "huggingface_hub", "tqdm"):
            raise  # our own bug: let ComfyUI show the traceback
        log.error(
            "Flash-VAED: a dependency is missing (%s). Install them into ComfyUI's Python with "
            "`python -m pip install -r requirements.txt` in this folder. No Flash-VAED nodes were loaded.",
            err,
        )
        NODE_CLASS_MAPPINGS = {}
    else:

        async def comfy_entrypoint() -> ComfyExtension:
            return FlashVAEDExtension()
