#!/usr/bin/env bash
# The small SD of the miniature world (issue 15), from nothing: the world corpus, a fresh SD folder, the VAE,
# the UNet, and samples. Every step is one instagen command with its seed; every training run is resumable
# (re-run the script: finished steps are skipped, a killed run continues from its newest checkpoint).
#
#   tools/train_world_sd.sh OUT [VAE_STEPS=2000] [UNET_STEPS=6000]
#
# Defaults are the long run (docs/DESIGN.md gives the measured seconds per step); the short smoke runs of the
# docs used VAE_STEPS=60 UNET_STEPS=60. INSTAGEN_BIN (default target/release/instagen); WORLD (default
# OUT/world, made with `instagen world make --seed 0` when missing).
set -euo pipefail
OUT=${1:?usage: tools/train_world_sd.sh OUT [VAE_STEPS] [UNET_STEPS]}
VAE_STEPS=${2:-2000}
UNET_STEPS=${3:-6000}
BIN=${INSTAGEN_BIN:-target/release/instagen}
WORLD=${WORLD:-$OUT/world}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
[ -f "$WORLD/corpus/instances.json" ] || "$BIN" world make --out "$WORLD" --seed 0
[ -f "$OUT/sd0/model_index.json" ] || "$BIN" sd init --config configs/world_sd.json --out "$OUT/sd0" --seed 0
resume() { [ -d "$1/checkpoints" ] && echo --resume || true; }
[ -f "$OUT/vae/model/vae/config.json" ] || "$BIN" vae train --sd "$OUT/sd0" --data "$WORLD/corpus" --out "$OUT/vae" \
    --steps "$VAE_STEPS" --batch 8 --lr 2e-4 --kl-weight 1e-6 --rec-loss l1 --seed 0 --save-every 200 \
    --backend cpu $(resume "$OUT/vae")
[ -f "$OUT/unet/model/unet/config.json" ] || "$BIN" finetune --data-mode captions --weights "$OUT/vae/model" \
    --data "$WORLD/corpus/instances.json" --images "$WORLD/corpus" --resolution 64 --out "$OUT/unet" \
    --steps "$UNET_STEPS" --batch 8 --lr 2e-4 --ema-decay 0.999 --caption-dropout 0.1 --seed 0 --save-every 500 --backend cpu --dtype f32 \
    $(resume "$OUT/unet")
for name in circle square triangle star cross heart arrow hexagon ring moon diamond bolt; do
    "$BIN" sample --weights "$OUT/unet/model" --prompt "a photograph of a $name" --steps 50 --guidance 5 --batch 4 \
        --seed 42 --out "$OUT/samples/$name" --backend cpu --dtype f32 >/dev/null
done
echo "samples: $OUT/samples/<name>/42_{0..3}.png; runs: $OUT/vae, $OUT/unet (metrics.jsonl, loss.png)"
