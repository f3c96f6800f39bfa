#!/usr/bin/env bash
# Renders report.html in a real browser (headless Chromium) and fails when a picture does not
# load or decodes to another size than its tag states, or when the page lacks a case's section.
#
# Usage: scripts/check-report.sh [REPORT_HTML [SCREENSHOT_PNG]]
# Without REPORT_HTML it makes one: test_inputs' scan, two phantoms and an unreadable file graded
# with the default weights (`--report --heat-map --spread`) in target/check-report/.
# Skips (exit 0, with a message) when no Chromium is installed (Debian: apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "check-report: SKIPPED: no Chromium found (Debian: apt-get install chromium)"
  exit 0
fi

work=target/check-report
mkdir -p "$work"
report=${1:-}
shot=${2:-$work/screenshot.png}
if [ -z "$report" ]; then
  cargo build --release -q -p ctgrade --bin ctgrade
  ctgrade=${CARGO_TARGET_DIR:-target}/release/ctgrade
  rm -rf "$work/input" "$work/output"
  mkdir -p "$work/input"
  cp test_inputs/images/ct/*.mha "$work/input/"
  for c in 2 5; do
    "$ctgrade" synth --out "$work/input/phantom-co-rads$c.mha" --seed $((800 + c)) --co-rads "$c" \
      --size 128,128,80 --spacing 2.8,2.8,4.0
  done
  printf 'ObjectType = Image\nNDims = 3\n' >"$work/input/broken.mha"
  # The unreadable file fails (exit 1): the report must show it.
  "$ctgrade" run --input "$work/input" --output "$work/output" --weights weights/default \
    --report --heat-map --spread 2>"$work/run.log" || true
  report=$work/output/report.html
fi
[ -f "$report" ] || { echo "check-report: FAILED: no $report" >&2; exit 1; }

# The page with a small check appended: after loading, it records how many pictures there are
# and which did not load or have another size than their tags state.
checked=$work/checked.html
cp "$report" "$checked"
cat >>"$checked" <<'EOF'
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0 ||
    i.naturalWidth !== Number(i.getAttribute("width")) ||
    i.naturalHeight !== Number(i.getAttribute("height")));
  const sections = document.querySelectorAll("section.case").length;
  const rows = document.querySelectorAll("#summary tbody tr").length;
  document.body.setAttribute("data-check",
    `images=${imgs.length} broken=${broken.length} sections=${sections} rows=${rows}`);
});
</script>
EOF
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=10000)
dom=$("$browser" "${flags[@]}" --dump-dom "file://$(abs "$checked")" 2>/dev/null)
result=$(grep -o 'data-check="[^"]*"' <<<"$dom" | head -1 || true)
echo "check-report: $report: ${result:-no result}"
[[ $result =~ images=([0-9]+)\ broken=([0-9]+)\ sections=([0-9]+)\ rows=([0-9]+) ]] || {
  echo "check-report: FAILED: the page's check did not run" >&2
  exit 1
}
images=${BASH_REMATCH[1]} broken=${BASH_REMATCH[2]} sections=${BASH_REMATCH[3]} rows=${BASH_REMATCH[4]}
if [ "$broken" != 0 ] || [ "$images" = 0 ]; then
  echo "check-report: FAILED: $broken of $images pictures broken" >&2
  exit 1
fi
if [ "$sections" != "$rows" ] || [ "$sections" = 0 ]; then
  echo "check-report: FAILED: $sections case sections for $rows summary rows" >&2
  exit 1
fi

"$browser" "${flags[@]}" --screenshot="$(abs "$shot")" --window-size=1200,3000 \
  "file://$(abs "$report")" >/dev/null 2>&1
size=$(stat -c %s "$shot" 2>/dev/null || echo 0)
if [ "$size" -lt 10000 ]; then
  echo "check-report: FAILED: the screenshot $shot is missing or blank ($size bytes)" >&2
  exit 1
fi
echo "check-report: OK: $images pictures, $sections cases; screenshot $shot ($size bytes)"
