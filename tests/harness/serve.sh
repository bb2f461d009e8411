#!/usr/bin/env bash
# serve.sh start --run-dir DIR [--comfy ROOT] [--port 8188] [--models DIR] [--node PACK]... [--timeout S]
#                [--frontend VERSION] [-- ARGS]
#   Starts ComfyUI detached, waits for /object_info, prints its PID (also in DIR/comfyui.pid).
# serve.sh stop DIR|PID
#   SIGTERM, then SIGKILL after 20 s.
# The logic lives in server.py, which the tests use too; this only picks the interpreter ($PYTHON).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/server.py" "$@"
