r"""Live scoring metrics from the output topics, joined with later clicks (pure: messages in, numbers out).

What is joined: a ``ctr-scores`` message for (user, item) waits up to ``join_window_ms`` (by record time) for
a later ``clicks`` event of the same user and item; the click's label (1 clicked, 0 shown and not clicked) is
the score's outcome. Re-delivered outputs are deduplicated by ``(request_id, item_id)`` and ``request_id``.
Topics are read concurrently, so a click may be read before the score it answers: such a click waits (bounded)
and joins a score that arrives later with an earlier record time. A click that never finds its score (a row
scored before the analytics consumer started, or never scored), one older than the pending score of its
(user, item), or an earlier of two clicks for a (user, item) that arrived before any score, is counted as
unjoined, not joined. A second score for a (user, item) whose first is still waiting replaces it and is counted
(``replaced_scores``): the first one will never be joined.

Windows are tumbling, ``window_ms`` long, by record timestamp. Per window and in total:
- AUC of the joined (score, label) pairs, :math:`\mathrm{AUC} = P(s^+ > s^-) + \tfrac12 P(s^+ = s^-)`
  (Mann-Whitney), undefined (NaN) until both labels are present; log loss and expected calibration error
  (10 bins) of the same pairs, and the predicted-over-observed click ratio (:mod:`scorer.quality`): a ``ctr`` is
  a probability, so how far it is from the observed frequency is reported beside the ranking;
- requests answered, candidates scored, mean exit layer and the exit-layer histogram;
- impression -> score latency: telemetry record time minus the impression's record time (both stamped by
  their producers: the ad system and the scorer), p50 / p99;
- retrieval time per request (from telemetry), degraded flags by kind, dead letters by input topic.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np

from schemas.messages import CtrScore, ExitTelemetry
from scorer import quality


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


@dataclass
class Window:
    """Accumulators of one window (or of the whole run)."""

    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    requests: int = 0
    candidates: int = 0
    exit_layers: Counter = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)
    retrieval_ms: list[float] = field(default_factory=list)
    degraded: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)

    @property
    def joined(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        layers = sum(k * v for k, v in self.exit_layers.items())
        n = sum(self.exit_layers.values())
        probability = quality.report(np.array(self.labels), np.array(self.scores)) if self.labels else {}
        return {
            "auc": probability.get("auc", float("nan")), "logloss": probability.get("logloss", float("nan")),
            "ece": probability.get("ece", float("nan")), "ctr_ratio": probability.get("ctr_ratio", float("nan")),
            "joined": self.joined,
            "requests": self.requests, "candidates": self.candidates,
            "mean_exit_layer": layers / n if n else float("nan"),
            "exit_histogram": {int(k): v for k, v in sorted(self.exit_layers.items())},
            "latency_p50_ms": percentile(self.latency_ms, 50), "latency_p99_ms": percentile(self.latency_ms, 99),
            "retrieval_p50_ms": percentile(self.retrieval_ms, 50),
            "degraded": dict(self.degraded), "dead_letters": dict(self.dead_letters),
        }


class Recent:
    """A set that forgets its oldest members beyond ``size`` (dedupe state of a long-running consumer)."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, OrderedDict()

    def add(self, key) -> bool:
        """Add ``key``; False if it was already there."""
        if key in self.items:
            return False
        self.items[key] = None
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return True


