#!/usr/bin/env bash
# Load benchmark and soak of `vramprobe serve` (figures in docs/daemon.md).
#  1. idle: RSS after start-up, and CPU over IDLE_SECS at the default 5 s NVML poll;
#  2. load: /metrics at RATE requests/s for LOAD_SECS (examples/scrape_load.rs, open loop),
#     p50/p99/max latency, then RSS;
#  3. soak (SOAK_SECS > 0): the same load for SOAK_SECS with RSS sampled every 10 s.
# The daemon exports the committed H100 boundary run and one FAKE NVML GPU (this machine
# has none), so the exposition has the size a real GPU host's has.
# FLEET=1: a loaded node instead: 8 FAKE GPUs x 50 compute processes, each PID in a fixture
# /proc (--proc-root) in one of 200 containers of 100 pods (containerd, systemd driver), and
# one vLLM-shaped engine endpoint (python3 -m http.server) with --engine-model.
# Usage: scripts/serve-load.sh   (env: RATE=200 LOAD_SECS=30 IDLE_SECS=60 SOAK_SECS=0 FLEET=0)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-200}
LOAD_SECS=${LOAD_SECS:-30}
IDLE_SECS=${IDLE_SECS:-60}
SOAK_SECS=${SOAK_SECS:-0}
FLEET=${FLEET:-0}
cargo build --release -q --bin vramprobe --example scrape_load
bin=target/release/vramprobe
load=target/release/examples/scrape_load
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; kill "${epid:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/runs/h100"
cp reports/gpu/2026-11-26-h100-80gb/llama3-8b-40gib-boundary/{run.json,points.jsonl,boundary.json} "$tmp/runs/h100/"
cat > "$tmp/nvml.json" <<'JSON'
{"devices": [{"info": {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-fake-0",
  "driver_version": "580.159.04", "cuda_driver_version": "13.0", "memory_total_bytes": 85520809984},
  "memory": {"used": 17000000000, "free": 67965326848, "reserved": 555483136, "total": 85520809984},
  "processes": []}]}
JSON
extra=()
if [ "$FLEET" = 1 ]; then
  python3 - "$tmp" <<'PY'
import json, os, sys
tmp = sys.argv[1]
total, devices = 85520809984, []
for g in range(8):
    procs = []
    for k in range(50):
        pid = 10000 + g * 50 + k
        pod, ctr = pid % 100, pid % 200
        uid = f"{pod:08x}-0000-4000-8000-{pod:012x}"
        cid = f"{ctr:064x}"
        d = os.path.join(tmp, "proc", str(pid))
        os.makedirs(d)
        fields = " ".join(str(i) for i in range(4, 22))
        open(os.path.join(d, "stat"), "w").write(f"{pid} (python3) S {fields} {pid * 7} 0 0\n")
        u = uid.replace("-", "_")
        open(os.path.join(d, "cgroup"), "w").write(
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{cid}.scope\n")
        procs.append([pid, 300_000_000 + k * 1_000_000])
    used = sum(p[1] for p in procs) + 2_000_000_000
    devices.append({"info": {"index": g, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-fake-{g}",
                             "driver_version": "580.159.04", "cuda_driver_version": "13.0",
                             "memory_total_bytes": total},
                    "memory": {"used": used, "free": total - 555483136 - used, "reserved": 555483136, "total": total},
                    "processes": procs})
json.dump({"devices": devices}, open(os.path.join(tmp, "nvml.json"), "w"))
os.makedirs(os.path.join(tmp, "engine"))
open(os.path.join(tmp, "engine", "metrics"), "w").write(
    'vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Meta-Llama-3-8B-Instruct"} 0.25\n'
    'vllm:cache_config_info{block_size="16",num_gpu_blocks="27158"} 1.0\n')
PY
  eport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server "$eport" --bind 127.0.0.1 --directory "$tmp/engine" > /dev/null 2>&1 &
  epid=$!
  extra=(--proc-root "$tmp/proc" --engine-metrics "http://127.0.0.1:$eport/metrics"
         --engine-model "meta-llama/Meta-Llama-3-8B-Instruct=models/meta-llama-3-8b-instruct")
  echo "fleet: 8 fake GPUs x 50 processes in 200 containers of 100 pods, one engine endpoint"
fi
"$bin" serve --listen 127.0.0.1:0 --runs-dir "$tmp/runs" --fake-nvml "$tmp/nvml.json" \
  "${extra[@]}" > "$tmp/out" 2> "$tmp/err" &
pid=$!
for _ in $(seq 50); do grep -q listening "$tmp/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's|.*http://||p' "$tmp/out")
echo "daemon pid $pid on $addr ($(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }   # KiB
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
sleep 2
if [ "$FLEET" = 1 ]; then
  for _ in $(seq 100); do
    curl -s "http://$addr/metrics" | grep -q 'vramprobe_engine_kv_cache_usage_ratio' && break; sleep 0.1
  done
  echo "exposition: $(curl -s "http://$addr/metrics" | grep -c '^vramprobe_gpu_container_memory_used_bytes{') container series, $(curl -s "http://$addr/metrics" | wc -c) bytes"
fi
echo "idle RSS after start: $(( $(rss) / 1024 )) MiB ($(rss) KiB)"
t0=$(cpu_ticks); sleep "$IDLE_SECS"; t1=$(cpu_ticks)
echo "idle CPU over ${IDLE_SECS}s (poll 5s): $(awk -v t=$((t1 - t0)) -v hz="$hz" -v s="$IDLE_SECS" 'BEGIN {printf "%.3f%% of a core (%d ticks)", 100 * t / hz / s, t}')"
echo "load: $RATE req/s for ${LOAD_SECS}s on /metrics (OpenMetrics)"
t0=$(cpu_ticks)
"$load" "$addr" /metrics "$RATE" "$LOAD_SECS"
t1=$(cpu_ticks)
echo "CPU under load: $(awk -v t=$((t1 - t0)) -v hz="$hz" -v s="$LOAD_SECS" 'BEGIN {printf "%.1f%% of a core", 100 * t / hz / s}')"
echo "RSS after load: $(( $(rss) / 1024 )) MiB ($(rss) KiB)"
if [ "$SOAK_SECS" -gt 0 ]; then
  echo "soak: $RATE req/s for ${SOAK_SECS}s; RSS (KiB) every 10 s:"
  "$load" "$addr" /metrics "$RATE" "$SOAK_SECS" > "$tmp/soak.json" &
  lpid=$!
  samples=()
  while kill -0 "$lpid" 2>/dev/null; do samples+=("$(rss)"); sleep 10; done
  wait "$lpid"
  echo "${samples[*]}"
  cat "$tmp/soak.json"
  echo "RSS first/last/max (KiB): ${samples[0]} / ${samples[-1]} / $(printf '%s\n' "${samples[@]}" | sort -n | tail -1)"
  grep -ci "error\|panic" "$tmp/err" | sed 's/^/daemon log lines with error or panic: /' || true
fi
kill -TERM "$pid"; wait "$pid" || true
echo "daemon exit after SIGTERM: ok"
