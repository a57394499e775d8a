#!/usr/bin/env bash
# One prepared validation run on an H100/H200 host with the NVIDIA driver and a PyTorch venv
# holding the CUDA 13 libraries, but no Rust and no network. The CUDA binary is built
# elsewhere (scripts/build-cuda.sh) and copied here with this repository.
#
#   scripts/gpu-validate.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else ./gpu-validate
#
# Steps (each bounded by `timeout`, results packed into OUT_DIR/results.tar.gz after each,
# so a run cut short keeps what it measured):
#   1. the device: nvidia-smi, the CUDA libraries found
#   2. the tiny model on CUDA in bf16 (seconds): the probes and the pool on a small case
#   3. Llama-3-8B BF16, synthetic weights, batch {1,2,4,8} x context {128,...,8192}, prefill
#      + 8 decode steps on the whole card; then the out-of-memory boundary per batch within
#      a 40 GiB budget (see 3b)
#   3c. Llama-3-8B BF16 training (bench --mode train), batch 1, short contexts: a full
#      fine-tune (candle-nn AdamW) and LoRA r16 on q,v; an out-of-memory phase is a result
#   4. scripts/torch_reference.py on the same grid (eager and sdpa attention)
#
#   3d. Llama-3-8B quantized (candle-quantized, synthetic weights quantized on the host by
#      candle): q4k and q8_0, batch 1, contexts up to 4088, as if the card had 16 GiB and
#      24 GiB (--memory-limit), with the out-of-memory boundary: the seed's 16 GB question
#
#   3f. scripts/torch_train_reference.py: PyTorch's full fine-tune step at 512 and 1024 tokens,
#      AdamW with bf16 states and with fp32 master weights and states (the peer of 3c)
#
# ONLY_TRAIN=1 runs steps 1, 3c and 3f only (the inference grid is in reports/gpu/ already);
# ONLY_QUANT=1 runs steps 1 and 3d only; ISSUE19=1 runs issue 19's plan within BUDGET_S
# seconds (see the end of this file).
#   3e. Llama-3.1-8B BF16 with candle-flash (FlashAttention-2; a binary from
#      `scripts/build-cuda.sh --flash-attn`) on the whole card to 131072 tokens and the
#      boundary, with PyTorch SDPA at the same points for prefill speed (ONLY_FLASH=1: steps 1
#      and 3e only; a binary without the kernels is refused by bench and the step says so).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-${OUT:-$root/gpu-validate}}"
mkdir -p "$out"
bin="${VRAMPROBE_BIN:-$root/target/cuda/release/vramprobe}"
# Carried compressed (scripts/build-cuda.sh writes vramprobe.xz beside the binary).
if [ ! -x "$bin" ] && [ -f "$bin.xz" ]; then xz -dkf "$bin.xz" && chmod +x "$bin"; fi
py="${PYTHON:-python3}"
log="$out/log.txt"
work="$(mktemp -d)"
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
pack() { tar -C "$work" -czf "$out/results.tar.gz" . 2>/dev/null; }
# Every step runs under `bounded`: its own timeout, capped by what is left of BUDGET_S (the
# whole call's seconds; unset: no cap), and skipped when under 20 s are left.
budget_end=$(( $(date +%s) + ${BUDGET_S:-1000000} ))
bounded() {
  local want="$1" label="$2" left
  shift 2
  left=$(( budget_end - $(date +%s) ))
  (( left < want )) && want=$left
  if (( want < 20 )); then say "$label: skipped (${left} s of BUDGET_S left)"; return 125; fi
  timeout "$want" "$@"
}

# 1. The CUDA 13 libraries: from the PyTorch venv's nvidia/* packages (or the system).
libdirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13; do
  found="$("$py" - "$lib" <<'EOF' 2>/dev/null
import glob, os, site, sys
name = sys.argv[1]
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "**", name), recursive=True):
        print(os.path.dirname(p)); sys.exit(0)
