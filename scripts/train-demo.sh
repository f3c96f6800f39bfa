#!/usr/bin/env bash
# The demonstration ensemble, the paper's full model in small: trains a 3-D DenseNet ensemble with
# `ctgrade train` on synthetic chest phantoms, its second input channel the lesion map that the
# demonstration lesion segmenter (weights/default/lesion/, trained by nnU-Net with
# tools/train_demo_segmenter.py) computes, exactly as `ctgrade run` computes it; grades a held-out
# synthetic test set with `ctgrade run` (CT -> lesion map -> ensemble) and scores it with
# `ctgrade-eval`, and the segmenter's lesions against the phantoms' true ones (Dice). The demo
# passes when AUC >= 0.95, QWK >= 0.85 and the mean Dice over the test cases with lesions >= 0.70;
# with --install it then copies the ensemble to weights/default/ (see weights/default/README.md).
#
# Labels: the phantoms' CO-RADS category (1..5) is the training target; for AUC a case is
# positive when its CO-RADS is 4 or 5 (high / very high suspicion), as written in truth.csv.
#
# Usage: scripts/train-demo.sh [--install] [WORK_DIR]   (default WORK_DIR: target/train-demo)
# Environment: MEMBERS (3), STEPS (4000), LR (2e-3), LR_FINAL (1e-4: cosine decay over STEPS),
# TRAIN_PER_CLASS (40), TEST_PER_CLASS (20), LESION_MODEL (weights/default/lesion), RESUME (0;
# 1 continues an interrupted run in WORK_DIR).
set -euo pipefail

install=0
if [[ "${1:-}" == "--install" ]]; then
    install=1
    shift
fi
cd "$(dirname "$0")/.."
root=$(pwd)
work=${1:-target/train-demo}
members=${MEMBERS:-3}
steps=${STEPS:-4000}
lr=${LR:-2e-3}
lr_final=${LR_FINAL:-1e-4}
train_per_class=${TRAIN_PER_CLASS:-40}
test_per_class=${TEST_PER_CLASS:-20}
lesion_model=${LESION_MODEL:-weights/default/lesion}
# candle's element-wise thread pool spins while waiting; on a shared 2-core machine that costs
# more than it gains, so element-wise ops run on the calling thread (the kernels stay parallel).
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-1}

t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" >&2; }

stamp "building (release)"
cargo build --release -q -p ctgrade --bin ctgrade --example phantom_set --example lesion_dice
cargo build --release -q -p ctgrade-eval
target=${CARGO_TARGET_DIR:-target}
ctgrade=$target/release/ctgrade
phantoms=$target/release/examples/phantom_set
evaluate=$target/release/ctgrade-eval
dice=$target/release/examples/lesion_dice

t1=$(date +%s)
# RESUME=1 continues an interrupted run in WORK_DIR (its phantoms, cached inputs and
# checkpoints): `ctgrade train --resume` gives the members an uninterrupted run gives.
resume=()
if [[ "${RESUME:-0}" == 1 && -d "$work/ensemble/checkpoints" ]]; then
    resume=(--resume)
    stamp "resuming the run in $work"
else
    rm -rf "$work"
    mkdir -p "$work"
    cp -r "$lesion_model" "$work/segmenter"
    # Phantoms: 128 x 128 x 80 voxels of 2.8 x 2.8 x 4 mm (the full 358 x 358 x 320 mm field);
    # training and test seeds do not overlap.
    stamp "phantoms: $((5 * train_per_class)) training, $((5 * test_per_class)) test"
    "$phantoms" --out "$work/train" --per-class "$train_per_class" --seed 1000 --prefix train
    "$phantoms" --out "$work/test" --per-class "$test_per_class" --seed 900000 --prefix test \
        --lesion-labels "$work/test-lesions"
fi

# A small DenseNet (stem 16, growth 8, blocks 2-2-2: 64 k parameters) at a reduced input:
# 5 mm voxels, 64 x 64 crop, 32 slices, the paper's HU window; CT, lesion map, zeros.
cat > "$work/net.json" <<'EOF'
{"arch": "densenet121-3d", "in_channels": 3, "num_outputs": 1, "growth_rate": 8,
 "block_config": [2, 2, 2], "bn_size": 4, "init_features": 16}
