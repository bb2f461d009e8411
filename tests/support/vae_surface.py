"""Record the public surface of ComfyUI's `comfy.sd.VAE` from a `comfy/sd.py` file, for the drop-in VAE contract.

    python tests/support/vae_surface.py PATH/TO/comfy/sd.py --version 0.38.1 --source REPO@COMMIT \
        > tests/data/comfy_vae/0.38.1.json

Reads the file with `ast` (nothing is imported or run) and writes, as JSON: every method of `class VAE` with its
parameters (name, kind, default as source text), and the attributes `__init__` assigns on `self`, split into
`always` (assigned by a statement at the top level of `__init__`, so every VAE has them) and `conditional`
(assigned only inside a branch: one model family's VAE has them). Run by hand when a ComfyUI release changes
`VAE`; the tests read the JSON only (tests/test_drop_in_vae_contract.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def _params(fn: ast.FunctionDef) -> list[dict]:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = [
        {"name": p.arg, "kind": "positional", "default": None if d is None else ast.unparse(d)}
        for p, d in zip(positional, defaults, strict=True)
    ]
    if a.vararg:
        out.append({"name": a.vararg.arg, "kind": "var_positional", "default": None})
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append({"name": p.arg, "kind": "keyword_only", "default": None if d is None else ast.unparse(d)})
    if a.kwarg:
        out.append({"name": a.kwarg.arg, "kind": "var_keyword", "default": None})
    return out[1:]  # without self


def _self_targets(node: ast.AST) -> set[str]:
    names = set()
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    for t in targets:
        for sub in ast.walk(t):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                names.add(sub.attr)
    return names


def vae_surface(source: str) -> dict:
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VAE")
    methods = {n.name: _params(n) for n in cls.body if isinstance(n, ast.FunctionDef)}
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    always: set[str] = set()
    for stmt in init.body:
        always |= _self_targets(stmt)
    everywhere: set[str] = set()
    for node in ast.walk(init):
        if not isinstance(node, (ast.FunctionDef, ast.Lambda)) or node is init:
            everywhere |= _self_targets(node)
    return {
        "methods": methods,
        "attributes": {"always": sorted(always), "conditional": sorted(everywhere - always)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sd_py", type=Path, help="a ComfyUI comfy/sd.py")
    parser.add_argument("--version", required=True, help="the ComfyUI version of that file")
    parser.add_argument("--source", required=True, help="where the file came from: repository@commit")
    args = parser.parse_args(argv)
    surface = {"comfyui_version": args.version, "source": args.source, **vae_surface(args.sd_py.read_text())}
    sys.stdout.write(json.dumps(surface, indent=1) + "\n")


if __name__ == "__main__":
    main()