EOF
)"
  [ -z "$found" ] && found="$(dirname "$(ldconfig -p | awk -v n="$lib" '$1 == n {print $NF; exit}')" 2>/dev/null)"
  [ -z "$found" ] && found="$(dirname "$(find / -xdev -name "$lib" 2>/dev/null | head -n1)" 2>/dev/null)"
  if [ -z "$found" ] || [ "$found" = "." ]; then
    say "missing $lib: install a PyTorch cu130 environment or the CUDA 13 runtime"; exit 2
  fi
  case ":$libdirs:" in *":$found:"*) ;; *) libdirs="${libdirs:+$libdirs:}$found" ;; esac
done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee -a "$log"
nvidia-smi >"$work/nvidia-smi.txt" 2>&1
"$bin" --version | tee -a "$log" || { say "the binary does not start"; ldd "$bin" | tee -a "$log"; exit 1; }
pack

train() {
  # 3c. Training: forward, loss over every position, backward, AdamW; two steps per point.
  say "Llama-3-8B bf16 training, full fine-tune"
  VRAMPROBE_LOG=info bounded "${TRAIN_TIMEOUT:-150}" "train full" "$bin" bench --device cuda --dtype bf16 \
    --model models/meta-llama-3-8b-instruct --weights synthetic --mode train \
    --batch 1 --context "${TRAIN_CONTEXTS:-128,256,512,1024}" \
    --out "$work/llama3-8b-train-full" >"$work/llama3-8b-train-full.txt" 2>>"$log"
  say "train full: rc $?"; tail -n 3 "$work/llama3-8b-train-full.txt" | tee -a "$log"
  pack
  say "Llama-3-8B bf16 training, LoRA r16 q,v"
  VRAMPROBE_LOG=info bounded "${TRAIN_TIMEOUT:-150}" "train lora" "$bin" bench --device cuda --dtype bf16 \
    --model models/meta-llama-3-8b-instruct --weights synthetic --mode train \
    --lora-rank 16 --lora-targets q,v --batch 1 --context "${TRAIN_CONTEXTS:-128,256,512,1024}" \
    --out "$work/llama3-8b-train-lora" >"$work/llama3-8b-train-lora.txt" 2>>"$log"
  say "train lora: rc $?"; tail -n 3 "$work/llama3-8b-train-lora.txt" | tee -a "$log"
  pack
}

quantized() {
  # 3d. candle-quantized: the boundary within 16 GiB and 24 GiB, per GGML type.
  for q in ${QUANTS:-q4k q8_0}; do
    for limit in ${QUANT_LIMITS:-16GiB 24GiB}; do
      say "Llama-3-8B $q within $limit"
      VRAMPROBE_LOG=info bounded "${QUANT_TIMEOUT:-240}" "$q $limit" "$bin" bench --device cuda \
        --model models/meta-llama-3-8b-instruct --weights synthetic \
        --engine candle-quantized --quant "$q" --memory-limit "$limit" \
        --context "${QUANT_CONTEXTS:-512,1024,2048,4088}" --find-boundary --boundary-step 256 \
        --over-memory run --out "$work/llama3-8b-$q-$limit" \
        >"$work/llama3-8b-$q-$limit.txt" 2>>"$log"
      say "$q $limit: rc $?"; tail -n 3 "$work/llama3-8b-$q-$limit.txt" | tee -a "$log"
      pack
    done
  done
}

