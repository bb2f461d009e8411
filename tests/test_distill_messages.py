"""flash_vaed.distill_messages: the websocket messages web/loss_plot.js draws (format in web/README.md)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flash_vaed.distill_messages import EVENT, FORMAT_VERSION, done_message, loss_message, record_message


def test_loss_message_fields_and_types():
    msg = loss_message(
        12, step=40, total=1000, phase=2, losses={"l1": 0.25, "lpips": torch.tensor(0.5)}, lr=2e-4
    )
    assert msg == {
        "v": FORMAT_VERSION,
        "node": "12",
        "step": 40,
        "total": 1000,
        "phase": 2,
        "losses": {"l1": 0.25, "lpips": 0.5},
        "lr": 2e-4,
    }
    assert type(msg["losses"]["lpips"]) is float
    assert EVENT == "flash_vaed.distill"


def test_non_finite_losses_become_null_so_the_browser_can_parse_them():
    msg = loss_message("7:12", 1, 10, 1, {"l1": math.nan, "kl": math.inf, "ok": 1.0}, 0.0)
    assert msg["node"] == "7:12"
    text = json.dumps(msg)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["losses"] == {"l1": None, "kl": None, "ok": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"step": -1}, "step"),
        ({"step": 11}, "step"),
        ({"total": 0, "step": 0}, "total"),
        ({"step": 1.5}, "step"),
        ({"phase": 4}, "phase"),
        ({"phase": True}, "phase"),
        ({"losses": {}}, "losses"),
        ({"losses": {"": 1.0}}, "loss names"),
        ({"lr": -1e-4}, "lr"),
        ({"lr": math.nan}, "lr"),
    ],
)
def test_loss_message_rejects_bad_fields(kwargs, field):
    args = {"node_id": "3", "step": 1, "total": 10, "phase": 1, "losses": {"l1": 1.0}, "lr": 1e-4} | kwargs
    with pytest.raises(ValueError, match=field):
        loss_message(**args)


def test_done_message():
    assert done_message("5", "student.safetensors") == {
        "v": FORMAT_VERSION,
        "node": "5",
        "done": True,
        "out": "student.safetensors",
    }
    with pytest.raises(ValueError, match="out"):
        done_message("5", "")


def test_record_message_takes_a_distill_loop_record():
    record = {"step": 3, "phase": 2, "lr": 1e-4, "loss": 0.5, "deep": 0.25, "l1": math.inf, "time_s": 0.2}
    assert record_message("9", record, total=10) == loss_message(
        "9", 3, 10, 2, {"loss": 0.5, "deep": 0.25, "l1": math.inf}, 1e-4
    )
