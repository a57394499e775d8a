#!/usr/bin/env bash
# Build the CUDA binary of vramprobe on a machine with no GPU (after scripts/cuda-toolchain.sh).
#
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh          # 80 A100, 89 RTX 4090/L40S, 90 H100/H200
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh --lean   # without the Hub client
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh --flash-attn   # lean, with FlashAttention-2
#
# Flavours: the default is the user's build, `cuda` + `hub`: it downloads models with hf-hub
# (HF_TOKEN, HF_HOME) and measures them on the GPU. `--lean` leaves the Hub client out (about
# 240 crates of HTTP/TLS/xet), for a host with no network such as the lent GPU machine, where
# only synthetic weights or a local directory are used. A host with a system CUDA toolkit can
# simply `cargo build --release --features cuda` (the Hub is a default feature).
#
# Output: target/cuda/release/vramprobe (lean: target/cuda-lean/release/vramprobe), stripped,
# and beside it vramprobe.xz (what to carry where bytes are counted: ~3.6x smaller). Copy it to
# the GPU host with the scripts/ folder. It needs at start-up the driver's libcuda.so.1 and the CUDA 13 libraries
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudart.so.13 and libnvrtc.so.13: on a host with a
# PyTorch cu130 venv, scripts/gpu-validate.sh finds them.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${VRAMPROBE_CUDA_DIR:-$root/.cuda}"
export CUDA_HOME="$dir/nvidia/cu13"
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "build-cuda: no nvcc under $CUDA_HOME: run scripts/cuda-toolchain.sh first" >&2
  exit 2
fi
export CUDA_PATH="$CUDA_HOME" CUDA_ROOT="$CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$CUDA_HOME/lib -L native=$CUDA_HOME/lib/stubs"

features=(--features cuda,hub)
flavour="cuda+hub"
target="$root/target/cuda"
locked=(--locked)
case "${1:-}" in
  --lean) features=(--no-default-features --features cuda); flavour="cuda (lean)"; target="$root/target/cuda-lean" ;;
  --flash-attn)
    # The lean build plus candle-flash-attn, patched in from scripts/flash-attn-src.sh (the
    # head_dim-128 kernels only, CUTLASS from PyPI). The kernel objects persist in
    # .flash-attn/build (CANDLE_FLASH_ATTN_BUILD_DIR): a rebuild recompiles none of them.
    crate="$("$root/scripts/flash-attn-src.sh")"
    mkdir -p "$root/.flash-attn/build"
    export CANDLE_FLASH_ATTN_BUILD_DIR="$root/.flash-attn/build"
    export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
    export NVCC="$CUDA_HOME/bin/nvcc"
    features=(--no-default-features --features flash-attn --config "patch.crates-io.candle-flash-attn.path=\"$crate\"")
    # The patch is a path source, which Cargo.lock would record: build unlocked and put the
    # committed lock file back afterwards.
    locked=()
    cp "$root/Cargo.lock" "$root/.flash-attn/Cargo.lock.committed"
    trap 'cp "$root/.flash-attn/Cargo.lock.committed" "$root/Cargo.lock"' EXIT
    flavour="cuda (lean) + flash-attn"; target="$root/target/cuda-flash" ;;
  "") ;;
  *) echo "build-cuda: unknown option $1 (--lean, --flash-attn)" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$target}"

start=$(date +%s)
(cd "$root" && cargo build --release "${locked[@]}" "${features[@]}" --bin vramprobe)
bin="$CARGO_TARGET_DIR/release/vramprobe"
strip "$bin"
xz -6 -T0 -k -f "$bin"
echo "build-cuda: $flavour: $bin ($(du -h "$bin" | cut -f1); $bin.xz $(du -h "$bin.xz" | cut -f1)), compute capability $CUDA_COMPUTE_CAP, $(( $(date +%s) - start )) s" >&2
echo "$bin"
