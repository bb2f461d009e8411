"""Combo inputs checked against their options, for every node's validate_inputs.

ComfyUI 0.3.75 checks the value of a V1 combo against its list, but not of a V3 `io.Combo.Input`: a prompt
sent to the HTTP API can carry any string there (a path to a file on the server, a dtype no code knows).
`check_choices` is the check ComfyUI leaves out, read from the node's own schema so the two never differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from comfy_api.latest import io

_SHOWN = 12  # options named in a message: a models folder can list hundreds
_VALUE_CHARS = 120  # of a refused value quoted back


def combo_options(node: type[io.ComfyNode]) -> dict[str, list]:
    """Each combo input of `node` and its options now (lists of files are read again)."""
    return {i.id: list(i.options or []) for i in node.define_schema().inputs if isinstance(i, io.Combo.Input)}


def check_choices(
    node: type[io.ComfyNode],
    values: Mapping[str, object],
    also: Mapping[str, Callable[[str], bool]] | None = None,
    hints: Mapping[str, str] | None = None,
) -> bool | str:
    """True when each value in `values` (input name -> value) is one of its combo's options, or a string
    that `also[name]` accepts (Prune & Distill's layout lines); else a message naming each input that is
    not, with `hints[name]` (what to do) or the choices. None (no value, or a link, whose value ComfyUI does
    not know while it validates) is refused: the choice must be made on the node."""
    options = combo_options(node)
    problems = []
    for name, value in values.items():
        allowed = options[name]
        accepts = (also or {}).get(name)
        if value in allowed or (isinstance(value, str) and accepts is not None and accepts(value)):
            continue
        if value is None:
            problems.append(f"{name}: no value chosen; pick one on the node (a link cannot feed this list)")
            continue
        hint = (hints or {}).get(name)
        if hint is None:
            more = f", ... ({len(allowed)} in all)" if len(allowed) > _SHOWN else ""
            hint = f"pick one of {', '.join(map(str, allowed[:_SHOWN]))}{more}"
        problems.append(f"{name} {str(value)[:_VALUE_CHARS]!r} is not one of its choices: {hint}")
    return True if not problems else "; ".join(problems)
