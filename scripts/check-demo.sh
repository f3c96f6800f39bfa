#!/usr/bin/env bash
# Measures the installed demonstration weights (weights/default: lesion segmenter + ensemble) on
# fresh synthetic phantoms: `ctgrade run` grades them (CT -> lesion map -> ensemble),
# `ctgrade-eval` gives AUC (CO-RADS >= 4 positive) and QWK, and `lesion_dice` the segmenter's
# Dice for "any lesion" against the phantoms' true lesions.
#
# Usage: scripts/check-demo.sh [PER_CLASS] [SEED] [WEIGHTS]
#   defaults: 6 per CO-RADS category (30 phantoms), seed 950000 (the training used 1000-1199 and
#   the segmenter's 3000-3059; the demo's test set 900000-900099), weights/default.
# Prints one line: AUC, QWK, mean Dice over the cases with lesions; the files stay in a temporary
# folder it names.
set -euo pipefail
cd "$(dirname "$0")/.."
per_class=${1:-6}
seed=${2:-950000}
weights=${3:-weights/default}
cargo build --release -q -p ctgrade --bin ctgrade --example phantom_set --example lesion_dice
cargo build --release -q -p ctgrade-eval
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/ctgrade-check-demo.XXXXXX)
echo "work folder: $work" >&2

"$target/examples/phantom_set" --out "$work/cases" --per-class "$per_class" --seed "$seed" \
    --prefix fresh --lesion-labels "$work/lesions" 2>/dev/null
"$target/ctgrade" run --input "$work/cases" --output "$work/run" --weights "$weights" \
    --lesion-segmentation 2>"$work/run.log"
"$target/ctgrade-eval" --predictions "$work/run" --ground-truth "$work/cases/truth.csv" \
    --output "$work/metrics.json" >"$work/eval.log" 2>&1
"$target/examples/lesion_dice" --truth "$work/lesions" --labels 1,2 \
    --predicted "$work/run/images/covid-19-lesion-segmentation" >"$work/dice.json"

metric() { grep -o "\"$1\": *[-0-9.eE]*" "$2" | head -1 | sed 's/.*: *//'; }
echo "$((5 * per_class)) phantoms from seed $seed: AUC $(metric auc "$work/metrics.json")," \
    "QWK $(metric qwk "$work/metrics.json"), lesion Dice $(metric mean_dice_cases_with_lesions "$work/dice.json")" \
    "(mean over $(metric cases_with_lesions "$work/dice.json") cases with lesions;" \
    "pooled $(metric pooled_dice "$work/dice.json"))"
