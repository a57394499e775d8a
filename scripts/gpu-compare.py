#!/usr/bin/env python3
"""Markdown tables comparing, per (batch, context, phase), vramprobe's estimate, candle as
measured (memory pool and NVML) and PyTorch transformers (eager and sdpa), from the files of
scripts/gpu-validate.sh.

  python3 scripts/gpu-compare.py RUN_DIR [TORCH_JSONL] [BOUNDARY_RUN_DIR]
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GIB = 1 << 30


def points(run):
    out = []
    with open(f"{run}/points.jsonl") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def g(x):
    return "" if x is None else f"{x / GIB:.2f}"


def pct(x):
    return "" if x is None else f"{x * 100:+.2f}%"


def reestimate(run, b, c, steps, phase, cache={}):
    """The current estimator's tensor and process figures for a point, through the binary
    (VRAMPROBE_BIN, default target/release/vramprobe), with the run's own calibration."""
    import subprocess
    key = (run, b, c, steps)
    if key not in cache:
        info = json.load(open(f"{run}/run.json"))
        cmd = info["command"]
        args = [os.environ.get("VRAMPROBE_BIN", "target/release/vramprobe"), "estimate",
                "--model", info["model_config"], "--dtype", info["dtype"], "--batch", str(b),
                "--context", str(c), "--decode-steps", str(steps), "--calibration",
                f"{run}/calibration.json", "--json"]
        if "--max-position" in cmd:
            args += ["--max-position", cmd[cmd.index("--max-position") + 1]]
        cache[key] = json.loads(subprocess.run(args, check=True, capture_output=True,
                                               text=True, cwd=ROOT).stdout)
    v = cache[key]
    return v["phases"][phase]["total_bytes"], v["process"][phase]["total_bytes"]


def main():
    run = os.path.abspath(sys.argv[1])
    torch = {}
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            for line in f:
                r = json.loads(line)
                if r.get("kind") == "point":
                    torch[(r["attn"], r["batch"], r["context"])] = r
    pts = [p for p in points(run) if p.get("stage", "grid") == "grid"]
    print("| batch | context | phase | estimate (GiB) | candle pool (GiB) | error | candle NVML (GiB) "
          "| estimate: process (GiB) | error | torch eager NVML | torch sdpa NVML | torch sdpa allocated |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = {"cuda_pool": 0.0, "nvml_process": 0.0}
    for p in pts:
        b, c, ph = p["batch"], p["context"], p["phase"]
        m = p["measured"]
        est_pool, est_nvml = reestimate(run, b, c, p["decode_steps"], ph)
        e = {"cuda_pool": est_pool, "nvml_process": est_nvml}
        err = {k: (e[k] - m[k]) / m[k] for k in e if m.get(k)}

        def t(attn, key):
            r = torch.get((attn, b, c))
            if not r:
                return ""
            if r.get("status") != "ok":
                return r.get("status", "")
            return g(r[ph][key])

        if p["status"] != "ok":
            why = "OOM" if p["status"] == "oom" else "refused (u32 elements)"
            print(f"| {b} | {c} | {ph} | {g(p['estimated_bytes'])} | {why} | | | "
                  f"{g(e.get('nvml_process'))} | | {t('eager', 'nvml_process')} | "
                  f"{t('sdpa', 'nvml_process')} | {t('sdpa', 'torch_allocated')} |")
            continue
        for k in worst:
            if k in err:
                worst[k] = max(worst[k], abs(err[k]))
        print(f"| {b} | {c} | {ph} | {g(e.get('cuda_pool'))} | {g(m.get('cuda_pool'))} | "
              f"{pct(err.get('cuda_pool'))} | {g(m.get('nvml_process'))} | "
              f"{g(e.get('nvml_process'))} | {pct(err.get('nvml_process'))} | "
              f"{t('eager', 'nvml_process')} | {t('sdpa', 'nvml_process')} | "
              f"{t('sdpa', 'torch_allocated')} |")
    print()
    print(f"largest |error|: cuda_pool {worst['cuda_pool'] * 100:.2f}%, "
          f"nvml_process {worst['nvml_process'] * 100:.2f}%")
    if len(sys.argv) > 3:
        with open(os.path.join(os.path.abspath(sys.argv[3]), "boundary.json")) as f:
            bd = json.load(f)
        print()
        print("| batch | measured: fits | measured: first OOM | predicted max context | within one step |")
        print("|---:|---:|---:|---:|---|")
        for x in bd:
            lo, hi, pr = x["measured_max_context"], x["measured_first_oom_context"], x["predicted_max_context"]
            ok = pr is not None and lo is not None and hi is not None and lo - x["step"] <= pr <= hi + x["step"]
            print(f"| {x['batch']} | {lo} | {hi} | {pr} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
