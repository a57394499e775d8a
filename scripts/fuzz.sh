#!/usr/bin/env bash
# Fuzz config.json parsing, the safetensors header path, run directories (run.json and
# points.jsonl) and the daemon's request bodies for a bounded time each (not in
# CI). Needs cargo-fuzz (`cargo install cargo-fuzz`); it runs on the stable toolchain with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly -Z flags).
# Crashes land in fuzz/artifacts/<target>/; copy each to fuzz/regressions/<target>/ after
# fixing it: `cargo test --test integration fuzz_regressions` replays them all.
# Usage: scripts/fuzz.sh [SECONDS per target, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
export RUSTC_BOOTSTRAP=1
for target in config_json safetensors_header run_files bench_request; do
  mkdir -p "fuzz/corpus/$target" "target/fuzz-corpus/$target"
  echo "== $target for ${secs}s"
  # New inputs go to target/ (not committed); the committed seeds are read as well.
  cargo fuzz run --fuzz-dir fuzz "$target" "target/fuzz-corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -max_len=65536 -print_final_stats=1 2>&1 | tail -15
done
