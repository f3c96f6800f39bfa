#!/usr/bin/env bash
# Builds `ctgrade` with candle's CUDA + cuDNN backends on a machine without a CUDA toolkit or GPU.
#
# NVIDIA's compiler and libraries come from PyPI wheels (pip download, no pip install): only the
# files the build needs are unpacked into one CUDA_HOME-shaped prefix (bin/ nvvm/ include/ lib/).
# The driver library (libcuda.so.1) has no wheel; it is replaced at link time by a stub generated
# from the driver functions cudarc declares, exactly as NVIDIA's own lib/stubs/libcuda.so works.
# The binary links cudart, cuBLAS(Lt), cuRAND, NVRTC and cuDNN dynamically: the machine that runs it
# needs the driver plus those libraries (same major versions) on its library path.
#
# Usage: scripts/build-cuda.sh [--cap 75] [--cuda 13.0] [--prefix DIR] [--out FILE]
#                              [--check-rust-only] [--keep-wheels] [--install-only]
#   --cap N      CUDA compute capability the kernels are compiled for (default 75 = T4). candle's kernels
#                are PTX, which the driver JIT-compiles for any newer GPU, so 75 also runs on A100/H100;
#                90 builds sm_90a code that runs on H100/H200 only.
#   --cuda V     toolkit line; only 13.0 (what PyTorch 2.11 cu130 ships): NVIDIA's CUDA 12 wheels
#                carry ptxas but no nvcc. The driver must be at least as new as the toolkit to load
#                cudart 13 and JIT its PTX: driver >= 580.
#   --prefix DIR where the toolchain goes (default .cuda-toolchain/ in the repo root).
#   --out FILE   where the binary is copied (default .gpu/ctgrade).
#   --check-rust-only  `cargo check` with a stand-in nvcc that writes empty kernel files: checks all
#                the Rust code behind the cuda/cudnn features, downloads nothing, but compiles no CUDA
#                code and links nothing (a cheap CI job; the default mode is the real build).
#   --install-only  install the toolchain, print the environment to use, build nothing.
# Honours CARGO_TARGET_DIR.
set -euo pipefail

cap=75
cuda=13.0
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=$root/.cuda-toolchain
out=$root/.gpu/ctgrade
mode=build
keep_wheels=0
while [ $# -gt 0 ]; do
  case $1 in
    --cap) cap=$2; shift 2 ;;
    --cuda) cuda=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --install-only) mode=install; shift ;;
    --check-rust-only) mode=rust-only; shift ;;
    --keep-wheels) keep_wheels=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
prefix=$(realpath -m "$prefix") out=$(realpath -m "$out")
case $cap in ''|*[!0-9a]*) echo "build-cuda.sh: --cap wants a number such as 75 or 90, got '$cap'" >&2; exit 2 ;; esac

# Pinned wheel set: exactly what PyTorch 2.11+cu130 depends on (cuda-toolkit 13.0.2, cuDNN
# 9.19.0.56), so a GPU machine's torch venv carries the same runtime libraries. (CUDA 12 cannot be
# built this way: nvidia-cuda-nvcc-cu12 12.6-12.9 hold ptxas and libnvvm only, no nvcc or cicc.)
case $cuda in
  13.0)
    cudarc_version=13000
    wheels="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
            nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88
            nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.19.0.56" ;;
  *) echo "build-cuda.sh: --cuda must be 13.0, got '$cuda' (CUDA 12 has no nvcc wheel)" >&2; exit 2 ;;
esac

home=$prefix/cuda-$cuda
stamp=$home/.installed
want_stamp=$(echo $wheels)
python=${PYTHON:-python3}
t0=$(date +%s)

