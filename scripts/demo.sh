#!/usr/bin/env bash
# Set up (if needed) and run the main job: a 5-turn edit of the bundled example image with the
# embedded model. Results (one PNG per turn, a contact sheet, the session file) go to outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash scripts/setup.sh | tail -n 1)"
MODEL="vincie-shapes"
if [ ! -f vincie_sdk/weights/vincie-shapes/config.json ]; then
  echo "note: the embedded model is not trained yet; running on a random tiny model instead" >&2
  MODEL="random:tiny"
fi
exec "$VENV/bin/vincie" edit vincie_sdk/assets/example.png --model "$MODEL" -o outputs/demo \
  -p "add a small red circle at the top left" \
  -p "make the yellow square blue" \
  -p "move the green triangle to the bottom right" \
  -p "make the red circle large" \
  -p "remove the blue square" "$@"
