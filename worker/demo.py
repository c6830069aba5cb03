"""``exitrec demo``: the whole product on embedded defaults, watched live.

1. starts (or reuses) the local Kafka broker;
2. loads the cached LightGCN checkpoint of the dataset and the cached early-exit model (MiniLM), training each on
   the first run and saying so;
3. runs a worker in this process: the graph updater and the scorer, with the embedded vector store;
4. replays the stream slice's clicks (fold-in; freshness = click produced -> vector readable);
5. replays the test slice prequentially (:mod:`worker.prequential`): impression requests paced at the chosen
   rate, each row's click published once its request is answered, while the analytics reader joins scores with
   those clicks;
6. ends with a summary (AUC, p50/p99 latency, requests/s, exit histogram) and plots (PNG).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from graph_updater.datasets import load, time_split
from graph_updater.events import clicks_of, impressions_of
from graph_updater.graph import ITEM, USER
from infra.kafka import broker
from infra.runtime.settings import Settings
from scorer.experiment import graph_checkpoint_folder, train_checkpoint
from scorer.retrievers import graph_position
from scorer.service import WorkerService, prepare_worker
from worker.analytics import TopicReader, follow, plot, report_table
from worker.metrics import ScoreJoin, percentile
from worker.prequential import PrequentialRun, clicks_by_request, run_prequential
from worker.replay import publish

console = Console(stderr=True)


def ensure_checkpoint(settings: Settings, dataset: str) -> Path:
    def history():
        console.print(f"[bold]Preparing[/]: training LightGCN on {dataset} (first run only, cached in "
                      f"{settings.cache_dir / 'graph' / dataset})")
        return time_split(load(dataset, settings.data_dir)).train

    return graph_checkpoint_folder(dataset, history, settings.cache_dir)


def ensure_model(settings: Settings, dataset: str) -> Path:
    folder = settings.cache_dir / "models" / f"early-exit-{dataset}-minilm-v2"
    if not (folder / "calibration.json").exists():
        console.print(f"[bold]Preparing[/]: training the demo's quick early-exit model (MiniLM frozen, heads with "
                      f"features on 2,000 prequential samples, calibrated on 500 later ones; about two minutes on 2 "
                      f"cores; first run only, cached in {folder}). The benchmarked model trains on 12,000: "
                      f"exitrec train-model --n-train 12000 --n-val 3000")
        train_checkpoint(settings.data_dir, settings.cache_dir, dataset, "minilm", folder, max_length=96)
    return folder


def status_table(service: WorkerService, phase: str, clicks_sent: int, clicks_total: int, run: PrequentialRun | None,
                 join: ScoreJoin, watched: str) -> Table:
    stats, scorer = service.updater_stats, service.scorer_stats
    table = Table(title=f"exitrec demo: {phase}", show_header=False)
    table.add_row("clicks published / folded in", f"{clicks_sent:,} / {clicks_total:,} / {stats.clicks:,}")
    table.add_row("vectors", f"users {service.store.count(USER):,}, items {service.store.count(ITEM):,}")
    table.add_row("freshness p50 / p99", f"{percentile(stats.freshness_ms, 50):.0f} ms / "
                                         f"{percentile(stats.freshness_ms, 99):.0f} ms")
    found = service.store.get(USER, watched)
    position = None if found is None else graph_position(found)
    if position is not None:
        neighbours = service.store.similar_users(position, k=3, exclude_user=watched)
        table.add_row(f"new user {watched}", f"likes {found[1]['n_liked']} items; nearest users: "
                      + ", ".join(f"{n.user_id} ({n.score:.2f})" for n in neighbours))
    if run is not None:
        total = join.report()["total"]
        table.add_row("requests answered", f"{run.answered:,} / {run.requests:,} ({run.rps:,.1f}/s)")
        table.add_row("latency p50 / p99", f"{percentile(run.latency_ms, 50):.0f} ms / "
                                           f"{percentile(run.latency_ms, 99):.0f} ms")
        table.add_row("AUC (scores joined with clicks)", f"{total['auc']:.3f} over {total['joined']:,} clicks")
        table.add_row("exit layers", " ".join(f"L{k}:{v}" for k, v in total["exit_histogram"].items())
                      + f" (mean {total['mean_exit_layer']:.2f})")
        table.add_row("degraded", ", ".join(f"{k} {v}" for k, v in total["degraded"].items()) or "none")
    table.add_row("dead letters", f"clicks {stats.dead_letters}, impressions {scorer.dead_letters}")
    return table


async def _run(settings: Settings, dataset: str, rate: float, limit: int | None, requests_n: int,
               request_rate: float) -> tuple[WorkerService, PrequentialRun, ScoreJoin]:
    split = time_split(load(dataset, settings.data_dir))
    stream = split.stream.take(slice(0, limit)) if limit else split.stream
    warm_clicks = clicks_of(stream, first_row=len(split.train))
    test = split.test.take(slice(0, requests_n))
    first_test = len(split.train) + len(split.stream)
    requests = impressions_of(test, first_row=first_test, max_candidates=3)
    answers = clicks_by_request(requests, clicks_of(test, first_row=first_test))
    known = set(split.train.users)
    watched = next((c.user_id for c in warm_clicks if c.user_id not in known and c.label == 1), "")
    service = await prepare_worker(settings)
    join = ScoreJoin(window_ms=5_000)
    stop = asyncio.Event()
    reader = asyncio.create_task(follow(settings, TopicReader(settings, join), True, stop))
    await service.app.start()
    sent, run = 0, None
    try:
        with Live(status_table(service, "clicks -> LightGCN -> vector store", 0, len(warm_clicks), None, join,
                               watched), console=console, refresh_per_second=2) as live:
            chunk = max(1, int(rate))
            for start in range(0, len(warm_clicks), chunk):
                sent += await publish(settings.kafka_bootstrap, settings.topic("clicks"),
                                      warm_clicks[start:start + chunk], rate, progress=False)
                live.update(status_table(service, "clicks -> LightGCN -> vector store", sent, len(warm_clicks),
                                         None, join, watched))
            while service.updater_stats.clicks < len(warm_clicks):
                await asyncio.sleep(0.2)
            phase = "impressions -> retrieval -> early exit -> scores"
            total_clicks = len(warm_clicks) + len(test)
            run = PrequentialRun(len(requests))

            def refresh(progress: PrequentialRun) -> None:
                live.update(status_table(service, phase, len(warm_clicks) + progress.answered, total_clicks,
                                         progress, join, watched))

            run = await run_prequential(settings, requests, answers, request_rate, on_answer=refresh)
            await asyncio.sleep(1.5)  # the last clicks reach the analytics join
            refresh(run)
    finally:
        stop.set()
        await reader
        await service.app.stop()
    return service, run, join


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


def run_demo(settings: Settings, dataset: str, rate: float, limit: int | None, requests_n: int,
             request_rate: float) -> None:
    console.print("[bold]Kafka[/]: starting the local broker (first run fetches it from Maven Central)")
    info = broker.start(settings.cache_dir / "kafka-run", preferred_port=9092)
    if info.port_note:
        console.print(f"[yellow]{info.port_note}[/]: the broker listens on {info.bootstrap} instead; other commands "
                      f"need EXITREC_KAFKA_BOOTSTRAP={info.bootstrap}")
    tag = f"demo-{int(time.time())}"
    settings = settings.model_copy(update={
        "kafka_bootstrap": info.bootstrap, "topic_prefix": f"{tag}.", "consumer_group": tag, "replica_id": "demo",
        "graph_checkpoint": ensure_checkpoint(settings, dataset), "scorer_checkpoint": ensure_model(settings, dataset),
        "catalogue": dataset})
    console.print(f"Kafka at {info.bootstrap}; topics prefixed '{tag}.'")
    service, run, join = asyncio.run(_run(settings, dataset, rate, limit, requests_n, request_rate))
    out = settings.cache_dir / "demo"
    freshness = plot_freshness(service.updater_stats.freshness_ms, out / "freshness.png")
    report = join.report()
    scoring = plot(report, out / "scoring.png", f"exitrec demo on {dataset}")
    console.print(report_table(report, "exitrec demo: analytics"))
    total = report["total"]
    console.print(f"[bold green]done[/]: {run.answered:,}/{run.requests:,} requests answered at "
                  f"{run.rps:,.1f}/s (offered {request_rate:,.0f}/s); latency p50 "
                  f"{percentile(run.latency_ms, 50):.0f} ms, p99 {percentile(run.latency_ms, 99):.0f} ms; "
                  f"AUC {total['auc']:.3f} over {total['joined']:,} clicks; exit histogram "
                  f"{total['exit_histogram']}; freshness p50 "
                  f"{percentile(service.updater_stats.freshness_ms, 50):.0f} ms")
    console.print(f"plots: {scoring}, {freshness}")
    console.print("The broker keeps running for the next command; stop it with `exitrec kafka down`.")
