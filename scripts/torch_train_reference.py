#!/usr/bin/env python3
"""PyTorch peer for `vramprobe bench --mode train`: one full fine-tune step of the same model
with Hugging Face transformers and torch.optim.AdamW, random weights from the same config.json.
One JSON line per point: every step's phases, and `peak_allocated` by phase.

The step is vramprobe's: a forward over batch x context tokens with logits at every position
and the mean next-token cross-entropy (`labels=input_ids`), `loss.backward()`, then
`AdamW.step()` and `zero_grad(set_to_none=True)`. Two steps per point, so the first optimizer
step (which creates the moments) and a steady one are both seen. Phases are named as
vramprobe names them: train_forward, train_backward, train_optimizer_first, train_optimizer.

Optimizer states (`--states`, one run each):
  bf16  weights, gradients and AdamW moments all bf16 (what candle-nn's AdamW does on a bf16
        model: 8 bytes per parameter before activations)
  fp32  mixed precision as the Hugging Face Trainer runs `bf16=True`: fp32 weights, fp32
        gradients and fp32 moments, the forward under torch.autocast(bfloat16)
        (16 bytes per parameter before activations)

Per phase it records:
  torch_allocated  torch.cuda.max_memory_allocated in the phase (tensor bytes, weights included)
  torch_reserved   torch.cuda.max_memory_reserved in the phase (the caching allocator's segments)
  torch_end        torch.cuda.memory_allocated at the phase's end (what the next phase starts with)
  nvml_process     this process's memory from NVML at the phase's end (what nvidia-smi shows)
  seconds          wall time of the phase
An out-of-memory phase is recorded (status "oom", the phase named) and larger contexts of the
same run are skipped.

  python3 scripts/torch_train_reference.py --model models/meta-llama-3-8b-instruct \\
      --batch 1 --context 512,1024 --states bf16,fp32 --out torch-train.jsonl

`--device cpu` runs the same code without allocator statistics (a dry run for a machine
without a GPU: the memory fields are null). Needs torch and transformers (4.48 or later, 5.x
included); NVML through nvidia-ml-py if present.
"""
import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import nvml_process_bytes  # noqa: E402  (one NVML reading for both peers)


class Meter:
    """Per-phase peaks on CUDA; nothing but time on the CPU."""

    def __init__(self, torch, dev):
        self.torch = torch
        self.cuda = dev.type == "cuda"

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.t = time.time()

    def stop(self):
        rec = {}
        if self.cuda:
            self.torch.cuda.synchronize()
            rec = {
                "torch_allocated": self.torch.cuda.max_memory_allocated(),
                "torch_reserved": self.torch.cuda.max_memory_reserved(),
                "torch_end": self.torch.cuda.memory_allocated(),
                "nvml_process": nvml_process_bytes(),
            }
        else:
            rec = {"torch_allocated": None, "torch_reserved": None, "torch_end": None,
                   "nvml_process": None}
        rec["seconds"] = round(time.time() - self.t, 4)
        return rec


def build_model(torch, LlamaForCausalLM, cfg, dev, states):
    """The model in the dtype its weights are kept in: bf16, or fp32 master weights."""
    dtype = torch.bfloat16 if states == "bf16" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with dev:
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.train()
    # The loss needs no KV cache; vramprobe's training step keeps none either.
    model.config.use_cache = False
    if hasattr(model, "set_attn_implementation"):  # transformers 4.5x and 5.x
        try:
            model.set_attn_implementation(cfg._attn_implementation)
        except Exception as e:  # older: the config attribute set before the build is enough
            print(f"set_attn_implementation: {e}", file=sys.stderr)
    return model


