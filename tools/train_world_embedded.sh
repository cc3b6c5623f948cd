#!/usr/bin/env bash
# The embedded default models (models/world/), from nothing: the small SD of tools/train_world_sd.sh, then a
# grounding head trained on the world corpus's exact boxes (all twelve categories; features of the corpus images
# encoded by the trained VAE, at t = 1), then `instagen models pack` into OUT/bundle. Every step is one command with
# its seed; rerun the script to continue after an interruption.
#
#   tools/train_world_embedded.sh OUT [VAE_STEPS=2000] [UNET_STEPS=6000] [HEAD_IMAGES=4000] [HEAD_EPOCHS=24]
#
# Then: rm -rf models/world && mv OUT/bundle models/world && cargo test --test embedded
set -euo pipefail
OUT=${1:?usage: tools/train_world_embedded.sh OUT [VAE_STEPS] [UNET_STEPS] [HEAD_IMAGES] [HEAD_EPOCHS]}
VAE_STEPS=${2:-2000}
UNET_STEPS=${3:-6000}
HEAD_IMAGES=${4:-4000}
HEAD_EPOCHS=${5:-24}
BIN=${INSTAGEN_BIN:-target/release/instagen}
cd "$(dirname "$0")/.."
export INSTAGEN_BIN=$BIN
bash tools/train_world_sd.sh "$OUT" "$VAE_STEPS" "$UNET_STEPS"
WORLD=${WORLD:-$OUT/world}
SD=$OUT/unet/model
[ -f "$OUT/head_labels.json" ] || python3 tools/world_head_labels.py "$WORLD/corpus/instances.json" "$OUT/head_labels.json" --images "$HEAD_IMAGES"
[ -f "$OUT/head0/head.safetensors" ] || "$BIN" ground init --config configs/world_head.json --sd "$SD" --out "$OUT/head0" --seed 0
resume() { [ -d "$1/checkpoints" ] && echo --resume || true; }
[ -f "$OUT/head/head/head.safetensors" ] || "$BIN" ground train --sd "$SD" --labels "$OUT/head_labels.json" --head "$OUT/head0" \
    --out "$OUT/head" --epochs "$HEAD_EPOCHS" --batch 16 --lr 2e-4 --lr-drop-epoch $((HEAD_EPOCHS - 4)) --seed 0 \
    --features-cache "$OUT/features" $(resume "$OUT/head")
cat > "$OUT/provenance.json" <<JSON
{"description": "the miniature world's small SD (CLIP text 4x64 frozen at its seed-0 init, VAE f=4, UNet 3.2M) and grounding head (hidden 64, 30 queries), trained from scratch on two CPU cores",
 "categories": $(python3 -c "import json,sys; print(json.dumps([c['name'] for c in json.load(open(sys.argv[1]))['categories']]))" "$WORLD/corpus/instances.json"),
 "models": {
  "sd": {"seed": 0, "commands": [
    "instagen world make --out OUT/world --seed 0",
    "instagen sd init --config configs/world_sd.json --out OUT/sd0 --seed 0",
    "instagen vae train --sd OUT/sd0 --data OUT/world/corpus --out OUT/vae --steps $VAE_STEPS --batch 8 --lr 2e-4 --kl-weight 1e-6 --rec-loss l1 --seed 0 --save-every 200 --backend cpu",
    "instagen finetune --data-mode captions --weights OUT/vae/model --data OUT/world/corpus/instances.json --images OUT/world/corpus --resolution 64 --out OUT/unet --steps $UNET_STEPS --batch 8 --lr 2e-4 --ema-decay 0.999 --caption-dropout 0.1 --seed 0 --save-every 500 --backend cpu --dtype f32",
    "(all of it: tools/train_world_embedded.sh OUT $VAE_STEPS $UNET_STEPS $HEAD_IMAGES $HEAD_EPOCHS; tensors stored as f16 by instagen models pack)"]},
  "head": {"seed": 0, "commands": [
    "tools/world_head_labels.py OUT/world/corpus/instances.json OUT/head_labels.json --images $HEAD_IMAGES",
    "instagen ground init --config configs/world_head.json --sd OUT/unet/model --out OUT/head0 --seed 0",
    "instagen ground train --sd OUT/unet/model --labels OUT/head_labels.json --head OUT/head0 --out OUT/head --epochs $HEAD_EPOCHS --batch 16 --lr 2e-4 --lr-drop-epoch $((HEAD_EPOCHS - 4)) --seed 0 --features-cache OUT/features"]}}}
JSON
rm -rf "$OUT/bundle"
"$BIN" models pack --sd "$SD" --head "$OUT/head/head" --provenance "$OUT/provenance.json" --out "$OUT/bundle"
