"""What neighbour retrieval adds beyond the other evidence, in several forms -> ``neighbour_evidence.json``.

    python -m bench.neighbour_evidence --dataset ml-100k --seeds 0,1,2

The scorer's neighbour evidence is the like share among the ``n_neighbours`` (10) users most similar to the
requester among those who reacted to the candidate (the filtered vector query). Here the same prequential samples
as the accuracy benchmark (:func:`scorer.experiment.sample_sets`: the stream replayed through the graph updater into
qdrant-edge, each sample read by the scorer's context builder) are built with a retriever that asks for the top
``k_max`` such users and keeps, per neighbour, its reaction, its cosine similarity and its own like counts. Then a
logistic regression is fitted on the training and validation rows and scored on the test rows, per neighbour
evidence form, over the heads' other numeric features (:mod:`scorer.features` without the five content-match
columns, which need a MiniLM pass over every text; on the accuracy benchmark's cached features they change no
conclusion here):

- ``none``: no neighbour columns (the no-RAG ablation);
- ``share@k``: :math:`\\mathrm{logit}` of the smoothed like share of the top ``k`` and :math:`\\ln(1+k')` (what
  the scorer computes, at ``k`` = 10);
- ``weighted@k``: the share weighted by the cosine similarity :math:`w_v = \\max(0, s_v)`;
- ``centred@k``: user-based k-NN with mean-centring, :math:`\\sum_v (y_v - r_v)/(k' + 5)`, with :math:`r_v` the
  neighbour's smoothed like rate over its other reactions: whether similar users liked the candidate more than
  they like things in general.

Each seed draws other rows (as the accuracy benchmark's ``seed``); per form the AUC, its difference from
``none`` on the same rows (paired bootstrap sd over the test rows) and the log loss.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from bench.machine import machine
from graph_updater.store import VectorStore
from infra.runtime.logging import configure_logging
from infra.runtime.settings import Settings
from scorer import experiment
from scorer.features import FEATURES, STRENGTH, brand, collaborative, features, smoothed_logit, smoothed_rate
from scorer.retrievers import GcnRetriever, UserView

RESULTS = Path(__file__).resolve().parent / "results"
NEIGHBOUR_COLUMNS = (FEATURES.index("neighbour_rate"), FEATURES.index("neighbour_count"))
Neighbours = list[tuple[int, float, int, int]]  # per neighbour: reaction, cosine, its likes, its reactions


class WideRetriever(GcnRetriever):
    """The GCN retriever that reads the top ``k_max`` reactors with their payloads and keeps them per (user, item);
    the samples still carry the scorer's own top-``k`` evidence."""

    def __init__(self, store: VectorStore, k_max: int) -> None:
        super().__init__(store)
        self.k_max, self.seen = k_max, {}

    def neighbour_reactions(self, user: UserView, item_id: str, k: int) -> list[int]:
        hits = self.store.similar_users(user.vector, self.k_max, exclude_user=user.user_id, interacted_with=item_id)
        rows = [(reaction, h.score, int(h.payload.get("n_liked", 0)),
                 int(h.payload.get("n_liked", 0)) + int(h.payload.get("n_disliked", 0)))
                for h in hits if (reaction := h.reaction_to(item_id)) is not None]
        self.seen[(user.user_id, item_id)] = rows
        return [r[0] for r in rows[:k]]


def neighbour_columns(found: Neighbours | None, form: str, k: int, prior: float) -> list[float]:
    """The two columns of one evidence form (zeros without a neighbour, as the scorer's prior features)."""
    top = (found or [])[:k]
    if not top:
        return [0.0, 0.0]
    y = np.array([r[0] for r in top], dtype=float)
    w = np.clip([r[1] for r in top], 0.0, None)
    liked, reacted = np.array([r[2] for r in top], float), np.array([r[3] for r in top], float)
    if form == "share":
        return [smoothed_logit(y.sum(), len(y), prior), float(np.log1p(len(y)))]
    if form == "weighted":
        return [smoothed_logit(float(w @ y), float(w.sum()), prior), float(np.log1p(w.sum()))]
    rate = smoothed_rate(liked - y, reacted - 1, prior)  # each neighbour's rate without this reaction
    return [float((y - rate).sum() / (len(y) + STRENGTH)), float(np.log1p(len(y)))]


