#!/usr/bin/env bash
# Does the heat map look at the lesions? Draws N synthetic phantoms with known lesions (CO-RADS
# 3, 4, 5 in turn; the demonstration set's grid, 128 x 128 x 80 voxels of 2.8 x 2.8 x 4 mm; seeds
# 700000 on, never used for training), grades them with `ctgrade run --heat-map`, and compares,
# per case, the share of the heat inside the lungs that falls on lesions with the lesions' share
# of the lung volume (examples/heat_map_stats.rs).
#
# Usage: scripts/heat-map-check.sh [WEIGHTS_DIR] [N] [WORK_DIR]
#   (defaults: weights/default, 20, target/heat-map-check)
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${1:-weights/default}
n=${2:-20}
work=${3:-target/heat-map-check}

cargo build --release -q -p ctgrade --bin ctgrade --example heat_map_stats
target=${CARGO_TARGET_DIR:-target}
ctgrade=$target/release/ctgrade

rm -rf "$work"
mkdir -p "$work/input" "$work/masks"
for i in $(seq 0 $((n - 1))); do
  c=$((3 + i % 3))
  case=$(printf 'phantom-%02d-co-rads%d' "$i" "$c")
  "$ctgrade" synth --out "$work/input/$case.mha" --seed $((700000 + i)) --co-rads "$c" \
    --size 128,128,80 --spacing 2.8,2.8,4.0 \
    --lung-mask "$work/masks/$case-lungs.mha" --lesion-mask "$work/masks/$case-lesions.mha"
done
"$ctgrade" run --input "$work/input" --output "$work/output" --weights "$weights" --heat-map \
  2>"$work/run.log"
"$target/release/examples/heat_map_stats" --masks "$work/masks" \
  --heat "$work/output/images/covid-19-heat-map"
