#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing, then runs the
# whole suite.
#
# - Debian's `chromium` (report.html in a real browser), `prometheus` (a real server scrapes
#   the daemon; promtool lints the exposition and the rules) and `bsdutils` (`script`, a
#   terminal for the progress bar test), through apt-get where apt exists; elsewhere it says
#   what to install, and those tests are skipped with a one-line reason each; PyYAML through
#   pip (the offline check of deploy/kubernetes).
# - `cargo test --release`: the release profile's dependencies are the ones `cargo run
#   --release -- bench` (the README's main job) already compiled, so the tests build only
#   vramprobe itself and the test-only crates.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh serve::` for one module).
set -euo pipefail
cd "$(dirname "$0")/.."

missing() {
  local need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
  command -v script >/dev/null 2>&1 || need+=(bsdutils)
  echo "${need[@]}"
}

# PyYAML (the offline check of deploy/kubernetes) for whichever python3 is first on PATH.
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import yaml" 2>/dev/null; then
  echo "scripts/test.sh: installing PyYAML (pip)"
  python3 -m pip install -q pyyaml >/dev/null 2>&1 ||
    echo "scripts/test.sh: pip could not install PyYAML" >&2
fi

need=$(missing)
if [ -n "$need" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; }; then
    echo "scripts/test.sh: installing $need (apt-get)"
    # shellcheck disable=SC2086 # one word per package
    $sudo apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $need >/dev/null ||
      echo "scripts/test.sh: apt-get could not install $need" >&2
  else
    echo "scripts/test.sh: install $need (Debian/Ubuntu package names) to run every test;" \
      "the tests that need them are skipped" >&2
  fi
  need=$(missing)
fi
if [ -z "$need" ]; then
  # Everything is here: a test that cannot find its tool is a failure, not a skip.
  export VRAMPROBE_REQUIRE_TOOLS=1
elif [ "${VRAMPROBE_REQUIRE_TOOLS:-}" = 1 ]; then
  echo "scripts/test.sh: VRAMPROBE_REQUIRE_TOOLS=1 but $need could not be installed" >&2
  exit 1
fi
exec cargo test --release "$@"
