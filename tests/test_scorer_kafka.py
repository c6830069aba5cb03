"""Integration: the scorer on the real Kafka broker, with the real embedded Qdrant engine and its own updater."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import signal
import time
from collections import Counter

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka_io import read_topic, settings_env, wait_for

from graph_updater.agent import updater_group
from graph_updater.events import clicks_of, impressions_of
from graph_updater.recovery import committed_offsets
from infra.runtime.app import create_topics
from schemas.codec import decode
from schemas.messages import CtrScore, DeadLetter, DegradedFlag, ExitTelemetry, ImpressionRequest
from scorer import quality
from scorer.agent import scorer_group
from scorer.service import prepare_worker
from worker.analytics import TopicReader, follow
from worker.metrics import ScoreJoin
from worker.prequential import clicks_by_request, run_waves, waves
from worker.replay import publish

pytestmark = pytest.mark.integration

BAD_REQUESTS = [
    (b"196", b"{not json", "InvalidJson"),
    (b"196", b'{"request_id":"b1","user_id":"196","item_ids":[],"ts":900000000000}', "SchemaViolation"),
    (b"196", b'{"request_id":"b2","user_id":"196","item_ids":["1","1"],"ts":900000000000}', "SchemaViolation"),
    (b"other", b'{"request_id":"b3","user_id":"196","item_ids":["1"],"ts":900000000000}', "KeyMismatch"),
    (b"196", None, "EmptyMessage"),
]


def worker_settings(settings, trained_checkpoint, tiny_scorer_checkpoint, **extra):
    return settings.model_copy(update={"graph_checkpoint": trained_checkpoint,
                                       "scorer_checkpoint": tiny_scorer_checkpoint, "catalogue": "ml-100k",
                                       "replica_id": "r1", "scorer_batch_size": 16, **extra})


async def scrape(port: int) -> dict[str, tuple[int, str]]:
    """``path -> (status, body)`` of the worker's three endpoints."""
    import aiohttp

    out = {}
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/healthz", "/readyz"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                out[path] = (response.status, await response.text())
    return out


