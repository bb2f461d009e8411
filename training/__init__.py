"""Training entry points (CLI); the loop itself is flash_vaed.distill.loop, shared with the ComfyUI node."""
