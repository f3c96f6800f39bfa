#!/usr/bin/env bash
# Preprocessing speed on real chest CT: ctgrade against the SimpleITK + scipy reference
# (tools/preprocess_reference.py), in one process tree, alternating, medians and ratios.
#
#   scripts/bench-preprocess.sh [python] [runs]   (python default: /work/pyenv/bin/python, 5 runs)
#
# CTGRADE=path/to/ctgrade times that binary instead of this checkout's release build (to compare
# commits on the same machine); CTGRADE_ARGS adds options to its command (e.g. --no-compress).
#
# Two CTs, both from tests/data/real_ct/lung1.mha (the repository's real chest CT):
#   - 512 x 512 x 48 at 0.57 x 0.57 x 5 mm, as it is (thick slices);
#   - 512 x 512 x 400 at 0.57 x 0.57 x 0.59 mm, the same scan linearly resampled along z by
#     SimpleITK (a thin-slice volume of real anatomy).
# Per run and CT, three programs:
#   - ctgrade: `ctgrade preprocess CT --out DIR`, the whole command's wall time (reading, checks,
#     steps, writing input.mha, lung_mask.mha and preprocess.json) and its steps
#     (preprocess.json's seconds.total);
#   - reference: the same steps in SimpleITK + scipy (its lung mask as ctgrade's), reading
#     ("read_s") and steps ("seconds.total") timed inside the process, writing excluded;
#   - plain: the reference with --plain: a plainer lung mask (threshold, components, hole
#     filling in SimpleITK's multi-threaded filters) that does less than ctgrade's.
# Ratios: ctgrade's steps over each peer's steps, and ctgrade's whole command over each peer's
# read + steps. The lung masks of ctgrade and the reference are compared (Dice).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/work/pyenv/bin/python}
runs=${2:-5}
if [ -z "${CTGRADE:-}" ]; then
  cargo build --release --quiet --bin ctgrade
fi
bin=${CTGRADE:-${CARGO_TARGET_DIR:-target}/release/ctgrade}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$bin" "$work" "$runs" "${CTGRADE_ARGS:-}" <<'PY'
import json, statistics, subprocess, sys, time
import numpy as np
import SimpleITK as sitk

bin_, work, runs, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
ct = sitk.ReadImage("tests/data/real_ct/lung1.mha")
sp, sz = ct.GetSpacing(), ct.GetSize()
zsp = (sz[2] - 1) * sp[2] / 399
thin = sitk.Resample(ct, [sz[0], sz[1], 400], sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(),
                     [sp[0], sp[1], zsp], ct.GetDirection(), -1024, sitk.sitkInt16)
sitk.WriteImage(thin, f"{work}/lung400.mha", True)
cases = {"512x512x48 (5 mm)": "tests/data/real_ct/lung1.mha",
         "512x512x400 (0.59 mm)": f"{work}/lung400.mha"}


def ctgrade(path):
    t = time.perf_counter()
    subprocess.run([bin_, "preprocess", path, "--out", f"{work}/rust"] + extra, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    steps = json.load(open(f"{work}/rust/preprocess.json"))["seconds"]["total"]
    return {"steps": steps, "command": wall}


def reference(path, plain):
    # Separate folders: the same-steps reference's last lung mask is compared with ctgrade's.
    out = subprocess.run([sys.executable, "tools/preprocess_reference.py", path, "--out",
                          f"{work}/py-plain" if plain else f"{work}/py"] + (["--plain"] if plain else []),
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return {"steps": r["seconds"]["total"], "command": r["read_s"] + r["seconds"]["total"]}


rows = []
for name, path in cases.items():
    times = {"ctgrade": [], "reference": [], "plain": []}
    for _ in range(runs):
        times["ctgrade"].append(ctgrade(path))
        times["reference"].append(reference(path, False))
        times["plain"].append(reference(path, True))
    a = sitk.GetArrayFromImage(sitk.ReadImage(f"{work}/rust/lung_mask.mha")) > 0
    b = sitk.GetArrayFromImage(sitk.ReadImage(f"{work}/py/lung_mask.mha")) > 0
    med = {p: {k: statistics.median(t[k] for t in ts) for k in ("steps", "command")}
           for p, ts in times.items()}
    row = {"ct": name, "runs": runs, "median_s": med,
           "steps_ratio": {p: med["ctgrade"]["steps"] / med[p]["steps"] for p in ("reference", "plain")},
           "command_ratio": {p: med["ctgrade"]["command"] / med[p]["command"] for p in ("reference", "plain")},
           "lung_mask_dice_ctgrade_vs_reference": float(2 * (a & b).sum() / (a.sum() + b.sum())),
           "load": open("/proc/loadavg").read().split()[0]}
    rows.append(row)
    print(json.dumps(row))
print(f"\n{'CT':<24} {'program':<10} {'steps s':>8} {'command s':>10} {'steps ratio':>12} {'command ratio':>14}")
for r in rows:
    for p in ("ctgrade", "reference", "plain"):
        m = r["median_s"][p]
        sr = "" if p == "ctgrade" else f"{r['steps_ratio'][p]:.2f}x"
        cr = "" if p == "ctgrade" else f"{r['command_ratio'][p]:.2f}x"
        print(f"{r['ct']:<24} {p:<10} {m['steps']:8.3f} {m['command']:10.3f} {sr:>12} {cr:>14}")
PY
