"""The fault campaign's short version (``bench.reliability`` runs the long one): two ``exitrec worker`` replicas on
a broker of the test's own, a replica SIGKILLed twice, the broker SIGKILLed and restarted on its log, malformed
records of every kind over both input topics, a short soak with a metrics scrape."""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest

from bench.reliability import SERIES, campaign, malformed
from infra.kafka import broker
from schemas.codec import InvalidMessage, decode, decode_keyed
from schemas.messages import Click, ImpressionRequest

GOOD_CLICK = {"schema_version": 1, "event_id": "e1", "user_id": "196", "item_id": "242", "label": 1,
              "ts": 881250949000}
GOOD_REQUEST = {"schema_version": 1, "request_id": "r1", "user_id": "196", "item_ids": ["242"],
                "ts": 881250949000}


def test_every_kind_of_malformed_record_is_refused_by_the_codec():
    """What the campaign sends is bad by construction: each kind, on both topics, fails to decode."""
    rng = np.random.default_rng(0)
    assert decode(Click, __import__("json").dumps(GOOD_CLICK).encode()).user_id == "196"
    errors = set()
    for k in range(18 * 4):
        topic, key, value = malformed(k, GOOD_CLICK, GOOD_REQUEST, rng)
        with pytest.raises(InvalidMessage) as refused:
            decode_keyed(Click if topic == "clicks" else ImpressionRequest, key, value)
        errors.add(refused.value.error_class)
    assert errors >= {"InvalidJson", "SchemaViolation", "MessageTooLarge", "EmptyMessage", "KeyMismatch"}


@pytest.mark.integration
async def test_a_short_fault_campaign_loses_nothing(settings, trained_checkpoint, tiny_scorer_checkpoint, tmp_path):
    run_dir = tmp_path / "kafka"
    info = broker.start(run_dir, port=broker.free_port(), partitions=4)
    try:
        settings = settings.model_copy(update={
            "kafka_bootstrap": info.bootstrap, "graph_checkpoint": trained_checkpoint,
            "scorer_checkpoint": tiny_scorer_checkpoint, "catalogue": "ml-100k", "session_timeout_s": 6.0,
            "scorer_batch_size": 16})
        args = Namespace(kills=2, kill_every=5.0, broker_restarts=1, broker_down=2.0, bad=360, rate=8.0,
                         soak_minutes=0.4, soak_over=2.0, lag_bound_s=10.0)
        result = await campaign(args, settings, run_dir, tmp_path)
    finally:
        broker.stop(run_dir)
    print({k: v for k, v in result.items() if k != "soak_samples"})
    assert result["replica_starts"] == {"a": 2, "b": 2} and result["broker_restarts"] == 1
    assert result["requests_sent"] > 100 and result["requests_lost"] == 0
    assert result["clicks_sent"] > 100 and result["clicks_lost"] == 0 and result["payload_mismatches"] == 0
    assert result["extra_points"] == 0
    assert result["bad_messages"] == 360 and result["bad_dead_lettered"] == 360, result["bad_missed_by_kind"]
    assert result["soak_lag_end"] <= result["soak_lag_bound"]
    assert result["metrics_series_scraped"] == {"a": list(SERIES), "b": list(SERIES)}
