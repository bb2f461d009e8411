"""The pack's V3 nodes. ComfyUI imports them through the pack's __init__.py, never directly."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import _glue
from .decode import FlashVAEDDecode
from .load import FlashVAEDLoad
from .prune_distill import FlashVAEDPruneDistill

NODES: list[type[io.ComfyNode]] = [FlashVAEDLoad, FlashVAEDDecode, FlashVAEDPruneDistill]


class FlashVAEDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


_glue.register_model_folder()  # before any schema lists the folder's files
