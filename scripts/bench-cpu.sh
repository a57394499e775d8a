#!/usr/bin/env bash
# The CPU main job, kept as evidence: builds the release binary, runs the default bench
# grid on the built-in tiny Llama and stores the run under reports/cpu/<UTC stamp>/,
# with the wall time in a README beside it. Usage: scripts/bench-cpu.sh [extra bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
stamp=$(date -u +%Y%m%d-%H%M%S)
out="reports/cpu/$stamp"
start=$(date +%s.%N)
./target/release/vramprobe bench --out "$out" "$@" | tee "$out.table.txt"
end=$(date +%s.%N)
mv "$out.table.txt" "$out/table.txt"
{
  echo "# CPU bench $stamp"
  echo
  echo "Command: \`./target/release/vramprobe bench --out $out $*\`"
  echo
  echo "Wall time: $(awk "BEGIN{printf \"%.1f\", $end - $start}") s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
  echo
  echo '```'
  cat "$out/table.txt"
  echo '```'
} > "$out/README.md"
echo "stored in $out"
