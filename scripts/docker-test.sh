#!/usr/bin/env bash
# Container test, run exactly as grand-challenge runs algorithms: no network, all capabilities dropped,
# no new privileges, memory limit, read-only root file system, read-only /input and /opt/ml/model,
# writable /tmp and /output, non-root user, --gpus all when a GPU is present.
#
# No registry is reachable on the build machines, so the image is built on a locally made Debian base
# (scripts/make-base-image.sh) from the binary built here (PREBUILT). On a normal machine:
#   docker build -t ctgrade . && IMAGE=ctgrade SKIP_BUILD=1 scripts/docker-test.sh
#
#   scripts/docker-test.sh [algorithm|evaluation|simulate|all]     (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
base=${BASE_IMAGE:-ctgrade-base:bookworm}
work=$(mktemp -d /tmp/ctgrade-docker-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "docker-test: FAIL: $*" >&2; exit 1; }

gpu_args=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu_args=(--gpus all); fi
run_args=(--rm --network none --cap-drop all --security-opt no-new-privileges --pids-limit 512 --init
          --memory 8g --memory-swap 8g --read-only --tmpfs /tmp:rw,exec,size=2g "${gpu_args[@]}")

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

algorithm() {
  local image=${IMAGE:-ctgrade:test}
  if [ -z "${SKIP_BUILD:-}" ]; then
    docker build -q --build-arg PREBUILT=target/release/ctgrade --build-arg BUILD_IMAGE="$base" \
      --build-arg RUNTIME_IMAGE="$base" -t "$image" . >/dev/null
  fi
  check_user "$image"

  # 1. The platform's layout, weights baked into the image.
  local out="$work/out1"; mkdir -p "$out"; chmod 777 "$out"
  docker run "${run_args[@]}" -v "$PWD/test_inputs:/input:ro" -v "$out:/output" "$image" \
    || fail "algorithm run on test_inputs exited $?"
  local p c
  p=$(cat "$out/probability-covid-19.json"); c=$(cat "$out/co-rads-score.json")
  awk -v p="$p" 'BEGIN { exit !(p ~ /^[0-9.eE+-]+$/ && p >= 0 && p <= 1) }' \
    || fail "probability '$p' is not a number in [0, 1]"
  [[ "$c" =~ ^[1-5]$ ]] || fail "CO-RADS '$c' not an integer 1..5"
  echo "docker-test: algorithm (socket layout): probability $p, CO-RADS $c"

  # 2. Weights from a model tarball extracted read-only to /opt/ml/model, as the platform does.
  mkdir -p "$work/model" "$work/out2"; chmod 777 "$work/out2"
  tar -czf "$work/model.tar.gz" -C weights/default .
  tar -xzf "$work/model.tar.gz" -C "$work/model"
  docker run "${run_args[@]}" -v "$PWD/test_inputs:/input:ro" -v "$work/model:/opt/ml/model:ro" \
    -v "$work/out2:/output" "$image" 2>"$work/log2" || { cat "$work/log2"; fail "run with /opt/ml/model failed"; }
  grep -q "/opt/ml/model" "$work/log2" || { cat "$work/log2"; fail "the run did not use /opt/ml/model"; }
  cmp -s "$out/probability-covid-19.json" "$work/out2/probability-covid-19.json" \
    || fail "the same weights from /opt/ml/model gave another answer"
  echo "docker-test: algorithm (/opt/ml/model tarball): same answer"

  # 3. A broken case: non-zero exit, a clear last stderr line, no output files.
  mkdir -p "$work/bad/images/ct" "$work/out3"; chmod 777 "$work/out3"
  printf 'ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = LOCAL\n' > "$work/bad/images/ct/broken.mha"
  if docker run "${run_args[@]}" -v "$work/bad:/input:ro" -v "$work/out3:/output" "$image" 2>"$work/log3"; then
    fail "a broken input exited 0"
  fi
  local last; last=$(grep -v '^\s*$' "$work/log3" | tail -n 1)
  [[ "$last" == *broken.mha* ]] || fail "last stderr line does not name the file: $last"
  [ -z "$(ls -A "$work/out3")" ] || fail "outputs were written for a failed case: $(ls -A "$work/out3")"
  echo "docker-test: algorithm (broken input): exit non-zero, last line: $last"
}

# The image's API method label: "invoke", or empty when the image has none (exec).
api_method() {
  local m
  m=$(docker image inspect -f '{{index .Config.Labels "org.grand-challenge.api-method"}}' "$1")
  [ "$m" = "<no value>" ] && m=
  echo "$m"
}

