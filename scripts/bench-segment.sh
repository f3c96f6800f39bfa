#!/usr/bin/env bash
# Side-by-side CPU benchmark of `ctgrade segment` and nnunetv2's own predictor (nnUNetPredictor,
# sequential, on the CPU) on the same nnU-Net v2 model folder, CT and thread count. The two
# programs alternate (their order swaps every round), so that changing load on the machine hits
# both alike; the summary gives medians and the ratios ctgrade/nnunetv2, and how far the two label
# maps agree, so that the speed figure is for the same result.
#
#   scripts/bench-segment.sh [ROUNDS]
#
# Defaults: 2 rounds, 2 threads, CT tests/data/real_ct/lung1.mha, Python /tmp/nnenv/bin/python
# (the venv of tools/make_nnunet_fixtures.py), ctgrade target/release/ctgrade (cargo build
# --release). Environment: CT, THREADS, PYTHON, CTGRADE, WORK (a folder for the model, the outputs
# and the results; default a new temporary one), MODEL (an existing model folder to reuse instead
# of making one). The commands, run from the repository root:
#
#   $PYTHON tools/bench_nnunet.py make-model $WORK/model --ct $CT --threads $THREADS   (once)
# then per round, each under /usr/bin/time -f '%e %M %U %S' (wall s, max RSS KiB, user s, sys s):
#   RAYON_NUM_THREADS=$THREADS $CTGRADE segment --model $WORK/model --input $CT --output $WORK/ctgrade
#   OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS $PYTHON tools/bench_nnunet.py predict \
#       --model $WORK/model --input $CT --output $WORK/nnunetv2 --threads $THREADS
#
# Each run appends a JSON line to $WORK/bench-segment.jsonl: program, round, the 1-minute load
# average before it, wall and CPU seconds and max RSS of the whole process (as /usr/bin/time
# measures them, imports and model loading included; the RSS is the largest of the process and its
# waited-for children, not their sum), and the program's own JSON output.
# The model: tools/bench_nnunet.py's docstring (a two-fold PlainConvUNet with random weights at
# 5 x 1.25 x 1.25 mm, patch 40 x 160 x 160; mirroring on, tile step 0.5, Gaussian weighting).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
THREADS=${THREADS:-2}
CT=${CT:-tests/data/real_ct/lung1.mha}
PYTHON=${PYTHON:-/tmp/nnenv/bin/python}
CTGRADE=${CTGRADE:-${CARGO_TARGET_DIR:-target}/release/ctgrade}
WORK=${WORK:-$(mktemp -d)}
RESULTS=$WORK/bench-segment.jsonl
echo "results: $RESULTS" >&2
if [ -z "${MODEL:-}" ]; then
  MODEL=$WORK/model
  "$PYTHON" tools/bench_nnunet.py make-model "$MODEL" --ct "$CT" --threads "$THREADS" >&2
fi
case_name=$(basename "$CT")
for ext in .nii.gz .mha .mhd .nii; do case_name=${case_name%"$ext"}; done

# run PROG ROUND: one timed run of PROG, appended to $RESULTS.
run() {
  local prog=$1 round=$2 load line
  load=$(cut -d' ' -f1 /proc/loadavg)
  rm -rf "${WORK:?}/$prog"
  if [ "$prog" = ctgrade ]; then
    line=$(RAYON_NUM_THREADS=$THREADS /usr/bin/time -o "$WORK/time.txt" -f '%e %M %U %S' \
      "$CTGRADE" segment --model "$MODEL" --input "$CT" --output "$WORK/ctgrade" | tail -n 1)
  else
    line=$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS \
      /usr/bin/time -o "$WORK/time.txt" -f '%e %M %U %S' \
      "$PYTHON" tools/bench_nnunet.py predict --model "$MODEL" --input "$CT" \
      --output "$WORK/nnunetv2" --threads "$THREADS" | tail -n 1)
  fi
  read -r wall rss_kib user sys < "$WORK/time.txt"
  echo "{\"prog\": \"$prog\", \"round\": $round, \"threads\": $THREADS, \"load\": $load," \
    "\"wall_s\": $wall, \"max_rss_mib\": $(( rss_kib / 1024 )), \"user_s\": $user, \"sys_s\": $sys," \
    "\"run\": $line}" | tee -a "$RESULTS"
}

for r in $(seq "$ROUNDS"); do
  # Swap the order every round: neither program always runs on a machine the other just warmed.
  if (( r % 2 )); then order=(ctgrade nnunetv2); else order=(nnunetv2 ctgrade); fi
  for prog in "${order[@]}"; do
    run "$prog" "$r"
  done
done

"$PYTHON" - "$RESULTS" "$WORK/ctgrade/$case_name.mha" "$WORK/nnunetv2/$case_name.mha" <<'PY'
import json, statistics, sys
import numpy as np
import SimpleITK as sitk

rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
print(f"{'program':<9} {'wall s':>7} {'cpu s':>7} {'peak RSS MiB':>12}  runs  load")
for p in ("ctgrade", "nnunetv2"):
    rs = [r for r in rows if r["prog"] == p]
    if not rs:
        continue
    w = statistics.median(r["wall_s"] for r in rs)
    c = statistics.median(r["user_s"] + r["sys_s"] for r in rs)
    m = max(r["max_rss_mib"] for r in rs)
    med[p] = (w, m)
    loads = ", ".join(str(r["load"]) for r in rs)
    print(f"{p:<9} {w:7.1f} {c:7.1f} {m:12.0f}  {len(rs):4d}  {loads}")
if len(med) == 2:
    print(f"ratio ctgrade/nnunetv2: wall {med['ctgrade'][0] / med['nnunetv2'][0]:.2f} (median), "
          f"peak RSS {med['ctgrade'][1] / med['nnunetv2'][1]:.2f} (max)")
# The last round's label maps, on the CT's grid.
a, b = (sitk.ReadImage(f) for f in sys.argv[2:4])
same_grid = (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
             and np.allclose(a.GetOrigin(), b.GetOrigin()))
la, lb = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
if not same_grid or la.shape != lb.shape:
    sys.exit(f"label maps differ in geometry: {a.GetSize()} vs {b.GetSize()}")
agree = float(np.mean(la == lb))
counts = {int(v): (int(np.sum(la == v)), int(np.sum(lb == v))) for v in np.union1d(la, lb)}
print(f"labels: {agree:.6f} of {la.size} voxels agree; voxels per label (ctgrade, nnunetv2): {counts}")
PY