EOF
cat > "$work/spec.json" <<'EOF'
{"spacing_mm": 5.0, "crop_xy": [64, 64], "slices": 32, "hu_window": [-1100.0, 300.0],
 "z_margin_mm": 10.0, "channels": "ct_lesion_zeros"}
EOF

stamp "training $members member(s), at most $steps batches each"
"$ctgrade" train --data "$work/train" --labels "$work/train/labels.csv" \
    --arch densenet121-3d --config "$work/net.json" --input-spec "$work/spec.json" \
    --lesion-model "$work/segmenter" --lesion-labels 1,2 "${resume[@]}" \
    --out "$work/ensemble" --members "$members" --seed 1 --lr "$lr" --lr-final "$lr_final" \
    --max-steps "$steps" --patience 2000 --val-every 100 --log-every 100 \
    --name ctgrade-demo-phantoms --demonstration \
    --description "DEMONSTRATION ONLY: an nnU-Net lesion segmenter and $members small 3-D DenseNets reading the CT and its lesion map, trained on synthetic chest phantoms (no real CT); see weights/default/README.md"
t2=$(date +%s)

stamp "grading the test set"
rm -rf "$work/test-run"
"$ctgrade" run --input "$work/test" --output "$work/test-run" --weights "$work/ensemble" \
    --lesion-segmentation
"$evaluate" --predictions "$work/test-run" --ground-truth "$work/test/truth.csv" \
    --output "$work/metrics.json" --plot "$work/roc.svg"
"$dice" --truth "$work/test-lesions" --labels 1,2 \
    --predicted "$work/test-run/images/covid-19-lesion-segmentation" > "$work/lesion-dice.json"
t3=$(date +%s)

# The first "auc" / "qwk" keys of metrics.json are the aggregates'.
metric() { grep -o "\"$1\": *[-0-9.eE]*" "$work/metrics.json" | head -1 | sed 's/.*: *//'; }
auc=$(metric auc)
qwk=$(metric qwk)
dice_mean=$(grep -o '"mean_dice_cases_with_lesions": *[-0-9.eE]*' "$work/lesion-dice.json" | sed 's/.*: *//')
echo "test set: AUC $auc, QWK $qwk ($((5 * test_per_class)) cases, positive = CO-RADS >= 4); lesion Dice $dice_mean (mean over the cases with lesions)"
echo "times: phantoms+training $((t2 - t1)) s, grading+evaluation $((t3 - t2)) s, total $((t3 - t1)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
pass=$(awk -v a="$auc" -v q="$qwk" -v d="$dice_mean" \
    'BEGIN { print (a >= 0.95 && q >= 0.85 && d >= 0.70) ? 1 : 0 }')
if [[ "$pass" != 1 ]]; then
    echo "FAILED: the demo needs AUC >= 0.95, QWK >= 0.85 and lesion Dice >= 0.70" >&2
    exit 1
fi
echo "passed: AUC >= 0.95, QWK >= 0.85, lesion Dice >= 0.70"

if [[ "$install" == 1 ]]; then
    dest="$root/weights/default"
    mkdir -p "$dest"
    rm -f "$dest"/member-*.safetensors
    cp "$work/ensemble/ensemble.json" "$work/ensemble"/member-*.safetensors "$dest/"
    # The segmenter as the ensemble holds it, with the provenance its training script wrote.
    if [[ "$(cd "$lesion_model" && pwd)" != "$dest/lesion" ]]; then
        rm -rf "$dest/lesion"
    fi
    mkdir -p "$dest/lesion"
    cp "$work/ensemble/lesion"/* "$dest/lesion/"
    if [[ -f "$work/segmenter/provenance.json" ]]; then
        cp "$work/segmenter/provenance.json" "$dest/lesion/"
    fi
    cp "$work/ensemble/train-log.csv" "$work/ensemble/loss.svg" "$dest/"
    cp "$work/metrics.json" "$dest/demo-test-metrics.json"
    cp "$work/lesion-dice.json" "$dest/demo-test-lesion-dice.json"
    "$ctgrade" ensemble check "$dest" > /dev/null
    stamp "installed the ensemble in $dest"
fi
