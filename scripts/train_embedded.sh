#!/usr/bin/env bash
# Re-train the embedded model `vincie-shapes` from scratch, from synthetic video only, and install it
# into vincie_sdk/weights/vincie-shapes. Every stage resumes where it stopped: re-run the script after
# an interruption. About 3 hours on a 2-core CPU (minutes on a GPU).
#
#   scripts/train_embedded.sh [--set KEY=VALUE ...]     (extra args go to every pretraining stage)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash scripts/setup.sh | tail -n 1)"
VINCIE="$VENV/bin/vincie"

# 1. Synthetic videos, then sessions built from them by the data pipeline (exact annotations and masks),
#    sampling only frames at rest (--still-frames, docs/data.md): two sets of 4,000 videos (seeds 0 and 1),
#    about 10 minutes each on one core.
for seed in 0 1; do
  [ -f "data/shapes-videos-$seed/.done" ] || { "$VINCIE" data synth --out "data/shapes-videos-$seed" --videos 4000 --seed "$seed" && touch "data/shapes-videos-$seed/.done"; }
  "$VINCIE" data build --videos "data/shapes-videos-$seed" --out "data/shapes-still-$seed" --videos-per-shard 50 --still-frames
done
# ... and, for stage 3, 2,000 longer videos of the six ShapesBench kinds only (seeds 2 and 3), sampled at
#    every pause so that each turn is one change and sessions hold about five turns (about 4 minutes each).
for seed in 2 3; do
  [ -f "data/shapes-long-videos-$seed/.done" ] || { "$VINCIE" data synth --out "data/shapes-long-videos-$seed" --videos 2000 --seed "$seed" --min-seconds 8 --max-seconds 14 --types add,remove,move,recolor,resize,background && touch "data/shapes-long-videos-$seed/.done"; }
  "$VINCIE" data build --videos "data/shapes-long-videos-$seed" --out "data/shapes-long-$seed" --videos-per-shard 50 --sampling rests
done
# 2. Pretraining with NIP + CSP + NSP (block-causal) in three stages: local edits in one-turn sessions,
#    then the six kinds in the short sessions of time-sampled video, then (from stage 2's model) long
#    sessions of one change per turn; then install the EMA weights.
"$VINCIE" train train/configs/shapes_pretrain.yaml "$@"
"$VINCIE" train train/configs/shapes_pretrain_stage2.yaml "$@"
"$VINCIE" train train/configs/shapes_pretrain_stage3.yaml "$@"
# The DiT is stored in float16 (15 MB instead of 30; loading casts it back to float32 on a CPU).
"$VENV/bin/python" -c "from vincie_train.embedded import install; install('runs/shapes-pretrain-3/model', 'vincie_sdk/weights/vincie-shapes')"
echo "installed vincie_sdk/weights/vincie-shapes"