flash() {
  # 3e. candle-flash: the grid to 131072 tokens, then the longest context that fits at batch
  # 1 and 4 on the whole card; PyTorch SDPA at the shorter points, for prefill speed.
  say "Llama-3.1-8B bf16 candle-flash grid"
  VRAMPROBE_LOG=info bounded "${FLASH_TIMEOUT:-200}" "flash grid" "$bin" bench --device cuda --dtype bf16 \
    --engine candle-flash --model models/llama-3.1-8b-instruct --weights synthetic \
    --batch 1 --context "${FLASH_CONTEXTS:-1024,8192,32768,65536,131064}" --decode-steps 8 \
    --out "$work/llama31-8b-flash" >"$work/llama31-8b-flash.txt" 2>>"$log"
  say "flash grid: rc $?"; tail -n 3 "$work/llama31-8b-flash.txt" | tee -a "$log"
  pack
  say "Llama-3.1-8B bf16 candle-flash boundary at batch 1, 4"
  VRAMPROBE_LOG=info bounded "${FLASH_BOUNDARY_TIMEOUT:-200}" "flash boundary" "$bin" bench --device cuda \
    --dtype bf16 --engine candle-flash --model models/llama-3.1-8b-instruct \
    --weights synthetic --batch 1,4 --context 8192,32768 --decode-steps 8 \
    --find-boundary --boundary-step "${BOUNDARY_STEP:-2048}" \
    --out "$work/llama31-8b-flash-boundary" >"$work/llama31-8b-flash-boundary.txt" 2>>"$log"
  say "flash boundary: rc $?"; tail -n 3 "$work/llama31-8b-flash-boundary.txt" | tee -a "$log"
  pack
  if [ -z "${SKIP_TORCH:-}" ]; then
    say "PyTorch SDPA at the flash points (prefill speed)"
    PYTHONUNBUFFERED=1 bounded "${TORCH_TIMEOUT:-150}" "torch flash peer" "$py" scripts/torch_reference.py \
      --model models/llama-3.1-8b-instruct --batch 1 --context 1024,8192,32768 \
      --decode-steps 8 --attn sdpa --out "$work/torch-flash-peer.jsonl" >"$work/torch-flash-peer.txt" 2>&1
    say "torch peer: rc $?"; tail -n 3 "$work/torch-flash-peer.txt" | tee -a "$log"
    pack
  fi
}

# 2. Tiny model on CUDA.
tiny() {
  say "tiny model, bf16, CUDA"
  VRAMPROBE_LOG=info bounded 60 "tiny" "$bin" bench --device cuda --dtype bf16 --out "$work/tiny" \
    >"$work/tiny.txt" 2>>"$log"
  say "tiny: rc $?"; tail -n 5 "$work/tiny.txt" | tee -a "$log"
  pack
}

# 3. The serving-shaped engine: Llama-3.1-8B with candle-chunked on the whole card, batch 1
# up to 131072 tokens (CHUNKED_CONTEXTS), then batch 4 at CHUNKED_B4_CONTEXTS, then the
# out-of-memory boundary at CHUNKED_BOUNDARY_BATCHES (the longest context that fits, to
# BOUNDARY_STEP tokens; CHUNKED_BOUNDARY_BATCHES= skips it).
chunked() {
  say "Llama-3.1-8B bf16 candle-chunked grid, batch 1"
  VRAMPROBE_LOG=info bounded "${CHUNKED_TIMEOUT:-200}" "chunked grid" "$bin" bench --device cuda \
    --dtype bf16 --engine candle-chunked --model models/llama-3.1-8b-instruct --weights synthetic \
    --batch 1 --context "${CHUNKED_CONTEXTS:-1024,8192,32768,65536,131064}" --decode-steps 8 \
    --out "$work/llama31-8b-chunked" >"$work/llama31-8b-chunked.txt" 2>>"$log"
  say "chunked grid: rc $?"; tail -n 3 "$work/llama31-8b-chunked.txt" | tee -a "$log"
  pack
  if [ -n "${CHUNKED_B4_CONTEXTS:-}" ]; then
    say "Llama-3.1-8B bf16 candle-chunked, batch 4"
    VRAMPROBE_LOG=info bounded "${CHUNKED_B4_TIMEOUT:-150}" "chunked batch 4" "$bin" bench \
      --device cuda --dtype bf16 --engine candle-chunked --model models/llama-3.1-8b-instruct \
      --weights synthetic --batch 4 --context "$CHUNKED_B4_CONTEXTS" --decode-steps 8 \
      --out "$work/llama31-8b-chunked-b4" >"$work/llama31-8b-chunked-b4.txt" 2>>"$log"
    say "chunked batch 4: rc $?"; tail -n 3 "$work/llama31-8b-chunked-b4.txt" | tee -a "$log"
    pack
  fi
  if [ -n "${CHUNKED_BOUNDARY_BATCHES-1,4,16}" ]; then
    say "Llama-3.1-8B bf16 candle-chunked boundary at batch ${CHUNKED_BOUNDARY_BATCHES-1,4,16}"
    VRAMPROBE_LOG=info bounded "${CHUNKED_BOUNDARY_TIMEOUT:-200}" "chunked boundary" "$bin" bench \
      --device cuda --dtype bf16 --engine candle-chunked --model models/llama-3.1-8b-instruct \
      --weights synthetic --batch "${CHUNKED_BOUNDARY_BATCHES-1,4,16}" --context 8192,32768 \
      --decode-steps 8 --find-boundary --boundary-step "${BOUNDARY_STEP:-2048}" \
      --out "$work/llama31-8b-chunked-boundary" >"$work/llama31-8b-chunked-boundary.txt" 2>>"$log"
    say "chunked boundary: rc $?"; tail -n 3 "$work/llama31-8b-chunked-boundary.txt" | tee -a "$log"
    pack
  fi
}

