#!/usr/bin/env bash
# install_browser.sh -- what browser_run.py needs: Debian's chromium (apt; needs root) and the playwright
# Python package for $PYTHON (default python3). Playwright's own browser download is never used:
# browser_run.py drives /usr/bin/chromium. Safe to re-run.
set -euo pipefail
PY=${PYTHON:-python3}
PLAYWRIGHT=1.65.2
export PIP_ROOT_USER_ACTION=ignore

if command -v chromium >/dev/null; then
  echo "[harness/browser] $(chromium --version 2>/dev/null) already installed"
else
  [ "$(id -u)" = 0 ] || { echo "install_browser.sh: installing chromium with apt needs root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null
  echo "[harness/browser] installed $(chromium --version 2>/dev/null)"
fi

have=$("$PY" -c "from importlib.metadata import version; print(version('playwright'))" 2>/dev/null || true)
if [ "$have" = "$PLAYWRIGHT" ]; then
  echo "[harness/browser] playwright $PLAYWRIGHT already installed for $PY"
else
  "$PY" -m pip install -q "playwright==$PLAYWRIGHT"
  echo "[harness/browser] installed playwright $PLAYWRIGHT for $PY"
fi
