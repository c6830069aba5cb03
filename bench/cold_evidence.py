"""How far the evidence a new user's first impression carries can lift a classical model -> ``cold_evidence.json``

    python -m bench.cold_evidence --dataset bookcrossing --n-train 4000 --n-val 1500   # ~1 min

A new user's first impression carries no history of its own: what varies between such rows is the candidate's
evidence (its smoothed like rate and reaction count so far, and its maker's). This benchmark asks whether a model
of that evidence can beat the classical baseline on *all* the test slice's first impressions
(:func:`scorer.experiment.first_impressions`), which is what the CTR-quality aim "cold-user rows >= the
baseline's" needs. Per seed the training and validation rows are drawn as the accuracy benchmark draws them
(:func:`scorer.experiment.train_then_validation`), every feature is computed from the rows strictly before its
row (prequential), and per variant a logistic regression is fitted and scored on the first impressions:

- ``baseline``: the accuracy benchmark's baseline (user and item smoothed logit rates, log counts), on the
  training rows;
- ``baseline_new_users``: the same inputs fitted on the new users' rows among training and validation only;
- ``item_only``: the item's rate and count alone, on the training rows;
- ``with_brand``: the baseline's inputs plus the logit of the smoothed like rate of every reaction so far to the
  candidate's maker (a book's author, :class:`scorer.catalogue.BrandIndex`'s key) and ``ln(1+reactions)``
  (datasets that name makers only).

Per variant: AUC and log loss on the first impressions (mean over seeds), and the paired 95% bootstrap interval of
its AUC minus the baseline's (per seed).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from bench.machine import machine
from graph_updater.datasets import Interactions, load, time_split
from infra.runtime.settings import Settings
from scorer import experiment, quality
from scorer.catalogue import brand_key
from scorer.features import smoothed_logit

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"baseline": (0, 1, 2, 3), "baseline_new_users": (0, 1, 2, 3), "item_only": (1, 3),
            "with_brand": (0, 1, 2, 3, 4, 5)}


def brand_columns(data: Interactions, rows: np.ndarray, prior: float) -> np.ndarray:
    """Per row: the logit of the smoothed like rate of every reaction to the candidate's maker before it, and
    ``ln(1+reactions)`` (both 0 when the item has no known maker): the brand's twin of
    :func:`scorer.experiment.baseline_features`."""
    brand = {item: brand_key(b) for item, b in data.item_brand.items()}
    wanted = set(int(r) for r in rows)
    stats: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    out = {}
    for t in range(max(wanted) + 1):
        maker = brand.get(data.items[t])
        if t in wanted:
            out[t] = [smoothed_logit(*stats[maker], prior), float(np.log1p(stats[maker][1]))] if maker else [0.0, 0.0]
        if maker:
            stats[maker][0] += float(data.labels[t])
            stats[maker][1] += 1
    return np.array([out[int(r)] for r in rows]).reshape(len(rows), 2)


def evidence(data: Interactions, rows: np.ndarray, prior: float) -> np.ndarray:
    """``(len(rows), 6)``: the baseline's four columns (:func:`scorer.experiment.baseline_features`) and the two
    :func:`brand_columns`."""
    return np.hstack([experiment.baseline_features(data, rows, prior), brand_columns(data, rows, prior)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bookcrossing", choices=("ml-100k", "ml-1m", "bookcrossing"))
    parser.add_argument("--n-train", type=int, default=12_000)
    parser.add_argument("--n-val", type=int, default=3_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_evidence.json")
    args = parser.parse_args()
    settings, started = Settings(), time.perf_counter()
    data = load(args.dataset, settings.data_dir)
    split = time_split(data)
    prior = float(split.train.labels.mean())
    a, b = len(split.train), len(split.train) + len(split.stream)
    cold = experiment.first_impressions(data.users, b)
    variants = [v for v in VARIANTS if v != "with_brand" or data.item_brand]
    first_seen = experiment.first_impressions(data.users, 0)
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, val = experiment.train_then_validation(a, b, args.n_train, args.n_val, np.random.default_rng(seed))
        fit_rows = np.concatenate([train, val])
        x_all = evidence(data, np.concatenate([fit_rows, cold]), prior)
        x = {"fit": x_all[:len(fit_rows)], "cold": x_all[len(fit_rows):]}
        y_fit, y_cold = data.labels[fit_rows], data.labels[cold]
        new_user_rows = np.isin(fit_rows, first_seen)
        scores = {}
        for name in variants:
            cols = list(VARIANTS[name])
            rows = new_user_rows if name == "baseline_new_users" else np.arange(len(fit_rows)) < len(train)
            model = LogisticRegression(max_iter=1000).fit(x["fit"][rows][:, cols], y_fit[rows])
            scores[name] = model.predict_proba(x["cold"][:, cols])[:, 1]
        per_seed[seed] = {"new_user_rows_fitted": int(new_user_rows.sum()), **{
            name: {"auc": quality.auc(y_cold, p), "logloss": quality.logloss(y_cold, p),
                   "auc_minus_baseline_ci95": list(quality.auc_difference_interval(y_cold, p, scores["baseline"]))}
            for name, p in scores.items()}}
        print(f"seed {seed}: " + ", ".join(f"{n} {per_seed[seed][n]['auc']:.4f}" for n in variants), flush=True)
    summary = {name: {"auc": float(np.mean([s[name]["auc"] for s in per_seed.values()])),
                      "auc_minus_baseline": float(np.mean([s[name]["auc"] - s["baseline"]["auc"]
                                                           for s in per_seed.values()])),
                      "logloss": float(np.mean([s[name]["logloss"] for s in per_seed.values()]))}
               for name in variants}
    out = {"n_first_impressions": len(cold), "positive_rate": float(data.labels[cold].mean()),
           "summary": summary, "per_seed": per_seed, "seconds": round(time.perf_counter() - started, 1),
           "machine": machine(), "command": f"python -m bench.cold_evidence --dataset {args.dataset} --n-train "
                                            f"{args.n_train} --n-val {args.n_val} --seeds {args.seeds}"}
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result[args.dataset] = out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("n_first_impressions", "summary")}, indent=2))


if __name__ == "__main__":
    main()
