"""The settings of one distillation run: `DistillConfig`, with the loss-weight schedule nested in it as a
`PhaseSchedule`.

Each field carries its help text (field metadata "help"); training/distill.py makes one flag of each.
Outside Python a config is flat, one key per flag (the schedule's fields under their flag names, `phases`
for `fractions`): `to_dict` / `to_json` write that form and `from_dict` / `from_json` read it. It is the
form config.json and every checkpoint have always held, so the run folders of earlier versions resume.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FlashVAEDError


class DistillError(FlashVAEDError, RuntimeError):
    """Training cannot go on (bad config, diverged loss, mismatched resume)."""


class ConfigError(DistillError, ValueError):
    """A setting out of its range."""


def setting(default: Any = dataclasses.MISSING, help: str = "") -> Any:
    """A config field with its help text."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PhaseSchedule:
    """How the loss weights move over training (flash_vaed.distill.schedule.loss_weights)."""

    fractions: tuple[float, float, float] = setting(
        (0.25, 0.25, 0.5),
        "shares of the steps of phase 1 (deep features), 2 (middle features), 3 (shallow features + pixels)",
    )
    blend: float = setting(
        0.2, "share of a phase over which incoming loss terms rise and outgoing ones fall (half-cosine)"
    )
    keep: float = setting(0.1, "floor an outgoing feature term falls to, as a share of its full weight")
    w_feat: float = setting(1.0, "full weight of each feature-alignment term")
    w_l1: float = setting(1.0, "phase-3 weight of L1 to the teacher's output")
    w_l2: float = setting(1.0, "phase-3 weight of L2 (MSE) to the teacher's output")
    w_ssim: float = setting(0.2, "phase-3 weight of 1 - SSIM to the teacher's output")
    w_gt: float = setting(0.0, "phase-3 weight of L1 to the real frames (0: distil from the teacher alone)")

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or min(self.fractions) < 0 or sum(self.fractions) <= 0:
            raise ConfigError(f"phase fractions must be three non-negative numbers, got {self.fractions}")
        if not 0 <= self.blend <= 1 or not 0 <= self.keep <= 1:
            raise ConfigError(f"blend and keep must lie in [0, 1], got {self.blend}, {self.keep}")


