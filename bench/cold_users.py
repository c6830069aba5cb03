"""New users' first impressions: the served model against the baseline on every cold row -> ``cold_users.json``.

    python -m bench.cold_users --dataset ml-100k            # ~3 min
    python -m bench.cold_users --dataset bookcrossing --n-train 4000 --n-val 1500   # ~6 min

The accuracy benchmark's cold rows are the few of its random test rows whose user had no reaction yet (16 of
2,000 on MovieLens-100K, 2 on MovieLens-1M): one row moves their AUC by ~0.02. Here the cold rows are the test
slice's first impressions of new users (:func:`scorer.experiment.first_impressions`; up to ``--n-cold`` of them,
drawn at random when there are more), built in the same prequential pass as the accuracy benchmark's samples (the
same seed and sizes, so the same training rows and the same fitted baseline), and scored by the checkpoint the
accuracy benchmark saved (its seed-0 default model, as served: calibrated heads, exit rule, its precision, and
new users at the layer-0 head when the checkpoint pins them there). Per
dataset: AUC, log loss and ECE of the model (with early exit) and of the baseline on those rows, each head's AUC,
and the paired 95% bootstrap interval of the AUC difference. Then, under ``mixture``, the rows as they come:
``--n-mixed`` random rows of the test slice (new users among them at their natural share), scored as served,
with new users at the layer-0 head and without (the paired interval of the difference over all rows: what
pinning them costs or gains the whole stream), and the baseline.
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
from scorer.samples import new_users
from scorer.train import served_exits

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=("ml-100k", "ml-1m", "bookcrossing"))
    parser.add_argument("--n-train", type=int, default=12_000)
    parser.add_argument("--n-val", type=int, default=3_000)
    parser.add_argument("--n-mixed", type=int, default=6_000, help="random test-slice rows: the natural mixture")
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
                                  args.n_mixed, n_cold=args.n_cold)

    def heads(samples) -> tuple[np.ndarray, np.ndarray]:
        """Every head's calibrated probability of each sample, and its label."""
        enc = experiment.encode(tokenizer, samples, card.max_length, sets.prior, "default",
                                experiment.content_embeddings(settings.cache_dir), names=card.features)
        return experiment.throughput(model, enc, ExitRule())[1].probs, enc.labels.numpy()

    def answered(probs: np.ndarray, new_user: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        exits = served_exits(probs, rule, new_user)
        return probs[np.arange(len(exits)), exits], exits

    probs, y = heads(sets.cold)
    served, exits = answered(probs, np.ones(len(y), dtype=bool) if card.new_users_at_layer0 else None)
    low, high = quality.auc_difference_interval(y, served, sets.baseline_cold)
    out = {"n_cold": len(y), "positive_rate": float(y.mean()), "checkpoint": str(folder),
           "model_version": card.version, "precision": card.precision,
           "new_users_at_layer0": card.new_users_at_layer0,
           "model": {**quality.report(y, served), "mean_exit_layer": float(np.array(model.head_layers)[exits].mean())},
           "model_full_depth": quality.report(y, probs[:, -1]),
           "heads_auc": {int(layer): quality.auc(y, probs[:, j]) for j, layer in enumerate(model.head_layers)},
           "baseline": quality.report(y, sets.baseline_cold),
           "auc_minus_baseline": quality.auc(y, served) - quality.auc(y, sets.baseline_cold),
           "auc_minus_baseline_ci95": [low, high]}
    probs, y = heads(sets.test)
    new = new_users(sets.test)
    unpinned, pinned = answered(probs, None)[0], answered(probs, new)[0]
    out["mixture"] = {
        "n": len(y), "n_new_users": int(new.sum()),
        **{name: {"auc": quality.auc(y, p), "logloss": quality.logloss(y, p), "ece": quality.ece(y, p),
                  "auc_new_users": quality.auc(y[new], p[new]), "auc_returning": quality.auc(y[~new], p[~new])}
           for name, p in (("new_users_at_layer0", pinned), ("exit_rule_only", unpinned),
                           ("baseline", sets.baseline_test))},
        "pinned_minus_rule_only_ci95": list(quality.auc_difference_interval(y, pinned, unpinned))}
    out.update({"seconds": round(time.perf_counter() - started, 1), "machine": machine(),
                "command": f"python -m bench.cold_users --dataset {args.dataset} --n-train {args.n_train} --n-val "
                           f"{args.n_val} --n-mixed {args.n_mixed} --n-cold {args.n_cold}"})
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result[args.dataset] = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: out[k] for k in ("n_cold", "model", "baseline", "auc_minus_baseline",
                                          "auc_minus_baseline_ci95", "mixture")}, indent=2, default=float))


if __name__ == "__main__":
    main()
