"""The local broker's storage formatting inputs."""

import base64

from infra.kafka import broker


def test_cluster_ids_parse_as_kafka_uuids_and_never_look_like_an_option():
    ids = [broker._cluster_id() for _ in range(5000)]  # ~78 would start with "-" if drawn once
    assert not any(i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
