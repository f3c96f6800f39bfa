#!/usr/bin/env bash
# Regenerates test_inputs/ with `ctgrade synth` (synthetic chest CT phantoms, src/synth/):
#   test_inputs/images/ct/<uuid>.mha + test_inputs/inputs.json   one case, as grand-challenge gives it today
#                                                                (socket values keyed `socket`)
#   test_inputs/batch/*.mha                                      four cases (CO-RADS 1, 2, 4, 5)
# Phantoms are deterministic: rerunning gives byte-identical files.
# Usage: scripts/make-test-inputs.sh [path/to/ctgrade]   (default: builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin ctgrade
  bin=${CARGO_TARGET_DIR:-target}/release/ctgrade
fi
# 360 x 360 x 317 mm field of view at 2.5 x 2.5 x 3.6 mm: about 1.7 MB per compressed file.
grid=(--size 144,144,88 --spacing 2.5,2.5,3.6)

rm -rf test_inputs/images test_inputs/batch test_inputs/inputs.json
mkdir -p test_inputs/images/ct test_inputs/batch

uuid=3f1c2a9e-5b7d-4e21-9c4a-8d0f6e2b1a57
"$bin" synth --out "test_inputs/images/ct/$uuid.mha" --seed 1 --co-rads 4 "${grid[@]}"
cat > test_inputs/inputs.json <<JSON
[
  {
    "pk": 1,
    "socket": {
      "title": "CT Image",
      "slug": "ct-image",
      "kind": "Image",
      "super_kind": "Image",
      "relative_path": "images/ct"
    },
    "value": null,
    "file": null,
    "image": {"pk": "$uuid", "name": "phantom-seed1-co-rads4.mha"}
  }
]
JSON

for case in "11 1" "12 2" "14 4" "15 5"; do
  set -- $case
  "$bin" synth --out "test_inputs/batch/phantom-seed$1-co-rads$2.mha" --seed "$1" --co-rads "$2" "${grid[@]}"
done
ls -l test_inputs/images/ct test_inputs/batch
