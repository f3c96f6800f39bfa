#!/usr/bin/env bash
# Checks what the CUDA build does on a machine whose NVIDIA driver is absent, broken, too old or
# without a usable device, with the real CUDA build from scripts/build-cuda.sh (no GPU needed).
#
# The image layout is rebuilt in a temporary folder: the CPU build as `ctgrade` (the entry point)
# and the CUDA build as `ctgrade-cuda` beside it, with the toolkit's libraries from build-cuda.sh's
# toolchain on the library path. Drivers are stand-ins compiled here: the link stub (every call
# fails), and libraries that report a chosen CUDA version and one device but fail every other call.
#
# Usage: scripts/check-cuda-fallback.sh [CUDA_BUILD] [CPU_BUILD]
#   CUDA_BUILD  default .gpu/ctgrade (scripts/build-cuda.sh, about 35 min on 2 cores)
#   CPU_BUILD   default target/release/ctgrade (cargo build --release)
#   CUDA_HOME   the toolchain build-cuda.sh made (default .cuda-toolchain/cuda-13.0)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cuda_build=$(realpath "${1:-$root/.gpu/ctgrade}")
cpu_build=$(realpath "${2:-$root/target/release/ctgrade}")
home=${CUDA_HOME:-$root/.cuda-toolchain/cuda-13.0}
for f in "$cuda_build" "$cpu_build" "$home/lib/stubs/libcuda.so"; do
  [ -e "$f" ] || { echo "check-cuda-fallback: $f is missing (see --help in this script)" >&2; exit 2; }
done
command -v cc >/dev/null || { echo "check-cuda-fallback: needs cc" >&2; exit 2; }

work=$(mktemp -d /tmp/ctgrade-cuda-fallback.XXXXXX)
trap 'rm -rf "$work"' EXIT
app=$work/app
mkdir -p "$app"
cp "$cpu_build" "$app/ctgrade"
cp "$cuda_build" "$app/ctgrade-cuda"
chmod +x "$app/ctgrade" "$app/ctgrade-cuda"
unset CTGRADE_CUDA_BINARY

# Stand-in drivers: every function the CUDA build imports from libcuda.so.1 fails (999, as the
# link stub), except those each stand-in overrides.
nm -D --defined-only "$home/lib/stubs/libcuda.so" | awk '$2 == "T" { print $3 }' | sort -u >"$work/cuda.syms"
driver() { # driver NAME VERSION: cuInit succeeds, cuDriverGetVersion says VERSION, one device
  local dir=$work/$1
  mkdir -p "$dir"
  grep -vxE 'cuInit|cuDriverGetVersion|cuDeviceGetCount' "$work/cuda.syms" |
    sed 's/.*/int &(void) { return 999; }/' >"$dir/cuda.c"
  cat >>"$dir/cuda.c" <<EOF
int cuInit(unsigned flags) { return 0; }
int cuDriverGetVersion(int *v) { *v = $2; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
EOF
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so.1" "$dir/cuda.c"
  echo "$dir"
}
# The toolkit's libraries: cudart and cuDNN as shipped, the others as build-cuda.sh's stubs (the
# CPU paths never call them), and no libcuda.so.1.
mkdir -p "$work/toolkit" "$work/stub" "$work/none"
for f in "$home"/lib/*.so.* "$home"/lib/stubs-run/*; do
  case ${f##*/} in libcuda.so*) ;; *) ln -sf "$(realpath "$f")" "$work/toolkit/${f##*/}" ;; esac
done
ln -s "$home/lib/stubs/libcuda.so" "$work/stub/libcuda.so.1"
old=$(driver old 12040)
new=$(driver new 13000)

fails=0
# check NAME LIBS EXPECT_STATUS PATTERN CMD...: runs CMD with the toolkit's libraries and LIBS on
# the library path; its status must be EXPECT_STATUS (0 or 1) and its stdout+stderr match PATTERN.
check() {
  local name=$1 libs=$2 status=$3 pattern=$4 rc=0
  shift 4
  LD_LIBRARY_PATH=$work/toolkit:$libs "$@" >"$work/out" 2>&1 || rc=$?
  if { [ "$status" = 0 ] && [ "$rc" = 0 ]; } || { [ "$status" != 0 ] && [ "$rc" != 0 ]; }; then
    if grep -qE -- "$pattern" "$work/out"; then
      echo "ok   $name"
      sed 's/^/       /' "$work/out" | grep -E 'warning|error|"build"' | head -3
      return
    fi
  fi
  echo "FAIL $name (exit $rc, wanted $status, pattern: $pattern)"
  sed 's/^/       /' "$work/out" | tail -5
  fails=$((fails + 1))
}
run_args=(run --input "$root/test_inputs" --weights "$root/weights/default")
probability() { cat "$work/$1/probability-covid-19.json"; }

echo "== no driver"
check "the CUDA build alone does not start" "$work/none" 1 'libcuda\.so\.1' "$app/ctgrade-cuda" --version
check "auto: CPU, one warning" "$work/none" 0 'warning: CUDA device 0 cannot be used: no NVIDIA driver \(libcuda\.so\.1' "$app/ctgrade" device
check "cuda: fails with the reason" "$work/none" 1 '^error: CUDA device 0 cannot be used: no NVIDIA driver' "$app/ctgrade" device --device cuda
check "run grades on the CPU" "$work/none" 0 'running on cpu' "$app/ctgrade" "${run_args[@]}" --output "$work/cpu"

echo "== a driver whose every call fails (the link stub)"
check "auto: CPU, one warning" "$work/stub" 0 "warning: CUDA device 0 cannot be used: the NVIDIA driver's cuInit failed: error 999; running on the CPU" "$app/ctgrade" device
check "the CUDA build's own check says why" "$work/stub" 0 '"build":"cuda","device":"cpu".*cuInit failed' "$app/ctgrade-cuda" device
check "the CUDA build run directly falls back" "$work/stub" 0 'running on cpu' "$app/ctgrade-cuda" "${run_args[@]}" --output "$work/cuda-stub"

echo "== a driver for CUDA 12.4"
check "auto: CPU, the CUDA build says it needs 13.0" "$work/old" 0 'ctgrade-cuda: the NVIDIA driver supports CUDA 12\.4, this build needs CUDA 13\.0 \(driver 580\.65\.06 or newer\); running on the CPU' "$app/ctgrade" device
check "cuda: fails with that reason" "$work/old" 1 '^error: CUDA device 0 cannot be used: .*needs CUDA 13\.0' "$app/ctgrade" device --device cuda

echo "== a driver for CUDA 13.0 that cannot open its device"
check "the process is handed over" "$new" 0 '"build":"cuda","device":"cuda:0"' "$app/ctgrade" device
check "auto: the CUDA build falls back itself" "$new" 0 'warning: cannot open CUDA device 0: .*running on the CPU' "$app/ctgrade" "${run_args[@]}" --output "$work/cuda-new"
check "cuda: fails naming the device" "$new" 1 'error: cannot open CUDA device 0' "$app/ctgrade" "${run_args[@]}" --device cuda --output "$work/cuda-fail"

echo "== every fallback grades as the CPU build does"
for out in cuda-stub cuda-new; do
  if [ -f "$work/$out/probability-covid-19.json" ] && [ "$(probability cpu)" = "$(probability "$out")" ]; then
    echo "ok   $out: probability $(probability "$out")"
  else
    echo "FAIL $out: probability differs from the CPU build's or is missing"
    fails=$((fails + 1))
  fi
done
[ "$fails" = 0 ] && echo "check-cuda-fallback: all passed" || { echo "check-cuda-fallback: $fails failed"; exit 1; }
