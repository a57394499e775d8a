#!/usr/bin/env python3
"""PyTorch reference for vramprobe: the same model, grid and phases with Hugging Face
transformers (eager and sdpa attention), random weights from the same config.json.

For every (attention, batch, context) it records, per phase (prefill of `context` tokens,
then `--decode-steps` single-token steps with the KV cache):
  torch_allocated  torch.cuda.max_memory_allocated (tensor bytes, weights included)
  torch_reserved   torch.cuda.max_memory_reserved (the caching allocator's segments)
  nvml_process     this process's memory from NVML after the phase (what nvidia-smi shows)
An out-of-memory point is recorded as status "oom" and the sweep goes on.

  python3 scripts/torch_reference.py --model models/meta-llama-3-8b-instruct \
      --batch 1,2,4,8 --context 128,512,1024,2048,4096,8192 --out torch.jsonl

Needs torch with CUDA and transformers (>= 4.48); NVML through nvidia-ml-py if present.
"""
import argparse
import json
import os
import sys
import time


def nvml_process_bytes():
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        own = os.getpid()
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        for p in procs:
            if p.pid == own:
                return int(p.usedGpuMemory or 0)
        if len(procs) == 1:  # a container without the host PID namespace
            return int(procs[0].usedGpuMemory or 0)
    except Exception:  # NVML missing or not answering: not fatal for a reference run
        return None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="folder holding config.json, or the file")
    ap.add_argument("--batch", default="1,2,4,8")
    ap.add_argument("--context", default="128,512,1024,2048,4096,8192")
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--max-position", type=int, default=None)
    ap.add_argument("--out", required=True, help="JSON lines, appended point by point")
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers

    path = a.model if a.model.endswith(".json") else os.path.join(a.model, "config.json")
    cfg = LlamaConfig.from_json_file(path)
    if a.max_position:
        cfg.max_position_embeddings = a.max_position
    cfg.use_cache = True
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        model = LlamaForCausalLM(cfg)
    model.eval()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    meta = {
        "kind": "meta",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "config": path,
        "weights_bytes": weights,
        "params": sum(p.numel() for p in model.parameters()),
        "load_seconds": round(time.time() - t0, 2),
        "nvml_process_after_load": nvml_process_bytes(),
    }
    out = open(a.out, "a", buffering=1)
    out.write(json.dumps(meta) + "\n")
    print(json.dumps(meta), flush=True)

    batches = [int(x) for x in a.batch.split(",")]
    contexts = [int(x) for x in a.context.split(",")]
    vocab = cfg.vocab_size
    for attn in a.attn.split(","):
        model.config._attn_implementation = attn
        if hasattr(model, "set_attn_implementation"):
            try:
                model.set_attn_implementation(attn)
            except Exception as e:  # older transformers: the config attribute is enough
                print(f"set_attn_implementation({attn}): {e}", file=sys.stderr)
        for b in batches:
            oom_at = None
            for s in contexts:
                rec = {"kind": "point", "attn": attn, "batch": b, "context": s,
                       "decode_steps": a.decode_steps}
                if oom_at is not None and s > oom_at:
                    rec.update(status="skipped", reason=f"oom at context {oom_at}")
                    out.write(json.dumps(rec) + "\n")
                    continue
                ids = torch.randint(0, vocab, (b, s), device=dev)
                phase = "prefill"
                o = past = nxt = None
                try:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    with torch.no_grad():
                        t = time.time()
                        o = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                        torch.cuda.synchronize()
                        rec["prefill"] = {
                            "torch_allocated": torch.cuda.max_memory_allocated(),
                            "torch_reserved": torch.cuda.max_memory_reserved(),
                            "nvml_process": nvml_process_bytes(),
                            "seconds": round(time.time() - t, 4),
                        }
                        past = o.past_key_values
                        nxt = o.logits[:, -1:].argmax(-1)
                        del o
                        phase = "decode"
                        torch.cuda.reset_peak_memory_stats()
                        t = time.time()
                        for _ in range(a.decode_steps):
                            o = model(input_ids=nxt, past_key_values=past, use_cache=True,
                                      logits_to_keep=1)
                            past = o.past_key_values
                            nxt = o.logits[:, -1:].argmax(-1)
                            del o
                        torch.cuda.synchronize()
                        rec["decode"] = {
                            "torch_allocated": torch.cuda.max_memory_allocated(),
                            "torch_reserved": torch.cuda.max_memory_reserved(),
                            "nvml_process": nvml_process_bytes(),
                            "seconds_per_step": round((time.time() - t) / a.decode_steps, 5),
                        }
                    rec["status"] = "ok"
                except torch.OutOfMemoryError as e:
                    rec.update(status="oom", phase=phase, message=str(e).split("\n")[0][:200])
                    oom_at = s
                finally:
                    o = past = nxt = ids = None
                    torch.cuda.empty_cache()
                out.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    out.close()


if __name__ == "__main__":
    main()
