#!/usr/bin/env bash
# Accuracy of reduced precision (`ctgrade run --precision bf16|f16`) against f32, where it
# matters to a user: the probabilities and CO-RADS of an ensemble on a test set. Runs the default
# demonstration ensemble (weights/default) on the demo's held-out synthetic test set (100
# phantoms, the seeds of scripts/train-demo.sh) in f32, bf16 and f16 on the CPU, scores each with
# ctgrade-eval, and prints the largest and mean probability change and the CO-RADS changes.
# Usage: scripts/precision-check.sh [WORK_DIR]   (default target/precision-check)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/precision-check}
cargo build --release -q -p ctgrade --bin ctgrade --example phantom_set
cargo build --release -q -p ctgrade-eval
target=${CARGO_TARGET_DIR:-target}
rm -rf "$work"
mkdir -p "$work"
"$target/release/examples/phantom_set" --out "$work/test" --per-class 20 --seed 900000 --prefix test
for p in f32 bf16 f16; do
  start=$(date +%s.%N)
  "$target/release/ctgrade" run --input "$work/test" --output "$work/$p" --device cpu \
    --precision "$p" 2>"$work/$p.log"
  end=$(date +%s.%N)
  "$target/release/ctgrade-eval" --predictions "$work/$p" --ground-truth "$work/test/truth.csv" \
    --output "$work/$p-metrics.json" >/dev/null
  metric() { grep -o "\"$1\": *[-0-9.eE]*" "$work/$p-metrics.json" | head -1 | sed 's/.*: *//'; }
  echo "$p: AUC $(metric auc), QWK $(metric qwk), $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s for 100 cases"
done
# summary.csv: case,file,probability,co_rads,error,seconds,... (same case order in every run).
for p in bf16 f16; do
  paste -d, "$work/f32/summary.csv" "$work/$p/summary.csv" | awk -F, -v p="$p" '
    NR > 1 {
      h = NF / 2; d = $3 - $(h + 3); if (d < 0) d = -d
      if (d > max) max = d
      sum += d; n++
      if ($4 != $(h + 4)) changed++
    }
    END { printf "%s vs f32: max |dp| %.2e, mean |dp| %.2e, CO-RADS changed in %d of %d cases\n", p, max, sum / n, changed, n }'
done
