r"""CTR quality metrics (pure numpy / scikit-learn): ranking, probability quality, and paired AUC noise.

- AUC: area under the ROC curve (NaN when only one class is present).
- Log loss: :math:`-\frac1n\sum_i y_i\ln p_i + (1-y_i)\ln(1-p_i)` with :math:`p` clipped to
  :math:`[10^{-7}, 1-10^{-7}]`.
- Expected calibration error over ``bins`` equal-width probability bins :math:`B_b`:
  :math:`\mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,\bigl|\bar y_{B_b} - \bar p_{B_b}\bigr|` (0 = a ``ctr`` of 0.3
  means 30% clicks in every bin).
- :func:`paired_auc_differences`: :math:`\mathrm{AUC}(a) - \mathrm{AUC}(b)` for two scores of the same rows over
  ``rounds`` bootstrap resamples of the rows. Both scores see the same resample, so the row-sampling noise they
  share cancels: two scores of one model differ on few rows, and a model and a baseline of one test set are
  compared on the rows, not on two draws of them.
- :func:`auc_drop_bound`: the one-sided ``level`` quantile of those differences;
  :func:`auc_difference_interval`: the two-sided ``level`` interval.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) > 1 else float("nan")


def logloss(labels: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(np.asarray(labels), np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS),
                          labels=[0, 1]))


def ece(labels: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    labels, p = np.asarray(labels, dtype=np.float64), np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - p[inside].mean())
    return float(total)


def report(labels: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log loss, ECE and the predicted-over-observed CTR ratio of one set of scores."""
    labels = np.asarray(labels, dtype=np.float64)
    observed = labels.mean() if len(labels) else float("nan")
    return {"auc": auc(labels, p), "logloss": logloss(labels, p) if len(labels) else float("nan"),
            "ece": ece(labels, p), "ctr_ratio": float(np.mean(p) / observed) if observed else float("nan"),
            "n": len(labels)}


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    r"""AUC of ``scores`` under each row of ``weights`` ``(rounds, n)`` (row counts of bootstrap resamples):
    :math:`\sum_{i: y_i=1} w_i \bigl(W^-_{<s_i} + \tfrac12 W^-_{=s_i}\bigr) / (W^+ W^-)`, ties counted half, as
    :func:`auc` on the resampled rows; NaN where a class has no weight. One sort for all rounds."""
    order = np.argsort(scores, kind="mergesort")
    s, y, w = scores[order], labels[order].astype(bool), weights[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of equal scores, contiguous once sorted
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / total, np.nan)


def paired_auc_differences(labels: np.ndarray, a: np.ndarray, b: np.ndarray, rounds: int = 200, seed: int = 0
                           ) -> np.ndarray:
    """``AUC(a) - AUC(b)`` on each of ``rounds`` bootstrap resamples of the rows (resamples with one class only are
    skipped); the resamples enter as row counts (:func:`weighted_aucs`), both scores the same counts."""
    labels, a, b = np.asarray(labels), np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(rounds)]) if n else \
        np.zeros((rounds, 0))
    diffs = weighted_aucs(labels, a, counts) - weighted_aucs(labels, b, counts)
    return diffs[~np.isnan(diffs)]


def auc_drop_bound(labels: np.ndarray, reference: np.ndarray, candidate: np.ndarray, level: float = 0.95,
                   rounds: int = 200, seed: int = 0) -> float:
    """Upper ``level`` bound of ``AUC(reference) - AUC(candidate)`` by a paired bootstrap over the rows."""
    drops = paired_auc_differences(labels, reference, candidate, rounds, seed)
    return float(np.quantile(drops, level)) if len(drops) else float("inf")


def auc_difference_interval(labels: np.ndarray, a: np.ndarray, b: np.ndarray, level: float = 0.95,
                            rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Two-sided ``level`` interval of ``AUC(a) - AUC(b)`` by a paired bootstrap over the rows (NaNs when no
    resample has both classes)."""
    diffs = paired_auc_differences(labels, a, b, rounds, seed)
    if not len(diffs):
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    return float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1 - tail))
