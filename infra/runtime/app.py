"""The faust app factory and the topic declarations (all topics carry raw bytes; :mod:`schemas.codec` decodes).

Values are declared ``raw`` so that a malformed message reaches its consumer as bytes and can be dead-lettered
with its reason, instead of failing inside a deserializer. Keys are user ids (UTF-8 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from infra.runtime.settings import Settings

CLICKS, IMPRESSIONS, SCORES, TELEMETRY = "clicks", "impressions", "ctr-scores", "exit-telemetry"
CLICKS_BY_ITEM, NODE_LAYERS = "clicks-by-item", "node-layers"  # between partitioned graph updaters
ITEMS = "items"
DLQ_SUFFIX = ".dlq"
CONTRACT_TOPICS = (CLICKS, CLICKS + DLQ_SUFFIX, IMPRESSIONS, IMPRESSIONS + DLQ_SUFFIX, SCORES, TELEMETRY, ITEMS,
                   ITEMS + DLQ_SUFFIX)
PARTITIONED_TOPICS = (CLICKS_BY_ITEM, NODE_LAYERS)  # created only where partitioned updaters run
TOPIC_CONFIGS = {CLICKS: {"retention.ms": "-1"},  # the click log is the updater's record (recovery)
                 ITEMS: {"cleanup.policy": "compact"},  # the catalogue: the latest record per item, kept
                 CLICKS_BY_ITEM: {"retention.ms": "-1"},  # an item owner's record, as clicks is a user owner's
                 NODE_LAYERS: {"cleanup.policy": "compact"}}  # the latest layers per node


@dataclass(frozen=True)
class Topics:
    clicks: faust.TopicT
    clicks_dlq: faust.TopicT
    impressions: faust.TopicT
    impressions_dlq: faust.TopicT
    scores: faust.TopicT
    telemetry: faust.TopicT
    items: faust.TopicT
    items_dlq: faust.TopicT


def create_app(settings: Settings) -> faust.App:
    """A faust app for ``settings``: app id (= faust's consumer group), broker, in-memory table store, no web
    server. It hosts the process: lifecycle, signals, tasks (the graph updater's click loop, which commits its
    own offsets after its outputs) and the producer behind every ``topic.send``.
    """
    state_dir = settings.resolved_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.consumer_group,
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(state_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 4),
        web_enabled=False,
        producer_acks=-1,
        logging_config=None,
    )


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    """Declare every topic of the contracts (``<prefix><name>``; ``<input>.dlq`` for the two input topics)."""

    def topic(name: str, **kw) -> faust.TopicT:
        return app.topic(settings.topic(name), key_type=bytes, value_type=bytes,
                         partitions=settings.topic_partitions, **kw)

    return Topics(
        clicks=topic(CLICKS, retention=None),
        clicks_dlq=topic(CLICKS + DLQ_SUFFIX),
        impressions=topic(IMPRESSIONS),
        impressions_dlq=topic(IMPRESSIONS + DLQ_SUFFIX),
        scores=topic(SCORES),
        telemetry=topic(TELEMETRY),
        items=topic(ITEMS),
        items_dlq=topic(ITEMS + DLQ_SUFFIX),
    )


async def create_topics(settings: Settings, attempts: int = 60, partitioned: bool = False) -> list[str]:
    """Create every contract topic that does not exist yet, and with ``partitioned`` the partitioned updaters'
    :data:`PARTITIONED_TOPICS` (``topic_partitions`` partitions, replication 1, the configs of
    :data:`TOPIC_CONFIGS`); return the names created. Run before consumers start, so that a consumer group never
    starts on a missing topic and misses its partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        for attempt in range(attempts):
            try:
                existing = set(await admin.list_topics())
                break
            except Exception:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5)
        missing = [NewTopic(settings.topic(name), settings.topic_partitions, 1,
                            topic_configs=TOPIC_CONFIGS.get(name, {}))
                   for name in CONTRACT_TOPICS + (PARTITIONED_TOPICS if partitioned else ())
                   if settings.topic(name) not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica created it first
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()