def run_states(a, torch, transformers, LlamaForCausalLM, cfg, dev, states, impl, out):
    meter = Meter(torch, dev)
    torch.manual_seed(0)
    t0 = time.time()
    model = build_model(torch, LlamaForCausalLM, cfg, dev, states)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "kind": "meta",
        "states": states,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "config": a.config_path,
        "attn": a.attn,
        "adamw": impl,
        "params": params,
        "weights_bytes": torch.cuda.memory_allocated() if dev.type == "cuda" else None,
        "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "load_seconds": round(time.time() - t0, 2),
        "nvml_process_after_load": nvml_process_bytes() if dev.type == "cuda" else None,
    }
    out.write(json.dumps(meta) + "\n")
    print(json.dumps(meta), flush=True)
    # torch.optim.AdamW keeps its moments in each parameter's dtype; foreach (the default
    # on CUDA) is what a user gets without asking, fused the lean one. A fresh optimizer per point, as
    # vramprobe's step has: the first step creates the moments.
    autocast = (
        torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        if states == "fp32"
        else None
    )
    vocab = cfg.vocab_size
    batches = [int(x) for x in a.batch.split(",")]
    contexts = [int(x) for x in a.context.split(",")]
    for b in batches:
        oom_at = None
        for s in contexts:
            rec = {"kind": "point", "states": states, "adamw": impl, "batch": b, "context": s,
                   "steps": []}
            if oom_at is not None and s > oom_at:
                rec.update(status="skipped", reason=f"oom at context {oom_at}")
                out.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
                continue
            phase = "train_forward"
            loss = ids = opt = None
            try:
                kw = {"fused": True} if impl == "fused" else {"foreach": True}
                opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, **kw)
                ids = torch.randint(0, vocab, (b, s), device=dev)
                for step in range(a.steps):
                    got = {}
                    rec["steps"].append(got)
                    phase = "train_forward"
                    meter.start()
                    if autocast is not None:
                        with autocast:
                            loss = model(input_ids=ids, labels=ids).loss
                    else:
                        loss = model(input_ids=ids, labels=ids).loss
                    got[phase] = meter.stop()
                    got[phase]["loss"] = round(float(loss.detach().float()), 4)
                    phase = "train_backward"
                    meter.start()
                    loss.backward()
                    loss = None
                    got[phase] = meter.stop()
                    phase = "train_optimizer_first" if step == 0 else "train_optimizer"
                    meter.start()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    got[phase] = meter.stop()
                rec["status"] = "ok"
            except torch.OutOfMemoryError as e:
                rec.update(status="oom", phase=phase, message=str(e).split("\n")[0][:200])
                oom_at = s
            finally:
                loss = ids = opt = None
                model.zero_grad(set_to_none=True)
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            # vramprobe's convention: forward, backward and optimizer from the last (steady)
            # step, train_optimizer_first from the first.
            peak = {}
            for got in rec["steps"]:
                for ph, m in got.items():
                    peak[ph] = m["torch_allocated"]
            rec["peak_allocated"] = peak
            out.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    del model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="folder holding config.json, or the file")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--context", default="512,1024")
    ap.add_argument("--states", default="bf16,fp32", help="bf16, fp32 or both (comma-separated)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per point (>= 2)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers' attention: sdpa (its default) or eager")
    ap.add_argument("--adamw", default="foreach",
                    help="torch's AdamW implementation, one run each: foreach (its default on "
                         "CUDA; _foreach_sqrt makes a moment-sized temporary), fused, or both "
                         "(comma-separated)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", required=True, help="JSON lines, appended point by point")
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps: at least 2 (the first optimizer step creates the moments)")
    for st in a.states.split(","):
        if st not in ("bf16", "fp32"):
            ap.error(f"--states: {st!r} is neither bf16 nor fp32")
    for impl in a.adamw.split(","):
        if impl not in ("foreach", "fused"):
            ap.error(f"--adamw: {impl!r} is neither foreach nor fused")

    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    a.config_path = a.model if a.model.endswith(".json") else os.path.join(a.model, "config.json")
    cfg = LlamaConfig.from_json_file(a.config_path)
    cfg.use_cache = False
    # sdpa is what a user gets by default; vramprobe's candle step is eager attention, so
    # `--attn eager` is the like-for-like peer and sdpa the one people run.
    try:
        cfg._attn_implementation = a.attn
    except Exception as e:  # a transformers that keeps it read-only: set on the model below
        print(f"config._attn_implementation: {e}", file=sys.stderr)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        sys.exit(2)
    with open(a.out, "a", buffering=1) as out:
        for states in a.states.split(","):
            for impl in a.adamw.split(","):
                run_states(a, torch, transformers, LlamaForCausalLM, cfg, dev, states, impl, out)


if __name__ == "__main__":
    main()