chunked_peer() {
  say "PyTorch SDPA at the chunked points (the peer for prefill speed)"
  PYTHONUNBUFFERED=1 bounded "${TORCH_TIMEOUT:-150}" "torch chunked peer" "$py" \
    scripts/torch_reference.py --model models/llama-3.1-8b-instruct --batch 1 \
    --context 1024,8192,32768 --decode-steps 8 --attn sdpa \
    --out "$work/torch-chunked-peer.jsonl" >"$work/torch-chunked-peer.txt" 2>&1
  say "torch peer: rc $?"; tail -n 3 "$work/torch-chunked-peer.txt" | tee -a "$log"
  pack
}

# 3a. Llama-3-8B BF16, synthetic weights: the grid on the whole card (LLAMA_EXTRA adds flags,
# e.g. --find-boundary). Every decode point carries its step-by-step trace (what the pool
# took and handed back per step: `vramprobe report DIR --decode-steps`).
eager_grid() {
  say "Llama-3-8B bf16 synthetic grid"
  # shellcheck disable=SC2086 # LLAMA_EXTRA is a list of flags
  VRAMPROBE_LOG=info bounded "${LLAMA_TIMEOUT:-150}" "llama grid" "$bin" bench --device cuda \
    --dtype bf16 --model models/meta-llama-3-8b-instruct --weights synthetic \
    --batch 1,2,4,8 --context "${LLAMA_CONTEXTS:-128,512,1024,2048,4096,8192}" --decode-steps 8 \
    --max-position 16384 ${LLAMA_EXTRA:-} \
    --out "$work/llama3-8b-grid" >"$work/llama3-8b-grid.txt" 2>>"$log"
  say "llama grid: rc $?"; tail -n 3 "$work/llama3-8b-grid.txt" | tee -a "$log"
  pack
}

# 3b. The out-of-memory boundary per batch. On an 80 GB card candle-eager hits its u32
# element limit (scores of 2^32 elements) before memory at every batch, so the memory
# boundary is searched with the process limited to BOUNDARY_LIMIT (default 40GiB, an
# A100-40GB's budget) by a ballast allocation.
eager_boundary() {
  say "Llama-3-8B bf16 boundary search within ${BOUNDARY_LIMIT:-40GiB}"
  VRAMPROBE_LOG=info bounded "${BOUNDARY_TIMEOUT:-170}" "llama boundary" "$bin" bench \
    --device cuda --dtype bf16 --model models/meta-llama-3-8b-instruct --weights synthetic \
    --batch 1,2,4,8 --context 512,2048,4096,8192 --decode-steps 8 --max-position 16384 \
    --memory-limit "${BOUNDARY_LIMIT:-40GiB}" --find-boundary --boundary-step 256 \
    --out "$work/llama3-8b-boundary" >"$work/llama3-8b-boundary.txt" 2>>"$log"
  say "llama boundary: rc $?"; tail -n 3 "$work/llama3-8b-boundary.txt" | tee -a "$log"
  pack
}

# 4. PyTorch reference on the eager grid (transformers, eager and sdpa attention).
eager_peer() {
  say "PyTorch reference"
  PYTHONUNBUFFERED=1 bounded "${TORCH_TIMEOUT:-150}" "torch" "$py" scripts/torch_reference.py \
    --model models/meta-llama-3-8b-instruct --batch 1,2,4,8 \
    --context 128,512,1024,2048,4096,8192 --decode-steps 8 \
    --out "$work/torch.jsonl" >"$work/torch.txt" 2>&1
  say "torch: rc $?"; tail -n 3 "$work/torch.txt" | tee -a "$log"
  pack
}