def samples_of(exposition: str) -> dict[tuple[str, tuple], float]:
    """``(sample name, sorted labels) -> value`` of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for family in text_string_to_metric_families(exposition) for x in family.samples}


def alone_scores(scorer, requests: list[ImpressionRequest]) -> dict[tuple[str, str], tuple[float, int]]:
    """``(request, item) -> (ctr, exit layer)`` of each candidate scored by itself: its own context, prompt and
    features through :meth:`EarlyExitModel.predict` with a batch of one."""
    import torch

    from scorer.features import feature_matrix

    out = {}
    for request in requests:
        ctx = scorer.context(request, 0.0, 0.0)
        for item, inputs in zip(request.item_ids, ctx.inputs, strict=True):
            enc = scorer.tokenizer([scorer.prompt(inputs)], return_tensors="pt")
            features = feature_matrix([inputs], scorer.card.prior, scorer.card.features)
            result = scorer.model.predict(enc["input_ids"], enc["attention_mask"], scorer.rule,
                                          torch.from_numpy(features))
            out[(request.request_id, item)] = (float(result.ctr[0]), int(result.exit_layer[0]))
    return out


def crafted(split) -> dict[str, ImpressionRequest]:
    warm_user, warm_item = split.train.users[-1], split.train.items[-1]
    return {
        "cold_user": ImpressionRequest(request_id="t-cold-user", user_id="never-seen-user",
                                       item_ids=[warm_item], ts=900_000_000_000),
        "cold_item": ImpressionRequest(request_id="t-cold-item", user_id=warm_user,
                                       item_ids=["never-seen-item", warm_item], ts=900_000_000_000),
        "deadline": ImpressionRequest(request_id="t-deadline", user_id=warm_user, item_ids=[warm_item],
                                      ts=900_000_000_000, deadline_ms=50),
    }


async def test_every_request_is_scored_and_bad_ones_dead_lettered(settings, split, trained_checkpoint,
                                                                  tiny_scorer_checkpoint):
    settings = worker_settings(settings, trained_checkpoint, tiny_scorer_checkpoint, metrics_port=0)
    rows = split.stream.take(slice(0, 400))
    special = crafted(split)
    requests = impressions_of(rows, first_row=len(split.train), max_candidates=3) + list(special.values())
    service = await prepare_worker(settings)
    await service.app.start()
    try:
        await publish(settings.kafka_bootstrap, settings.topic("impressions"), requests, progress=False)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        for key, value, _ in BAD_REQUESTS:
            await producer.send_and_wait(settings.topic("impressions"), value, key=key)
        await producer.stop()
        n_candidates = sum(len(r.item_ids) for r in requests)
        scores = await read_topic(settings.kafka_bootstrap, settings.topic("ctr-scores"), n_candidates, 120)
        telemetry = await read_topic(settings.kafka_bootstrap, settings.topic("exit-telemetry"), len(requests), 60)
        letters = await read_topic(settings.kafka_bootstrap, settings.topic("impressions.dlq"), len(BAD_REQUESTS))
        # the Prometheus endpoint counts what the topics show (once the last batch's metrics are recorded)
        taken = ("exitrec_records_total", (("loop", "impression"),))
        await wait_for(lambda: samples_of(service.metrics.exposition().decode()).get(taken) ==
                       len(requests) + len(BAD_REQUESTS), 30, "the metrics of the last batch")
        endpoints = await scrape(service.health.port)
        # each served score is the model's own answer for that candidate's prompt and features, scored alone
        # (no click was published yet, so the store still holds what the scorer read)
        served = {(s.request_id, s.item_id): s for s in (decode(CtrScore, r.value) for r in scores)}
        alone = alone_scores(service.scorer, [r for r in requests if r.deadline_ms is None])
    finally:
        await service.app.stop()
        service.store.close()
    for key, (ctr, layer) in alone.items():
        assert served[key].ctr == pytest.approx(ctr, abs=1e-5) and served[key].exit_layer == layer, key
    assert endpoints["/healthz"][0] == 200
    assert endpoints["/readyz"] == (200, json.dumps({"ready": True, "failing": []}))
    metrics = samples_of(endpoints["/metrics"][1])
    assert metrics[("exitrec_dead_letters_total", (("topic", settings.topic("impressions.dlq")),))] == len(BAD_REQUESTS)
    assert metrics[("exitrec_exit_layer_count", ())] == n_candidates
    assert metrics[("exitrec_score_latency_seconds_count", ())] == len(requests)
    assert metrics[("exitrec_degraded_total", (("flag", "deadline"),))] == 1
    assert metrics[("exitrec_model_info", (("model_version", service.scorer.model_version),))] == 1
    lags = {k: v for k, v in metrics.items() if k[0] == "exitrec_consumer_lag" and ("loop", "impression") in k[1]}
    assert len(lags) == settings.topic_partitions and set(lags.values()) == {0.0}  # all answered: no lag
    assert len({layer for _, layer in alone.values()}) > 1, "the rule splits the batch: several exit layers occur"

    # one score per (request, candidate), keyed by user; one telemetry message per request, keyed by request
    decoded = [decode(CtrScore, r.value) for r in scores]
    assert Counter((s.request_id, s.item_id) for s in decoded) == Counter(
        (r.request_id, i) for r in requests for i in r.item_ids)
    assert all(r.key == s.user_id.encode() for r, s in zip(scores, decoded, strict=True))
    assert all(0.0 <= s.ctr <= 1.0 and s.exit_layer in (0, 1, 2) for s in decoded)
    traces = {t.request_id: t for t in (decode(ExitTelemetry, r.value) for r in telemetry)}
    assert len(telemetry) == len(traces) == len(requests)
    by_id = {r.request_id: r for r in requests}
    score_of = {(s.request_id, s.item_id): s for s in decoded}
    for request_id, trace in traces.items():
        assert [c.item_id for c in trace.candidates] == by_id[request_id].item_ids
        for c in trace.candidates:
            assert len(c.head_confidences) == c.exit_layer + 1  # heads on layers 0, 1, 2: one per head run
            assert score_of[(request_id, c.item_id)].exit_layer == c.exit_layer
    # degraded modes are flagged, and the flagged requests were still scored
    assert traces["t-cold-user"].degraded == [DegradedFlag.COLD_USER] and traces["t-cold-user"].neighbours_used == 0
    assert DegradedFlag.COLD_ITEM in traces["t-cold-item"].degraded
    assert traces["t-deadline"].degraded == [DegradedFlag.DEADLINE] and traces["t-deadline"].neighbours_used == 0
    replayed = [t for rid, t in traces.items() if not rid.startswith("t-")]
    known = set(split.train.users)  # no click was published: the store holds exactly the checkpoint's users
    assert all((DegradedFlag.COLD_USER in t.degraded) == (t.user_id not in known) for t in replayed)
    warm = [t for t in replayed if t.user_id in known]
    assert sum(t.neighbours_used > 0 for t in warm) > 0.8 * len(warm), "warm requests retrieve neighbours"

    assert sorted(decode(DeadLetter, r.value).error_class for r in letters) == sorted(e for *_, e in BAD_REQUESTS)
    originals = sorted(v or b"" for _, v, _ in BAD_REQUESTS)
    assert sorted(base64.b64decode(decode(DeadLetter, r.value).value_b64) for r in letters) == originals
    committed = await committed_offsets(settings.kafka_bootstrap, scorer_group(settings),
                                        settings.topic("impressions"))
    assert sum(committed.values()) == len(requests) + len(BAD_REQUESTS)
    assert service.scorer_stats.requests == len(requests)

    # the analytics reader on the same topics: every request answered once, the rows' clicks (published only
    # now, after their scores) joined with them, dead letters counted
    await publish(settings.kafka_bootstrap, settings.topic("clicks"), clicks_of(rows, len(split.train)),
                  progress=False)
    join = ScoreJoin()
    stop = asyncio.Event()
    reader = asyncio.create_task(follow(settings, TopicReader(settings, join), True, stop))
    await wait_for(lambda: join.total.requests == len(requests) and join.total.joined == len(rows), 60,
                   "the analytics join")
    stop.set()
    await reader
    report = join.report()
    assert report["unanswered"] == 0 and report["duplicates"] == 0 and report["unjoined_clicks"] == 0
    assert report["total"]["dead_letters"] == {"impressions.dlq": len(BAD_REQUESTS)}
    assert report["total"]["degraded"]["deadline"] == 1
    by_pair = {(s.user_id, s.item_id): s.ctr for s in decoded if not s.request_id.startswith("t-")}
    expected = [by_pair[(u, i)] for u, i in zip(rows.users, rows.items, strict=True)]
    assert report["total"]["auc"] == pytest.approx(quality.auc(rows.labels, np.array(expected)))
    assert report["total"]["logloss"] == pytest.approx(quality.logloss(rows.labels, np.array(expected)))
    assert len(join.total.latency_ms) == len(requests)


@pytest.mark.parametrize("model", ["tiny_scorer_checkpoint", "tiny_graph_token_checkpoint"])
async def test_store_failure_scores_without_neighbours(settings, split, trained_checkpoint, model, request):
    """The vector store raising on every read: requests are still answered, flagged ``no_retrieval`` (a model
    with a graph token reads zeros for the vectors it could not get)."""
    settings = worker_settings(settings, trained_checkpoint, request.getfixturevalue(model), metrics_port=0)
    service = await prepare_worker(settings)

    def unreachable(*args, **kwargs):
        raise ConnectionError("qdrant unreachable")

    service.store.get = unreachable
    service.store.similar_users = unreachable
    service.store.neighbour_reactions = unreachable
    service.store.count = unreachable
    requests = impressions_of(split.stream.take(slice(0, 20)), first_row=len(split.train), max_candidates=2)
    await service.app.start()
    try:
        await publish(settings.kafka_bootstrap, settings.topic("impressions"), requests, progress=False)
        telemetry = await read_topic(settings.kafka_bootstrap, settings.topic("exit-telemetry"), len(requests), 60)
        status, body = (await scrape(service.health.port))["/readyz"]
    finally:
        await service.app.stop()
    assert status == 503 and json.loads(body) == {"ready": False, "failing": ["store_reachable"]}
    traces = [decode(ExitTelemetry, r.value) for r in telemetry]
    assert len(traces) == len(requests)
    assert all(t.degraded == [DegradedFlag.NO_RETRIEVAL] and t.neighbours_used == 0 for t in traces)


def start_replica(settings, replica: str, log_path):
    """``exitrec worker`` in its own process group (so SIGKILL takes down everything it started)."""
    import subprocess
    import sys

    env = settings_env(settings, replica_id=replica, log_level="INFO")
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "ab"), start_new_session=True)


def assignments(log_path) -> list[list[int]]:
    """Partition sets a replica logged, in order."""
    with open(log_path, errors="replace") as lines:
        return [json.loads(line)["partitions"] for line in lines if '"impression_partitions_assigned"' in line]


def owned(logs: dict) -> list[int]:
    """Partitions the replicas own now (each one's latest assignment)."""
    return sorted(p for path in logs.values() for p in (assignments(path) or [[]])[-1])


async def test_two_replicas_share_partitions_and_a_killed_one_loses_nothing(settings, split, trained_checkpoint,
                                                                           tiny_scorer_checkpoint, tmp_path):
    """Two `exitrec worker` processes in one group; one is SIGKILLed mid-stream (no graceful commit, its
    partitions move after the session timeout) and restarted. Every request is answered; duplicates (a batch
    scored but not committed before the kill) are counted and removed by request id."""
    settings = worker_settings(settings, trained_checkpoint, tiny_scorer_checkpoint, session_timeout_s=6.0,
                               scorer_batch_size=8)
    requests = impressions_of(split.stream.take(slice(0, 2000)), first_row=len(split.train), max_candidates=2)
    requests, late = requests[:800], requests[800:900]
    assert len(late) == 100
    topic = settings.topic("impressions")
    await create_topics(settings)
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    procs = {name: start_replica(settings, name, logs[name]) for name in ("a", "b")}
    seen: Counter = Counter()
    consumer = AIOKafkaConsumer(settings.topic("exit-telemetry"), bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()

    async def drain(until, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            for name, proc in procs.items():
                assert proc.poll() is None, f"replica {name} died: {logs[name].read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.update(decode(ExitTelemetry, r.value).request_id for r in records)

    try:
        both = lambda: all((assignments(p) or [[]])[-1] for p in logs.values()) and owned(logs) == [0, 1, 2, 3]  # noqa: E731
        await drain(both, 180, "both replicas to own partitions")
        publisher = asyncio.create_task(publish(settings.kafka_bootstrap, topic, requests, rate_per_s=40,
                                                progress=False))
        await drain(lambda: len(seen) >= 150, 120, "150 answered requests")
        os.killpg(procs["a"].pid, signal.SIGKILL)
        procs["a"].wait()
        killed_at = len(seen)
        procs["a"] = start_replica(settings, "a", logs["a"])
        await drain(lambda: publisher.done() and len(seen) >= len(requests), 240, "every request answered")
        await publisher
        await drain(lambda: len(assignments(logs["a"])) >= 2 and both(), 180, "the restarted replica to rejoin")
        await publish(settings.kafka_bootstrap, topic, late, progress=False)
        requests += late
        await drain(lambda: len(seen) >= len(requests), 120, "requests after the rejoin answered")
        await asyncio.sleep(2.0)
        await drain(lambda: True, 1, "late duplicates")
    finally:
        await consumer.stop()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)

    assert killed_at < len(requests), "the replica must be killed mid-stream"
    assert set(seen) == {r.request_id for r in requests}  # dedupe by request id: exactly one per request
    duplicates = sum(seen.values()) - len(seen)
    print(f"requests {len(requests)}, telemetry messages {sum(seen.values())}, duplicates {duplicates}")
    a_runs, b_runs = assignments(logs["a"]), assignments(logs["b"])
    assert any(len(p) == 4 for p in b_runs), "after the kill, the survivor took over every partition"
    assert len(a_runs) >= 2 and a_runs[-1] and b_runs[-1], "the restarted replica rejoined: both own partitions"
    text_lines = [line for path in logs.values() for line in path.read_text(errors="replace").splitlines()
                  if re.match(r"\[\d{4}-\d\d-\d\d ", line)]
    assert not text_lines, f"faust and aiokafka log through the JSON handler, not mode's text format: {text_lines[:3]}"


async def test_strict_prequential_replay_waits_for_each_wave_to_be_folded_in(settings, split, trained_checkpoint,
                                                                              tiny_scorer_checkpoint):
    """The e2e benchmark's AUC protocol: every request is scored only after all earlier clicks were applied, so a
    user's second request in a burst already sees the first one's click in its history."""
    settings = worker_settings(settings, trained_checkpoint, tiny_scorer_checkpoint)
    rows = split.stream.take(slice(0, 60))
    requests = impressions_of(rows, first_row=len(split.train))
    answers = clicks_by_request(requests, clicks_of(rows, len(split.train)))
    service = await prepare_worker(settings)
    seen_history: dict[str, int] = {}
    context = service.scorer.context

    def spy(request, enqueued, taken):
        ctx = context(request, enqueued, taken)
        seen_history[request.request_id] = sum(ctx.inputs[0].rate or (0, 0))
        return ctx

    service.scorer.context = spy
    await service.app.start()
    try:
        run = await run_waves(settings, requests, answers, updater_group(settings), 0, timeout_s=120)
    finally:
        await service.app.stop()
    assert run.answered == len(requests) and service.updater_stats.clicks == len(rows)
    assert len(waves(requests)) > 1
    # the rate line counts every reaction before the row: a user's later request saw the earlier clicks
    checked = 0
    for first, later in itertools.pairwise(requests):
        if first.user_id == later.user_id and seen_history[first.request_id]:
            assert seen_history[later.request_id] >= seen_history[first.request_id] + 1
            checked += 1
    assert checked >= 10, "the replayed slice must hold bursts of one user"


async def test_a_new_checkpoint_is_hot_loaded_and_a_broken_one_refused(settings, split, trained_checkpoint,
                                                                       tiny_scorer_checkpoint, tmp_path):
    """The model folder changes under a running worker: the next batch is scored by the new model (its outputs
    carry the new version), a corrupt folder is refused and the model before it keeps serving; nothing lost."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_scorer_checkpoint, folder)
    settings = worker_settings(settings, trained_checkpoint, folder, model_reload_s=0.2, metrics_port=0)
    service = await prepare_worker(settings)
    first = service.scorer.model_version
    requests = impressions_of(split.stream.take(slice(0, 80)), first_row=len(split.train), max_candidates=2)[:30]
    assert len(requests) == 30
    await service.app.start()
    try:
        await publish(settings.kafka_bootstrap, settings.topic("impressions"), requests[:10], progress=False)
        await wait_for(lambda: service.scorer_stats.requests == 10, 60, "the first requests")
        config = json.loads((folder / "config.json").read_text())
        config["rule"] = {"rule": "never"}  # a new training's folder: other rule, other digest
        (folder / "config.json").write_text(json.dumps(config))
        await wait_for(lambda: service.reloader.reloads == 1, 60, "the reload")
        second = service.scorer.model_version
        await publish(settings.kafka_bootstrap, settings.topic("impressions"), requests[10:20], progress=False)
        await wait_for(lambda: service.scorer_stats.requests == 20, 60, "the second requests")
        (folder / "heads.safetensors").write_bytes(b"not a safetensors file")
        await wait_for(lambda: service.reloader.refusals == 1, 60, "the refusal")
        await publish(settings.kafka_bootstrap, settings.topic("impressions"), requests[20:], progress=False)
        n = sum(len(r.item_ids) for r in requests)
        scores = [decode(CtrScore, r.value) for r in
                  await read_topic(settings.kafka_bootstrap, settings.topic("ctr-scores"), n, 60)]
        exposition = service.metrics.exposition().decode()
    finally:
        await service.app.stop()
        service.store.close()
    assert first != second and "#" in second and second.endswith("+never")
    batch_of = {r.request_id: k // 10 for k, r in enumerate(requests)}
    assert Counter((batch_of[s.request_id], s.model_version) for s in scores) == Counter(
        {(0, first): sum(len(r.item_ids) for r in requests[:10]), (1, second): sum(len(r.item_ids) for r in
                                                                                 requests[10:20]),
         (2, second): sum(len(r.item_ids) for r in requests[20:])})
    assert all(s.exit_layer == 2 for s in scores if s.model_version == second)  # the new rule: full depth
    metrics = samples_of(exposition)
    assert metrics[("exitrec_model_reloads_total", (("outcome", "loaded"),))] == 1
    assert metrics[("exitrec_model_reloads_total", (("outcome", "refused"),))] == 1
    assert metrics[("exitrec_model_info", (("model_version", second),))] == 1
    assert metrics[("exitrec_model_info", (("model_version", first),))] == 0