@dataclass(frozen=True)
class DistillConfig:
    """Everything a run depends on; saved with every checkpoint. Paths are strings so the JSON is plain.
    training/README.md gives the reasons behind the defaults."""

    teacher: str = setting(
        help="teacher VAE file (.safetensors/.pth, or a diffusers folder): its decoder is distilled"
    )
    data: str = setting(
        help="folder of training videos, searched recursively (.mp4 .webm .mov .mkv via PyAV; animated .webp .gif)"
    )
    out: str = setting(help="run folder: checkpoints, final student, loss plot, report")
    preset: str = setting(
        "auto",
        "student layout: a name from flash_vaed.presets, a JSON spec file, 'tiny', 'official' or 'auto'",
    )
    encoder: str | None = setting(
        None,
        "VAE file whose encoder makes the latents (default: --teacher; needed when --teacher has no encoder)",
    )
    init: str = setting(
        "auto",
        "student init: 'prune' (from the teacher's weights), 'random', a student file to fine-tune, or 'auto' "
        "(prune if possible, else random)",
    )
    steps: int = setting(2000, "optimizer steps in all (the three phases share them by --phases)")
    batch_size: int = setting(1, "clips per process per step")
    lr: float = setting(2e-4, "peak learning rate (AdamW)")
    warmup_steps: int = setting(100, "linear LR warmup steps")
    min_lr_ratio: float = setting(0.1, "the cosine ends at lr * this")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    grad_clip: float = setting(1.0, "clip the gradient norm to this")
    schedule: PhaseSchedule = PhaseSchedule()
    clip_frames: int = setting(17, "frames per training clip: 4k+1 for Wan, 8k+1 for LTX-Video")
    crop_px: int = setting(
        128, "square crop edge in pixels: a multiple of 8 (Wan 2.1), 16 (Wan 2.2) or 32 (LTX-Video)"
    )
    resize_short: int | None = setting(
        None, "resize videos so their short side has this many pixels before cropping (default: no resize)"
    )
    flip: bool = setting(True, "mirror half of the clips horizontally")
    holdout: float = setting(
        0.1, "share of the video files held out for the final evaluation (at least one when there are two)"
    )
    eval_crops: int = setting(2, "evaluation crops per held-out video")
    eval_px: int | None = setting(None, "evaluation crop edge in pixels (default: --crop-px)")
    evaluate: bool = setting(
        True, "evaluate on the held-out videos at the end and write report.md / report.json"
    )
    seed: int = setting(0, "seed of the crops, the split and the init")
    device: str = setting("auto", "'auto' (cuda:LOCAL_RANK if there is a GPU, else cpu), or a torch device")
    amp: bool = setting(True, "bf16 autocast on CUDA (ignored on CPU)")
    checkpoint_every: int = setting(100, "write a resumable checkpoint every this many steps")
    log_every: int = setting(10, "log the losses every this many steps")
    resume: bool = setting(
        False, "continue from --out/last.state.safetensors (same settings; --steps may grow)"
    )
    cache: bool = setting(False, "cache (latent, target) of pool crops in --out/cache (needs --crop-pool)")
    crop_pool: int = setting(0, "draw crops from this many fixed ones (0: a fresh random crop every time)")
    keep_videos: int = setting(8, "decoded .webp/.gif videos kept in memory")
    calib_batches: int = setting(
        2, "batches used to initialise the student (pruning) and the feature adapters"
    )

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("checkpoint_every and log_every must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """The flat form: one key per flag, in flag order."""
        return {name: getattr(self.schedule if nested else self, f.name) for name, f, nested in flat_fields()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> DistillConfig:
        """A config from the flat form (`to_dict`'s, a parsed command line, or the config.json of any
        earlier run: a key it lacks takes its default)."""
        fields = {name: (f, nested) for name, f, nested in flat_fields()}
        unknown = sorted(set(flat) - set(fields))
        if unknown:
            raise ConfigError(f"unknown DistillConfig fields {unknown}")
        own, schedule = {}, {}
        for name, value in flat.items():
            f, nested = fields[name]
            (schedule if nested else own)[f.name] = value
        if "fractions" in schedule:
            schedule["fractions"] = tuple(schedule["fractions"])  # JSON has lists
        return cls(**own, schedule=PhaseSchedule(**schedule))

    @classmethod
    def from_json(cls, text: str) -> DistillConfig:
        return cls.from_dict(json.loads(text))


FLAT_NAMES = {"fractions": "phases"}  # the flag of a PhaseSchedule field, where it is not the field's name

# settings a resumed run may change; any other must match the checkpoint's config
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "steps",
        "checkpoint_every",
        "log_every",
        "evaluate",
        "eval_crops",
        "eval_px",
        "device",
        "keep_videos",
    }
)


def flat_fields() -> Iterator[tuple[str, dataclasses.Field, bool]]:
    """(flag name, field, whether it is a PhaseSchedule field) of every setting, in order: the schedule's
    fields stand where `schedule` does."""
    for f in dataclasses.fields(DistillConfig):
        if f.name == "schedule":
            for g in dataclasses.fields(PhaseSchedule):
                yield FLAT_NAMES.get(g.name, g.name), g, True
        else:
            yield f.name, f, False


def describe_mismatch(
    saved: DistillConfig, cfg: DistillConfig, names: Mapping[str, str] | None = None
) -> str:
    """The settings in which `cfg` differs from the `saved` run it would resume, beyond RESUMABLE_CHANGES,
    as "name: saved -> new, ..." ('' when it may resume). names: what to call a setting (the node's input
    names), else its flag name."""
    a, b = saved.to_dict(), cfg.to_dict()
    differ = [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]
    return ", ".join(f"{(names or {}).get(k, k)}: {a[k]!r} -> {b[k]!r}" for k in differ)
