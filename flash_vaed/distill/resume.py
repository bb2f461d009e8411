"""Checkpoints of a distillation run, and resuming from them.

Files in the run folder (cfg.out):
    last.state.safetensors  everything a resume needs, one file written atomically: student.*, adapter.*
                            and optim.* tensors, rng.* states; metadata: step, world size, the config JSON,
                            the loss history JSON, the optimizer's hyper-parameters, the student spec
    last.safetensors        the student at that checkpoint (load_decoder opens it)

`saved_run(cfg)` says, before anything is loaded, whether a run starts, resumes or is refused; `save`
writes a checkpoint and `restore` puts one back into the student, its adapters, the optimizer and the RNGs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..arch.ltx_student import LTXStudentSpec
from ..checkpoint.io import atomic_save
from ..checkpoint.load import save_student
from ..decoder import FlashDecoder
from ..finite import all_finite, first_non_finite
from ..jsontext import parse as parse_json
from ..spec import DecoderSpec
from .config import DistillConfig, DistillError, describe_mismatch
from .student import StudentSpec, Trainee

log = logging.getLogger(__name__)

STATE_FORMAT = "flash-vaed-distill-state/1"
STATE_FILE = "last.state.safetensors"
# what a run writes into its folder, each through a temp file: `.<name>.tmp` or `.<name>.<random>.tmp`
RUN_FILES = (STATE_FILE, "last.safetensors", "student.safetensors", "config.json", "report.json", "report.md")


class RunInTheWay(DistillError):
    """The run folder holds a run, and resume is off."""

    def __init__(self, path: Path, step: int, steps: int):
        self.path, self.step, self.steps = path, step, steps
        super().__init__(
            f"{path.parent} already holds a run ({path.name}, step {step} of {steps}); pass --resume or pick "
            "a new --out"
        )


class SettingsChanged(DistillError):
    """A resume with settings other than the checkpoint's (beyond config.RESUMABLE_CHANGES)."""

    def __init__(self, path: Path, saved: DistillConfig, cfg: DistillConfig):
        self.path, self.saved, self.cfg = path, saved, cfg
        super().__init__(
            f"{path} was made with another config ({describe_mismatch(saved, cfg)}); a resume must use the "
            "same settings (only steps and logging/eval options may change). Use the original flags or a new "
            "--out."
        )


@dataclass(frozen=True)
class SavedRun:
    """The checkpoint a run resumes from: its file and metadata (the tensors are read by `restore`)."""

    path: Path
    meta: dict[str, str]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> DistillConfig:
        return DistillConfig.from_json(self.meta["config"])

    @property
    def spec(self) -> StudentSpec:
        kind = LTXStudentSpec if self.meta.get("student_arch") == "ltx" else DecoderSpec
        return kind.from_json(self.meta["student_spec"])


def saved_run(cfg: DistillConfig) -> SavedRun | None:
    """The checkpoint in cfg.out that this run continues, or None for a new run. Raises RunInTheWay when
    cfg.out holds a run and cfg.resume is off, SettingsChanged when the resume changes a setting it may not
    (reads the file's header only)."""
    path = Path(cfg.out) / STATE_FILE
    if not path.exists():
        return None
    saved = SavedRun(path, _read(path, tensors=False)[1])
    try:
        saved.step, saved.config, saved.spec  # noqa: B018 - each parses metadata: damaged ones fail here
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        if isinstance(err, KeyError):
            what = f"the field {err.args[0]!r} is missing"
        else:
            what = (
                f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
            )
        raise DistillError(
            f"{path}: its metadata (step, config, student spec) is damaged ({what}). Move the run folder away "
            "(or restore a backup of it) and start the run again."
        ) from None
    if not cfg.resume:
        raise RunInTheWay(path, saved.step, saved.config.steps)
    if describe_mismatch(saved.config, cfg):
        raise SettingsChanged(path, saved.config, cfg)
    return saved


def save(
    out: Path,
    step: int,
    cfg: DistillConfig,
    trainee: Trainee,
    student: FlashDecoder,
    opt: torch.optim.Optimizer,
    history: list[dict],
    world: int,
) -> None:
    """Write last.state.safetensors (atomic, all resume state in one file), then last.safetensors."""
    tensors = {f"student.{k}": v for k, v in trainee.student.state_dict().items()}
    tensors |= {f"adapter.{k}": v for k, v in trainee.adapters.state_dict().items()}
    optim_tensors, groups = flatten_optimizer(opt)
    tensors |= optim_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    spec = trainee.student.spec
    meta = {
        "format": STATE_FORMAT,
        "step": str(step),
        "world_size": str(world),
        "config": cfg.to_json(),
        "history": json.dumps(history),
        "optim_groups": groups,
        "student_arch": "wan" if isinstance(spec, DecoderSpec) else "ltx",
        "student_spec": spec.to_json(),
    }
    atomic_save(tensors, out / STATE_FILE, meta)
    save_student(student, out / "last.safetensors")


