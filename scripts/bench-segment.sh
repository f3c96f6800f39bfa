#!/usr/bin/env bash
# Side-by-side CPU benchmark of `ctgrade segment` and nnunetv2's own predictor (nnUNetPredictor,
# sequential, on the CPU) on the same nnU-Net v2 model folder, CT and thread count; with NNUNET=v1,
# of `ctgrade segment` and nnU-Net v1's predict_cases on the same nnU-Net v1 model folder. The two
# programs alternate (their order swaps every round), so that changing load on the machine hits
# both alike; the summary gives medians and the ratios ctgrade/nnunetv2 (nnunet-v1), and how far
# the two label maps agree, so that the speed figure is for the same result.
#
#   scripts/bench-segment.sh [ROUNDS]
#
# Defaults: 2 rounds, 2 threads, CT tests/data/real_ct/lung1.mha, Python /tmp/nnenv/bin/python
# (the venv of tools/make_nnunet_fixtures.py), ctgrade target/release/ctgrade (cargo build
# --release). Environment: CT, THREADS, PYTHON, CTGRADE, WORK (a folder for the model, the outputs
# and the results; default a new temporary one), MODEL (an existing model folder to reuse instead
# of making one), NNUNET (v2, the default, or v1). The commands, run from the repository root:
#
#   $PYTHON tools/bench_nnunet.py make-model $WORK/model --ct $CT --threads $THREADS   (once)
# then per round, each under /usr/bin/time -f '%e %M %U %S' (wall s, max RSS KiB, user s, sys s):
#   RAYON_NUM_THREADS=$THREADS $CTGRADE segment --model $WORK/model --input $CT --output $WORK/ctgrade
#   OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS $PYTHON tools/bench_nnunet.py predict \
#       --model $WORK/model --input $CT --output $WORK/nnunetv2 --threads $THREADS
# NNUNET=v1: the same with tools/bench_nnunet_v1.py, output $WORK/nnunet-v1 (v1 writes
# <case>.nii.gz, not .mha) and program name nnunet-v1; PYTHON defaults to /tmp/nnv1/bin/python (the
# venv of tools/make_nnunet_v1_fixtures.py). Its model: tools/bench_nnunet_v1.py's docstring (an
# nnUNetTrainerV2 Generic_UNet with the same target spacing, patch, stages, features and kernels).
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
NNUNET=${NNUNET:-v2}
case $NNUNET in
  v2) PEER=nnunetv2 TOOL=tools/bench_nnunet.py PEER_EXT=.mha PYTHON=${PYTHON:-/tmp/nnenv/bin/python} ;;
  v1) PEER=nnunet-v1 TOOL=tools/bench_nnunet_v1.py PEER_EXT=.nii.gz PYTHON=${PYTHON:-/tmp/nnv1/bin/python} ;;
  *) echo "NNUNET must be v2 or v1, not $NNUNET" >&2; exit 2 ;;
esac
CTGRADE=${CTGRADE:-${CARGO_TARGET_DIR:-target}/release/ctgrade}
WORK=${WORK:-$(mktemp -d)}
RESULTS=$WORK/bench-segment.jsonl
echo "results: $RESULTS" >&2
if [ -z "${MODEL:-}" ]; then
  MODEL=$WORK/model
  "$PYTHON" "$TOOL" make-model "$MODEL" --ct "$CT" --threads "$THREADS" >&2
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
      "$PYTHON" "$TOOL" predict --model "$MODEL" --input "$CT" \
      --output "$WORK/$PEER" --threads "$THREADS" | tail -n 1)
  fi
  read -r wall rss_kib user sys < "$WORK/time.txt"
  echo "{\"prog\": \"$prog\", \"round\": $round, \"threads\": $THREADS, \"load\": $load," \
    "\"wall_s\": $wall, \"max_rss_mib\": $(( rss_kib / 1024 )), \"user_s\": $user, \"sys_s\": $sys," \
    "\"run\": $line}" | tee -a "$RESULTS"
}

for r in $(seq "$ROUNDS"); do
  # Swap the order every round: neither program always runs on a machine the other just warmed.
  if (( r % 2 )); then order=(ctgrade "$PEER"); else order=("$PEER" ctgrade); fi
  for prog in "${order[@]}"; do
    run "$prog" "$r"
  done
done

"$PYTHON" - "$RESULTS" "$PEER" "$WORK/ctgrade/$case_name.mha" "$WORK/$PEER/$case_name$PEER_EXT" <<'PY'
import json, statistics, sys
import numpy as np
import SimpleITK as sitk

rows = [json.loads(l) for l in open(sys.argv[1])]
peer = sys.argv[2]
med = {}
print(f"{'program':<9} {'wall s':>7} {'cpu s':>7} {'peak RSS MiB':>12}  runs  load")
for p in ("ctgrade", peer):
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
    print(f"ratio ctgrade/{peer}: wall {med['ctgrade'][0] / med[peer][0]:.2f} (median), "
          f"peak RSS {med['ctgrade'][1] / med[peer][1]:.2f} (max)")
# The last round's label maps, on the CT's grid.
a, b = (sitk.ReadImage(f) for f in sys.argv[3:5])
same_grid = (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
             and np.allclose(a.GetOrigin(), b.GetOrigin()))
la, lb = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
if not same_grid or la.shape != lb.shape:
    sys.exit(f"label maps differ in geometry: {a.GetSize()} vs {b.GetSize()}")
agree = float(np.mean(la == lb))
counts = {int(v): (int(np.sum(la == v)), int(np.sum(lb == v))) for v in np.union1d(la, lb)}
print(f"labels: {agree:.6f} of {la.size} voxels agree; voxels per label (ctgrade, {peer}): {counts}")
PY
