#!/usr/bin/env bash
# install_frontend.sh [DEST] -- the newest ComfyUI frontend (pinned in requirements-frontend.txt) in a folder
# of its own, for the frontend tests' second leg: ComfyUI serves it with --front-end-root DEST/<version>/static.
#
# DEST defaults to $FLASH_VAED_FRONTENDS, else <repo>/.cache/frontends. pip installs the hash-checked wheel
# with --target, so neither ComfyUI's requirements nor $PYTHON's environment change. Safe to re-run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST=${1:-${FLASH_VAED_FRONTENDS:-$REPO/.cache/frontends}}
PY=${PYTHON:-python3}
REQ="$HERE/requirements-frontend.txt"
export PIP_ROOT_USER_ACTION=ignore

version=$(sed -n 's/^comfyui-frontend-package==\([^ ]*\) .*/\1/p' "$REQ")
[ -n "$version" ] || { echo "install_frontend.sh: no pinned version in $REQ" >&2; exit 1; }
target="$DEST/$version"
if [ -f "$target/comfyui_frontend_package/static/index.html" ] \
   && [ -d "$target/comfyui_frontend_package-$version.dist-info" ]; then
  echo "[harness/frontend] comfyui-frontend-package $version already in $target"
  exit 0
fi
rm -rf "$target.partial"
"$PY" -m pip install -q --no-deps --require-hashes --target "$target.partial" -r "$REQ" \
  2> >(grep -v "is ignored: it is neither" >&2)
rm -rf "$target"
mv "$target.partial" "$target"
echo "[harness/frontend] installed comfyui-frontend-package $version into $target"
