#!/usr/bin/env bash
# Throughput of N concurrent shard containers (as an Indexed Job's pods on one node) against one
# container grading the whole batch, on this machine: cases per minute, each configuration on a
# fresh output folder. Uses the exec image that scripts/docker-test.sh builds.
#
#   scripts/bench-shards.sh [CASES] [N ...]          (defaults: 12 cases; 2 3)
#   SIZE=X,Y,Z SPACING=SX,SY,SZ (defaults: a clinical 512 x 512 x 256 grid at 0.7 x 0.7 x 1.25 mm)
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-12}; shift || true
counts=("${@:-2 3}"); read -r -a counts <<< "${counts[*]}"
image=${EXEC_IMAGE:-ctgrade:test-exec}
docker image inspect "$image" >/dev/null 2>&1 || { echo "build $image first (scripts/docker-test.sh shards)"; exit 1; }
work=$(mktemp -d /tmp/ctgrade-bench-shards.XXXXXX)
trap 'docker rm -f $(docker ps -aq --filter name=ctgrade-bench-) >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/in"
for i in $(seq 1 "$cases"); do
  target/release/ctgrade synth --out "$work/in/scan-$i.mha" --seed $((100 + i)) --co-rads $(( (i % 5) + 1 )) \
    --size "${SIZE:-512,512,256}" --spacing "${SPACING:-0.7,0.7,1.25}" >/dev/null 2>&1
done
flags=(--network none --cap-drop all --security-opt no-new-privileges --read-only --init
       --tmpfs /tmp:rw,exec,size=2g --memory 4g --memory-swap 4g)
rate() { awk -v n="$cases" -v s="$1" 'BEGIN { printf "%.1f cases/min (%.1f s)", 60 * n / s, s }'; }

mkdir -p "$work/one"; chmod 777 "$work/one"
t=$(date +%s.%N)
docker run --rm --name ctgrade-bench-one "${flags[@]}" -v "$work/in:/input:ro" -v "$work/one:/output" \
  "$image" 2>/dev/null
one=$(awk -v a="$(date +%s.%N)" -v b="$t" 'BEGIN { print a - b }')
echo "1 process: $(rate "$one")"
for n in "${counts[@]}"; do
  out="$work/shards-$n"; mkdir -p "$out"; chmod 777 "$out"
  t=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    docker run -d --name "ctgrade-bench-$n-$i" "${flags[@]}" -e JOB_COMPLETION_INDEX="$i" \
      -v "$work/in:/input:ro" -v "$out:/output" "$image" --shard "auto/$n" >/dev/null
  done
  for i in $(seq 0 $((n - 1))); do
    [ "$(docker wait "ctgrade-bench-$n-$i")" = 0 ] || { docker logs "ctgrade-bench-$n-$i"; exit 1; }
    docker rm "ctgrade-bench-$n-$i" >/dev/null
  done
  s=$(awk -v a="$(date +%s.%N)" -v b="$t" 'BEGIN { print a - b }')
  echo "$n shard containers: $(rate "$s"), $(awk -v a="$one" -v b="$s" 'BEGIN { printf "%.2fx", a / b }') the single process"
done
