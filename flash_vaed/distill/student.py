"""The student before training: its layout (`resolve_spec`), its weights (`init_student`: pruned from the
teacher, random, or a file) and the feature adapters that compare its stages with the teacher's
(`fit_adapters`); `Trainee` is the two as the one module the optimizer steps."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from ..arch.ltx_student import LTXStudentDecoder, LTXStudentSpec
from ..arch.protocol import decode_raw
from ..arch.wan import WanFamilyDecoder
from ..checkpoint.load import load_decoder
from ..decoder import FlashDecoder
from ..presets import PRESETS
from ..presets import resolve_spec as preset_spec
from ..prune import PruneConfig, build_student_from_teacher
from ..spec import DecoderSpec, Family
from . import losses
from .config import DistillError

log = logging.getLogger(__name__)

StudentSpec = DecoderSpec | LTXStudentSpec
MAX_SPEC_BYTES = 2**20  # a spec is a few hundred bytes


def to_raw(decoder: FlashDecoder, latents: torch.Tensor) -> torch.Tensor:
    """ComfyUI latents -> the raw latents the bare module takes (LTX's LATENT is normalized)."""
    return latents if decoder.latent_norm is None else decoder.latent_norm.to_raw(latents)


def stage_features(module: nn.Module, z_raw: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`decode_raw` -> (video, {(T, H, W): the stage output at that resolution, float32})."""
    with losses.StageRecorder(module) as rec:
        rec.start(z_raw.shape[0])
        video = decode_raw(module, z_raw)
    return video, {r: f.float() for r, f in rec.features.items()}


# ---- layout ---------------------------------------------------------------------------------------


def resolve_spec(preset: str, family: Family, teacher: nn.Module | None = None) -> StudentSpec:
    """The student layout for `preset` and the teacher's family: a JSON spec file; "tiny", "official" or
    "auto" (= official, or the family's recipe where no student was released: Wan 2.2, LTX-2, following
    `teacher`, the teacher's decoder module, when given) for the teacher's family; else flash_vaed.presets
    (a PRESETS name or a custom layout line such as "384:dw3d:3/384:dw3d:3/24:frame2d:3/12:frame2d:3"). A
    preset with no student for the family (another latent space included: an LTX-Video 0.9 layout for an
    LTX-2 teacher) is refused, naming the ones that have one."""
    try:
        return _spec(preset, family, teacher)
    except DistillError as err:
        fitting = [name for name in ("auto", *PRESETS) if _fits(name, family)]
        raise DistillError(f"{err}: pick one of {', '.join(fitting)}") from None


def _fits(preset: str, family: Family) -> bool:
    try:
        _spec(preset, family, None)
    except DistillError:
        return False
    return True


def _spec(preset: str, family: Family, teacher: nn.Module | None) -> StudentSpec:
    ltx = family.is_ltx
    if preset.endswith(".json") and Path(preset).is_file():
        return _spec_file(Path(preset), LTXStudentSpec if ltx else DecoderSpec)
    if preset == "tiny":
        return dataclasses.replace(LTXStudentSpec.tiny(), family=family) if ltx else DecoderSpec.tiny(family)
    if preset in ("official", "auto") and family in (Family.WAN21, Family.LTXV):
        return LTXStudentSpec.official() if ltx else DecoderSpec.flashvaed_wan21()
    try:
        spec = preset_spec(preset, family, teacher)
    except (KeyError, ValueError) as err:
        raise DistillError(f"preset {preset!r}: {err.args[0] if err.args else err}") from None
    if isinstance(spec, LTXStudentSpec) != ltx or spec.family is not family:
        raise DistillError(
            f"preset {preset!r} is a student of {spec.family.title} latents; the teacher is {family.title}"
        )
    return spec


def _spec_file(path: Path, kind: type[DecoderSpec] | type[LTXStudentSpec]) -> StudentSpec:
    """The spec in a JSON file the user named (the CLI's --preset). Errors name the file and what is wrong
    with it, never its contents."""
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise ValueError(f"it is {path.stat().st_size} bytes, a spec is under {MAX_SPEC_BYTES}")
        return kind.from_json(path.read_bytes())
    except (OSError, ValueError) as err:
        what = "an LTX student spec" if kind is LTXStudentSpec else "a decoder spec"
        why = err if isinstance(err, ValueError) else (err.strerror or type(err).__name__)
        raise DistillError(f"preset file {path} is not {what} as to_json writes it ({why})") from None


def build_module(spec: StudentSpec) -> nn.Module:
    return WanFamilyDecoder(spec) if isinstance(spec, DecoderSpec) else LTXStudentDecoder(spec)


# ---- weights --------------------------------------------------------------------------------------


def init_student(
    how: str, teacher: FlashDecoder, spec: StudentSpec, calib_latents: torch.Tensor, seed: int
) -> tuple[FlashDecoder, str]:
    """The student before training, and how it was made.

    "prune": flash_vaed.prune.build_student_from_teacher (channel selection + least-squares fold from the
    teacher, on the calibration latents). "random": the spec's layers with PyTorch's default init.
    "auto": prune where flash_vaed.prune can (Wan 2.1 family and LTX-Video), else random. A path: that
    student file.
    """
    if how not in ("auto", "prune", "random"):
        student = load_decoder(how, device=teacher.device)
        student.module.requires_grad_(True)
        student.role = "student"
        return student, f"file {how}"
    if how in ("auto", "prune"):
        try:
            config = PruneConfig(holdout=1 if calib_latents.shape[0] > 1 else 0, seed=seed)
            student, report = build_student_from_teacher(
                teacher, spec, to_raw(teacher, calib_latents), config
            )
        except (TypeError, ValueError, NotImplementedError) as err:
            if how == "prune":
                raise DistillError(f"init='prune' failed: {err}") from err
            name = getattr(spec, "name", "custom")
            log.warning(
                "cannot prune the teacher into %s (%s): the student starts from random weights", name, err
            )
        else:
            student.module.to(teacher.device).requires_grad_(True).train()
            student.latent_norm = teacher.latent_norm
            log.info("student pruned from the teacher: PSNR vs teacher before training %s dB", report.psnr_db)
            return student, "prune"
    torch.manual_seed(seed)
    module = build_module(spec).to(teacher.device)
    return FlashDecoder(teacher.family, "student", module, teacher.latent_norm, "flash-vaed"), "random"


def fit_adapters(
    student: FlashDecoder, teacher_feats: dict, calib_latents: torch.Tensor
) -> tuple[losses.FeatureAdapters, dict]:
    """The 1x1x1 adapters from the student's stage outputs to the teacher's (`teacher_feats`, on the same
    calibration latents), least-squares fitted, and the depth group of each paired resolution."""
    with torch.no_grad():
        _, student_feats = stage_features(student.module, to_raw(student, calib_latents))
    pairs = losses.pair_resolutions(student_feats, teacher_feats)
    if not pairs:
        log.warning("teacher and student share no stage resolution: feature terms are 0, pixels only")
    widths = {r: (student_feats[r].shape[1], teacher_feats[r].shape[1]) for r in pairs}
    adapters = losses.FeatureAdapters(widths)
    adapters.fit({r: student_feats[r] for r in pairs}, {r: teacher_feats[r] for r in pairs})
    groups = losses.depth_groups(pairs)
    log.info(
        "feature terms at %d resolutions: %s",
        len(pairs),
        {losses.resolution_key(r): g for r, g in groups.items()},
    )
    return adapters.to(student.device), groups


class Trainee(nn.Module):
    """The student and its feature adapters as one module: what DDP wraps and the optimizer steps.

    forward(z_raw, teacher_feats, groups) -> (video, {"feat_deep", "feat_middle", "feat_shallow"}).
    """

    def __init__(self, student: nn.Module, adapters: losses.FeatureAdapters):
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, z_raw, teacher_feats, groups):
        video, feats = stage_features(self.student, z_raw)
        return video, losses.feature_terms(feats, teacher_feats, groups, self.adapters)
