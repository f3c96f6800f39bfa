#!/usr/bin/env bash
# `ctgrade serve` against `ctgrade run`, side by side on the same case and machine:
# - time to healthy: from start until GET /health answers 200 (weights loaded, device warmed);
# - time per job: POST /invoke (the model already loaded) alternating with one `ctgrade run`
#   process per case (load + grade), medians;
# - resident memory (VmRSS) of the server after each of N invocations: it must not grow.
#
#   scripts/bench-serve.sh [WEIGHTS] [RUNS] [INVOCATIONS] [DEVICE]
#   (defaults: weights/default, 5, 50, cpu; WEIGHTS may be an ensemble made with
#    `cargo run --release --example random_ensemble -- densenet201-3d 10 DIR`)
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${1:-weights/default}; runs=${2:-5}; invocations=${3:-50}; device=${4:-cpu}
bin=target/release/ctgrade
[ -x "$bin" ] || cargo build --release --locked --bin ctgrade
work=$(mktemp -d /tmp/ctgrade-bench-serve.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
cp -r test_inputs/images test_inputs/inputs.json "$work/" && mkdir -p "$work/in" "$work/out"
cp -r "$work/images" "$work/inputs.json" "$work/in/"
port=$((20000 + RANDOM % 20000))
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f\n", a - b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

t0=$(now)
"$bin" serve --host 127.0.0.1 --port "$port" --input "$work/in" --output "$work/out" \
  --weights "$weights" --device "$device" 2>"$work/serve.log" &
pid=$!
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true)" = 200 ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.05
done
ready=$(since "$t0")
echo "weights $weights on $device: healthy after $ready s"

: > "$work/invoke.s"; : > "$work/run.s"
for _ in $(seq "$runs"); do
  rm -rf "$work/out"/*
  t=$(now); code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/invoke")
  [ "$code" = 201 ] || { cat "$work/serve.log"; exit 1; }
  since "$t" >> "$work/invoke.s"
  t=$(now); "$bin" run --input "$work/in" --output "$work/run-out" --weights "$weights" \
    --device "$device" 2>/dev/null
  since "$t" >> "$work/run.s"
  cmp -s "$work/out/probability-covid-19.json" "$work/run-out/probability-covid-19.json" \
    || { echo "serve and run disagree"; exit 1; }
done
inv=$(median < "$work/invoke.s"); run=$(median < "$work/run.s")
echo "per job, median of $runs: invoke $inv s, run $run s (ratio $(awk -v a="$inv" -v b="$run" 'BEGIN { printf "%.2f", a / b }'))"

rss() { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$pid/status"; }
before=$(rss); list=()
for _ in $(seq "$invocations"); do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$port/invoke"
  list+=("$(rss)")
done
echo "VmRSS (MiB) before: $before; after each of $invocations invocations: ${list[*]}"
printf '%s\n' "${list[@]}" | awk -v n="$invocations" \
  '{ if (NR == 1) first = $1; if (NR == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1; last = $1 }
   END { printf "VmRSS min %d, max %d, after the first: %d, after the last (%d): %d MiB\n", lo, hi, first, n, last }'
kill -TERM "$pid"; wait "$pid"; echo "server exit status $? on SIGTERM"; pid=