install_toolchain() {
  local dl=$prefix/wheels-$cuda
  rm -rf "$home" && mkdir -p "$home" "$dl"
  echo "== downloading NVIDIA wheels for CUDA $cuda into $dl"
  # shellcheck disable=SC2086
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    -d "$dl" $wheels
  echo "== unpacking the files the build needs into $home"
  # Wheels lay files out as nvidia/<component>/{bin,include,lib,nvvm}; merge the components into
  # one toolkit tree. From lib/ take only the libraries that are linked (no static archives, no
  # cuDNN engine libraries, which are loaded at run time only).
  "$python" - "$dl" "$home" <<'EOF'
import os, re, stat, sys, zipfile
dl, home = sys.argv[1], sys.argv[2]
keep_lib = re.compile(r"lib(cudart|cublas|cublasLt|curand|nvrtc|cudnn)\.so\.[0-9]+$")
total = 0
for name in sorted(os.listdir(dl)):
    if not name.endswith(".whl"):
        continue
    with zipfile.ZipFile(os.path.join(dl, name)) as z:
        n = 0
        for info in z.infolist():
            parts = info.filename.split("/")
            if len(parts) < 4 or parts[0] != "nvidia" or info.is_dir():
                continue
            rel = parts[2:]
            top = rel[0]
            if top in ("bin", "include", "nvvm"):
                pass
            elif top in ("lib", "lib64") and len(rel) == 2 and keep_lib.match(rel[1]):
                rel = ["lib", rel[1]]
            else:
                continue
            dest = os.path.join(home, *rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 or rel[0] == "bin" or rel[:2] == ["nvvm", "bin"]:
                os.chmod(dest, os.stat(dest).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            n += 1
            total += info.file_size
        print(f"   {name}: {n} files")
print(f"   {total / 2**20:.0f} MiB unpacked")
EOF
  # The linker wants libfoo.so; wheels ship only libfoo.so.N. The big runtime libraries are only
  # linked against here, never run (no GPU), so each becomes a stub with the same soname and the same
  # exported functions (read from the real library), which keeps the toolchain small.
  for lib in "$home"/lib/lib*.so.*; do
    base=${lib##*/}
    case $base in
      libcublas.so.* | libcublasLt.so.* | libcurand.so.* | libnvrtc.so.*)
        nm -D --defined-only "$lib" | awk '$2 == "T" { print $3 }' | sed 's/@.*//' | sort -u >"$lib.syms"
        make_stub "${base%%.so.*}" "$base" "$lib.syms"
        rm -f "$lib" "$lib.syms" ;;
      *) ln -sf "$base" "$home/lib/${base%%.so.*}.so" ;;
    esac
  done
  make_driver_stub
  # For running a CUDA build on a machine without GPU (CPU paths only), the stubs under the names
  # the loader asks for. Never put this folder on the library path of a machine with a GPU.
  mkdir -p "$home/lib/stubs-run"
  for stub in "$home"/lib/stubs/libcuda.so "$home"/lib/lib{cublas,cublasLt,curand,nvrtc}.so; do
    ln -sf "../${stub#"$home"/lib/}" "$home/lib/stubs-run/$(readelf -d "$stub" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
  done
  [ "$keep_wheels" = 1 ] || rm -rf "$dl"
  echo "$want_stamp" >"$stamp"
}

# libcuda.so.1 belongs to the driver, which no wheel carries. Link against a stub with the same
# soname that defines every driver function cudarc declares; at run time the real driver is loaded.
make_driver_stub() {
  local sys
  sys=$(cd "$root" && cargo metadata --format-version 1 --features cuda,cudnn 2>/dev/null |
    "$python" -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')/src/driver/sys/mod.rs
  [ -f "$sys" ] || { echo "build-cuda.sh: cannot find cudarc's driver bindings ($sys)" >&2; exit 1; }
  mkdir -p "$home/lib/stubs"
  grep -ohE '\bfn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/^fn //; s/\($//' | sort -u >"$home/lib/stubs/libcuda.syms"
  make_stub stubs/libcuda libcuda.so.1 "$home/lib/stubs/libcuda.syms"
  rm -f "$home/lib/stubs/libcuda.syms"
}

# make_stub NAME SONAME SYMFILE: lib/NAME.so with soname SONAME defining each function in SYMFILE
# (each returns an error code, should the stub ever be called instead of the real library).
make_stub() {
  local so=$home/lib/$1.so
  sed 's/.*/int &(void) { return 999; }/' "$3" >"$so.c"
  cc -shared -fPIC -Wl,-soname,"$2" -o "$so" "$so.c"
  rm -f "$so.c"
  echo "   link stub $so ($2, $(wc -l <"$3") functions)"
}

# A stand-in for nvcc: creates the files candle-kernels' build script (cudaforge) expects (one .ptx
# per kernel source, objects, an empty libmoe.a) without compiling anything.
if [ "$mode" = rust-only ]; then
  fake=$prefix/fake-nvcc
  mkdir -p "$fake/bin" "$fake/include"
  cat >"$fake/bin/nvcc" <<'NVCC'
#!/bin/sh
# Stand-in nvcc written by scripts/build-cuda.sh --check-rust-only: compiles nothing.
out=; dir=; kind=obj; src=
while [ $# -gt 0 ]; do
  case $1 in
    --version) printf 'nvcc: stand-in\n\n\nCuda compilation tools, release %s, stand-in\n' "${FAKE_NVCC_RELEASE:-13.0}"; exit 0 ;;
    -o) out=$2; shift ;;
    --output-directory) dir=$2; shift ;;
    --ptx) kind=ptx ;;
    --lib) kind=lib ;;
    *.cu) src=$1 ;;
  esac
  shift