class ScoreJoin:
    """Feeds of the five topics in, windowed and total metrics out (see the module docstring)."""

    def __init__(self, window_ms: int = 10_000, join_window_ms: int = 3_600_000, max_pending: int = 1_000_000):
        self.window_ms, self.join_window_ms, self.max_pending = window_ms, join_window_ms, max_pending
        self.total = Window()
        self.windows: dict[int, Window] = {}
        self.pending: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()  # (user, item) -> (ctr, ts)
        self.seen_scores, self.seen_requests = Recent(max_pending), Recent(max_pending)
        self.impression_ts: OrderedDict[str, int] = OrderedDict()  # requests not answered yet
        self.answered_ts: OrderedDict[str, int] = OrderedDict()  # answers whose request was not seen yet
        self.early_clicks: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()  # -> (label, ts)
        self.duplicates = 0
        self.stale_clicks = 0
        self.replaced_scores = 0  # a later score for a (user, item) whose earlier score was still unjoined
        self.repeated_clicks = 0  # a second early click for a (user, item) before any score arrived
        self.model_versions: Counter = Counter()

    def window(self, ts: int) -> Window:
        return self.windows.setdefault(ts // self.window_ms * self.window_ms, Window())

    def both(self, ts: int):
        return self.total, self.window(ts)

    def impression(self, request_id: str, ts: int) -> None:
        done = self.answered_ts.pop(request_id, None)
        if done is not None:
            self._latency(ts, done)
        else:
            self.impression_ts.setdefault(request_id, ts)
            self._bound(self.impression_ts)

    def score(self, score: CtrScore, ts: int) -> None:
        if not self.seen_scores.add((score.request_id, score.item_id)):
            self.duplicates += 1
            return
        self.model_versions[score.model_version] += 1
        key = (score.user_id, score.item_id)
        early = self.early_clicks.get(key)
        if early is not None and 0 <= early[1] - ts <= self.join_window_ms:
            del self.early_clicks[key]
            self._join(score.ctr, *early)
            return
        if key in self.pending:  # the earlier score will never be joined: say so
            self.replaced_scores += 1
        self.pending[key] = (score.ctr, ts)
        self.pending.move_to_end(key)
        self._bound(self.pending)

    def telemetry(self, t: ExitTelemetry, ts: int) -> None:
        if not self.seen_requests.add(t.request_id):
            self.duplicates += 1
            return
        for w in self.both(ts):
            w.requests += 1
            w.candidates += len(t.candidates)
            w.exit_layers.update(c.exit_layer for c in t.candidates)
            w.retrieval_ms.append(t.retrieval_ms)
            w.degraded.update(flag.value for flag in t.degraded)
        asked = self.impression_ts.pop(t.request_id, None)
        if asked is not None:
            self._latency(asked, ts)
        else:
            self.answered_ts[t.request_id] = ts
            self._bound(self.answered_ts)

    def _bound(self, pending: OrderedDict) -> None:
        while len(pending) > self.max_pending:
            pending.popitem(last=False)

    def _latency(self, asked: int, done: int) -> None:
        for w in self.both(done):
            w.latency_ms.append(max(0.0, float(done - asked)))

    def click(self, user_id: str, item_id: str, label: int, ts: int) -> None:
        key = (user_id, item_id)
        found = self.pending.get(key)
        if found is None:  # its score may still be on the way
            if key in self.early_clicks:  # the earlier click is dropped unjoined: count it
                self.repeated_clicks += 1
            self.early_clicks[key] = (label, ts)
            self._bound(self.early_clicks)
        elif 0 <= ts - found[1] <= self.join_window_ms:
            del self.pending[key]
            self._join(found[0], label, ts)
        else:  # a click older than the pending score (not its outcome), or too late
            self.stale_clicks += 1

    def _join(self, ctr: float, label: int, ts: int) -> None:
        for w in self.both(ts):
            w.labels.append(label)
            w.scores.append(ctr)

    def dead_letter(self, topic: str, ts: int) -> None:
        for w in self.both(ts):
            w.dead_letters[topic] += 1

    @property
    def unanswered(self) -> int:
        """Requests seen on ``impressions`` without telemetry yet."""
        return len(self.impression_ts)

    def report(self) -> dict:
        return {"total": self.total.summary(), "duplicates": self.duplicates, "unanswered": self.unanswered,
                "unjoined_clicks": len(self.early_clicks) + self.stale_clicks + self.repeated_clicks,
                "replaced_scores": self.replaced_scores,
                "model_versions": dict(self.model_versions),
                "windows": {start: w.summary() for start, w in sorted(self.windows.items())}}