def restore(
    saved: SavedRun, trainee: Trainee, opt: torch.optim.Optimizer, world: int, steps: int
) -> tuple[int, list[dict]]:
    """Load the student, its adapters, the optimizer and the RNG states of `saved`; returns (step, history)
    to continue from. `steps`: the resumed run's length (the schedules stretch to it)."""
    tensors, meta = read_checkpoint(saved.path)
    try:
        history = _history(meta)
        trainee.student.load_state_dict(_part(tensors, "student."))
        trainee.adapters.load_state_dict(_part(tensors, "adapter."))
        opt.load_state_dict(unflatten_optimizer(tensors, meta["optim_groups"]))
        torch.set_rng_state(tensors["rng.torch"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        # a state file edited by hand or damaged on disk: its tensors no longer fit the run's modules
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise DistillError(
            f"{saved.path}: the checkpoint does not fit this run ({first}); it was edited or is damaged. Move "
            "the run folder away (or restore a backup of it) and start the run again."
        ) from err
    # a NaN optimizer state would make a NaN student on the first step, reported as a success
    param_names = {id(p): n for n, p in trainee.named_parameters()}
    state = [
        (f"optimizer {k} of {param_names.get(id(p), '?')}", t)
        for p, s in opt.state.items()
        for k, t in s.items()
    ]
    named = [*trainee.named_parameters(), *((k, v) for k, v in state if isinstance(v, torch.Tensor))]
    bad = first_non_finite(named) if not all_finite(t for _, t in named) else None
    if bad:
        raise DistillError(
            f"{saved.path}: {bad[0]} holds {bad[1]} NaN/Inf values, so every step from it would make a NaN "
            "student; the checkpoint is damaged. Move the run folder away (or restore a backup of it) and "
            "start the run again."
        )
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if int(meta.get("world_size", 1)) != world:
        log.warning("resumed with %s ranks, saved with %s: batches differ", world, meta["world_size"])
    if saved.config.steps != steps:
        log.warning(
            "steps %d -> %d: the LR and phase schedules stretch to the new length", saved.config.steps, steps
        )
    log.info("resumed from %s at step %d", saved.path, saved.step)
    return saved.step, history


def _history(meta: dict[str, str]) -> list[dict]:
    """The loss history of a checkpoint's metadata: a list of records with a step each."""
    history = parse_json(meta["history"], "the loss history", max_chars=None)
    if not isinstance(history, list) or not all(isinstance(r, dict) and "step" in r for r in history):
        raise ValueError("the loss history is not a list of step records")
    return history


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a last.state.safetensors; raises DistillError for anything else."""
    return _read(path, tensors=True)


def _read(path: Path, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            values = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as err:
        raise DistillError(
            f"{path}: unreadable training checkpoint ({err}); move the run folder away or start the run in "
            "another one"
        ) from err
    if meta.get("format") != STATE_FORMAT:
        raise DistillError(f"{path}: not a Flash-VAED training state (format {meta.get('format')!r})")
    return values, meta


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """An optimizer's state as safetensors-ready tensors (optim.<param>.<name>) and its param groups as
    JSON; `unflatten_optimizer` gives back the state dict."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t
    return tensors, json.dumps(sd["param_groups"])


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups_json: str) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = json.loads(groups_json)
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def remove_stale_temp_files(out: Path) -> list[str]:
    """Delete the temp files of RUN_FILES that a run killed mid-write left in `out`, and return their names.
    Each is a half-written copy no run reads (the file it was to replace is whole); only a run in the same
    folder writes them, and two runs in one folder are refused anyway."""
    if not out.is_dir():
        return []
    stale = [
        p
        for p in out.iterdir()
        if p.is_file()
        and p.name.endswith(".tmp")
        and any(p.name == f".{n}.tmp" or p.name.startswith(f".{n}.") for n in RUN_FILES)
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temp files an interrupted run left in %s", len(stale), out)
    return sorted(p.name for p in stale)


def write_text(path: Path, text: str) -> None:
    """`text` into `path` through a temp file and os.replace: a crash leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
