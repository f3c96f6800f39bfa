#!/usr/bin/env bash
# Preprocessing speed, Rust vs the Python reference (tools/preprocess_reference.py: SimpleITK +
# scipy, the same steps), on one 512 x 512 x 400 int16 phantom at 0.7 x 0.7 x 0.8 mm.
# Both time the preprocessing only (file reading and writing excluded): Rust's preprocess.json
# "seconds.total" and the reference's printed "seconds.total". Runs alternate; the median counts.
# Usage: scripts/bench-preprocess.sh [python] [runs]   (python default: /work/pyenv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/work/pyenv/bin/python}
runs=${2:-3}
cargo build --release --quiet --bin ctgrade
bin=${CARGO_TARGET_DIR:-target}/release/ctgrade
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" synth --out "$work/ct.mha" --seed 7 --co-rads 3 --size 512,512,400 --spacing 0.7,0.7,0.8
rust=() py=()
for _ in $(seq "$runs"); do
  "$bin" preprocess "$work/ct.mha" --out "$work/rust" >/dev/null
  rust+=("$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"]["total"])' "$work/rust/preprocess.json")")
  py+=("$("$python" tools/preprocess_reference.py "$work/ct.mha" --out "$work/py" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["seconds"]["total"])')")
done
"$python" - "$work" "${rust[*]}" "${py[*]}" <<'PY'
import json, statistics, sys
import SimpleITK as sitk
import numpy as np
work, rust, py = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
a = sitk.GetArrayFromImage(sitk.ReadImage(f"{work}/rust/lung_mask.mha")) > 0
b = sitk.GetArrayFromImage(sitk.ReadImage(f"{work}/py/lung_mask.mha")) > 0
dice = 2 * (a & b).sum() / (a.sum() + b.sum())
r, p = statistics.median(rust), statistics.median(py)
print(json.dumps({"rust_s": rust, "python_s": py, "rust_median_s": r, "python_median_s": p,
                  "python_over_rust": p / r, "lung_mask_dice_rust_vs_python": float(dice)}))
PY
