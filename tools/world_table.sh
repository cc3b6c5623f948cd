#!/usr/bin/env bash
# The paper's Table 4 (InstaGen, CVPR 2024) in miniature: base / novel / all AP50 on the world's val set for
#   (a) the detector on real base annotations only (= the labeller, evaluated);
#   (b) + synthetic data labelled by the grounding head trained on base categories (no self-training, no SD
#       fine-tuning);
#   (c) + self-training on novel categories;
#   (d) + SD fine-tuning on the detection set (the whole pipeline).
# Each row is `instagen run tools/world.toml` with --set overrides; the rows share what they have in common
# through `use` (b trains the labeller, the head's labels and the base-trained head; c reuses b's; d reuses b's
# initial head and labeller), so nothing is trained twice. Writes OUT/table.md.
#
#   tools/world_table.sh OUT
#
# Resumable: rerun the same command and every finished stage is skipped, an interrupted one continues.
# Environment:
#   INSTAGEN_BIN  the binary (default target/release/instagen)
#   WORLD         the world folder (default OUT/world, made by `instagen world make --seed 0` when missing)
#   SD            the world's SD, a diffusers folder (default models/world/sd)
#   CONFIG        the pipeline config (default tools/world.toml)
#   SEED          [run] seed (default: the config's)
#   BACKEND       cpu (default), cpu-reference, emu or cuda
#   WORLD_SETS    more --set overrides for every row, space-separated TABLE.KEY=VALUE words (no spaces in values),
#                 e.g. the tiny sizes of a plumbing test
set -euo pipefail
OUT=${1:?usage: tools/world_table.sh OUT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
BIN=$(realpath "${INSTAGEN_BIN:-target/release/instagen}")
CONFIG=$(realpath "${CONFIG:-tools/world.toml}")
WORLD=$(realpath -m "${WORLD:-$OUT/world}")
SD=$(realpath "${SD:-models/world/sd}")
[ -f "$WORLD/world.json" ] || "$BIN" world make --out "$WORLD" --seed 0

sets=(--set "run.sd=$SD"
      --set "data.train_instances=$WORLD/train/instances.json" --set "data.train_images=$WORLD/train"
      --set "data.val_instances=$WORLD/val/instances.json" --set "data.val_images=$WORLD/val"
      --set "eval.split=$WORLD/world.json")
BACKEND=${BACKEND:-cpu}
sets+=(--set "run.backend=$BACKEND")
[ -n "${SEED:-}" ] && sets+=(--set "run.seed=$SEED")
for s in ${WORLD_SETS:-}; do sets+=(--set "$s"); done

start=$(date +%s)
declare -A secs
run_row() { # ROW ARGS...: one `instagen run`, timed, its command line kept for the table
    local row=$1 t0
    shift
    echo "instagen run $CONFIG --out $OUT/$row ${sets[*]} $*" >"$OUT/$row.command"
    t0=$(date +%s)
    "$BIN" run "$CONFIG" --out "$OUT/$row" "${sets[@]}" "$@"
    secs[$row]=$(($(date +%s) - t0))
}

B=$OUT/b
run_row b --set finetune.enabled=false --set generate_novel.enabled=false --set selftrain.enabled=false
run_row c --set finetune.enabled=false \
    --set "head_init.use=$B/01-head-init/head" --set "generate_base.use=$B/02-generate-base/data" \
    --set "labeller.use=$B/03-labeller/run" --set "label.use=$B/04-label/labels.json" \
    --set "ground_train.use=$B/05-ground-train/run"
run_row d --set "head_init.use=$B/01-head-init/head" --set "labeller.use=$B/03-labeller/run"

# (a): the labeller of (b) evaluated; rerun only when the labeller changed.
mkdir -p "$OUT/a"
if ! cmp -s "$B/03-labeller/done" "$OUT/a/labeller.done" 2>/dev/null; then
    t0=$(date +%s)
    "$BIN" detect eval --weights "$B/03-labeller/run/model.safetensors" --labels "$B/03-labeller/run/labels.json" \
        --data "$WORLD/val/instances.json" --images "$WORLD/val" --out "$OUT/a/results.json" --split "$WORLD/world.json" \
        --backend "$BACKEND"
    cp "$B/03-labeller/done" "$OUT/a/labeller.done"
    secs[a]=$(($(date +%s) - t0))
fi
echo "instagen detect eval --weights $B/03-labeller/run/model.safetensors --labels $B/03-labeller/run/labels.json --data $WORLD/val/instances.json --images $WORLD/val --out $OUT/a/results.json --split $WORLD/world.json" >"$OUT/a.command"

# The figures: `instagen eval` of each row's detections with the world's split.
row_line() { # ROW RESULTS -> "| base | novel | all |"
    "$BIN" eval --gt "$WORLD/val/instances.json" --dt "$2" --split "$WORLD/world.json" --json "$OUT/$1.figures.json" \
        | sed -n 's/^.*: AP50 base \([0-9.-]*\) ([0-9]* classes) | novel \([0-9.-]*\) ([0-9]*) | all \([0-9.-]*\) ([0-9]*)$/| \1 | \2 | \3 |/p'
}
seed=$(grep -o '"seed": *[0-9]*' "$B/03-labeller/detector.json" | grep -o '[0-9]*$')
{
    echo "# The miniature world's Table 4"
    echo
    echo "AP50 (%) on the world's val set ($(grep -o '"images": *[0-9]*' "$WORLD/world.json" | tail -1 | grep -o '[0-9]*$') images), per-class means over the base (8) / novel (4) / all (12) categories of \`$WORLD/world.json\`; pipeline seed $seed, world seed $(grep -o '"seed": *[0-9]*' "$WORLD/world.json" | head -1 | grep -o '[0-9]*$'), SD \`$SD\`, config \`$CONFIG\`."
    echo
    echo "| row | base | novel | all |"
    echo "|---|---|---|---|"
    echo "| (a) real base annotations only (the labeller) $(row_line a "$OUT/a/results.json")"
    echo "| (b) + synthetic data, head trained on base $(row_line b "$OUT/b/10-eval/results.json")"
    echo "| (c) + self-training on novel $(row_line c "$OUT/c/10-eval/results.json")"
    echo "| (d) + SD fine-tuning $(row_line d "$OUT/d/10-eval/results.json")"
    echo
    echo "Commands (the stages' own command lines are in each run folder's NN-stage/stage.json, the output in log.txt):"
    echo
    for r in a b c d; do echo "- ($r) \`$(cat "$OUT/$r.command")\`"; done
    echo
    echo "Wall time of this invocation: $(($(date +%s) - start)) s (rows run now: $(for r in "${!secs[@]}"; do printf '%s %s s; ' "$r" "${secs[$r]}"; done)finished stages are skipped on a rerun)."
} >"$OUT/table.md"
cat "$OUT/table.md"
