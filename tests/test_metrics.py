"""The analytics join and its numbers (pure: no Kafka)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from schemas.messages import CandidateExit, CtrScore, DegradedFlag, ExitTelemetry
from worker.metrics import ScoreJoin, auc

T0 = 1_800_000_000_000


def score(request_id: str, user: str, item: str, ctr: float, layer: int = 2) -> CtrScore:
    return CtrScore(request_id=request_id, user_id=user, item_id=item, ctr=ctr, exit_layer=layer, model_version="m",
                    ts=T0)


def telemetry(request_id: str, items: list[str], layer: int = 2, degraded=()) -> ExitTelemetry:
    return ExitTelemetry(request_id=request_id, user_id="u", candidates=[
        CandidateExit(item_id=i, head_confidences=[0.6] * layer, exit_layer=layer) for i in items],
        retrieval_ms=1.5, queue_ms=0.0, inference_ms=3.0, batch_size=len(items), neighbours_used=3,
        degraded=list(degraded), model_version="m", ts=T0)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500), 1)  # many ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_scores_join_later_clicks_in_either_read_order_and_duplicates_are_dropped():
    join = ScoreJoin(window_ms=1000)
    join.score(score("r1", "u1", "a", 0.9), T0)
    join.score(score("r1", "u1", "a", 0.9), T0 + 5)  # re-delivered
    join.click("u1", "a", 1, T0 + 100)  # score then click
    join.click("u2", "b", 0, T0 + 300)  # click read before its score ...
    join.score(score("r2", "u2", "b", 0.2), T0 + 200)  # ... which was produced earlier: joins
    join.click("u3", "c", 1, T0 + 400)  # never scored
    join.score(score("r3", "u4", "d", 0.5), T0 + 600)
    join.click("u4", "d", 1, T0 + 500)  # older than the pending score: not its outcome
    report = join.report()
    assert report["total"]["joined"] == 2 and report["total"]["auc"] == 1.0
    assert report["duplicates"] == 1 and report["unjoined_clicks"] == 2


def test_latency_exits_windows_degraded_and_dead_letters():
    join = ScoreJoin(window_ms=1000)
    join.impression("r1", T0)
    join.telemetry(telemetry("r1", ["a", "b"], layer=1), T0 + 40)
    join.telemetry(telemetry("r2", ["c"], layer=3, degraded=[DegradedFlag.COLD_USER]), T0 + 1500)
    join.impression("r2", T0 + 1480)  # read after its answer: still paired
    join.telemetry(telemetry("r2", ["c"], layer=3), T0 + 1600)  # duplicate answer
    join.impression("r3", T0 + 1700)
    join.dead_letter("impressions.dlq", T0 + 1800)
    report = join.report()
    total = report["total"]
    assert total["requests"] == 2 and total["candidates"] == 3
    assert total["exit_histogram"] == {1: 2, 3: 1} and total["mean_exit_layer"] == pytest.approx(5 / 3)
    assert sorted(join.total.latency_ms) == [20.0, 40.0]
    assert total["degraded"] == {"cold_user": 1} and total["dead_letters"] == {"impressions.dlq": 1}
    assert report["unanswered"] == 1 and report["duplicates"] == 1
    assert sorted(report["windows"]) == [T0 // 1000 * 1000, (T0 + 1000) // 1000 * 1000]
    assert report["windows"][T0 // 1000 * 1000]["requests"] == 1
