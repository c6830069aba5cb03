"""The exit model's inference path on a GPU (bf16, larger micro-batches) -> ``bench/results/gpu.json``

Prepared here, run where a GPU is (``bench/gpu_check.sh``, under 8 minutes):

    python -m bench.gpu_check export     # here: 200 ML-100K test rows as the serving code saw them, the CPU
                                         # path's scores of them, the checkpoint and MiniLM (bf16) -> bench/gpu_inputs
    bash bench/gpu_check.sh [--smollm2 FOLDER]   # there: needs only torch, transformers, safetensors, scikit-learn

``export`` builds the rows with the serving code (prequential samples through the graph updater and qdrant-edge,
prompts, features with content match), scores them with the saved ML-100K checkpoint on the CPU in fp32
(calibrated early exit, batches of 32) and writes everything the GPU side needs into ``bench/gpu_inputs/``
(~46 MB: the device machine takes at most 64 MiB and has none of Kafka, qdrant-edge or the model wheels).

``run`` loads the same checkpoint on the GPU with the backbone in bf16 and reports, per model and per model batch
(32, 128, 512 rows): requests/s (rows scored per second over repeated batches of the 200 rows) and p99 of the
batch time (a request waits for its batch), with early exit and at full depth; and for MiniLM the AUC of the 200
rows against the CPU path's (the aim: equal within 0.002). SmolLM2-135M runs when its folder is given (it is too
large to carry to the device machine in this project): speed only, with freshly initialised heads (no trained
SmolLM2 heads exist), at full depth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import machine
from scorer import checkpoint
from scorer.exit_rules import ExitRule
from scorer.model import EarlyExitModel

REPO = Path(__file__).resolve().parents[1]
INPUTS = REPO / "bench" / "gpu_inputs"
RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (32, 128, 512)


def export(args) -> None:
    """Rows, CPU scores, the checkpoint (pointing at a bf16 MiniLM copy) into ``INPUTS``."""
    from infra.runtime.settings import Settings
    from scorer import experiment
    from scorer.features import needs_embeddings
    from scorer.quality import auc

    settings = Settings()
    source = args.checkpoint or settings.cache_dir / "models" / "early-exit-ml-100k-minilm"
    model, tokenizer, card, rule = checkpoint.load(source, settings.cache_dir)
    sets = experiment.sample_sets("ml-100k", settings.data_dir, settings.cache_dir, args.rows, args.rows // 2,
                                  args.rows)
    embeddings = experiment.content_embeddings(settings.cache_dir) if needs_embeddings(card.features) else None
    enc = experiment.encode(tokenizer, sets.test, card.max_length, card.prior, embeddings=embeddings,
                            names=card.features, graph_dim=card.graph_dim)
    _, cpu = experiment.throughput(model, enc, rule, batch_size=32)
    shutil.rmtree(INPUTS, ignore_errors=True)
    INPUTS.mkdir(parents=True)
    backbone = INPUTS / "minilm-bf16"
    model.backbone.to(torch.bfloat16).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    shutil.copytree(source, INPUTS / "model")
    config = json.loads((INPUTS / "model" / "config.json").read_text())
    config["base_model"] = str(backbone.relative_to(REPO))  # resolved from the repo root (run() works there)
    (INPUTS / "model" / "config.json").write_text(json.dumps(config, indent=2))
    torch.save({"ids": enc.ids, "mask": enc.mask, "features": enc.features, "labels": enc.labels,
                "cpu_ctr": torch.from_numpy(cpu.ctr), "cpu_exit_layer": torch.from_numpy(cpu.exit_layer),
                "cpu_precision": card.precision, "cpu_model_version": card.version}, INPUTS / "rows.pt")
    size = sum(p.stat().st_size for p in INPUTS.rglob("*") if p.is_file()) / 2**20
    print(f"exported {len(enc.ids)} rows (CPU AUC {auc(enc.labels.numpy(), cpu.ctr):.4f}) and the model into "
          f"{INPUTS} ({size:.0f} MiB)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(model: EarlyExitModel, rows: dict, rule: ExitRule, batch: int, device: torch.device,
          seconds: float) -> dict:
    """Requests/s and batch-time percentiles of batches of ``batch`` rows (the rows repeated), for ``seconds``."""
    n = len(rows["ids"])
    take = torch.arange(batch) % n
    ids, mask = rows["ids"][take].to(device), rows["mask"][take].to(device)
    features = None if rows["features"] is None else rows["features"][take]
    for _ in range(3):
        model.predict(ids, mask, rule, features)
    sync(device)
    times, layers = [], []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t0 = time.perf_counter()
        result = model.predict(ids, mask, rule, features)
        sync(device)
        times.append(time.perf_counter() - t0)
        layers.append(float(np.mean(result.exit_layer)))
    ms = np.array(times) * 1000
    return {"rps": batch * len(times) / sum(times), "batch_p50_ms": float(np.percentile(ms, 50)),
            "batch_p99_ms": float(np.percentile(ms, 99)), "mean_exit_layer": float(np.mean(layers)),
            "batches_timed": len(times)}


def speeds(model: EarlyExitModel, rows: dict, rule: ExitRule, device: torch.device, seconds: float,
           exit_too: bool = True) -> dict:
    out = {}
    for batch in BATCHES:
        out[str(batch)] = {"full": timed(model, rows, ExitRule(), batch, device, seconds)}
        if exit_too:
            out[str(batch)]["exit"] = timed(model, rows, rule, batch, device, seconds)
        print(f"  batch {batch}: " + ", ".join(f"{k} {v['rps']:.0f} rows/s p99 {v['batch_p99_ms']:.1f} ms"
                                               for k, v in out[str(batch)].items()), flush=True)
    return out


def run(args) -> None:
    from sklearn.metrics import roc_auc_score

    from scorer import backbones
    from scorer.features import ALL_FEATURES

    os.chdir(REPO)  # the exported checkpoint names its backbone folder relative to the repo root
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not (INPUTS / "rows.pt").exists():
        sys.exit(f"{INPUTS / 'rows.pt'} is missing: run `python -m bench.gpu_check export` where the project runs")
    rows = torch.load(INPUTS / "rows.pt")
    model, tokenizer, card, rule = checkpoint.load(INPUTS / "model", Path("."), device)
    if device.type == "cuda":  # on the CPU, load ran the backbone at the checkpoint's precision
        model.backbone.to(torch.bfloat16)
    dtype = "bfloat16" if device.type == "cuda" else card.precision
    started = time.perf_counter()
    n = len(rows["ids"])
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "backbone_dtype": dtype, "rows": n, "batches": list(BATCHES)}
    labels = rows["labels"].numpy()
    scored = [model.predict(rows["ids"][s:s + 32].to(device), rows["mask"][s:s + 32].to(device), rule,
                            None if rows["features"] is None else rows["features"][s:s + 32])
              for s in range(0, n, 32)]
    ctr = np.concatenate([r.ctr for r in scored])
    cpu_ctr = rows["cpu_ctr"].numpy()
    result["minilm"] = {
        "auc": float(roc_auc_score(labels, ctr)), "auc_cpu_path": float(roc_auc_score(labels, cpu_ctr)),
        "max_abs_ctr_difference": float(np.max(np.abs(ctr - cpu_ctr))),
        "same_exit_layer_share": float(np.mean(np.concatenate([r.exit_layer for r in scored])
                                               == rows["cpu_exit_layer"].numpy())),
        "cpu_path": f"{rows['cpu_model_version']} ({rows['cpu_precision']} on the CPU)",
    }
    result["minilm"]["auc_difference"] = result["minilm"]["auc"] - result["minilm"]["auc_cpu_path"]
    print(f"MiniLM on {result['device']}: AUC {result['minilm']['auc']:.4f} vs CPU path "
          f"{result['minilm']['auc_cpu_path']:.4f}", flush=True)
    result["minilm"]["speed"] = speeds(model, rows, rule, device, args.seconds)
    smollm2 = Path(args.smollm2) if args.smollm2 else None
    if smollm2 is not None and (smollm2 / "config.json").exists():
        backbone, small_tok = backbones.load(smollm2, device,
                                             torch.bfloat16 if device.type == "cuda" else torch.float32)
        heads = [0, 6, 12, 18, 24, 30]
        torch.manual_seed(0)
        big = EarlyExitModel(backbone, heads, n_features=len(ALL_FEATURES)).to(device).eval()
        big.feature_mean.copy_(model.feature_mean)
        big.feature_std.copy_(model.feature_std)
        texts = tokenizer.batch_decode(rows["ids"], skip_special_tokens=True)
        enc = small_tok(texts, padding=True, truncation=True, max_length=card.max_length * 2, return_tensors="pt")
        print(f"SmolLM2 ({len(heads)} heads, untrained: speed only)", flush=True)
        result["smollm2"] = {"head_layers": heads, "note": "freshly initialised heads: speed at full depth only",
                             "speed": speeds(big, {"ids": enc["input_ids"], "mask": enc["attention_mask"],
                                                   "features": rows["features"]}, ExitRule(), device,
                                             args.seconds, exit_too=False)}
    else:
        result["smollm2"] = {"skipped": f"no SmolLM2 folder given or found ({args.smollm2}); pass --smollm2 "
                                        "<folder> where it exists (exitrec caches it under models/)"}
    result.update(wall_s=round(time.perf_counter() - started, 1), machine=machine(),
                  command="bash bench/gpu_check.sh " + " ".join(sys.argv[2:]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("OUT"):
        shutil.copy(RESULTS / "gpu.json", Path(os.environ["OUT"]) / "gpu.json")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    ex = sub.add_parser("export", help="prepare bench/gpu_inputs here")
    ex.add_argument("--checkpoint", type=Path, default=None)
    ex.add_argument("--rows", type=int, default=200)
    go = sub.add_parser("run", help="measure on this machine's GPU (or --device cpu)")
    go.add_argument("--device", default=None)
    go.add_argument("--seconds", type=float, default=8.0, help="timed seconds per model, batch and rule")
    go.add_argument("--smollm2", default=None, help="SmolLM2-135M model folder (speed only)")
    args = parser.parse_args()
    export(args) if args.verb == "export" else run(args)


if __name__ == "__main__":
    main()
