#!/usr/bin/env bash
# Render a stored run's report.html in headless Chromium and save a screenshot of its top
# (headline, rule of thumb, the first plots) for docs/bench.md.
# Usage: scripts/report-screenshot.sh [RUN_DIR] [OUT.png]
# Needs Debian's chromium (apt-get install chromium) and a built vramprobe.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-reports/gpu/2026-11-26-h100-80gb/llama3-8b-40gib-boundary}
png=${2:-docs/report-screenshot.png}
bin=${VRAMPROBE_BIN:-target/release/vramprobe}
[ -x "$bin" ] || cargo build --release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" report "$run" --format html > "$tmp/report.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --hide-scrollbars --window-size=1100,2000 \
  --screenshot="$(realpath -m "$png")" "file://$tmp/report.html" 2>/dev/null
echo "wrote $png from $run"
