#!/usr/bin/env bash
# GPU check of a CUDA build of ctgrade (issue 10). Run ON the GPU machine, from the repo root:
#   scripts/gpu-check.sh [BINARY]          (default .gpu/ctgrade, built by scripts/build-cuda.sh;
#                                           BINARY.gz is unpacked when BINARY is absent)
# It needs python3 with torch (CUDA) + safetensors + numpy (tools/gpu_reference.py builds the same
# random DenseNets in plain torch) and the CUDA runtime libraries that PyTorch's wheels carry.
#
# Steps (each is timed and recorded; a failing step does not stop the others):
#   env       nvidia-smi, torch/CUDA/cuDNN versions, the libraries the binary resolves (ldd)
#   parity    DenseNet-201 3-D, same random weights and input: ctgrade cpu vs ctgrade cuda vs PyTorch
#             (cpu and cuda, strict f32) on a small input, then ctgrade cuda vs PyTorch cuda at the
#             full network input 1x3x128x240x240; max |diff| <= 1e-3 passes. The GPU runs of
#             ctgrade are repeated with NVIDIA_TF32_OVERRIDE=0 (candle lets cuDNN use TF32)
#   half      f16/bf16 (`--precision`) outputs against f32 at the full input, and their time per
#             forward (accuracy and speed recorded, no verdict)
#   bench     time per forward at 3x128x240x240: ctgrade bench --device cuda vs PyTorch eager with
#             TF32 off (a fair f32 comparison), PyTorch's defaults (cuDNN convs may use TF32), and
#             defaults + cudnn.benchmark
#   run       end to end: `ctgrade run` of a 10-member DenseNet-201 ensemble (random weights,
#             manifest by `ctgrade ensemble new`) on one synthetic 512x512x300 CT, timed twice
#   native    the same parity, bench (f32, f16) and run with cuDNN's native 3-D convolution
#             (CTGRADE_CUDNN_CONV3D=1, opt-in until this check passes on a GPU)
# Writes $OUT/summary.json (every number and verdict) and $OUT/gpu-check.log; OUT defaults to
# /tmp/ctgrade-gpu-check. Work files go to $WORK (default /tmp/ctgrade-gpu-work).
#
# CTGRADE_GPU_CHECK_SMOKE=1: the same steps at toy sizes (a small DenseNet config, small inputs,
# a 2-member ensemble on a small CT), on DEVICE=cpu by default, to test this script without a GPU.
# Other knobs: DEVICE (cuda), TORCH_DEVICE (cuda), PYTHON (python3), REPEAT (10), MEMBERS (10),
# STEP_TIMEOUT (150 s per command), CTGRADE_EXTRA_LIBS (more library folders to search).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath -m "${1:-$root/.gpu/ctgrade}")
out=$(realpath -m "${OUT:-/tmp/ctgrade-gpu-check}")
work=$(realpath -m "${WORK:-/tmp/ctgrade-gpu-work}")
smoke=${CTGRADE_GPU_CHECK_SMOKE:-0}
# QUICK=1 drops the repeated and secondary variants, for a short lease.
quick=${QUICK:-0}
python=${PYTHON:-python3}
ref=$root/tools/gpu_reference.py
step_timeout=${STEP_TIMEOUT:-150}
arch=densenet201-3d
if [ "$smoke" = 1 ]; then
  device=${DEVICE:-cpu} tdevice=${TORCH_DEVICE:-cpu}
  repeat=${REPEAT:-2} members=${MEMBERS:-2}
  small=1,3,32,48,48 full=1,3,48,64,64 bench_shape=3,32,48,48
  ct_size=96,96,48 ct_spacing=3.6,3.6,6.0
else
  device=${DEVICE:-cuda} tdevice=${TORCH_DEVICE:-cuda}
  repeat=${REPEAT:-10} members=${MEMBERS:-10}
  small=1,3,64,96,96 full=1,3,128,240,240 bench_shape=3,128,240,240
  ct_size=512,512,300 ct_spacing=0.7,0.7,1.0
fi

