#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), two at a time, logging to fuzz/logs/.
#   fuzz/run-all.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}; shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(metaimage nifti metaimage_detached nifti_gz pipeline dicom)
mkdir -p fuzz/logs
run() {
  mkdir -p "fuzz/corpus/$1" "fuzz/artifacts/$1"
  cargo fuzz run --sanitizer none "$1" "fuzz/corpus/$1" -- -max_total_time="$secs" \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -max_len=8192 -print_final_stats=1 \
    > "fuzz/logs/$1.log" 2>&1
  echo "$1: exit $?" >> fuzz/logs/summary.txt
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" &
  [ $((i + 1)) -lt ${#targets[@]} ] && run "${targets[i+1]}" &
  wait
done
