#!/usr/bin/env bash
# The prepared GPU check, one command: run it first whenever a GPU is at hand (see bench/gpu/README.md).
# It carries .cache/comfyui and .gpu (bench/gpu/prepare.sh puts them there); results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
out=${OUT:-bench/results}
mkdir -p "$out"
clips=()
[ -d .gpu/clips ] && clips=(--clips .gpu/clips)
python3 bench/gpu/check.py --out "$out" "${clips[@]}" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
