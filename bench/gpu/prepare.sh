#!/usr/bin/env bash
# Puts what bench/gpu/run.sh needs into ignored folders that the device tool carries: ComfyUI 0.3.75
# (`make install` puts it in .cache/comfyui) and, in .gpu/clips, the ten smallest template clips that hold a
# 17-frame, 256 px training crop (about 5 MB: the working tree that travels is limited to 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -d .cache/comfyui/comfy ] || { echo "prepare.sh: run 'make install' first (ComfyUI goes to .cache/comfyui)" >&2; exit 1; }
rm -rf .gpu/clips && mkdir -p .gpu/clips
"$PY" - <<'PYEOF'
import shutil
from pathlib import Path

from PIL import Image

from training.teacher import template_clips_dir

fits = []
for path in Path(template_clips_dir()).iterdir():
    with Image.open(path) as im:
        if getattr(im, "n_frames", 1) >= 17 and min(im.size) >= 256:
            fits.append((path.stat().st_size, path))
for _, path in sorted(fits)[:10]:
    shutil.copy(path, Path(".gpu/clips") / path.name)
PYEOF
grep -qx '/.gpu/' .gitignore || echo '/.gpu/' >> .gitignore
du -sh .gpu/clips .cache/comfyui
