#!/usr/bin/env bash
# Container test, run exactly as grand-challenge runs algorithms: no network, all capabilities dropped,
# no new privileges, memory limit, read-only root file system, read-only /input and /opt/ml/model,
# writable /tmp and /output, non-root user, --gpus all when a GPU is present.
# The invoke image (the default) is tested as the platform's current template tests it: the label is
# checked, the server runs on an internal network, and a tester container polls GET /health and
# POSTs /invoke for several jobs in a row, the input re-provisioned and the output cleared between
# them. Each answer is compared with the exec image's on the same input.
#
# No registry is reachable on the build machines, so the image is built on a locally made Debian base
# (scripts/make-base-image.sh) from the binary built here (PREBUILT). On a normal machine:
#   docker build -t ctgrade . && IMAGE=ctgrade SKIP_BUILD=1 scripts/docker-test.sh
#
#   scripts/docker-test.sh [algorithm|evaluation|all]     (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
base=${BASE_IMAGE:-ctgrade-base:bookworm}
work=$(mktemp -d /tmp/ctgrade-docker-test.XXXXXX)
fail() { echo "docker-test: FAIL: $*" >&2; exit 1; }

gpu_args=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu_args=(--gpus all); fi
# The platform's flags besides the network and the memory limit, then those of a one-off run.
flags=(--cap-drop all --security-opt no-new-privileges --pids-limit 512 --init --read-only
       --tmpfs /tmp:rw,exec,size=2g "${gpu_args[@]}")
run_args=(--rm --network none --memory 8g --memory-swap 8g "${flags[@]}")

if [ -z "${SKIP_BUILD:-}" ]; then
  scripts/make-base-image.sh "$base"
  cargo build --release --locked --workspace --bins
fi

check_user() {
  local user
  user=$(docker image inspect -f '{{.Config.User}}' "$1")
  case "$user" in ""|root|0) fail "$1 runs as '$user'; grand-challenge rejects root images";; esac
  echo "docker-test: $1 runs as user '$user'"
}

# Names of what a test started, removed on exit.
containers=(); networks=()
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  for n in "${networks[@]}"; do docker network rm "$n" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

check_label() {  # IMAGE EXPECTED ("invoke" or "" for exec)
  local label
  label=$(docker image inspect -f '{{index .Config.Labels "org.grand-challenge.api-method"}}' "$1")
  [ "$label" = "$2" ] || fail "$1 has api-method label '$label', expected '$2'"
  echo "docker-test: $1 api-method label '${label:-none (exec)}'"
}

# Starts a tester container (the base image, with curl) on network $1; prints its name.
start_tester() {
  local name="ctgrade-tester-$$-$RANDOM"
  docker run -d --name "$name" --network "$1" "$base" sleep 3600 >/dev/null
  containers+=("$name"); echo "$name"
}

# Polls http://$2:4743/health from tester $1 as the platform does: 30 tries, 5 s apart, 10 s each.
wait_healthy() {
  local code
  for _ in $(seq 30); do
    code=$(docker exec "$1" curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$2:4743/health" || true)
    [ "$code" = 200 ] && return 0
    case "$code" in 3??) fail "/health answered a redirect ($code)";; esac
    sleep 5
  done
  fail "$2 never answered /health with 200"
}

# POST /invoke from tester $1 to server $2; prints the status code (body in the tester's /tmp/body).
invoke() {
  docker exec "$1" curl -s -o /tmp/body -w '%{http_code}' --max-time 300 -X POST "http://$2:4743/invoke" || true
}

# Empties a bind-mounted folder in place (the mount keeps pointing at it).
empty_dir() { find "$1" -mindepth 1 -delete; }

