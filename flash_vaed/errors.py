"""Errors a user can act on. Each message names the problem and the fix."""


class FlashVAEDError(Exception):
    """Base of every error this library raises on purpose."""


class CheckpointError(FlashVAEDError, ValueError):
    """A file or state dict that is not a decoder we can load (unknown, truncated, unsafe)."""


class LatentError(FlashVAEDError, ValueError):
    """Latents that do not fit the decoder's family."""