mkdir -p "$out" "$work"
rm -rf "${work:?}"/* "$out/summary.json" "$out/gpu-check.log"
steps=$work/steps
mkdir -p "$steps"
log=$out/gpu-check.log
exec > >(tee -a "$log") 2>&1
t_start=$(date +%s.%N)
# A gzipped binary travels in a third of the space (the device machine takes 64 MiB of files).
if [ ! -f "$bin" ] && [ -f "$bin.gz" ]; then
  gunzip -c "$bin.gz" >"$work/ctgrade" && chmod +x "$work/ctgrade" && bin=$work/ctgrade
fi
[ -x "$bin" ] || { echo "gpu-check: no executable $bin (or $bin.gz); build it with scripts/build-cuda.sh"; exit 2; }
echo "== ctgrade GPU check $(date -u +%FT%TZ): binary $bin, device $device, smoke=$smoke, work $work"

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# step NAME CMD...: runs CMD with a timeout, its stdout to $steps/NAME.out (and the log), records
# the exit status and wall seconds in $steps/NAME.meta. Returns CMD's status.
step() {
  local name=$1; shift
  echo "-- [$name] $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout "$step_timeout" "$@" >"$steps/$name.out" 2>"$steps/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  sed 's/^/   /' "$steps/$name.out" | cut -c1-400
  sed 's/^/   ! /' "$steps/$name.err" | tail -15 | cut -c1-400
  printf '{"rc": %d, "seconds": %s, "command": %s}\n' "$rc" "$(secs "$t0" "$t1")" \
    "$("$python" -c 'import json,sys; print(json.dumps(" ".join(sys.argv[1:])))' "$@")" >"$steps/$name.meta"
  echo "   rc=$rc in $(secs "$t0" "$t1") s"
  return $rc
}

# ---- env: libraries. The binary links cudart, cuBLAS(Lt), cuRAND, NVRTC and cuDNN dynamically; take
# them from PyTorch's nvidia-* wheels (the versions scripts/build-cuda.sh pins for CUDA 13.0), then
# from a system toolkit.
libdirs=$("$python" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    roots = []
dirs = []
for r in roots:
    dirs += sorted(d for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")) if os.path.isdir(d))
print(":".join(dirs))
EOF
)
for d in ${CTGRADE_EXTRA_LIBS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libdirs=$libdirs:$d
done
export LD_LIBRARY_PATH=${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The PTX JIT cache: later processes reuse what the first one compiled.
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$work/nv-cache} CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-1073741824}

step env_nvidia_smi nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv
step env_torch "$python" -c '
import json, torch, safetensors, numpy
d = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
     "cuda_available": torch.cuda.is_available(), "safetensors": safetensors.__version__, "numpy": numpy.__version__}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(gpu=p.name, sms=p.multi_processor_count, memory_gib=p.total_memory / 2**30)
print(json.dumps(d))'
echo "   LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
step env_ldd bash -c "ldd '$bin' | grep -E 'cuda|cublas|curand|nvrtc|cudnn|not found'; ! ldd '$bin' | grep -q 'not found'"
step env_version "$bin" --version

# ---- parity
cfg_args=()
if [ "$smoke" = 1 ]; then
  echo '{"block_config": [2, 3, 4, 2], "growth_rate": 8, "init_features": 16, "bn_size": 2}' >"$work/tiny.json"
  cfg_args=(--config "$work/tiny.json")
fi
W=$work/dn201.safetensors XS=$work/x_small.safetensors XF=$work/x_full.safetensors
step make_weights "$python" "$ref" make --arch $arch "${cfg_args[@]}" --shape "$small" --seed 11 \
  --weights "$W" --input "$XS"
step make_input_full "$python" "$ref" make --arch $arch "${cfg_args[@]}" --shape "$full" --seed 12 --input "$XF"

fwd=("$bin" forward --arch $arch "${cfg_args[@]}" --weights "$W")
tfwd=("$python" "$ref" forward --arch $arch "${cfg_args[@]}" --weights "$W")
step small_ct_gpu "${fwd[@]}" --input "$XS" --device "$device"         # first CUDA use: includes the PTX JIT
[ "$quick" = 1 ] || step small_ct_gpu_again "${fwd[@]}" --input "$XS" --device "$device"   # JIT cache warm
step small_ct_cpu "${fwd[@]}" --input "$XS" --device cpu
step small_torch_gpu "${tfwd[@]}" --input "$XS" --device "$tdevice" --tf32 off
[ "$quick" = 1 ] || step small_torch_cpu "${tfwd[@]}" --input "$XS" --device cpu
cmp() { step "$1" "$python" "$ref" compare "$steps/$2.out" "$steps/$3.out" --tol 1e-3; }
cmp cmp_small_ct_gpu_vs_ct_cpu small_ct_gpu small_ct_cpu
cmp cmp_small_ct_gpu_vs_torch_gpu small_ct_gpu small_torch_gpu
[ "$quick" = 1 ] || cmp cmp_small_ct_cpu_vs_torch_cpu small_ct_cpu small_torch_cpu
step full_ct_gpu "${fwd[@]}" --input "$XF" --device "$device"
step full_torch_gpu "${tfwd[@]}" --input "$XF" --device "$tdevice" --tf32 off
cmp cmp_full_ct_gpu_vs_torch_gpu full_ct_gpu full_torch_gpu
# candle leaves cuDNN's math type at its default, which lets float convolutions use TF32 on
# Ampere and later; NVIDIA_TF32_OVERRIDE=0 forbids TF32 process-wide (cuDNN and cuBLAS).
step full_ct_gpu_notf32 env NVIDIA_TF32_OVERRIDE=0 "${fwd[@]}" --input "$XF" --device "$device"
cmp cmp_full_ct_gpu_notf32_vs_torch_gpu full_ct_gpu_notf32 full_torch_gpu
[ "$quick" = 1 ] || step small_ct_gpu_notf32 env NVIDIA_TF32_OVERRIDE=0 "${fwd[@]}" --input "$XS" --device "$device"
[ "$quick" = 1 ] || cmp cmp_small_ct_gpu_notf32_vs_ct_cpu small_ct_gpu_notf32 small_ct_cpu

# ---- reduced precision (accuracy and speed recorded, no verdict)
for dt in f16 bf16; do
  step "full_ct_gpu_$dt" "${fwd[@]}" --input "$XF" --device "$device" --precision $dt &&
    step "cmp_full_ct_gpu_${dt}_vs_f32" "$python" "$ref" compare "$steps/full_ct_gpu_$dt.out" \
      "$steps/full_ct_gpu.out" --tol 1e9
  step "bench_ct_gpu_$dt" "$bin" bench --arch $arch "${cfg_args[@]}" --input "$bench_shape" \
    --device "$device" --repeat "$repeat" --precision $dt
done

# ---- speed
step bench_ct_gpu "$bin" bench --arch $arch "${cfg_args[@]}" --input "$bench_shape" --device "$device" --repeat "$repeat"
[ "$quick" = 1 ] || step bench_ct_gpu_notf32 env NVIDIA_TF32_OVERRIDE=0 "$bin" bench --arch $arch "${cfg_args[@]}" --input "$bench_shape" \
  --device "$device" --repeat "$repeat"
tb=("$python" "$ref" bench --arch $arch "${cfg_args[@]}" --shape "$bench_shape" --device "$tdevice" --repeat "$repeat")
step bench_torch_gpu_f32 "${tb[@]}" --tf32 off
step bench_torch_gpu_default "${tb[@]}" --tf32 default
[ "$quick" = 1 ] || step bench_torch_gpu_default_cudnn_benchmark "${tb[@]}" --tf32 default --cudnn-benchmark

# ---- end to end: a 10-member ensemble on one full-size CT
ens=$work/ensemble
step make_members "$python" "$ref" make --arch $arch "${cfg_args[@]}" --shape "$small" --seed 100 \
  --members "$members" --members-dir "$ens/members"
ens_cfg=()
if [ "$smoke" = 1 ] && "$bin" ensemble new --help 2>/dev/null | grep -q -- '--config'; then
  ens_cfg=(--config "$work/tiny.json")
fi
step ensemble_new "$bin" ensemble new --arch $arch "${ens_cfg[@]}" --head continuous \
  --members "$ens"/members/member*.safetensors --out "$ens/model"
mkdir -p "$work/input/images/ct"
step synth "$bin" synth --out "$work/input/images/ct/case.mha" --size "$ct_size" --spacing "$ct_spacing" \
  --co-rads 3 --seed 1
for k in 1 2; do
  rm -rf "$work/output$k"
  step "run_$k" "$bin" run --input "$work/input" --output "$work/output$k" --weights "$ens/model" --device "$device"
  find "$work/output$k" -name '*.json' -exec sh -c 'echo "   $1: $(head -c 300 "$1")"' _ {} \; 2>/dev/null
done

# ---- cuDNN's native 3-D convolution (opt-in): parity, speed, end to end
nat=(env CTGRADE_CUDNN_CONV3D=1)
step full_ct_gpu_native "${nat[@]}" "${fwd[@]}" --input "$XF" --device "$device"
cmp cmp_full_ct_gpu_native_vs_torch_gpu full_ct_gpu_native full_torch_gpu
step bench_ct_gpu_native "${nat[@]}" "$bin" bench --arch $arch "${cfg_args[@]}" --input "$bench_shape" \
  --device "$device" --repeat "$repeat"
step full_ct_gpu_native_f16 "${nat[@]}" "${fwd[@]}" --input "$XF" --device "$device" --precision f16 &&
  step cmp_full_ct_gpu_native_f16_vs_f32 "$python" "$ref" compare "$steps/full_ct_gpu_native_f16.out" \
    "$steps/full_ct_gpu.out" --tol 1e9
step bench_ct_gpu_native_f16 "${nat[@]}" "$bin" bench --arch $arch "${cfg_args[@]}" --input "$bench_shape" \
  --device "$device" --repeat "$repeat" --precision f16
rm -rf "$work/output_native"
step run_native "${nat[@]}" "$bin" run --input "$work/input" --output "$work/output_native" \
  --weights "$ens/model" --device "$device"

# ---- summary
"$python" - "$steps" "$out/summary.json" "$bin" "$device" "$smoke" "$t_start" <<'EOF'
import glob, json, os, sys, time
steps, dest, binary, device, smoke, t_start = sys.argv[1:]
res = {"binary": binary, "device": device, "smoke": smoke == "1", "steps": {}}
def parse(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            pass
    return None
for meta in sorted(glob.glob(os.path.join(steps, "*.meta")), key=os.path.getmtime):
    name = os.path.basename(meta)[:-5]
    m = json.load(open(meta))
    text = open(os.path.join(steps, name + ".out"), errors="replace").read()
    err = open(os.path.join(steps, name + ".err"), errors="replace").read().strip().splitlines()
    m["json"] = parse(text)
    if m["json"] is None:
        m["stdout_tail"] = text.strip().splitlines()[-5:]
    if m["rc"] != 0 or name.startswith("run_"):
        m["stderr_tail"] = err[-8:]
    res["steps"][name] = m
s = res["steps"]
def j(name, key):
    v = s.get(name, {}).get("json")
    return v.get(key) if isinstance(v, dict) else None
def ok(name):
    return name in s and s[name]["rc"] == 0
res["verdict"] = {
    "binary_loads": ok("env_version"),
    "parity_small_cpu_vs_gpu": ok("cmp_small_ct_gpu_vs_ct_cpu"),
    "parity_small_gpu_vs_torch": ok("cmp_small_ct_gpu_vs_torch_gpu"),
    "parity_full_gpu_vs_torch": ok("cmp_full_ct_gpu_vs_torch_gpu"),
    "parity_full_gpu_vs_torch_tf32_forbidden": ok("cmp_full_ct_gpu_notf32_vs_torch_gpu"),
    "parity_small_cpu_vs_gpu_tf32_forbidden": ok("cmp_small_ct_gpu_notf32_vs_ct_cpu"),
    "max_abs_diff": {n[4:]: j(n, "max_abs") for n in s if n.startswith("cmp_")},
    "ctgrade_forward_s": j("bench_ct_gpu", "median_s"),
    "ctgrade_forward_tf32_forbidden_s": j("bench_ct_gpu_notf32", "median_s"),
    "parity_full_gpu_native_vs_torch": ok("cmp_full_ct_gpu_native_vs_torch_gpu"),
    "ctgrade_forward_native_s": j("bench_ct_gpu_native", "median_s"),
    "ctgrade_forward_native_f16_s": j("bench_ct_gpu_native_f16", "median_s"),
    "run_native_seconds": s.get("run_native", {}).get("seconds"),
    "ctgrade_forward_f16_s": j("bench_ct_gpu_f16", "median_s"),
    "ctgrade_forward_bf16_s": j("bench_ct_gpu_bf16", "median_s"),
    "torch_forward_f32_s": j("bench_torch_gpu_f32", "median_s"),
    "torch_forward_default_s": j("bench_torch_gpu_default", "median_s"),
    "torch_forward_default_cudnn_benchmark_s": j("bench_torch_gpu_default_cudnn_benchmark", "median_s"),
    "first_cuda_forward_s (includes PTX JIT)": s.get("small_ct_gpu", {}).get("seconds"),
    "run_seconds": [s[n]["seconds"] for n in ("run_1", "run_2") if ok(n)],
    "run_ok": ok("run_1") and ok("run_2"),
}
v = res["verdict"]
if v["ctgrade_forward_s"] and v["torch_forward_f32_s"]:
    v["ctgrade_over_torch_f32"] = v["ctgrade_forward_s"] / v["torch_forward_f32_s"]
if v["ctgrade_forward_s"] and v["torch_forward_default_s"]:
    v["ctgrade_over_torch_default"] = v["ctgrade_forward_s"] / v["torch_forward_default_s"]
res["total_seconds"] = time.time() - float(t_start)
json.dump(res, open(dest, "w"), indent=1)
print(json.dumps(v, indent=1))
EOF
echo "== done in $(secs "$t_start" "$(date +%s.%N)") s; summary: $out/summary.json, log: $log"