evaluation() {
  local image=${EVAL_IMAGE:-ctgrade-eval:test} exec_image=${EVAL_EXEC_IMAGE:-ctgrade-eval:test-exec}
  if [ -z "${SKIP_BUILD:-}" ]; then
    docker build -q -f evaluation/Dockerfile --build-arg PREBUILT=target/release/ctgrade-eval \
      --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$image" . >/dev/null
    docker build -q -f evaluation/Dockerfile --build-arg API_METHOD=exec \
      --build-arg PREBUILT=target/release/ctgrade-eval \
      --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$exec_image" . >/dev/null
  fi
  check_user "$image"; check_user "$exec_image"
  [ "$(api_method "$image")" = invoke ] || fail "$image lacks LABEL org.grand-challenge.api-method=invoke"
  [ -z "$(api_method "$exec_image")" ] || fail "$exec_image carries an api-method label"
  local fx=evaluation/tests/fixtures/platform

  # Exec: one run, as the platform runs an unlabelled image.
  local out="$work/eval-out"; mkdir -p "$out"; chmod 777 "$out"
  docker run "${run_args[@]}" -v "$PWD/$fx/input:/input:ro" \
    -v "$PWD/$fx/ground_truth:/opt/ml/input/data/ground_truth:ro" -v "$out:/output" "$exec_image" \
    || fail "evaluation container (exec) exited $?"
  grep -q '"auc"' "$out/metrics.json" || fail "metrics.json has no auc"
  echo "docker-test: evaluation (exec): metrics.json written ($(wc -c < "$out/metrics.json") bytes)"

  # Invoke: as the platform's template test does, on an internal network, the calls made with curl
  # from a second container. A subshell, so that its own EXIT trap removes what it started.
  (
    local net="ctgrade-eval-test-$$" out2="$work/eval-out-invoke"
    mkdir -p "$out2"; chmod 777 "$out2"
    trap 'docker rm -f "$net-eval" "$net-tester" >/dev/null 2>&1; docker network rm "$net" >/dev/null 2>&1' EXIT
    docker network create --internal "$net" >/dev/null
    docker run -d --name "$net-eval" --network "$net" --cap-drop all --security-opt no-new-privileges \
      --pids-limit 512 --init --memory 8g --memory-swap 8g --read-only --tmpfs /tmp:rw,exec,size=2g \
      -v "$PWD/$fx/input:/input:ro" -v "$PWD/$fx/ground_truth:/opt/ml/input/data/ground_truth:ro" \
      -v "$out2:/output" "$image" >/dev/null
    docker run -d --name "$net-tester" --network "$net" "$base" sleep infinity >/dev/null
    local code="" i
    for i in $(seq 30); do
      code=$(docker exec "$net-tester" curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
        "http://$net-eval:4743/health" || true)
      [ "$code" = 200 ] && break
      sleep 1
    done
    [ "$code" = 200 ] || { docker logs "$net-eval"; fail "evaluation (invoke): /health answered '$code'"; }
    code=$(docker exec "$net-tester" curl -s -o /dev/null -w '%{http_code}' -X POST --max-time 300 \
      "http://$net-eval:4743/invoke" || true)
    [ "$code" = 201 ] || { docker logs "$net-eval"; fail "evaluation (invoke): /invoke answered '$code'"; }
    cmp -s "$out/metrics.json" "$out2/metrics.json" \
      || fail "evaluation (invoke) metrics.json differs from the exec variant's"
    docker stop -t 20 "$net-eval" >/dev/null
    local status; status=$(docker wait "$net-eval")
    [ "$status" = 0 ] || fail "evaluation (invoke) exited $status on SIGTERM"
    echo "docker-test: evaluation (invoke): /health 200, /invoke 201, same metrics.json as exec, exit 0 on stop"
  )
}