def design(samples, seen: dict, form: str, k: int, prior: float) -> np.ndarray:
    rows = []
    for s in samples:
        base = features(s.inputs, prior)
        base = [v for j, v in enumerate(base) if j not in NEIGHBOUR_COLUMNS]
        extra = [] if form == "none" else neighbour_columns(seen.get((s.user_id, s.item_id)), form, k, prior)
        rows.append(base + collaborative(s.inputs, prior) + brand(s.inputs, prior) + extra)
    return np.array(rows, dtype=float)


def one_seed(dataset: str, settings: Settings, args, seed: int) -> dict:
    wide: dict[str, WideRetriever] = {}

    def retriever(store: VectorStore) -> WideRetriever:
        wide["r"] = WideRetriever(store, max(args.k))
        return wide["r"]

    sets = experiment.sample_sets(dataset, settings.data_dir, settings.cache_dir, args.n_train, args.n_val,
                                  args.n_test, seed=seed, retriever=retriever)
    seen = wide["r"].seen
    fit_rows = sets.train + sets.val
    y_fit, y = np.array([s.label for s in fit_rows]), np.array([s.label for s in sets.test])
    forms = [("none", 0)] + [(f, k) for f in ("share", "weighted", "centred") for k in args.k]
    probs = {}
    for form, k in forms:
        model = LogisticRegression(max_iter=5000).fit(design(fit_rows, seen, form, k, sets.prior), y_fit)
        probs[form if form == "none" else f"{form}@{k}"] = model.predict_proba(
            design(sets.test, seen, form, k, sets.prior))[:, 1]
    rng = np.random.default_rng(seed)
    boots = [rng.integers(len(y), size=len(y)) for _ in range(args.bootstrap)]
    out = {"baseline_auc": float(roc_auc_score(y, sets.baseline_test)), "n_test": len(y),
           "test_rows_with_neighbours": int(sum(bool(seen.get((s.user_id, s.item_id))) for s in sets.test))}
    for name, p in probs.items():
        diffs = [roc_auc_score(y[b], p[b]) - roc_auc_score(y[b], probs["none"][b]) for b in boots]
        out[name] = {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p)),
                     "auc_minus_none": float(roc_auc_score(y, p) - roc_auc_score(y, probs["none"])),
                     "auc_minus_none_sd": float(np.std(diffs))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=("ml-100k", "ml-1m", "bookcrossing"))
    parser.add_argument("--n-train", type=int, default=12_000)
    parser.add_argument("--n-val", type=int, default=3_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", default="10,20,50", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--bootstrap", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "neighbour_evidence.json")
    args = parser.parse_args()
    configure_logging("WARNING")
    settings, started = Settings(), time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {seed: one_seed(args.dataset, settings, args, seed) for seed in seeds}
    names = [n for n in per_seed[seeds[0]] if isinstance(per_seed[seeds[0]][n], dict)]
    summary = {n: {key: round(float(np.mean([per_seed[s][n][key] for s in seeds])), 4)
                   for key in ("auc", "logloss", "auc_minus_none")} for n in names}
    for n in names:
        spread = np.std([per_seed[s][n]["auc_minus_none"] for s in seeds])
        summary[n]["auc_minus_none_seed_sd"] = round(float(spread), 4)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result[args.dataset] = {
        "seeds": seeds, "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test, "k_max": max(args.k),
        "summary": summary, "per_seed": per_seed, "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(), "command": f"python -m bench.neighbour_evidence --dataset {args.dataset} --n-train "
        f"{args.n_train} --n-val {args.n_val} --n-test {args.n_test} --seeds {args.seeds} --k "
        f"{','.join(map(str, args.k))}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
