"""New users' first impressions: the served model against the baseline on every cold row -> ``cold_users.json``.

    python -m bench.cold_users --dataset ml-100k            # ~2 min
    python -m bench.cold_users --dataset bookcrossing --n-train 4000 --n-val 1500 --n-test 1500

The accuracy benchmark's cold rows are the few of its random test rows whose user had no reaction yet (16 of
2,000 on MovieLens-100K, 2 on MovieLens-1M): one row moves their AUC by ~0.02. Here the cold rows are the test
slice's first impressions of new users (:func:`scorer.experiment.first_impressions`; up to ``--n-cold`` of them,
drawn at random when there are more), built in the same prequential pass as the accuracy benchmark's samples (the
same seed and sizes, so the same training rows and the same fitted baseline), and scored by the checkpoint the
accuracy benchmark saved (its seed-0 default model, as served: calibrated heads, exit rule, its precision, and
new users at the layer-0 head when the checkpoint pins them there). Per
dataset: AUC, log loss and ECE of the model (with early exit) and of the baseline on those rows, and the paired
95% bootstrap interval of the AUC difference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.machine import machine
from infra.runtime.logging import configure_logging
from infra.runtime.settings import Settings
from scorer import checkpoint, experiment, quality
from scorer.exit_rules import ExitRule
from scorer.train import served_exits

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=("ml-100k", "ml-1m", "bookcrossing"))
    parser.add_argument("--n-train", type=int, default=12_000)
    parser.add_argument("--n-val", type=int, default=3_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--n-cold", type=int, default=2_000)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the model to score (default <cache>/models/early-exit-<dataset>-minilm, what "
                             "bench.accuracy_bench saves)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_users.json")
    args = parser.parse_args()
    configure_logging("WARNING")
    settings, started = Settings(), time.perf_counter()
    folder = args.checkpoint or settings.cache_dir / "models" / f"early-exit-{args.dataset}-minilm"
    model, tokenizer, card, rule = checkpoint.load(folder, settings.cache_dir)
    sets = experiment.sample_sets(args.dataset, settings.data_dir, settings.cache_dir, args.n_train, args.n_val,
                                  args.n_test, n_cold=args.n_cold)
    enc = experiment.encode(tokenizer, sets.cold, card.max_length, sets.prior, "default",
                            experiment.content_embeddings(settings.cache_dir), names=card.features)
    full = experiment.throughput(model, enc, ExitRule())[1]  # every head's calibrated probability
    exits = served_exits(full.probs, rule, np.ones(len(enc.ids), dtype=bool) if card.new_users_at_layer0 else None)
    served = full.probs[np.arange(len(exits)), exits]
    y = enc.labels.numpy()
    low, high = quality.auc_difference_interval(y, served, sets.baseline_cold)
    out = {"n_cold": len(y), "positive_rate": float(y.mean()), "checkpoint": str(folder),
           "model_version": card.version, "precision": card.precision,
           "new_users_at_layer0": card.new_users_at_layer0,
           "model": {**quality.report(y, served), "mean_exit_layer": float(np.array(model.head_layers)[exits].mean())},
           "model_full_depth": quality.report(y, full.ctr),
           "heads_auc": {int(layer): quality.auc(y, full.probs[:, j]) for j, layer in enumerate(model.head_layers)},
           "baseline": quality.report(y, sets.baseline_cold),
           "auc_minus_baseline": quality.auc(y, served) - quality.auc(y, sets.baseline_cold),
           "auc_minus_baseline_ci95": [low, high], "seconds": round(time.perf_counter() - started, 1),
           "machine": machine(),
           "command": f"python -m bench.cold_users --dataset {args.dataset} --n-train {args.n_train} --n-val "
                      f"{args.n_val} --n-test {args.n_test} --n-cold {args.n_cold}"}
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result[args.dataset] = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: out[k] for k in ("n_cold", "model", "baseline", "auc_minus_baseline",
                                          "auc_minus_baseline_ci95")}, indent=2, default=float))


if __name__ == "__main__":
    main()