# `ctgrade-eval simulate`: the leaderboard on this machine. Six synthetic cases (CO-RADS 1..5 and a
# broken file), the algorithm image with the model tarball, the evaluation image; five jobs must
# succeed, the broken one must be reported with its reason, and the evaluation image's metrics
# must equal the host evaluator's on the same predictions.json.
simulate() {
  local image=${IMAGE:-ctgrade:test} exec_image=${EXEC_IMAGE:-ctgrade:test-exec}
  local eval_image=${EVAL_IMAGE:-ctgrade-eval:test} eval_exec_image=${EVAL_EXEC_IMAGE:-ctgrade-eval:test-exec}
  if [ -z "${SKIP_BUILD:-}" ]; then
    local m tag
    for m in invoke exec; do
      tag=$image; [ "$m" = exec ] && tag=$exec_image
      docker build -q --build-arg API_METHOD=$m --build-arg PREBUILT=target/release/ctgrade \
        --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$tag" . >/dev/null
    done
    docker build -q -f evaluation/Dockerfile --build-arg PREBUILT=target/release/ctgrade-eval \
      --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$eval_image" . >/dev/null
    docker build -q -f evaluation/Dockerfile --build-arg API_METHOD=exec \
      --build-arg PREBUILT=target/release/ctgrade-eval \
      --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$eval_exec_image" . >/dev/null
  fi
  local sim="$work/sim" c
  mkdir -p "$sim/cases"
  for c in 1 2 3 4 5; do
    # Small grids with a coarse spacing still span a chest (about 355 x 355 x 320 mm).
    target/release/ctgrade synth --out "$sim/cases/patient_$c.mha" --seed "$c" --co-rads "$c" \
      --size 96,96,64 --spacing 3.7,3.7,5 >/dev/null
  done
  printf 'ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = LOCAL\n' \
    > "$sim/cases/patient_6.mha"
  {
    echo "Patient ID,Hospital,Age,Gender,SARS-CoV-2 nucleic acids,Morbidity outcome,Mortality outcome"
    echo "Patient 1,Union Hospital,54,Male,Negative,Control,Cured"
    echo "Patient 2,Union Hospital,61,Female,Negative,Control (Community-acquired pneumonia),Cured"
    echo "Patient 3,Union Hospital,47,Male,Positive,Mild,Cured"
    echo "Patient 4,Union Hospital,70,Female,Positive,Regular,Cured"
    echo "Patient 5,Union Hospital,66,Male,Positive,Severe,Cured"
    echo "Patient 6,Union Hospital,58,Female,Positive,Critically ill,Cured"
    # A patient without a case: a table may cover more cases than are simulated.
    echo "Patient 7,Union Hospital,39,Male,Negative,Control,Cured"
  } > "$sim/ictcf.csv"
  # The generic shape carries CO-RADS truth, so the second run also compares a real kappa.
  printf 'case,label,co_rads\npatient_1,0,1\npatient_2,0,2\npatient_3,1,3\npatient_4,1,4\npatient_5,1,5\npatient_6,1,5\n' \
    > "$sim/generic.csv"
  tar -czf "$sim/model.tar.gz" -C weights/default .

  # Run 1: the algorithm image as built (invoke or exec by its label), the invoke evaluation image.
  # Run 2: the algorithm in the other mode, the exec evaluation image. The other mode is the exec
  # variant when the image is labelled invoke (and the exec variant exists, unlabelled); for an
  # unlabelled image, an invoke variant derived from it that runs `ctgrade serve`.
  local alg2=$image
  if [ "$(api_method "$image")" = invoke ]; then
    if docker image inspect "$exec_image" >/dev/null 2>&1 && [ -z "$(api_method "$exec_image")" ]; then
      alg2=$exec_image
    fi
  else
    alg2="$image-invoke"
    printf 'FROM %s\nLABEL org.grand-challenge.api-method="invoke"\nEXPOSE 4743\nENTRYPOINT ["/opt/app/ctgrade", "serve"]\n' \
      "$image" | docker build -q -t "$alg2" - >/dev/null
  fi
  local gpu_flag=(); [ ${#gpu_args[@]} -gt 0 ] && gpu_flag=(--gpus)
  local run alg ev truth out rc key
  for run in 1 2; do
    if [ "$run" = 1 ]; then alg=$image ev=$eval_image truth="$sim/ictcf.csv"
    else alg=$alg2 ev=$eval_exec_image truth="$sim/generic.csv"; fi
    out="$sim/out$run"; rc=0
    local t0=$SECONDS
    target/release/ctgrade-eval simulate --algorithm-image "$alg" --cases "$sim/cases" \
      --ground-truth "$truth" --evaluation-image "$ev" --model "$sim/model.tar.gz" "${gpu_flag[@]}" \
      --tester-image "$base" --job-timeout 600 -o "$out" >"$sim/log$run" 2>"$sim/err$run" || rc=$?
    cat "$sim/log$run"
    [ "$rc" = 2 ] || { cat "$sim/err$run"; fail "simulate run $run exited $rc, expected 2 (one failed job)"; }
    grep -q "1 of 6 job(s) failed" "$sim/err$run" || fail "simulate run $run: no failed-job summary on stderr"
    [ "$(ls "$out"/*/output/probability-covid-19.json | wc -l)" = 5 ] || fail "run $run: not 5 job outputs"
    [ "$(grep -c '"status": "Succeeded"' "$out/predictions.json")" = 5 ] || fail "run $run: not 5 jobs in predictions.json"
    for key in '"socket": {' '"slug": "ct-image"' '"relative_path": "images/ct"' '"name": "patient_1.mha"' \
               '"slug": "probability-covid-19"' '"relative_path": "probability-covid-19.json"' \
               '"slug": "co-rads-score"' '"kind": "Integer"' '"started_at": "' '"completed_at": "'; do
      grep -qF "$key" "$out/predictions.json" || fail "run $run: predictions.json lacks $key"
    done
    ! grep -q '"interface"' "$out/predictions.json" || fail "run $run: predictions.json uses the old interface key"
    ! grep -q 'patient_6' "$out/predictions.json" || fail "run $run: the failed job is in predictions.json"
    grep -q '"case": "patient_6.mha"' "$out/failed-jobs.json" || fail "run $run: failed-jobs.json lacks patient_6.mha"
    grep -q '"reason": ".*DimSize' "$out/failed-jobs.json" || fail "run $run: failed job's reason: $(cat "$out/failed-jobs.json")"
    [ "$(wc -l < "$out/ground-truth.csv")" = 6 ] \
      || fail "run $run: ground-truth.csv does not hold exactly the 5 successful cases"
    # The host evaluator on the same predictions.json and ground truth: identical metrics (the
    # bootstrap is seeded), apart from the paths it records.
    target/release/ctgrade-eval -p "$out/predictions.json" -g "$out/ground-truth.csv" \
      -o "$sim/host$run.json" >/dev/null || fail "run $run: host evaluation failed"
    diff <(grep -v '"path":' "$out/metrics.json") <(grep -v '"path":' "$sim/host$run.json") >/dev/null \
      || fail "run $run: the evaluation image's metrics differ from the host evaluator's"
    grep -qE '^    "auc": [0-9.]+' "$out/metrics.json" || fail "run $run: no AUC in metrics.json"
    if [ "$run" = 2 ]; then
      grep -qE '^    "qwk": -?[0-9.]+' "$out/metrics.json" || fail "run 2: no QWK in metrics.json"
    fi
    [ -z "$(docker ps -aq --filter name=ctgrade-sim-)" ] || fail "run $run left containers behind"
    [ -z "$(docker network ls -q --filter name=ctgrade-sim-)" ] || fail "run $run left a network behind"
    echo "docker-test: simulate run $run ($alg $(api_method "$alg" | sed 's/^$/exec/'), $ev $(api_method "$ev" | sed 's/^$/exec/')): 5 jobs, 1 failed as expected, metrics equal the host's," \
      "$(grep -E '^    "(auc|qwk)":' "$out/metrics.json" | tr -d ' \n' | sed 's/,$//'), $((SECONDS - t0)) s"
  done

  # SIGTERM while waiting for an algorithm that never becomes healthy: exit 1, nothing left behind.
  local never=ctgrade-eval-test:never-healthy pid
  printf 'FROM %s\nLABEL org.grand-challenge.api-method="invoke"\nENTRYPOINT ["sleep", "infinity"]\n' \
    "$base" | docker build -q -t "$never" - >/dev/null
  target/release/ctgrade-eval simulate --algorithm-image "$never" --cases "$sim/cases" \
    --ground-truth "$sim/ictcf.csv" --evaluation-image "$eval_image" --tester-image "$base" \
    -o "$sim/out3" >"$sim/log3" 2>&1 &
  pid=$!
  sleep 3
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
  docker rmi "$never" >/dev/null
  [ "$rc" = 1 ] && grep -q "interrupted" "$sim/log3" || { cat "$sim/log3"; fail "simulate on SIGTERM exited $rc"; }
  [ -z "$(docker ps -aq --filter name=ctgrade-sim-)" ] || fail "an interrupted simulate left containers behind"
  [ -z "$(docker network ls -q --filter name=ctgrade-sim-)" ] || fail "an interrupted simulate left a network behind"
  echo "docker-test: simulate interrupted by SIGTERM: exit 1, containers and network removed"
}

case "$what" in
  algorithm) algorithm ;;
  evaluation) evaluation ;;
  simulate) simulate ;;
  all) algorithm; evaluation; simulate ;;
  *) fail "unknown target $what (algorithm, evaluation, simulate or all)" ;;
esac
echo "docker-test: OK"
