"""The causal context of one decoder for one stream.

Layers hold no state of their own. A layer that looks back in time is a `TemporalLayer`; the engine
makes one `DecodeState` per stream (one spatial tile of one clip), and each such layer reads and
writes only its own `LayerState` in it. Decoding a clip in chunks with one `DecodeState` gives the
same frames as decoding it whole, because the state carries exactly what the layer would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class TemporalLayer(nn.Module):
    """Base of every layer whose output depends on earlier frames of the stream.

    `needs_state` is False for configurations of such a layer that do not look back (a spatial-only
    upsample), so they get no slot.
    """

    needs_state: bool = True


@dataclass
class LayerState:
    """What one temporal layer remembers between chunks.

    past:         the last input frames the layer needs as left context, (B, C, k, H, W); None before
                  the layer has seen a frame.
    frames_seen:  input frames consumed so far; layers that treat the stream's first frame specially
                  (Wan's temporal upsample) read it.
    """

    name: str
    past: torch.Tensor | None = None
    frames_seen: int = 0

    @property
    def started(self) -> bool:
        return self.frames_seen > 0


class DecodeState:
    """Per-stream causal context of one decoder: one `LayerState` per `TemporalLayer`.

    A decoder whose stages are all per-frame has no temporal layers, and its state is empty: the size
    of this object shows how much temporal context a student keeps.
    """

    def __init__(self, decoder: nn.Module):
        self._layers: dict[nn.Module, LayerState] = {
            module: LayerState(name or type(module).__name__)
            for name, module in decoder.named_modules()
            if isinstance(module, TemporalLayer) and module.needs_state
        }
        self.latent_frames_seen = 0

    def __getitem__(self, layer: nn.Module) -> LayerState:
        try:
            return self._layers[layer]
        except KeyError:
            raise KeyError(
                f"{type(layer).__name__} has no slot in this DecodeState: the state was made for another "
                "decoder (make one DecodeState per decoder and stream)"
            ) from None

    def __len__(self) -> int:
        return len(self._layers)

    def layers(self) -> list[LayerState]:
        return list(self._layers.values())

    def nbytes(self) -> int:
        """Bytes held as temporal context right now."""
        return sum(
            s.past.numel() * s.past.element_size() for s in self._layers.values() if s.past is not None
        )

    def to(self, device: torch.device | str) -> DecodeState:
        """Move the carried context (e.g. to CPU between chunks when memory is tight)."""
        for s in self._layers.values():
            if s.past is not None:
                s.past = s.past.to(device)
        return self
