#!/usr/bin/env python3
"""transformers' own count of a config's parameters: the independent count that
src/spec/tests.rs checks vramprobe's tensor inventory against.

For each config.json given, builds the model with `AutoModelForCausalLM.from_config` on
PyTorch's meta device (no memory, no weights) and writes beside it
`transformers-count.json`: the versions, the parameter count (`model.parameters()`, tied
weights once), every parameter's name and shape as the checkpoint stores it, and
transformers' resolved sliding window and layer types.

Needs PyTorch and transformers from PyPI (not the crate's dependencies):
    python3 -m venv /tmp/ptv && /tmp/ptv/bin/pip install torch==2.8.0 transformers==4.56.2
    /tmp/ptv/bin/python scripts/transformers-count.py models/*/config.json
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def count(path: Path) -> dict:
    raw = json.loads(path.read_text())
    config = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors = [[name, list(p.shape)] for name, p in model.named_parameters()]
    return {
        "source": "AutoModelForCausalLM.from_config on the meta device",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "class": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "sliding_window": getattr(config, "sliding_window", None),
        "layer_types": getattr(config, "layer_types", None),
        "tensors": tensors,
    }


def main() -> None:
    for arg in sys.argv[1:]:
        path = Path(arg)
        out = path.with_name("transformers-count.json")
        result = count(path)
        tensors = result.pop("tensors")
        head = json.dumps(result, indent=1)[:-2]
        rows = ",\n".join("  " + json.dumps(t) for t in tensors)
        out.write_text(f'{head},\n "tensors": [\n{rows}\n ]\n}}\n')
        print(f"{path}: {result['class']} {result['params']:,} parameters -> {out}")


if __name__ == "__main__":
    main()