algorithm() {
  local image=${IMAGE:-ctgrade:test} exec_image=${EXEC_IMAGE:-ctgrade:test-exec}
  if [ -z "${SKIP_BUILD:-}" ]; then
    for m in invoke exec; do
      local tag=$image; [ "$m" = exec ] && tag=$exec_image
      docker build -q --build-arg API_METHOD=$m --build-arg PREBUILT=target/release/ctgrade \
        --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$tag" . >/dev/null
    done
  fi
  check_user "$image"; check_user "$exec_image"
  check_label "$image" invoke; check_label "$exec_image" ""

  # The jobs, each a complete /input: the CT socket (today's inputs.json), CT plus lesion socket,
  # a broken CT, and the CT again with the older inputs.json spelling.
  local cases="$work/cases" bin=target/release/ctgrade
  mkdir -p "$cases/ct" "$cases/lesion/images/ct" "$cases/lesion/images/covid-19-lesion-segmentation" \
    "$cases/broken/images/ct" "$cases/ct-interface"
  cp -r test_inputs/images test_inputs/inputs.json "$cases/ct/"
  "$bin" synth --out "$cases/lesion/images/ct/5d0e.mha" --seed 21 --co-rads 5 --size 96,96,48 --spacing 3.5,3.5,6 \
    --lung-mask "$cases/lesion/images/covid-19-lesion-segmentation/77c1.mha" >/dev/null 2>&1 \
    || fail "ctgrade synth failed"
  printf 'ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = LOCAL\n' \
    > "$cases/broken/images/ct/broken.mha"
  cp -r test_inputs/images "$cases/ct-interface/"
  sed 's/"socket": {/"interface": {/' test_inputs/inputs.json > "$cases/ct-interface/inputs.json"
  grep -q '"interface"' "$cases/ct-interface/inputs.json" || fail "could not make the old inputs.json"
  local jobs=(ct lesion broken ct-interface)

  # Exec: one container per job, weights baked into the image; these answers are the reference.
  local job
  for job in "${jobs[@]}"; do
    mkdir -p "$work/exec/$job"; chmod 777 "$work/exec/$job"
    if docker run "${run_args[@]}" -v "$cases/$job:/input:ro" -v "$work/exec/$job:/output" \
         "$exec_image" 2>"$work/exec-$job.log"; then
      [ "$job" != broken ] || fail "exec: a broken input exited 0"
    else
      [ "$job" = broken ] || { cat "$work/exec-$job.log"; fail "exec: job $job failed"; }
    fi
  done
  local p c
  p=$(cat "$work/exec/ct/probability-covid-19.json"); c=$(cat "$work/exec/ct/co-rads-score.json")
  awk -v p="$p" 'BEGIN { exit !(p ~ /^[0-9.eE+-]+$/ && p >= 0 && p <= 1) }' \
    || fail "probability '$p' is not a number in [0, 1]"
  [[ "$c" =~ ^[1-5]$ ]] || fail "CO-RADS '$c' not an integer 1..5"
  local last; last=$(grep -v '^\s*$' "$work/exec-broken.log" | tail -n 1)
  [[ "$last" == *broken.mha* ]] || fail "exec: last stderr line does not name the file: $last"
  [ -z "$(ls -A "$work/exec/broken")" ] || fail "exec: outputs written for a failed case"
  echo "docker-test: exec image: probability $p, CO-RADS $c; broken input: exit non-zero, last line: $last"

  # Invoke: one server for all jobs, weights from a model tarball at /opt/ml/model, on an internal
  # network with the platform's flags; jobs provisioned into the same bind-mounted folders.
  local net="ctgrade-net-$$" srv="ctgrade-srv-$$"
  docker network create --internal "$net" >/dev/null; networks+=("$net")
  mkdir -p "$work/model" "$work/in" "$work/out"; chmod 755 "$work/in"; chmod 777 "$work/out"
  tar -czf "$work/model.tar.gz" -C weights/default .
  tar -xzf "$work/model.tar.gz" -C "$work/model"
  docker run -d --name "$srv" --network "$net" --memory 8g --memory-swap 8g "${flags[@]}" \
    -v "$work/in:/input:ro" -v "$work/out:/output" -v "$work/model:/opt/ml/model:ro" \
    "$image" >/dev/null
  containers+=("$srv")
  local tester; tester=$(start_tester "$net")
  local t0=$SECONDS
  wait_healthy "$tester" "$srv"
  echo "docker-test: invoke server healthy after $((SECONDS - t0)) s"
  docker logs "$srv" 2>&1 | grep -q "weights from /opt/ml/model" \
    || { docker logs "$srv"; fail "the server did not use /opt/ml/model"; }
  local code f
  for job in "${jobs[@]}" ct; do
    empty_dir "$work/in"; empty_dir "$work/out"
    cp -r "$cases/$job/." "$work/in/"
    code=$(invoke "$tester" "$srv")
    if [ "$job" = broken ]; then
      [ "$code" != 201 ] || fail "invoke: a broken input answered 201"
      [ -z "$(ls -A "$work/out")" ] || fail "invoke: outputs written for a failed case"
      last=$(docker logs "$srv" 2>&1 | grep -v '^\s*$' | tail -n 1)
      [[ "$last" == *broken.mha* ]] || fail "invoke: last stderr line does not name the file: $last"
      docker exec "$tester" grep -q broken.mha /tmp/body || fail "invoke: the 500 body lacks the reason"
      echo "docker-test: invoke $job: $code, last line: $last"
      continue
    fi
    [ "$code" = 201 ] || { docker logs "$srv"; fail "invoke: job $job answered $code"; }
    for f in probability-covid-19.json co-rads-score.json; do
      cmp -s "$work/out/$f" "$work/exec/$job/$f" || fail "invoke: job $job $f differs from the exec image's"
    done
    echo "docker-test: invoke $job: 201, same answer as exec ($(cat "$work/out/probability-covid-19.json"))"
  done
  # SIGTERM (docker stop) ends the server cleanly.
  docker stop -t 30 "$srv" >/dev/null
  local status; status=$(docker inspect -f '{{.State.ExitCode}}' "$srv")
  [ "$status" = 0 ] || fail "the server exited $status on SIGTERM"
  echo "docker-test: invoke server stopped on SIGTERM with exit 0"

  # A memory limit and nothing else: the cgroup is the budget. A small scan with huge voxels
  # is refused with its reason, not killed.
  local coarse="$work/coarse" out4="$work/out4"
  mkdir -p "$coarse/images/ct" "$out4"; chmod 777 "$out4"
  "$bin" synth --out "$coarse/images/ct/coarse.mha" --seed 1 --co-rads 3 --size 12,12,12 \
    --spacing 250,250,250 >/dev/null 2>&1 || fail "ctgrade synth failed"
  set +e
  docker run --rm --network none --memory 1500m --memory-swap 1500m "${flags[@]}" -v "$coarse:/input:ro" -v "$out4:/output" "$exec_image" 2>"$work/log4"
  status=$?
  set -e
  last=$(grep -v '^\s*$' "$work/log4" | tail -n 1)
  [ "$status" = 1 ] && [[ "$last" == *"more than the container's memory allows"* ]] \
    || { cat "$work/log4"; fail "--memory 1500m: exit $status, last line: $last"; }
  grep -q "memory budget 1500 MiB" "$work/log4" || { cat "$work/log4"; fail "the cgroup limit was not the budget"; }
  echo "docker-test: --memory 1500m: refused cleanly (exit 1): ${last:0:120}..."
}

evaluation() {
  local image=${EVAL_IMAGE:-ctgrade-eval:test}
  if [ -z "${SKIP_BUILD:-}" ]; then
    docker build -q -f evaluation/Dockerfile --build-arg PREBUILT=target/release/ctgrade-eval \
      --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$image" . >/dev/null
  fi
  check_user "$image"
  local fx=evaluation/tests/fixtures/platform
  local out="$work/eval-out"; mkdir -p "$out"; chmod 777 "$out"
  docker run "${run_args[@]}" -v "$PWD/$fx/input:/input:ro" \
    -v "$PWD/$fx/ground_truth:/opt/ml/input/data/ground_truth:ro" -v "$out:/output" "$image" \
    || fail "evaluation container exited $?"
  grep -q '"auc"' "$out/metrics.json" || fail "metrics.json has no auc"
  echo "docker-test: evaluation: metrics.json written ($(wc -c < "$out/metrics.json") bytes)"
}

case "$what" in
  algorithm) algorithm ;;
  evaluation) evaluation ;;
  all) algorithm; evaluation ;;
  *) fail "unknown target $what (algorithm, evaluation or all)" ;;
esac
echo "docker-test: OK"
