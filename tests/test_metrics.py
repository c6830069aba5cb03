"""The analytics join and its numbers (pure: no Kafka)."""

import pytest
from sklearn.metrics import roc_auc_score

from schemas.messages import CandidateExit, CtrScore, DegradedFlag, ExitTelemetry
from worker.metrics import ScoreJoin

T0 = 1_800_000_000_000


def score(request_id: str, user: str, item: str, ctr: float, layer: int = 2) -> CtrScore:
    return CtrScore(request_id=request_id, user_id=user, item_id=item, ctr=ctr, exit_layer=layer, model_version="m",
                    ts=T0)


def telemetry(request_id: str, items: list[str], layer: int = 2, degraded=()) -> ExitTelemetry:
    return ExitTelemetry(request_id=request_id, user_id="u", candidates=[
        CandidateExit(item_id=i, head_confidences=[0.6] * layer, exit_layer=layer) for i in items],
        retrieval_ms=1.5, queue_ms=0.0, inference_ms=3.0, batch_size=len(items), neighbours_used=3,
        degraded=list(degraded), model_version="m", ts=T0)


def test_joined_scores_report_logloss_and_calibration_beside_auc():
    """Scores of 0.2 that click 20% of the time and 0.8 that click 80%: calibrated (ECE 0), AUC of the two
    groups; the same ranking scaled towards 0 is as good a ranking but a worse probability."""
    join, shifted = ScoreJoin(window_ms=10**9), ScoreJoin(window_ms=10**9)
    labels, ps = [], []
    for k in range(1000):
        p = 0.2 if k % 2 else 0.8
        y = int(k // 2 % 10 < p * 10)
        labels.append(y)
        ps.append(p)
        for j, ctr in ((join, p), (shifted, p / 4)):
            j.score(score(f"r{k}", f"u{k}", "a", ctr), T0 + k)
            j.click(f"u{k}", "a", y, T0 + k + 1)
    total, worse = join.report()["total"], shifted.report()["total"]
    assert total["joined"] == 1000 and total["auc"] == pytest.approx(roc_auc_score(labels, ps))
    assert total["ece"] == pytest.approx(0.0, abs=1e-9) and total["ctr_ratio"] == pytest.approx(1.0)
    assert worse["auc"] == pytest.approx(total["auc"])
    assert worse["ece"] > 0.3 and worse["logloss"] > total["logloss"] and worse["ctr_ratio"] == pytest.approx(0.25)


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


def test_a_replaced_score_and_a_repeated_early_click_are_counted_not_silently_dropped():
    join = ScoreJoin(window_ms=1000)
    join.score(score("r1", "u1", "a", 0.9), T0)
    join.score(score("r2", "u1", "a", 0.3), T0 + 10)  # a second request for the same pair: replaces r1's
    join.click("u1", "a", 1, T0 + 20)
    join.click("u2", "b", 0, T0 + 30)  # two clicks before any score for (u2, b)
    join.click("u2", "b", 1, T0 + 40)
    join.score(score("r3", "u2", "b", 0.7), T0 + 5)
    report = join.report()
    assert report["replaced_scores"] == 1 and report["total"]["joined"] == 2
    assert join.total.scores == [0.3, 0.7] and join.total.labels == [1, 1]  # the latest score, the latest click
    assert report["unjoined_clicks"] == 1
