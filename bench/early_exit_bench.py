"""Early exit vs full depth, RAG vs no-RAG, LM vs a classical baseline -> early_exit_<dataset>_<backbone>.json

    python -m bench.early_exit_bench --dataset bookcrossing --backbone minilm [--n-train 2000 ...]

One run: prequential samples (:mod:`scorer.experiment`), a model trained on RAG prompts and one of the same
family on prompts without neighbours, exit thresholds calibrated on validation rows (AUC budget 0.002), then on
the test rows: AUC and log loss per head / at full depth / with early exit, requests/s of batched inference at
full depth and with early exit measured back to back, batch-1 latency percentiles, and a PNG of AUC and latency
per head. Sample counts and the machine are saved with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import machine
from scorer import experiment
from scorer.exit_rules import ExitRule
from scorer.train import auc, calibrate, head_probabilities, train
from worker.logging import configure_logging
from worker.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def fit(reference: str, cache_dir: Path, sets, max_length: int, neighbours: bool, args):
    model, tokenizer = experiment.new_model(reference, cache_dir)
    regime = experiment.BACKBONE_DEFAULTS.get(reference, {}).get("regime", "frozen")
    data = {name: experiment.encode(tokenizer, getattr(sets, name), max_length, neighbours)
            for name in ("train", "val", "test")}
    started = time.perf_counter()
    train(model, data["train"].ids, data["train"].mask, data["train"].labels, regime=regime,
          epochs=args.epochs if regime == "full" else args.head_epochs, batch_size=16, lr=args.lr,
          decay=args.decay, head_lr=args.head_lr)
    return model, data, regime, time.perf_counter() - started


def plot(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["head_layers"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(layers, result["auc_heads"], "o-", label="AUC of head (full-depth run)")
    ax.axhline(result["auc_exit"], color="C2", ls="--", label=f"AUC with early exit ({result['auc_exit']:.3f})")
    ax.axhline(result["auc_baseline"], color="C3", ls=":", label=f"baseline LR ({result['auc_baseline']:.3f})")
    ax.set_xlabel("layer of the head")
    ax.set_ylabel("test AUC")
    ax2 = ax.twinx()
    ax2.bar(layers, result["latency_ms_per_head"], alpha=0.25, color="C1", width=0.6, label="batch-1 latency")
    ax2.set_ylabel("batch-1 latency when exiting here (ms)")
    fig.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{result['dataset']} / {result['backbone']}: mean exit layer {result['mean_exit_layer']:.2f} "
                 f"of {result['n_layers']}, speedup {result['speedup']:.2f}x")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bookcrossing", choices=["bookcrossing", "ml-1m", "ml-100k", "videogames"])
    parser.add_argument("--backbone", default="minilm", help="minilm, smollm2 or a local model folder")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (full regime)")
    parser.add_argument("--head-epochs", type=int, default=30, help="head epochs (frozen regime)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--decay", type=float, default=0.85, help="depth-aware lr factor per layer")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--rule", default="ratio_trend")
    parser.add_argument("--budget", type=float, default=0.002)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args()
    configure_logging("WARNING")
    torch.manual_seed(0)
    settings = Settings()
    name = Path(args.backbone).name if args.backbone not in experiment.BACKBONE_DEFAULTS else args.backbone
    sets = experiment.sample_sets(args.dataset, settings.data_dir, settings.cache_dir, args.n_train, args.n_val,
                                  args.n_test)
    model, data, regime, train_s = fit(args.backbone, settings.cache_dir, sets, args.max_length, True, args)
    test, y_test = data["test"], data["test"].labels.numpy()
    val_probs = head_probabilities(model, data["val"].ids, data["val"].mask)
    rule, curve = calibrate(val_probs, data["val"].labels.numpy(), model.head_layers, args.rule, args.budget)
    test_probs = head_probabilities(model, test.ids, test.mask)
    full_rule = ExitRule()
    rps_full, full = experiment.throughput(model, test, full_rule)
    rps_exit, exited = experiment.throughput(model, test, rule)
    lat_full = experiment.latencies_ms(model, test, full_rule, args.latency_samples)
    lat_exit = experiment.latencies_ms(model, test, rule, args.latency_samples)
    per_head = experiment.per_head_latency_ms(model, test, max(10, args.latency_samples // 4))
    norag_model, norag_data, _, _ = fit(args.backbone, settings.cache_dir, sets, args.max_length, False, args)
    norag_probs = head_probabilities(norag_model, norag_data["test"].ids, norag_data["test"].mask)
    layers = np.array(model.head_layers)
    result = {
        "dataset": args.dataset, "backbone": name, "regime": regime, "machine": machine(),
        "command": "python -m bench.early_exit_bench " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                   for k, v in vars(args).items()),
        "n_train": len(sets.train), "n_val": len(sets.val), "n_test": len(sets.test), "max_length": args.max_length,
        "train_s": round(train_s, 1), "head_layers": model.head_layers, "n_layers": model.n_layers,
        "auc_heads": [auc(y_test, test_probs[:, j]) for j in range(len(layers))],
        "auc_full": auc(y_test, full.ctr), "auc_exit": auc(y_test, exited.ctr),
        "logloss_full": experiment.logloss(y_test, full.ctr), "logloss_exit": experiment.logloss(y_test, exited.ctr),
        "mean_exit_layer": float(exited.exit_layer.mean()),
        "exit_histogram": {int(layer): int((exited.exit_layer == layer).sum()) for layer in layers},
        "rps_full": rps_full, "rps_exit": rps_exit, "speedup": rps_exit / rps_full,
        "p50_ms_full": float(np.percentile(lat_full, 50)), "p99_ms_full": float(np.percentile(lat_full, 99)),
        "p50_ms_exit": float(np.percentile(lat_exit, 50)), "p99_ms_exit": float(np.percentile(lat_exit, 99)),
        "latency_ms_per_head": per_head,
        "auc_norag": auc(y_test, norag_probs[:, -1]),
        "auc_baseline": sets.baseline_auc, "logloss_baseline": sets.baseline_logloss,
        "baseline": "logistic regression on the user's and item's prior click rates",
        "rule": rule.to_dict(), "calibration": curve, "budget": args.budget,
        "test_positive_rate": float(y_test.mean()),
        "test_with_neighbours": sum(s.inputs.neighbours is not None for s in sets.test),
    }
    out = RESULTS / f"early_exit_{args.dataset.replace('-', '')}_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    plot(out.with_suffix(".png"), result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "calibration")}, indent=2,
                     default=float))


if __name__ == "__main__":
    main()
