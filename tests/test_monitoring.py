"""The worker's Prometheus series and health endpoints, without Kafka (the scrape during a real run is in
test_scorer_kafka)."""

import asyncio
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.runtime.monitoring import HealthServer, MetricsPortTaken, WorkerMetrics, port_free


def samples(metrics: WorkerMetrics) -> dict:
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for family in text_string_to_metric_families(metrics.exposition().decode()) for x in family.samples}


def test_a_new_model_version_takes_over_the_info_series_and_revoked_partitions_drop_their_lag():
    m = WorkerMetrics()
    m.serving("v1")
    m.serving("v2")
    m.partitions("impression", {("impressions", 0): 5, ("impressions", 1): 0})
    m.partitions("impression", {("impressions", 1): 3})
    m.batch("impression", 7)
    s = samples(m)
    assert s[("exitrec_model_info", (("model_version", "v1"),))] == 0
    assert s[("exitrec_model_info", (("model_version", "v2"),))] == 1
    lag = {k: v for k, v in s.items() if k[0] == "exitrec_consumer_lag"}
    assert lag == {("exitrec_consumer_lag", (("loop", "impression"), ("partition", "1"), ("topic", "impressions"))): 3}
    assert s[("exitrec_records_total", (("loop", "impression"),))] == 7 and m.assigned == {"impression": True}
    m.partitions("impression", {})
    assert m.assigned == {"impression": False}


def test_a_taken_metrics_port_fails_naming_the_port_and_the_setting():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_free(port)
        server = HealthServer(WorkerMetrics(), [], port=port)
        with pytest.raises(MetricsPortTaken, match=f"metrics port {port} is already in use: set EXITREC_METRICS_PORT"):
            asyncio.run(server.start())


def test_readiness_lists_each_failing_check_and_a_raising_check_fails():
    def broken() -> bool:
        raise ConnectionError("store down")

    server = HealthServer(WorkerMetrics(), [("model_loaded", lambda: True), ("store_reachable", broken),
                                            ("impression_assigned", lambda: False)])
    assert server.failing() == ["store_reachable", "impression_assigned"]
