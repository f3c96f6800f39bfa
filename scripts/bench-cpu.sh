#!/usr/bin/env bash
# Side-by-side CPU benchmark of ctgrade and PyTorch (MONAI) on the same input and thread count,
# alternating the two programs so that changing load on the machine hits both alike.
#
#   scripts/bench-cpu.sh [ROUNDS] [REPEAT] [ARCH...]
#
# Defaults: 3 rounds, 3 timed forwards per run, densenet121-3d and densenet201-3d, input
# 3,128,240,240, 2 threads. Needs a release build (cargo build --release) and the Python venv at
# $PYTHON (default /work/pyenv/bin/python). Each program prints one JSON line per run (wall and
# process-CPU time per forward, peak RSS); with CTGRADE_PROFILE=1 ctgrade also prints a per-layer
# breakdown on stderr. The summary gives, per program, the median over runs of the per-run medians
# and the ctgrade/PyTorch ratios. CPU time (user + system, all threads) is less sensitive to other
# load than wall time, but includes threads spinning while they wait.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
REPEAT=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
ARCHS=("${@:-densenet121-3d densenet201-3d}")
read -r -a ARCHS <<< "${ARCHS[*]}"
INPUT=${INPUT:-3,128,240,240}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/work/pyenv/bin/python}
CTGRADE=${CTGRADE:-${CARGO_TARGET_DIR:-target}/release/ctgrade}
OUT=${OUT:-$(mktemp -d)/bench-cpu.jsonl}
echo "results: $OUT" >&2
for r in $(seq "$ROUNDS"); do
  for arch in "${ARCHS[@]}"; do
    for prog in ctgrade torch; do
      if [ "$prog" = ctgrade ]; then
        line=$(nice "$CTGRADE" bench --arch "$arch" --input "$INPUT" --repeat "$REPEAT" --threads "$THREADS")
      else
        line=$(nice "$PYTHON" tools/bench_torch.py --arch "$arch" --input "$INPUT" --repeat "$REPEAT" --threads "$THREADS")
      fi
      echo "{\"prog\": \"$prog\", \"round\": $r, \"load\": \"$(cut -d' ' -f1 /proc/loadavg)\", \"run\": $line}" | tee -a "$OUT"
    done
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
archs = sorted({r["run"]["arch"] for r in rows})
print(f"{'arch':<16} {'program':<8} {'wall s':>7} {'cpu s':>7} {'RSS MiB':>8}  runs")
for a in archs:
    med = {}
    for p in ("ctgrade", "torch"):
        rs = [r["run"] for r in rows if r["prog"] == p and r["run"]["arch"] == a]
        if not rs:
            continue
        w = statistics.median(x["median_s"] for x in rs)
        c = statistics.median(x["median_cpu_s"] for x in rs)
        m = max(x["peak_rss_mib"] for x in rs)
        med[p] = (w, c)
        print(f"{a:<16} {p:<8} {w:7.2f} {c:7.2f} {m:8.0f}  {len(rs)}")
    if len(med) == 2:
        print(f"{a:<16} ratio ctgrade/torch: wall {med['ctgrade'][0] / med['torch'][0]:.2f}, "
              f"cpu {med['ctgrade'][1] / med['torch'][1]:.2f}")
PY
