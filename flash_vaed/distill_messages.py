"""Messages the Prune & Distill node sends to the browser, for web/loss_plot.js to draw the loss curve.

The node sends them with ComfyUI's websocket (``PromptServer.instance.send_sync(EVENT, message, sid)``);
this module only builds the JSON-ready dicts, so it needs no ComfyUI and can be tested on its own. The
format is documented in web/README.md; the two sides must agree, so change both together.

    {"v": 1, "node": "12", "step": 40, "total": 1000, "phase": 2,
     "losses": {"l1": 0.031, "lpips": null}, "lr": 0.0002}          # one per logged step
    {"v": 1, "node": "12", "done": true, "out": "wan21_student.safetensors"}   # once, at the end

``node`` is the node's execution id (``cls.hidden.unique_id``, "12" or "7:12" inside a subgraph). A loss
that is NaN or infinite is sent as ``null``: ComfyUI encodes with ``json.dumps``, which writes NaN, and the
browser's ``JSON.parse`` rejects that, dropping the whole message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

EVENT = "flash_vaed.distill"
FORMAT_VERSION = 1
PHASES = (1, 2, 3)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def loss_message(
    node_id: str | int,
    step: int,
    total: int,
    phase: int,
    losses: Mapping[str, float],
    lr: float,
) -> dict:
    """One logged training step.

    step:   steps done so far, 0 <= step <= total (total >= 1).
    phase:  1, 2 or 3, the distillation phase the step belongs to.
    losses: loss name -> value (floats or 0-d tensors); non-finite values become None. At least one.
    lr:     the learning rate used for the step, finite and >= 0.
    Raises ValueError on anything else, naming the field.
    """
    step, total, phase = _int("step", step), _int("total", total), _int("phase", phase)
    if total < 1 or not 0 <= step <= total:
        raise ValueError(f"need 0 <= step <= total and total >= 1, got step={step}, total={total}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase}")
    if not losses:
        raise ValueError("losses is empty: send at least one named loss")
    named = {}
    for name, value in losses.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"loss names must be non-empty strings, got {name!r}")
        named[name] = _finite_or_none(value)
    lr = float(lr)
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be finite and >= 0, got {lr}")
    return {
        "v": FORMAT_VERSION,
        "node": _node(node_id),
        "step": step,
        "total": total,
        "phase": phase,
        "losses": named,
        "lr": lr,
    }


# Fields of a flash_vaed.distill.loop history record that are not losses.
RECORD_FIELDS = ("step", "phase", "lr", "time_s")


def record_message(node_id: str | int, record: Mapping[str, float], total: int) -> dict:
    """`loss_message` for one history record of `flash_vaed.distill.loop.run` (what its ``on_record`` gets:
    ``{"step", "phase", "lr", "loss", <terms>, "time_s"}``, step counted from 1); every other key is a loss."""
    losses = {k: v for k, v in record.items() if k not in RECORD_FIELDS}
    return loss_message(node_id, record["step"], total, record["phase"], losses, record["lr"])


def done_message(node_id: str | int, out: str) -> dict:
    """The end of a successful run; ``out`` is the saved student's file name (no folders)."""
    if not isinstance(out, str) or not out:
        raise ValueError(f"out must be the saved file's name, got {out!r}")
    return {"v": FORMAT_VERSION, "node": _node(node_id), "done": True, "out": out}


def _int(field: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return int(value)


def _node(node_id: str | int) -> str:
    text = str(node_id)
    if not text or isinstance(node_id, bool):
        raise ValueError(f"node_id must be the node's id, got {node_id!r}")
    return text
