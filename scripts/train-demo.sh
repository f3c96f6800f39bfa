#!/usr/bin/env bash
# The demonstration ensemble: trains a small 3-D DenseNet ensemble with `ctgrade train` on
# synthetic chest phantoms, grades a held-out synthetic test set with `ctgrade run` and scores it
# with `ctgrade-eval`. The demo passes when AUC >= 0.95 and QWK >= 0.8; with --install it then
# copies the ensemble to weights/default/ (see weights/default/README.md).
#
# Labels: the phantoms' CO-RADS category (1..5) is the training target; for AUC a case is
# positive when its CO-RADS is 4 or 5 (high / very high suspicion), as written in truth.csv.
#
# Usage: scripts/train-demo.sh [--install] [WORK_DIR]   (default WORK_DIR: target/train-demo)
# Environment: MEMBERS (3), STEPS (4000), LR (2e-3), LR_FINAL (1e-4: cosine decay over STEPS),
# TRAIN_PER_CLASS (40), TEST_PER_CLASS (20).
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
# candle's element-wise thread pool spins while waiting; on a shared 2-core machine that costs
# more than it gains, so element-wise ops run on the calling thread (the kernels stay parallel).
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-1}

t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" >&2; }

stamp "building (release)"
cargo build --release -q -p ctgrade --bin ctgrade --example phantom_set
cargo build --release -q -p ctgrade-eval
target=${CARGO_TARGET_DIR:-target}
ctgrade=$target/release/ctgrade
phantoms=$target/release/examples/phantom_set
evaluate=$target/release/ctgrade-eval

rm -rf "$work"
mkdir -p "$work"
t1=$(date +%s)

# Phantoms: 128 x 128 x 80 voxels of 2.8 x 2.8 x 4 mm (the full 358 x 358 x 320 mm field);
# training and test seeds do not overlap.
stamp "phantoms: $((5 * train_per_class)) training, $((5 * test_per_class)) test"
"$phantoms" --out "$work/train" --per-class "$train_per_class" --seed 1000 --prefix train
"$phantoms" --out "$work/test" --per-class "$test_per_class" --seed 900000 --prefix test

# A small DenseNet (stem 16, growth 8, blocks 2-2-2: 64 k parameters) at a reduced input:
# 5 mm voxels, 64 x 64 crop, 32 slices, the paper's HU window.
cat > "$work/net.json" <<'EOF'
{"arch": "densenet121-3d", "in_channels": 3, "num_outputs": 1, "growth_rate": 8,
 "block_config": [2, 2, 2], "bn_size": 4, "init_features": 16}
EOF
cat > "$work/spec.json" <<'EOF'
{"spacing_mm": 5.0, "crop_xy": [64, 64], "slices": 32, "hu_window": [-1100.0, 300.0],
 "z_margin_mm": 10.0, "channels": "ct_x3"}
EOF

stamp "training $members member(s), at most $steps batches each"
"$ctgrade" train --data "$work/train" --labels "$work/train/labels.csv" \
    --arch densenet121-3d --config "$work/net.json" --input-spec "$work/spec.json" \
    --out "$work/ensemble" --members "$members" --seed 1 --lr "$lr" --lr-final "$lr_final" \
    --max-steps "$steps" --patience 2000 --val-every 100 --log-every 100 \
    --name ctgrade-demo-phantoms --demonstration \
    --description "DEMONSTRATION ONLY: $members small 3-D DenseNets trained by ctgrade train on synthetic chest phantoms (no real CT); see weights/default/README.md"
t2=$(date +%s)

stamp "grading the test set"
"$ctgrade" run --input "$work/test" --output "$work/test-run" --weights "$work/ensemble"
"$evaluate" --predictions "$work/test-run" --ground-truth "$work/test/truth.csv" \
    --output "$work/metrics.json" --plot "$work/roc.svg"
t3=$(date +%s)

# The first "auc" / "qwk" keys of metrics.json are the aggregates'.
metric() { grep -o "\"$1\": *[-0-9.eE]*" "$work/metrics.json" | head -1 | sed 's/.*: *//'; }
auc=$(metric auc)
qwk=$(metric qwk)
echo "test set: AUC $auc, QWK $qwk ($((5 * test_per_class)) cases, positive = CO-RADS >= 4)"
echo "times: phantoms+training $((t2 - t1)) s, grading+evaluation $((t3 - t2)) s, total $((t3 - t1)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
pass=$(awk -v a="$auc" -v q="$qwk" 'BEGIN { print (a >= 0.95 && q >= 0.8) ? 1 : 0 }')
if [[ "$pass" != 1 ]]; then
    echo "FAILED: the demo needs AUC >= 0.95 and QWK >= 0.8" >&2
    exit 1
fi
echo "passed: AUC >= 0.95 and QWK >= 0.8"

if [[ "$install" == 1 ]]; then
    dest="$root/weights/default"
    mkdir -p "$dest"
    rm -f "$dest"/member-*.safetensors
    cp "$work/ensemble/ensemble.json" "$work/ensemble"/member-*.safetensors "$dest/"
    cp "$work/ensemble/train-log.csv" "$work/ensemble/loss.svg" "$dest/"
    cp "$work/metrics.json" "$dest/demo-test-metrics.json"
    "$ctgrade" ensemble check "$dest" > /dev/null
    stamp "installed the ensemble in $dest"
fi
