"""``exitrec demo``: the whole click path on embedded defaults, watched live.

It starts (or reuses) the local Kafka broker, loads the cached LightGCN checkpoint of the dataset (training it on
the first run), runs the graph updater in this process with the embedded vector store, replays the stream slice
of the real dataset at the chosen rate, and shows a live table: clicks folded in, vectors written, freshness
(click produced -> vector readable), and the nearest neighbours of a user who did not exist at training time.
It ends with a summary and a freshness plot (PNG).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from graph_updater import checkpoint
from graph_updater.datasets import load, time_split
from graph_updater.graph import ITEM, USER
from graph_updater.service import UpdaterService, prepare
from graph_updater.train import train_offline
from infra.kafka import broker
from worker.replay import clicks_of, publish
from worker.settings import Settings

console = Console(stderr=True)


def ensure_checkpoint(settings: Settings, dataset: str) -> Path:
    folder = settings.cache_dir / "graph" / dataset
    if not (folder / "config.json").exists():
        console.print(f"[bold]Preparing[/]: training LightGCN on {dataset} (first run only, cached in {folder})")
        split = time_split(load(dataset, settings.data_dir))
        updater = checkpoint.build_updater(split.train, 64, 3, recent_n=settings.payload_recent_items)
        train_offline(updater.graph, epochs=30)
        checkpoint.save(folder, updater, split.train, {"dataset": dataset, "epochs": 30})
    return folder


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def status_table(service: UpdaterService, sent: int, total: int, watched: str, started: float) -> Table:
    stats = service.stats
    table = Table(title="exitrec demo: clicks -> LightGCN -> vector store", show_header=False)
    table.add_row("clicks published", f"{sent:,} / {total:,}")
    table.add_row("clicks folded in", f"{stats.clicks:,} in {stats.batches:,} micro-batches")
    table.add_row("clicks per second", f"{stats.clicks / max(time.monotonic() - started, 1e-9):,.0f}")
    table.add_row("vectors upserted", f"{stats.upserts:,} (users {service.store.count(USER):,}, "
                                      f"items {service.store.count(ITEM):,})")
    table.add_row("dead letters", str(stats.dead_letters))
    table.add_row("freshness p50 / p99", f"{percentile(stats.freshness_ms, 50):.0f} ms / "
                                         f"{percentile(stats.freshness_ms, 99):.0f} ms")
    found = service.store.get(USER, watched)
    if found is None:
        table.add_row(f"new user {watched}", "not in the store yet (no click folded in)")
    else:
        neighbours = service.store.similar_users(found[0], k=5, exclude_user=watched)
        table.add_row(f"new user {watched}", f"likes {found[1]['n_liked']} items; nearest users: "
                      + ", ".join(f"{n.user_id} ({n.score:.2f})" for n in neighbours))
    return table


async def _run(settings: Settings, dataset: str, rate: float, limit: int) -> UpdaterService:
    split = time_split(load(dataset, settings.data_dir))
    stream = split.stream.take(slice(0, limit))
    clicks = clicks_of(stream, first_row=len(split.train))
    known = set(split.train.users)
    watched = next((c.user_id for c in clicks if c.user_id not in known and c.label == 1), clicks[0].user_id)
    service = await prepare(settings)
    await service.app.start()
    sent = 0

    async def produce() -> None:
        nonlocal sent
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            chunk = max(1, int(rate))  # one second of clicks per call, so the table can show progress
            for start in range(0, len(clicks), chunk):
                sent += await publish(settings.kafka_bootstrap, settings.topic("clicks"),
                                      clicks[start:start + chunk], rate, progress=False, producer=producer)
        finally:
            await producer.stop()

    started = time.monotonic()
    producer = asyncio.create_task(produce())
    try:
        with Live(status_table(service, sent, len(clicks), watched, started), console=console,
                  refresh_per_second=2) as live:
            while service.stats.clicks + service.stats.dead_letters < len(clicks):
                await asyncio.sleep(0.5)
                live.update(status_table(service, sent, len(clicks), watched, started))
            await producer
    finally:
        await service.app.stop()
    return service


def plot_freshness(freshness_ms, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.asarray(freshness_ms), ".", markersize=2)
    ax.set_xlabel("click (arrival order)")
    ax.set_ylabel("produced -> readable (ms)")
    ax.set_title("Embedding freshness during the demo replay")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run_demo(settings: Settings, dataset: str, rate: float, limit: int) -> None:
    console.print("[bold]Kafka[/]: starting the local broker (first run fetches it from Maven Central)")
    info = broker.start(settings.cache_dir / "kafka-run")
    tag = f"demo-{int(time.time())}"
    settings = settings.model_copy(update={
        "kafka_bootstrap": info.bootstrap, "topic_prefix": f"{tag}.", "consumer_group": tag,
        "graph_checkpoint": ensure_checkpoint(settings, dataset)})
    console.print(f"Kafka at {info.bootstrap}; topics prefixed '{tag}.'; replaying {limit:,} clicks at "
                  f"{rate:,.0f}/s")
    service = asyncio.run(_run(settings, dataset, rate, limit))
    png = plot_freshness(service.stats.freshness_ms, settings.cache_dir / "demo" / "freshness.png")
    console.print(f"[bold green]done[/]: {service.stats.clicks:,} clicks folded in, "
                  f"{service.stats.upserts:,} vector upserts, freshness p50 "
                  f"{percentile(service.stats.freshness_ms, 50):.0f} ms, p99 "
                  f"{percentile(service.stats.freshness_ms, 99):.0f} ms; plot: {png}")
    console.print("The broker keeps running for the next command; stop it with `exitrec kafka down`.")
