"""Socket types of this pack, shared by its nodes (the type name is saved in workflows: never rename it)."""

from comfy_api.latest import io

# The payload is a nodes._glue.FlashModel: a loaded Flash-VAED decoder and its ComfyUI ModelPatcher.
FLASH_VAED = io.Custom("FLASH_VAED")
