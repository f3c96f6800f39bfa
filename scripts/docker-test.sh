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
#   scripts/docker-test.sh [algorithm|evaluation|simulate|shards|all]     (default: all)
# (`algorithm` includes the full model: a lesion model inside the model tarball.)
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

# Every container and network this script starts is named "$prefix-...": on exit (success, failure or
# interrupt) all of them are removed, and the script fails if any is still there afterwards.
prefix="ctgrade-dt-$$"
leftovers() {
  { docker ps -aq --filter "name=$prefix"; docker network ls -q --filter "name=$prefix"; } 2>/dev/null
}
cleanup() {
  local status=$? ids
  ids=$(docker ps -aq --filter "name=$prefix" 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  ids=$(docker network ls -q --filter "name=$prefix" 2>/dev/null || true)
  [ -z "$ids" ] || docker network rm $ids >/dev/null 2>&1 || true
  rm -rf "$work"
  if [ -n "$(leftovers)" ]; then
    docker ps -a --filter "name=$prefix" >&2; docker network ls --filter "name=$prefix" >&2
    echo "docker-test: FAIL: containers or networks named $prefix-* are left behind" >&2
    exit 1
  fi
  [ "$status" != 0 ] || echo "docker-test: OK (no container or network named $prefix-* left)"
  exit "$status"
}
trap cleanup EXIT

check_label() {  # IMAGE EXPECTED ("invoke" or "" for exec)
  local label
  label=$(docker image inspect -f '{{index .Config.Labels "org.grand-challenge.api-method"}}' "$1")
  [ "$label" = "$2" ] || fail "$1 has api-method label '$label', expected '$2'"
  echo "docker-test: $1 api-method label '${label:-none (exec)}'"
}

# Starts a tester container (the base image, with curl) on network $1; its name goes to $tester.
# (Not a command substitution: the container must be started by this shell, not a subshell.)
start_tester() {
  tester="$prefix-tester-$RANDOM"
  docker run -d --name "$tester" --network "$1" "$base" sleep 3600 >/dev/null
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
  # A DICOM image set socket (a small series made from the real CT by tools/make_dicom_fixtures.py)
  # and the same CT as .mha: the same answer.
  local series=tests/fixtures/dicom/explicit f n=0
  mkdir -p "$cases/dicom/images/ct" "$cases/dicom-mha/images/ct"
  for f in "$series"/*; do n=$((n + 1)); cp "$f" "$cases/dicom/images/ct/1.2.826.0.1.3680043.10.1717.$n.dcm"; done
  printf '[{"pk": "0c2a", "socket": {"slug": "ct-image", "kind": "DICOM Image Set", "super_kind": "Image", "relative_path": "images/ct"}, "value": null, "file": null, "image": {"pk": "5c1e9a70", "name": "series"}}]\n' \
    > "$cases/dicom/inputs.json"
  cp "$series.mha" "$cases/dicom-mha/images/ct/5c1e9a70.mha"
  local jobs=(ct lesion broken ct-interface dicom dicom-mha)

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
  cmp -s "$work/exec/dicom/probability-covid-19.json" "$work/exec/dicom-mha/probability-covid-19.json" \
    || fail "exec: the DICOM series and its .mha gave different answers"
  echo "docker-test: exec image: DICOM image set socket graded as its .mha ($(cat "$work/exec/dicom/probability-covid-19.json"))"

  # Invoke: one server for all jobs, weights from a model tarball at /opt/ml/model, on an internal
  # network with the platform's flags; jobs provisioned into the same bind-mounted folders.
  local net="$prefix-net" srv="$prefix-srv"
  docker network create --internal "$net" >/dev/null
  mkdir -p "$work/model" "$work/in" "$work/out"; chmod 755 "$work/in"; chmod 777 "$work/out"
  tar -czf "$work/model.tar.gz" -C weights/default .
  tar -xzf "$work/model.tar.gz" -C "$work/model"
  docker run -d --name "$srv" --network "$net" --memory 8g --memory-swap 8g "${flags[@]}" \
    -v "$work/in:/input:ro" -v "$work/out:/output" -v "$work/model:/opt/ml/model:ro" \
    "$image" >/dev/null
  local tester; start_tester "$net"
  local t0=$SECONDS
  wait_healthy "$tester" "$srv"
  echo "docker-test: invoke server healthy after $((SECONDS - t0)) s"
  # grep reads the whole log: `grep -q` would stop at the match, and the SIGPIPE it leaves
  # `docker logs` fails the pipe under pipefail.
  docker logs "$srv" 2>&1 | grep "weights from /opt/ml/model" >/dev/null \
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

# The paper's full model from a model tarball: the default weights as they ship (the nnU-Net
# demonstration lesion segmenter inside the ensemble, its members reading the CT and the lesion
# map). The invoke server and an exec container both compute the lesion map inside the container;
# their answers, the share of lung affected included, equal `ctgrade run` on this machine with the
# same weights.
full_model() {
  local image=${IMAGE:-ctgrade:test} exec_image=${EXEC_IMAGE:-ctgrade:test-exec}
  local bin=target/release/ctgrade full="$work/full" model=weights/default
  mkdir -p "$full"
  grep -q '"lesion_model"' "$model/ensemble.json" || fail "the default weights name no lesion model"
  "$bin" ensemble check "$model" >/dev/null 2>"$full/check.log" || { cat "$full/check.log"; fail "the full model does not check"; }
  tar -czf "$full/model.tar.gz" -C "$model" .
  mkdir -p "$full/opt-ml-model" "$full/host" "$full/exec" "$full/in" "$full/out"
  tar -xzf "$full/model.tar.gz" -C "$full/opt-ml-model"
  chmod 755 "$full/in"; chmod 777 "$full/exec" "$full/out"
  cp -r test_inputs/images test_inputs/inputs.json "$full/in/"

  "$bin" run --input "$full/in" --output "$full/host" --weights "$model" --device cpu 2>"$full/host.log" \
    || { cat "$full/host.log"; fail "ctgrade run with the full model failed"; }
  grep -q "lesion map computed by lesion" "$full/host.log" || { cat "$full/host.log"; fail "the host run computed no lesion map"; }
  docker run "${run_args[@]}" -v "$full/in:/input:ro" -v "$full/exec:/output" \
    -v "$full/opt-ml-model:/opt/ml/model:ro" "$exec_image" 2>"$full/exec.log" \
    || { cat "$full/exec.log"; fail "exec: the full model failed"; }
  grep -q "lesion map computed by lesion" "$full/exec.log" || { cat "$full/exec.log"; fail "exec: no lesion map computed"; }

  local net="$prefix-full" srv="$prefix-full-srv" tester f
  docker network create --internal "$net" >/dev/null
  docker run -d --name "$srv" --network "$net" --memory 8g --memory-swap 8g "${flags[@]}" \
    -v "$full/in:/input:ro" -v "$full/out:/output" -v "$full/opt-ml-model:/opt/ml/model:ro" \
    "$image" >/dev/null
  start_tester "$net"
  wait_healthy "$tester" "$srv"
  local code; code=$(invoke "$tester" "$srv")
  [ "$code" = 201 ] || { docker logs "$srv"; fail "invoke: the full model answered $code"; }
  for f in probability-covid-19.json co-rads-score.json percentage-of-lung-affected.json; do
    [ -s "$full/host/$f" ] || fail "the full model wrote no $f"
    cmp -s "$full/exec/$f" "$full/host/$f" || fail "exec: full model $f differs from ctgrade run's"
    cmp -s "$full/out/$f" "$full/host/$f" || fail "invoke: full model $f differs from ctgrade run's"
  done
  docker stop -t 30 "$srv" >/dev/null
  echo "docker-test: full model from the tarball (lesion model inside): exec and invoke equal ctgrade run" \
    "(probability $(cat "$full/host/probability-covid-19.json"), lung affected $(cat "$full/host/percentage-of-lung-affected.json") %)"
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
    local net="$prefix-eval" out2="$work/eval-out-invoke"
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
  # A DICOM series folder (the small series made from the real CT): the DICOM image set socket.
  cp -r tests/fixtures/dicom/explicit "$sim/cases/patient_7"
  {
    echo "Patient ID,Hospital,Age,Gender,SARS-CoV-2 nucleic acids,Morbidity outcome,Mortality outcome"
    echo "Patient 1,Union Hospital,54,Male,Negative,Control,Cured"
    echo "Patient 2,Union Hospital,61,Female,Negative,Control (Community-acquired pneumonia),Cured"
    echo "Patient 3,Union Hospital,47,Male,Positive,Mild,Cured"
    echo "Patient 4,Union Hospital,70,Female,Positive,Regular,Cured"
    echo "Patient 5,Union Hospital,66,Male,Positive,Severe,Cured"
    echo "Patient 6,Union Hospital,58,Female,Positive,Critically ill,Cured"
    echo "Patient 7,Union Hospital,39,Male,Negative,Control,Cured"
    # A patient without a case: a table may cover more cases than are simulated.
    echo "Patient 8,Union Hospital,44,Female,Negative,Control,Cured"
  } > "$sim/ictcf.csv"
  # The generic shape carries CO-RADS truth, so the second run also compares a real kappa.
  printf 'case,label,co_rads\npatient_1,0,1\npatient_2,0,2\npatient_3,1,3\npatient_4,1,4\npatient_5,1,5\npatient_6,1,5\npatient_7,0,1\n' \
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
    grep -q "1 of 7 job(s) failed" "$sim/err$run" || fail "simulate run $run: no failed-job summary on stderr"
    [ "$(ls "$out"/*/output/probability-covid-19.json | wc -l)" = 6 ] || fail "run $run: not 6 job outputs"
    [ "$(grep -c '"status": "Succeeded"' "$out/predictions.json")" = 6 ] || fail "run $run: not 6 jobs in predictions.json"
    for key in '"socket": {' '"slug": "ct-image"' '"relative_path": "images/ct"' '"name": "patient_1.mha"' \
               '"slug": "probability-covid-19"' '"relative_path": "probability-covid-19.json"' \
               '"slug": "co-rads-score"' '"kind": "Integer"' '"started_at": "' '"completed_at": "' \
               '"kind": "DICOM Image Set"' '"name": "patient_7"'; do
      grep -qF "$key" "$out/predictions.json" || fail "run $run: predictions.json lacks $key"
    done
    ! grep -q '"interface"' "$out/predictions.json" || fail "run $run: predictions.json uses the old interface key"
    ! grep -q 'patient_6' "$out/predictions.json" || fail "run $run: the failed job is in predictions.json"
    grep -q '"case": "patient_6.mha"' "$out/failed-jobs.json" || fail "run $run: failed-jobs.json lacks patient_6.mha"
    grep -q '"reason": ".*DimSize' "$out/failed-jobs.json" || fail "run $run: failed job's reason: $(cat "$out/failed-jobs.json")"
    [ "$(wc -l < "$out/ground-truth.csv")" = 7 ] \
      || fail "run $run: ground-truth.csv does not hold exactly the 6 successful cases"
    # The host evaluator on the same predictions.json and ground truth: identical metrics (the
    # bootstrap is seeded), apart from the paths it records.
    target/release/ctgrade-eval -p "$out/predictions.json" -g "$out/ground-truth.csv" \
      -o "$sim/host$run.json" >/dev/null || fail "run $run: host evaluation failed"
    diff <(grep -v '"path":' "$out/metrics.json") <(grep -v '"path":' "$sim/host$run.json") >/dev/null \
      || fail "run $run: the evaluation image's metrics differ from the host evaluator's"
    grep -qE '^    "auc": [0-9.]+' "$out/metrics.json" || fail "run $run: no AUC in metrics.json"
    # Calibration, operating points and the jobs' run time (from predictions.json's times).
    for key in '"brier":' '"ece_uniform_10":' '"calibration_slope":' '"sensitivity_at_specificity_0_90":' \
               '"decision_curve":' '"runtime":' '"median_s":'; do
      grep -qF "$key" "$out/metrics.json" || fail "run $run: metrics.json lacks $key"
    done
    if [ "$run" = 2 ]; then
      grep -qE '^    "qwk": -?[0-9.]+' "$out/metrics.json" || fail "run 2: no QWK in metrics.json"
    fi
    [ -z "$(docker ps -aq --filter name=ctgrade-sim-)" ] || fail "run $run left containers behind"
    [ -z "$(docker network ls -q --filter name=ctgrade-sim-)" ] || fail "run $run left a network behind"
    echo "docker-test: simulate run $run ($alg $(api_method "$alg" | sed 's/^$/exec/'), $ev $(api_method "$ev" | sed 's/^$/exec/')): 6 jobs (one a DICOM series), 1 failed as expected, metrics equal the host's," \
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

# An archive in shards, as a Kubernetes Indexed Job runs it: three `--shard auto/3` containers at
# once over a 9-case batch on one shared output folder, one killed mid-run and restarted with
# --skip-done, `ctgrade merge`, and the merged summary equal to one process's, case by case.
shards() {
  local exec_image=${EXEC_IMAGE:-ctgrade:test-exec} bin=target/release/ctgrade
  if [ -z "${SKIP_BUILD:-}" ]; then
    docker build -q --build-arg API_METHOD=exec --build-arg PREBUILT=$bin \
      --build-arg BUILD_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" -t "$exec_image" . >/dev/null
  fi
  local sh="$work/shards" i
  mkdir -p "$sh/in" "$sh/shared" "$sh/single"; chmod 777 "$sh/shared" "$sh/single"
  for i in $(seq 1 9); do
    "$bin" synth --out "$sh/in/scan-$i.mha" --seed $((40 + i)) --co-rads $(( (i % 5) + 1 )) \
      --size 320,320,160 --spacing 1,1,2 >/dev/null 2>&1 || fail "ctgrade synth failed"
  done
  local name
  for i in 0 1 2; do
    name="$prefix-shard-$i"
    docker run -d --name "$name" --network none --memory 4g --memory-swap 4g "${flags[@]}" \
      -e JOB_COMPLETION_INDEX=$i -v "$sh/in:/input:ro" -v "$sh/shared:/output" "$exec_image" \
      --shard auto/3 >/dev/null
  done
  # Kill the shard that owns the most cases once it has graded one: a pod lost mid-run.
  local victim=0 most=0 owned
  for i in 0 1 2; do
    for _ in $(seq 100); do
      owned=$(docker logs "$prefix-shard-$i" 2>&1 | sed -n "s/.*shard $i\/3 owns \([0-9]*\) of.*/\1/p")
      [ -n "$owned" ] && break; sleep 0.1
    done
    [ -n "$owned" ] || fail "shard $i did not say how many cases it owns"
    [ "$owned" -gt "$most" ] && { most=$owned; victim=$i; }
  done
  [ "$most" -ge 2 ] || fail "no shard owns two cases"
  name="$prefix-shard-$victim"
  until docker logs "$name" 2>&1 | grep "CO-RADS [1-5] (" >/dev/null; do
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.05
  done
  docker kill "$name" >/dev/null 2>&1 || true
  local graded; graded=$(docker logs "$name" 2>&1 | grep -c "CO-RADS [1-5] (" || true)
  echo "docker-test: shards: killed shard $victim/3 after $graded of its $most cases"
  for i in 0 1 2; do
    [ "$i" = "$victim" ] && continue
    [ "$(docker wait "$prefix-shard-$i")" = 0 ] || { docker logs "$prefix-shard-$i"; fail "shard $i/3 failed"; }
  done
  [ ! -e "$sh/shared/summary-shard-$victim-of-3.json" ] || [ "$graded" = "$most" ] \
    || fail "the killed shard left a summary"
  # The restarted pod: same index, --skip-done.
  docker run --rm --network none --memory 4g --memory-swap 4g "${flags[@]}" \
    -e JOB_COMPLETION_INDEX=$victim -v "$sh/in:/input:ro" -v "$sh/shared:/output" "$exec_image" \
    --shard auto/3 --skip-done 2>"$sh/restart.log" || { cat "$sh/restart.log"; fail "the restarted shard failed"; }
  local skipped; skipped=$(grep -c "already graded" "$sh/restart.log" || true)
  [ "$skipped" -ge 1 ] && [ "$skipped" = "$graded" ] \
    || { cat "$sh/restart.log"; fail "the restarted shard skipped $skipped cases, expected $graded"; }
  # The merge Job, then one process over the whole batch.
  docker run --rm --network none "${flags[@]}" -v "$sh/shared:/output" --entrypoint /opt/app/ctgrade \
    "$exec_image" merge /output --output /output 2>"$sh/merge.log" || { cat "$sh/merge.log"; fail "merge failed"; }
  docker run --rm --network none --memory 4g --memory-swap 4g "${flags[@]}" \
    -v "$sh/in:/input:ro" -v "$sh/single:/output" "$exec_image" 2>/dev/null || fail "the single run failed"
  local fields='^\s*"(case|probability|co_rads|error)":'
  diff <(grep -E "$fields" "$sh/shared/summary.json") <(grep -E "$fields" "$sh/single/summary.json") \
    || fail "the merged summary differs from the single run's"
  [ "$(grep -c '"case":' "$sh/shared/summary.json")" = 9 ] || fail "the merged summary does not hold 9 cases"
  # The evaluator reads the merged folder as any batch run (truth: CO-RADS 3 and above positive).
  { echo "case,label,co_rads"
    for i in $(seq 1 9); do c=$(( (i % 5) + 1 )); echo "scan-$i,$(( c >= 3 ? 1 : 0 )),$c"; done
  } > "$sh/truth.csv"
  target/release/ctgrade-eval -p "$sh/shared" -g "$sh/truth.csv" -o "$sh/metrics.json" >"$sh/eval.log" 2>&1 \
    || { cat "$sh/eval.log"; fail "ctgrade-eval could not read the merged folder"; }
  grep -q "^9 cases (" "$sh/eval.log" || { cat "$sh/eval.log"; fail "ctgrade-eval did not read 9 cases"; }
  echo "docker-test: shards: restarted shard skipped $skipped graded case(s); merged summary of 9 cases equals one process's and is read by ctgrade-eval ($(tail -n 1 "$sh/merge.log"))"
}

case "$what" in
  algorithm) algorithm; full_model ;;
  evaluation) evaluation ;;
  simulate) simulate ;;
  shards) shards ;;
  all) algorithm; full_model; evaluation; simulate; shards ;;
  *) fail "unknown target $what (algorithm, evaluation, simulate, shards or all)" ;;
esac
