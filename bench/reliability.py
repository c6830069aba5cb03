"""A fault campaign on the real broker -> ``bench/results/reliability.json``

    python -m bench.reliability [--kills 20 --broker-restarts 3 --bad 10000 --soak-minutes 10 --rate 10]

Two ``exitrec worker`` replicas (graph updater + scorer each, one consumer group for impressions, each replica
folding every click into its own qdrant-edge folder) run on a broker of the campaign's own (so that it may kill
it), from the ML-100K LightGCN checkpoint and the demo's early-exit model. Traffic is the ML-100K timeline after
the checkpoint, row by row: an impression request for the row's item, then the row's click, ``--rate`` rows/s.
The producer retries a send that failed (the broker may be down), so a row is never skipped by the load itself.

1. **Worker kills**: every ``--kill-every`` seconds one replica (in turn) is SIGKILLed and started again at once
   (it rebuilds from the checkpoint and its committed clicks, then takes its partitions back).
2. **Broker kills**: ``--broker-restarts`` times the broker is SIGKILLed, left down ``--broker-down`` seconds and
   restarted on the same log; the replicas must never exit.
3. **Bad input**: ``--bad`` malformed records over both input topics (random bytes, broken JSON, missing and extra
   fields, a wrong schema version, oversize, tombstones, key != user, out-of-range values, too many candidates),
   one good row after every 20; each bad record must appear in its dead-letter topic (matched by partition and
   offset; the clicks DLQ is written by each replica's click loop, so duplicates there are expected).
4. **Soak** (plotted in ``reliability.png``): ``--soak-minutes`` at ``--soak-over`` x ``--rate``: consumer lag
   (end offsets - committed, every group, both input topics) and each replica's RSS sampled every 5 s; one
   ``/metrics`` scrape per replica checked for the named series. Lag bound: ``--lag-bound-s`` seconds of soak
   traffic.

At the end the replicas stop cleanly and each one's store folder is opened and compared with a one-pass
application of every good click to the checkpoint (:meth:`GraphUpdater.ingest`): ``clicks_lost`` counts
reactions a user's payload is missing against it (``n_liked + n_disliked`` short), ``payload_mismatches`` the
user and item points whose payload differs in any field (counts, latest-reaction lists, recent events). Every
request must have an answer on ``exit-telemetry`` (``requests_lost``: sent, never answered; ``duplicates``:
answers beyond the first, from batches scored but not committed before a kill).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bench.e2e_bench import start_worker
from bench.machine import machine
from graph_updater import checkpoint
from graph_updater.agent import updater_group
from graph_updater.datasets import Interactions, load, time_split
from graph_updater.events import clicks_of, impressions_of, key_of
from graph_updater.graph import ITEM, USER
from graph_updater.online import merged_payload
from graph_updater.recovery import committed_offsets
from graph_updater.store import EdgeStore
from infra.kafka import broker
from infra.runtime.app import DLQ_SUFFIX, create_topics
from infra.runtime.settings import Settings
from schemas.codec import decode, encode
from schemas.messages import MAX_CANDIDATES, MAX_MESSAGE_BYTES, DeadLetter, ExitTelemetry
from scorer.agent import scorer_group

RESULTS = Path(__file__).resolve().parent / "results"
SERIES = ("exitrec_consumer_lag", "exitrec_records_total", "exitrec_batches_total", "exitrec_batch_size_bucket",
          "exitrec_score_latency_seconds_bucket", "exitrec_inference_seconds_bucket", "exitrec_exit_layer_bucket",
          "exitrec_vectors_written_total", "exitrec_model_info")
REPLICAS = ("a", "b")


def malformed(k: int, good_click: dict, good_request: dict, rng: np.random.Generator
              ) -> tuple[str, bytes | None, bytes | None]:
    """The ``k``-th bad record, cycling through the kinds: ``(input topic, key, value)``; ``good_*`` are valid
    messages (as dicts) it is made from."""
    topic = "clicks" if k % 2 == 0 else "impressions"
    good = dict(good_click if topic == "clicks" else good_request)
    key = good["user_id"].encode()
    kind = (k // 2) % 9
    if kind == 0:  # random bytes
        return topic, key, rng.bytes(int(rng.integers(1, 200)))
    if kind == 1:  # broken JSON
        text = json.dumps(good)
        return topic, key, text[: int(rng.integers(1, len(text) - 1))].encode()
    if kind == 2:  # a required field missing
        good.pop("user_id" if k % 3 else "ts")
    elif kind == 3:  # an unknown field
        good["campaign"] = "spring"
    elif kind == 4:  # a schema version this worker does not speak
        good["schema_version"] = 2
    elif kind == 5:  # oversize: just over the contract's limit, or (one in ten) near the broker's 1 MB
        pad = 900_000 if (k // 18) % 10 == 0 else MAX_MESSAGE_BYTES
        return topic, key, json.dumps({**good, "pad": "x" * pad}).encode()
    elif kind == 6:  # tombstone
        return topic, key, None
    elif kind == 7:  # key is not the user (breaks the partitioning contract)
        return topic, b"someone-else", json.dumps(good).encode()
    elif topic == "clicks":  # kind 8: a value out of range
        good["label"] = 7
    else:  # kind 8: too many candidates
        good["item_ids"] = [f"x{j}" for j in range(MAX_CANDIDATES + 1)]
    return topic, key, json.dumps(good).encode()


class Traffic:
    """Publishes rows (request, then click) from a cursor over the timeline, retrying failed sends."""

    def __init__(self, settings: Settings, rows: Interactions, first_row: int) -> None:
        self.settings, self.rows, self.first_row = settings, rows, first_row
        self.cursor = 0
        self.requests: list[str] = []
        self.clicks = 0
        self.bad: dict[tuple[str, int, int], str] = {}  # (input topic, partition, offset) -> kind
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                         enable_idempotence=True, request_timeout_ms=10_000)
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes | None):
        """Send until acknowledged (the broker may be down for a while); the record's metadata."""
        while True:
            try:
                return await (await self.producer.send(self.settings.topic(topic), value, key=key))
            except KafkaError:
                await asyncio.sleep(0.5)

    async def row(self) -> None:
        k = self.cursor
        one = self.rows.take(slice(k, k + 1))
        request = impressions_of(one, self.first_row + k)[0]
        click = clicks_of(one, self.first_row + k)[0]
        await self.send("impressions", key_of(request), encode(request))
        self.requests.append(request.request_id)
        await self.send("clicks", key_of(click), encode(click))
        self.clicks += 1
        self.cursor += 1

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """Rows at ``rate``/s until ``stop`` (catching up after a stall rather than dropping rows)."""
        started, sent = time.perf_counter(), 0
        while not stop.is_set():
            ahead = started + sent / rate - time.perf_counter()
            if ahead > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
                continue
            await self.row()
            sent += 1

    async def bad_input(self, n: int, seed: int = 0) -> None:
        """``n`` malformed records, one good row after every 20."""
        rng = np.random.default_rng(seed)
        for k in range(n):
            one = self.rows.take(slice(self.cursor, self.cursor + 1))
            click = json.loads(encode(clicks_of(one, self.first_row + self.cursor)[0]))
            request = json.loads(encode(impressions_of(one, self.first_row + self.cursor)[0]))
            topic, key, value = malformed(k, click, request, rng)
            meta = await self.send(topic, key, value)
            self.bad[(topic, meta.partition, meta.offset)] = str(k // 2 % 9)
            if k % 20 == 19:
                await self.row()

    def good_clicks(self) -> Interactions:
        return self.rows.take(slice(0, self.cursor))


@dataclass
class Answers:
    """Request ids answered on ``exit-telemetry`` (one telemetry record per answered request)."""

    seen: Counter = field(default_factory=Counter)

    async def follow(self, settings: Settings, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(settings.topic("exit-telemetry"), bootstrap_servers=settings.kafka_bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            while not stop.is_set():
                with contextlib.suppress(KafkaError):
                    for records in (await consumer.getmany(timeout_ms=300)).values():
                        self.seen.update(decode(ExitTelemetry, r.value).request_id for r in records)
        finally:
            await consumer.stop()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the worker's process group), MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return total / 1024


class Replicas:
    """The two ``exitrec worker`` processes, each with its own store folder, metrics port and log."""

    def __init__(self, settings: Settings, work: Path) -> None:
        self.work = work
        self.settings = {name: settings.model_copy(update={
            "replica_id": name, "qdrant_path": str(work / f"store-{name}"), "metrics_port": broker.free_port(),
            "log_level": "INFO"}) for name in REPLICAS}
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts = Counter()

    def start(self, name: str) -> None:
        self.procs[name] = start_worker(self.settings[name], self.work / f"worker-{name}.log")
        self.starts[name] += 1

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.work / f"worker-{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"replica {name} exited with {proc.returncode}:\n{tail}")

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    async def get(self, name: str, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.settings[name].metrics_port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(5)) as r:
            return r.status, await r.text()

    async def ready(self, name: str, timeout_s: float = 300) -> float:
        """Seconds until ``/readyz`` of replica ``name`` answers 200 (model loaded, assignments held, store up)."""
        started = time.monotonic()
        while True:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                if (await self.get(name, "/readyz"))[0] == 200:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"replica {name} not ready after {timeout_s}s")
            await asyncio.sleep(0.5)


async def wait_until(condition: Callable[[], bool], replicas: Replicas, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        replicas.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.5)


async def group_lag(settings: Settings, groups: list[tuple[str, str]]) -> int:
    """Records between each (group, input topic)'s committed offsets and the partitions' ends, summed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        total = 0
        for group, topic in groups:
            name = settings.topic(topic)
            ends = await consumer.end_offsets([TopicPartition(name, p) for p in range(settings.topic_partitions)])
            committed = await committed_offsets(settings.kafka_bootstrap, group, name)
            total += sum(end - committed.get(tp.partition, 0) for tp, end in ends.items())
        return total
    finally:
        await consumer.stop()


async def dead_lettered(settings: Settings, bad: dict[tuple[str, int, int], str], timeout_s: float) -> set:
    """The bad records (keys of ``bad``) found in the dead-letter topics within ``timeout_s``."""
    consumer = AIOKafkaConsumer(*(settings.topic(t + DLQ_SUFFIX) for t in ("clicks", "impressions")),
                                bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    found: set = set()
    prefix = len(settings.topic(""))
    try:
        deadline = time.monotonic() + timeout_s
        while len(found & bad.keys()) < len(bad) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    letter = decode(DeadLetter, r.value)
                    found.add((letter.topic[prefix:], letter.partition, letter.offset))
    finally:
        await consumer.stop()
    return found & bad.keys()


def final_state(settings: Settings, folder: Path, clicks: Interactions) -> tuple[int, int, int]:
    """``(clicks_lost, payload_mismatches, points)`` of a stopped replica's store against a one-pass application
    of ``clicks`` (every good click sent, in order) to the checkpoint."""
    ref, _ = checkpoint.load(settings.graph_checkpoint, recent_n=settings.payload_recent_items)
    ref.ingest([f"c{k}" for k in range(len(clicks))], clicks.users, clicks.items,
               clicks.labels.tolist(), clicks.ts.tolist())
    store = EdgeStore(folder, settings.collection_prefix)
    store.ensure_collections(ref.graph.dim)
    lost = mismatches = 0
    try:
        records = ref.all_records()
        for record in records:
            stored = store.get(record.kind, record.external_id)
            payload = stored[1] if stored else {}
            expected = record.payload
            if record.kind == USER and payload:  # patched users compare as the whole payload they stand for
                payload, expected = merged_payload(payload), merged_payload(expected)
            if payload != expected:
                mismatches += 1
            if record.kind == USER:
                want = record.payload["n_liked"] + record.payload["n_disliked"]
                lost += max(0, want - payload.get("n_liked", 0) - payload.get("n_disliked", 0))
        points = store.count(USER) + store.count(ITEM)
    finally:
        store.close()
    return lost, mismatches, points - len(records)


async def campaign(args, settings: Settings, run_dir: Path, work: Path) -> dict:
    data = load("ml-100k", settings.data_dir)
    split = time_split(data)
    first = len(split.train)
    rows = data.take(slice(first, len(data)))
    await create_topics(settings)
    traffic, answers, replicas = Traffic(settings, rows, first), Answers(), Replicas(settings, work)
    stop_answers = asyncio.Event()
    follower = asyncio.create_task(answers.follow(settings, stop_answers))
    await traffic.start()
    result: dict = {"replicas": len(REPLICAS)}
    try:
        for name in REPLICAS:
            replicas.start(name)
        for name in REPLICAS:
            await replicas.ready(name)
        print("replicas ready", flush=True)

        async def all_answered() -> None:
            await wait_until(lambda: set(traffic.requests) <= answers.seen.keys(), replicas, 300,
                             "every request answered")

        async def flowing(phase: Callable, rate: float):
            """Run ``phase()`` while rows flow at ``rate``; then wait until every request so far is answered."""
            stop = asyncio.Event()
            sender = asyncio.create_task(traffic.run(rate, stop))
            try:
                out = await phase()
            finally:
                stop.set()
                await sender
            await all_answered()
            return out

        async def worker_kills():
            ready_s = []
            for k in range(args.kills):
                await asyncio.sleep(args.kill_every)
                name = REPLICAS[k % 2]
                replicas.kill(name)
                replicas.start(name)
                ready_s.append(await replicas.ready(name))
                print(f"worker kill {k + 1}/{args.kills}: replica {name} ready again in {ready_s[-1]:.1f}s, "
                      f"{len(answers.seen)}/{len(traffic.requests)} answered", flush=True)
            return ready_s

        ready_s = await flowing(worker_kills, args.rate)
        result.update(worker_kills=args.kills, worker_ready_again_s_mean=float(np.mean(ready_s)) if ready_s else None)

        async def broker_kills():
            for k in range(args.broker_restarts):
                await asyncio.sleep(args.kill_every)
                info = broker.status(run_dir)
                os.killpg(info.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.pid, 0)
                await asyncio.sleep(args.broker_down)
                again = await asyncio.to_thread(broker.start, run_dir)
                assert again.restarted and again.bootstrap == settings.kafka_bootstrap, again
                replicas.check_alive()
                print(f"broker kill {k + 1}/{args.broker_restarts}: restarted on its log", flush=True)
            await asyncio.sleep(args.kill_every)  # the replicas recover while traffic still flows

        await flowing(broker_kills, args.rate)
        result["broker_restarts"] = args.broker_restarts
        replicas.check_alive()

        await traffic.bad_input(args.bad)
        found = await dead_lettered(settings, traffic.bad, timeout_s=300)
        await all_answered()
        missed = Counter(kind for key, kind in traffic.bad.items() if key not in found)
        result.update(bad_messages=len(traffic.bad), bad_dead_lettered=len(found), bad_missed_by_kind=dict(missed))
        print(f"bad input: {len(found)}/{len(traffic.bad)} dead-lettered", flush=True)

        groups = [(scorer_group(settings), "impressions")] + [
            (updater_group(replicas.settings[name]), "clicks") for name in REPLICAS]
        soak_rate = args.soak_over * args.rate
        samples: list[dict] = []
        scraped: dict[str, list[str]] = {}

        async def soak():
            started = time.monotonic()
            while time.monotonic() - started < args.soak_minutes * 60:
                await asyncio.sleep(5.0)
                replicas.check_alive()
                samples.append({"t_s": round(time.monotonic() - started, 1), "lag": await group_lag(settings, groups),
                                **{f"rss_mb_{n}": rss_mb(replicas.procs[n].pid) for n in REPLICAS}})
                if not scraped and samples[-1]["t_s"] >= 10:
                    for name in REPLICAS:
                        body = (await replicas.get(name, "/metrics"))[1]
                        scraped[name] = [s for s in SERIES if f"\n{s}" in body or body.startswith(s)]
            return samples

        await flowing(soak, soak_rate)
        lag_bound = int(soak_rate * args.lag_bound_s)
        rss = {n: [s[f"rss_mb_{n}"] for s in samples] for n in REPLICAS}
        minute = max(1, int(60 / 5))
        growth = max(float(np.mean(v[-minute:]) - np.mean(v[:minute])) for v in rss.values())
        result.update(soak_minutes=args.soak_minutes, soak_rps=soak_rate, soak_lag_end=samples[-1]["lag"],
                      soak_lag_max=max(s["lag"] for s in samples), soak_lag_bound=lag_bound,
                      soak_rss_growth_mb=round(growth, 1), soak_samples=samples, metrics_series_scraped=scraped)
        print(f"soak: lag at the end {samples[-1]['lag']} (bound {lag_bound}), RSS growth {growth:.0f} MB",
              flush=True)
    finally:
        replicas.stop()
        stop_answers.set()
        await follower
        await traffic.stop()

    answered = answers.seen.keys()
    clicks = traffic.good_clicks()
    lost, mismatches, extra = zip(*(final_state(settings, work / f"store-{n}", clicks) for n in REPLICAS),
                                  strict=True)
    result.update(requests_sent=len(traffic.requests), requests_lost=len(set(traffic.requests) - answered),
                  duplicates=sum(answers.seen.values()) - len(answered), clicks_sent=traffic.clicks,
                  clicks_lost=int(sum(lost)), payload_mismatches=int(sum(mismatches)),
                  extra_points=int(sum(extra)), replica_starts=dict(replicas.starts))
    return result


def plot(out: Path, result: dict) -> None:
    """The soak: consumer lag (all groups) and each replica's RSS over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["soak_samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, (lag, rss) = plt.subplots(1, 2, figsize=(11, 3.8))
    lag.plot(t, [s["lag"] for s in samples])
    lag.axhline(result["soak_lag_bound"], color="red", linestyle="--", label="bound")
    lag.set(xlabel="soak minutes", ylabel="records behind (all groups)",
            title=f"consumer lag at {result['soak_rps']:.0f} rows/s")
    lag.legend()
    for name in REPLICAS:
        rss.plot(t, [s[f"rss_mb_{name}"] for s in samples], label=f"replica {name}")
    rss.set(xlabel="soak minutes", ylabel="RSS MiB", title="worker memory")
    rss.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=15.0, help="seconds of traffic between kills")
    parser.add_argument("--broker-restarts", type=int, default=3)
    parser.add_argument("--broker-down", type=float, default=5.0)
    parser.add_argument("--bad", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=10.0, help="nominal rows/s (a request and a click each)")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--soak-over", type=float, default=2.0)
    parser.add_argument("--lag-bound-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability.json")
    args = parser.parse_args()
    from worker.demo import ensure_checkpoint, ensure_model

    base = Settings()
    work = base.cache_dir / "bench" / f"reliability-{int(time.time())}"
    run_dir = work / "kafka"
    info = broker.start(run_dir, port=broker.free_port(), fresh=True)
    try:
        tag = f"rel-{int(time.time())}"
        settings = base.model_copy(update={
            "kafka_bootstrap": info.bootstrap, "topic_prefix": f"{tag}.", "consumer_group": tag,
            "graph_checkpoint": ensure_checkpoint(base, "ml-100k"), "scorer_checkpoint": ensure_model(base, "ml-100k"),
            "catalogue": "ml-100k", "session_timeout_s": 6.0, "retriever": "gcn", "exit_rule": "calibrated"})
        started = time.perf_counter()
        result = asyncio.run(campaign(args, settings, run_dir, work))
    finally:
        broker.stop(run_dir)
    result.update(wall_s=round(time.perf_counter() - started, 1), machine=machine(),
                  command="python -m bench.reliability " + " ".join(sys.argv[1:]))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(args.out.with_suffix(".png"), result)
    shutil.rmtree(work, ignore_errors=True)  # the broker's log and the processes' stores: kept only on failure
    print(json.dumps({k: v for k, v in result.items() if k not in ("soak_samples", "machine")}, indent=2))


if __name__ == "__main__":
    main()
