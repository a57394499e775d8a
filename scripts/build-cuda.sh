#!/usr/bin/env bash
# Build the CUDA binary of vramprobe on a machine with no GPU (after scripts/cuda-toolchain.sh).
#
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh     # 80 A100, 89 RTX 4090/L40S, 90 H100/H200
#
# Output: target/cuda/release/vramprobe, stripped (copy it to the GPU host with the scripts/
# folder). It needs at start-up the driver's libcuda.so.1 and the CUDA 13 libraries
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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"

start=$(date +%s)
(cd "$root" && cargo build --release --locked --no-default-features --features cuda --bin vramprobe)
bin="$CARGO_TARGET_DIR/release/vramprobe"
strip "$bin"
echo "build-cuda: $bin ($(du -h "$bin" | cut -f1), compute capability $CUDA_COMPUTE_CAP, $(( $(date +%s) - start )) s)" >&2
echo "$bin"
