#!/usr/bin/env bash
# Derive the copy of candle-flash-attn that `scripts/build-cuda.sh --flash-attn` patches in,
# from the crate's registry source, so that the build needs no git, no GitHub and no hours:
#
# - only the kernels a Llama needs: head_dim 128, bf16 and fp16, causal and not (4 of the
#   crate's 52 kernel files, and its flash_api.cu with the dispatch cut to them: head
#   dimensions other than 97..128 and the paged split-KV path abort with a message);
# - the FlashAttention features a Llama does not use compiled out
#   (-DFLASHATTENTION_DISABLE_DROPOUT/ALIBI/SOFTCAP/LOCAL/UNEVEN_K);
# - CUTLASS from PyPI's nvidia-cutlass wheel (3.5.0.0: the headers of the commit the crate pins)
#   placed where cudaforge looks for its checkout of that commit, with a stub .git whose HEAD
#   is the pinned commit, so cudaforge fetches nothing.
#
# The repository keeps this script, never a copy of upstream code. Prints the patched
# crate's directory.
#
#   scripts/flash-attn-src.sh        # idempotent; VRAMPROBE_FLASH_DIR (default .flash-attn/)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${VRAMPROBE_FLASH_DIR:-$root/.flash-attn}"
version=0.11.1
cutlass_commit=7d49e6c7e2f8896c47f586706e67e1fb215529dc
cutlass_wheel=nvidia-cutlass==3.5.0.0

(cd "$root" && cargo fetch --locked >/dev/null)
src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-flash-attn-$version 2>/dev/null | head -n1 || true)"
if [ -z "$src" ] || [ ! -f "$src/build.rs" ]; then
  echo "flash-attn-src: candle-flash-attn $version is not in the cargo registry (cargo fetch)" >&2
  exit 2
fi

out="$dir/candle-flash-attn-$version"
rm -rf "$out"
mkdir -p "$dir"
cp -r "$src" "$out"
chmod -R u+w "$out"

python3 - "$out" <<'EOF'
import re, sys
from pathlib import Path

crate = Path(sys.argv[1])
keep = [
    "kernels/flash_api.cu",
    "kernels/flash_fwd_hdim128_bf16_sm80.cu",
    "kernels/flash_fwd_hdim128_bf16_causal_sm80.cu",
    "kernels/flash_fwd_hdim128_fp16_sm80.cu",
    "kernels/flash_fwd_hdim128_fp16_causal_sm80.cu",
]
disable = ["DROPOUT", "ALIBI", "SOFTCAP", "LOCAL", "UNEVEN_K"]


def patch(path, old, new, count=1):
    text = path.read_text()
    if isinstance(old, re.Pattern):
        text, n = old.subn(lambda _: new, text, count=count)
    else:
        n = text.count(old)
        text = text.replace(old, new, count)
    if n == 0:
        sys.exit(f"flash-attn-src: {path.name}: the expected text is not there (upstream changed?)")
    path.write_text(text)


build = crate / "build.rs"
files = ",\n".join(f'    "{f}"' for f in keep)
patch(build, re.compile(r"const KERNEL_FILES: \[&str; \d+\] = \[.*?\];", re.S),
      f"const KERNEL_FILES: [&str; {len(keep)}] = [\n{files},\n];")
args = "".join(f'\n        .arg("-DFLASHATTENTION_DISABLE_{d}")' for d in disable)
patch(build, '.arg("-std=c++17")', '.arg("-std=c++17")' + args)

api = crate / "kernels/flash_api.cu"
patch(api, re.compile(r"if \(params\.block_table != nullptr\) \{.*?\} else \{\s*HEADDIM_SWITCH\(params\.d, \[&\] \{\s*"
                      r"run_mha_fwd_<elem_type, kHeadDim, Is_causal>\(params, stream\);\s*\}\);\s*\}", re.S),
      """if (params.block_table != nullptr || params.d <= 96 || params.d > 128) {
                  // vramprobe's build has the head_dim-128 kernels only (scripts/flash-attn-src.sh).
                  fprintf(stderr, "candle-flash-attn (vramprobe build): head_dim %d%s is not compiled in\\n",
                          int(params.d), params.block_table != nullptr ? " with a paged KV cache" : "");
                  abort();
              }
              run_mha_fwd_<elem_type, 128, Is_causal>(params, stream);""")
patch(api, '#include "kernels.h"', '#include <cstdio>\n#include <cstdlib>\n#include "kernels.h"')
for f in (crate / "kernels").glob("*.cu"):
    if f"kernels/{f.name}" not in keep:
        f.unlink()
EOF

# CUTLASS where cudaforge looks for its checkout of the pinned commit.
forge="${CUDAFORGE_HOME:-$HOME/.cudaforge}"
checkout="$forge/git/checkouts/cutlass-${cutlass_commit:0:16}"
if [ ! -f "$checkout/include/cutlass/cutlass.h" ] || [ "$(cat "$checkout/.git/HEAD" 2>/dev/null)" != "$cutlass_commit" ]; then
  wheels="$dir/wheels"
  mkdir -p "$wheels"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" "$cutlass_wheel"
  unpacked="$dir/cutlass-wheel"
  rm -rf "$unpacked" "$checkout"
  python3 -m zipfile -e "$wheels"/nvidia_cutlass-*.whl "$unpacked"
  base="$unpacked/cutlass_library/source"
  mkdir -p "$checkout/tools/util" "$checkout/.git/objects" "$checkout/.git/refs"
  cp -r "$base/include" "$checkout/include"
  cp -r "$base/tools/util/include" "$checkout/tools/util/include"
  printf '%s\n' "$cutlass_commit" >"$checkout/.git/HEAD"
fi
(cd "$checkout" && [ "$(git rev-parse HEAD 2>/dev/null)" = "$cutlass_commit" ]) || {
  echo "flash-attn-src: $checkout does not answer git rev-parse HEAD with $cutlass_commit" >&2
  exit 2
}
echo "$out"
