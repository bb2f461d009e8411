"""JSON text from files and checkpoint metadata: parsed within bounds, with errors that never quote it.

A student spec, an LTX config or a run's history comes from a file someone else may have made: 100 000
nested brackets would end in a RecursionError, a JSON file named by mistake (a preset path, say) would be
echoed into an error that ComfyUI sends over HTTP. `parse` turns both into a ValueError that says what
is wrong, never what the text holds.
"""

from __future__ import annotations

import json
from typing import Any

MAX_CHARS = 16 * 2**20  # far above any spec or config; a run's history (~150 bytes a step) passes None


def parse(text: str | bytes, what: str, max_chars: int | None = MAX_CHARS) -> Any:
    """json.loads(text), or ValueError naming `what` and the problem (not the text)."""
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(
            f"{what} is {len(text)} characters long, more than the {max_chars} this library reads"
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be read") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except (TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} is not JSON text ({type(err).__name__})") from None


def field_problem(err: BaseException) -> str:
    """What a KeyError / TypeError / ValueError raised while building a dataclass from parsed JSON says,
    without the values it was given: our own field names only."""
    if isinstance(err, KeyError):
        return f"the field {err.args[0]!r} is missing"
    return "a field is unknown, missing, or holds a value of the wrong type or range"