done
case $kind in
  ptx) name=${src##*/}; echo "// stand-in for $name" >"$dir/${name%.cu}.ptx" ;;
  lib) rm -f "$out"; ar rc "$out" ;;
  *) : >"$out" ;;
esac
NVCC
  chmod +x "$fake/bin/nvcc"
  export CUDA_HOME=$fake CUDA_PATH=$fake CUDA_ROOT=$fake NVCC=$fake/bin/nvcc PATH=$fake/bin:$PATH
  export CUDARC_CUDA_VERSION=$cudarc_version CUDA_COMPUTE_CAP=$cap FAKE_NVCC_RELEASE=$cuda
  cd "$root"
  # Its own target folder: the empty kernel files must never reach a real build (cudaforge's cache
  # does not notice that nvcc changed).
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}/fake-nvcc
  echo "== cargo check --features cuda,cudnn with a stand-in nvcc (no CUDA code compiled), target $CARGO_TARGET_DIR"
  cargo check --locked --features cuda,cudnn --all-targets
  echo "== rust-only cuda check done in $(($(date +%s) - t0)) s"
  exit 0
fi

command -v cc >/dev/null || { echo "build-cuda.sh: needs a C/C++ compiler (apt-get install build-essential)" >&2; exit 1; }
"$python" -m pip --version >/dev/null 2>&1 || { echo "build-cuda.sh: needs pip (apt-get install python3-pip)" >&2; exit 1; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
  echo "== CUDA $cuda toolchain already in $home"
else
  install_toolchain
fi
t1=$(date +%s)
echo "   toolchain: $(du -sh "$home" | cut -f1) in $home ($((t1 - t0)) s)"

# cudaforge (candle-kernels' build script) finds nvcc through NVCC/PATH and reads CUDA_COMPUTE_CAP;
# cudarc reads the toolkit version (CUDARC_CUDA_VERSION, else `nvcc --version`) and the link
# directories (CUDA_HOME/lib, lib/stubs).
export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home NVCC=$home/bin/nvcc
export PATH=$home/bin:$PATH
export CUDARC_CUDA_VERSION=$cudarc_version CUDA_COMPUTE_CAP=$cap
"$NVCC" --version | tail -2 | head -1 | sed 's/^/   nvcc: /'
if [ "$mode" = install ]; then
  echo "export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home NVCC=$home/bin/nvcc PATH=$home/bin:\$PATH CUDARC_CUDA_VERSION=$cudarc_version CUDA_COMPUTE_CAP=$cap"
  exit 0
fi

cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
echo "== cargo build --release --features cuda,cudnn --bin ctgrade (CUDA_COMPUTE_CAP=$cap, target $target)"
cargo build --locked --release --features cuda,cudnn --bin ctgrade
t2=$(date +%s)
mkdir -p "$(dirname "$out")"
# Debug line tables make the binary large; the copy that travels to a GPU machine does not need them.
objcopy --strip-debug "$target/release/ctgrade" "$out"
gzip -c "$out" >"$out.gz"
echo "== libraries the binary needs at run time:"
readelf -d "$out" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/   \1/p'
echo "== built in $((t2 - t1)) s (toolchain $((t1 - t0)) s)"
echo "   binary: $target/release/ctgrade ($(du -h "$target/release/ctgrade" | cut -f1))"
echo "   stripped copy: $out ($(du -h "$out" | cut -f1)), kernels for compute capability $cap, CUDA $cuda"
echo "   gzipped: $out.gz ($(du -h "$out.gz" | cut -f1)); scripts/gpu-check.sh unpacks it"
echo "   it needs libcuda.so.1 (the driver) to start at all; to run its CPU paths here without a GPU:"
echo "   LD_LIBRARY_PATH=$home/lib:$home/lib/stubs-run $out --help"
