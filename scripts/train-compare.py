#!/usr/bin/env python3
"""Markdown tables for issue 19's training item: candle's training step as vramprobe estimated
and measured it (`bench --mode train` run directories), and PyTorch's step
(scripts/torch_train_reference.py's JSON lines) beside vramprobe's PyTorch-convention estimate
(`estimate --mode train --optimizer adamw-bf16|adamw`), with the verdict on the seed's claim
("full fine-tuning Llama-3-8B in BF16 needs 64-80 GB, one 80 GB card").

  python3 scripts/train-compare.py [--bin VRAMPROBE] [--card-gib 79.18] \\
      RUN_DIR [RUN_DIR ...] [--torch TORCH_JSONL]

RUN_DIR: a training run (full fine-tune or LoRA). Every figure is in GiB; errors are
(estimated - measured) / measured. `--card-gib` is what one 80 GB card lets a process use
(`vramprobe gpus`: h100-sxm usable).
"""
import argparse
import json
import os
import subprocess

GIB = 1 << 30
PHASES = ["train_forward", "train_backward", "train_optimizer_first", "train_optimizer"]


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def g(x):
    return "" if x is None else f"{x / GIB:.2f}"


def pct(est, meas):
    if est is None or not meas:
        return ""
    return f"{(est - meas) / meas * 100:+.2f}%"


def candle_table(run):
    pts = lines(os.path.join(run, "points.jsonl"))
    info = json.load(open(os.path.join(run, "run.json")))
    cmd = " ".join(info.get("command", []))
    out = [f"### {os.path.basename(run.rstrip('/'))}", "", f"`{cmd}`", "",
           "| context | phase | status | est. tensors | allocator (cuda_pool or host_alloc) | error | est. process | nvml_process | error |",
           "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    worst = 0.0
    peak = {}
    for p in sorted(pts, key=lambda p: (p["batch"], p["context"], PHASES.index(p["phase"]))):
        m, e = p.get("measured", {}), p.get("estimated_by_source", {})
        alloc_src = "cuda_pool" if "cuda_pool" in m else "host_alloc"
        est_t = e.get(alloc_src, p.get("estimated_bytes"))
        pool, nvml = m.get(alloc_src), m.get("nvml_process")
        if p["status"] == "ok" and nvml:
            worst = max(worst, abs((e.get("nvml_process", 0) - nvml) / nvml))
            key = (p["batch"], p["context"])
            peak[key] = max(peak.get(key, 0), nvml)
        out.append(f"| {p['context']} | {p['phase']} | {p['status']} | {g(est_t)} | {g(pool)} | "
                   f"{pct(est_t, pool)} | {g(e.get('nvml_process'))} | {g(nvml)} | "
                   f"{pct(e.get('nvml_process'), nvml)} |")
    if peak:
        out += ["", f"Largest |error| against NVML: {worst * 100:.2f}% (target 3%)."]
    else:
        out += ["", "No NVML figures in this run (not a GPU run, or nothing fitted)."]
    return out, peak


def torch_estimate(binary, model, optimizer, ctx):
    o = subprocess.run([binary, "estimate", "--model", model,
                        "--mode", "train", "--optimizer", optimizer, "--batch", "1",
                        "--context", str(ctx), "--json"], capture_output=True, text=True)
    if o.returncode != 0:
        return None
    v = json.loads(o.stdout)
    return v.get("total_bytes") or v.get("peak_bytes")


def torch_table(path, binary):
    recs = lines(path)
    out = ["### PyTorch (transformers + torch.optim.AdamW)", "",
           "| states | AdamW | context | status | forward | backward | optimizer (first) | optimizer | peak allocated | peak NVML | vramprobe's estimate | error |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    peaks = {}
    model = "models/meta-llama-3-8b-instruct"
    for r in recs:
        if r.get("kind") == "meta":
            model = os.path.dirname(r["config"]) or model
        if r.get("kind") != "point":
            continue
        alloc = r.get("peak_allocated", {})
        steps = r.get("steps", [])
        nvml = max((m.get("nvml_process") or 0 for s in steps for m in s.values()), default=0)
        top = max((v or 0 for v in alloc.values()), default=0)
        opt = "adamw-bf16" if r["states"] == "bf16" else "adamw"
        est = torch_estimate(binary, model, opt, r["context"]) if r.get("status") == "ok" else None
        peaks[(r["states"], r["adamw"], r["context"])] = (r.get("status"), nvml, top)
        out.append(
            f"| {r['states']} | {r['adamw']} | {r['context']} | {r.get('status')}"
            f"{' in ' + r['phase'] if r.get('phase') else ''} | "
            f"{g(alloc.get('train_forward'))} | {g(alloc.get('train_backward'))} | "
            f"{g(alloc.get('train_optimizer_first'))} | {g(alloc.get('train_optimizer'))} | "
            f"{g(top or None)} | {g(nvml or None)} | {g(est)} | {pct(est, top)} |")
    return out, peaks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--torch")
    ap.add_argument("--bin", default="target/release/vramprobe")
    ap.add_argument("--card-gib", type=float, default=79.18)
    a = ap.parse_args()
    card = a.card_gib * GIB
    verdict = []
    for run in a.runs:
        t, peak = candle_table(run)
        print("\n".join(t) + "\n")
        for (b, c), n in sorted(peak.items()):
            fits = "fits" if n <= card else "does not fit"
            verdict.append(f"- candle, {os.path.basename(run.rstrip('/'))}, batch {b} x {c}: "
                           f"{n / GIB:.2f} GiB ({n / 1e9:.1f} GB) on NVML: {fits} one 80 GB card")
    if a.torch:
        t, peaks = torch_table(a.torch, a.bin)
        print("\n".join(t) + "\n")
        for (st, impl, c), (status, nvml, top) in sorted(peaks.items()):
            if status != "ok":
                verdict.append(f"- PyTorch, {st} states, {impl} AdamW, {c} tokens: {status}")
                continue
            n = nvml or top
            if not n:
                verdict.append(f"- PyTorch, {st} states, {impl} AdamW, {c} tokens: no GPU figures "
                               "(a CPU dry run)")
                continue
            fits = "fits" if n <= card else "does not fit"
            verdict.append(f"- PyTorch, {st} states, {impl} AdamW, {c} tokens: "
                           f"{n / GIB:.2f} GiB ({n / 1e9:.1f} GB): {fits} one 80 GB card")
    if verdict:
        print("### The seed's \"64-80 GB, one 80 GB card\"\n")
        print("\n".join(verdict))


if __name__ == "__main__":
    main()
