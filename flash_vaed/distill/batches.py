"""What a training step learns from: real clips, their latents (the teacher's encoder), and the teacher's
video and stage features on those latents.

With a crop pool and `cache`, the (latent, video) pair of each pool crop is kept on disk (data.PairCache);
the teacher still runs while a feature term has weight, because its features are not cached.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..decoder import FlashDecoder
from ..encoder import FlashEncoder
from . import data
from .config import DistillConfig
from .student import stage_features, to_raw

log = logging.getLogger(__name__)

FEATURE_TERMS = ("feat_deep", "feat_middle", "feat_shallow")


class Batches:
    """Draws the batches of a run. frames (B, 3, T, S, S) in [-1, 1], latents in ComfyUI's convention for
    the family, the teacher's video (B, 3, T', S, S) and features {(T, H, W): (B, C, T, H, W)}, all float32
    on `device`. amp: bf16 autocast for the encoder and the teacher.

    teacher_label: the teacher's name in the cache keys when its weights came from memory (no file to
    fingerprint)."""

    def __init__(
        self,
        cfg: DistillConfig,
        reader: data.ClipReader,
        teacher: FlashDecoder,
        encoder: FlashEncoder,
        device: torch.device,
        amp: bool,
        teacher_label: str | None = None,
    ):
        self.cfg, self.reader, self.teacher, self.encoder = cfg, reader, teacher, encoder
        self.device, self.amp = device, amp
        self.cache = data.PairCache(Path(cfg.out) / "cache") if cfg.cache and cfg.crop_pool > 0 else None
        if cfg.cache and cfg.crop_pool == 0:
            log.warning("--cache needs --crop-pool > 0 (fresh random crops never repeat); not caching")
        files = (
            data.file_fingerprint(cfg.teacher, cfg.encoder)
            if teacher_label is None
            else f"{teacher_label}-{data.file_fingerprint(cfg.encoder)}"
        )
        self.models_id = files + ("-bf16" if amp else "-fp32")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        # clone: encode runs in inference mode, and its tensors cannot enter the autograd graph
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
            return self.encoder.encode(frames.to(self.device), chunk_frames=None).float().clone()

    def teacher_forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The teacher's video and stage features on `latents`, no gradient."""
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.amp):
            video, feats = stage_features(self.teacher.module, to_raw(self.teacher, latents))
        return video.float(), feats

    def calibration(self) -> torch.Tensor:
        """Latents of cfg.calib_batches batches drawn at steps -1, -2, ...: the same on every rank, and
        never a training batch. What the student's init and the adapters are fitted on."""
        cfg = self.cfg
        frames = [
            data.draw_batch(self.reader, cfg.seed, -1 - i, range(cfg.batch_size), flip=False)[0]
            for i in range(cfg.calib_batches)
        ]
        return self.encode(torch.cat(frames))

    def draw(
        self, step: int, slots: Sequence[int], need_features: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(frames, latents, teacher video, teacher features) of the global sample `slots` at `step`; the
        features are {} when not needed and every video is cached."""
        cfg = self.cfg
        frames, crops, _ = data.draw_batch(
            self.reader, cfg.seed, step, slots, flip=cfg.flip, pool=cfg.crop_pool
        )
        keys = [self._key(c) for c in crops] if self.cache else [None] * len(crops)
        cached = [self.cache.get(k) if self.cache else None for k in keys]
        if all(c is not None for c in cached):
            latents = torch.stack([c["latent"] for c in cached]).to(self.device)
        else:
            latents = self.encode(frames)
        if need_features or any(c is None or "target" not in c for c in cached):
            target, feats = self.teacher_forward(latents)
        else:
            target, feats = torch.stack([c["target"] for c in cached]).to(self.device), {}
        if self.cache:
            for k, c, lat, tgt in zip(keys, cached, latents, target, strict=True):
                if c is None:
                    self.cache.put(k, {"latent": lat, "target": tgt})
        return frames.to(self.device), latents, target, feats

    def _key(self, crop: data.Crop) -> str:
        return data.cache_key(self.reader.videos[crop.video], crop, self.reader.shape, self.models_id)