# 3f. PyTorch's full fine-tune step, the peer of 3c (transformers + torch.optim.AdamW):
# bf16 weights and moments, and mixed precision with fp32 master weights and moments, each
# with torch's default foreach AdamW and with the fused one (fp32 + foreach: 16 bytes per
# parameter plus a moment-sized sqrt temporary, 160 GB for Llama-3-8B: an out-of-memory
# result on a 141 GB card, which the fused run does not have).
train_peer() {
  say "PyTorch full fine-tune step (AdamW, states ${TORCH_TRAIN_STATES:-bf16,fp32})"
  PYTHONUNBUFFERED=1 bounded "${TORCH_TRAIN_TIMEOUT:-120}" "torch train" "$py" \
    scripts/torch_train_reference.py --model models/meta-llama-3-8b-instruct --batch 1 \
    --context "${TORCH_TRAIN_CONTEXTS:-512,1024}" --states "${TORCH_TRAIN_STATES:-bf16,fp32}" \
    --adamw "${TORCH_TRAIN_ADAMW:-foreach,fused}" \
    --out "$work/torch-train.jsonl" >"$work/torch-train.txt" 2>&1
  say "torch train: rc $?"; tail -n 2 "$work/torch-train.txt" | cut -c1-300 | tee -a "$log"
  pack
}

if [ -n "${ONLY_TRAIN:-}" ]; then
  train
  [ -z "${SKIP_TORCH:-}" ] && train_peer
  say "done (training only): $out/results.tar.gz"; exit 0
fi
if [ -n "${ONLY_QUANT:-}" ]; then quantized; say "done (quantized only): $out/results.tar.gz"; exit 0; fi
if [ -n "${ONLY_FLASH:-}" ]; then flash; say "done (flash only): $out/results.tar.gz"; exit 0; fi

# ISSUE19=1: issue 19's run in one call, most valuable first, within BUDGET_S (default 480 s:
# a 15-minute lease less the machine's start and room to rerun a step). 1: training, candle
# and PyTorch; 2: the eager grid on this card with its boundary within candle's u32 limit,
# calibration.json and the decode-step traces (item 4); 3: candle-chunked at 8K-128K,
# batch 1, then batch 4; then the 40 GiB boundary of the H100 run, for the same budget on
# another GPU. Each step's own timeout still applies; what is cut short keeps its points.
if [ -n "${ISSUE19:-}" ]; then
  budget_end=$(( $(date +%s) + ${BUDGET_S:-480} ))
  TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-100}" train
  train_peer
  LLAMA_EXTRA="${LLAMA_EXTRA:---find-boundary --boundary-step 512}" eager_grid
  CHUNKED_CONTEXTS="${CHUNKED_CONTEXTS:-8192,32768,65536,131064}" \
    CHUNKED_B4_CONTEXTS="${CHUNKED_B4_CONTEXTS-8192,32768}" \
    CHUNKED_BOUNDARY_BATCHES="${CHUNKED_BOUNDARY_BATCHES-}" chunked
  eager_boundary
  say "done (issue 19): $out/results.tar.gz"
  exit 0
fi

# The full run: 2, 3 (SKIP_CHUNKED=1 skips it), 3e (SKIP_FLASH=1; a binary without the
# kernels is refused at once), 3a, 3b, 3c, 4 (SKIP_TORCH=1 skips the PyTorch peers).
[ -z "${SKIP_TINY:-}" ] && tiny
if [ -z "${SKIP_CHUNKED:-}" ]; then
  chunked
  [ -z "${SKIP_TORCH:-}" ] && chunked_peer
fi
[ -z "${SKIP_FLASH:-}" ] && flash
eager_grid
eager_boundary
train
if [ -n "${SKIP_TORCH:-}" ]; then say "done (torch skipped): $out/results.tar.gz"; exit 0; fi
eager_peer
train_peer
say "done: $out/results.tar.gz"
