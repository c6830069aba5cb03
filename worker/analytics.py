"""``exitrec analytics``: read the input, output and dead-letter topics, join scores with later clicks, report.

An observer, not a member of any consumer group: every analytics process reads every partition (from the
beginning or from now), so it never takes partitions away from the workers. The join and the numbers are
:mod:`worker.metrics`; this module does the Kafka reading, the terminal table and the PNG.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer
from rich.table import Table

from infra.runtime.app import CLICKS, DLQ_SUFFIX, IMPRESSIONS, SCORES, TELEMETRY
from infra.runtime.settings import Settings
from schemas.codec import InvalidMessage, decode, decode_keyed
from schemas.messages import Click, CtrScore, ExitTelemetry, ImpressionRequest
from worker.metrics import ScoreJoin

log = structlog.get_logger("analytics")


class TopicReader:
    """Routes records of the six topics into a :class:`ScoreJoin`; undecodable output records are counted."""

    def __init__(self, settings: Settings, join: ScoreJoin) -> None:
        self.join, self.prefix = join, settings.topic_prefix
        self.invalid = 0
        t = settings.topic
        self.routes = {t(IMPRESSIONS): self._impression, t(SCORES): self._score, t(TELEMETRY): self._telemetry,
                       t(CLICKS): self._click, t(CLICKS + DLQ_SUFFIX): self._dead_letter,
                       t(IMPRESSIONS + DLQ_SUFFIX): self._dead_letter}

    def feed(self, record) -> None:
        try:
            self.routes[record.topic](record)
        except InvalidMessage:  # inputs the workers dead-letter (same checks), or a broken output: skip, count
            self.invalid += 1

    def _impression(self, r) -> None:
        self.join.impression(decode_keyed(ImpressionRequest, r.key, r.value).request_id, r.timestamp)

    def _score(self, r) -> None:
        self.join.score(decode(CtrScore, r.value), r.timestamp)

    def _telemetry(self, r) -> None:
        self.join.telemetry(decode(ExitTelemetry, r.value), r.timestamp)

    def _click(self, r) -> None:
        click = decode_keyed(Click, r.key, r.value)
        self.join.click(click.user_id, click.item_id, click.label, r.timestamp)

    def _dead_letter(self, r) -> None:
        self.join.dead_letter(r.topic.removeprefix(self.prefix), r.timestamp)


async def follow(settings: Settings, reader: TopicReader, from_beginning: bool, stop: asyncio.Event,
                 on_batch=None) -> None:
    """Read until ``stop`` is set; ``on_batch()`` after every poll (live display)."""
    consumer = AIOKafkaConsumer(*reader.routes, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for record in records:
                    reader.feed(record)
            if on_batch:
                on_batch()
    finally:
        await consumer.stop()


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def report_table(report: dict, title: str = "exitrec analytics") -> Table:
    """Totals and the latest window side by side."""
    total = report["total"]
    windows = report["windows"]
    last = windows[max(windows)] if windows else total
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("latest window", justify="right")
    table.add_column("total", justify="right")
    rows = [("requests answered", "requests", 0), ("candidates scored", "candidates", 0),
            ("scores joined with clicks", "joined", 0), ("AUC (joined)", "auc", 3),
            ("log loss (joined)", "logloss", 3), ("ECE, 10 bins (joined)", "ece", 3),
            ("predicted / observed ctr", "ctr_ratio", 2),
            ("mean exit layer", "mean_exit_layer", 2), ("latency p50 ms", "latency_p50_ms", 1),
            ("latency p99 ms", "latency_p99_ms", 1), ("retrieval p50 ms", "retrieval_p50_ms", 2)]
    for label, key, digits in rows:
        table.add_row(label, fmt(last[key], digits), fmt(total[key], digits))
    table.add_row("exit histogram", json.dumps(last["exit_histogram"]), json.dumps(total["exit_histogram"]))
    table.add_row("degraded", json.dumps(last["degraded"]), json.dumps(total["degraded"]))
    table.add_row("dead letters", json.dumps(last["dead_letters"]), json.dumps(total["dead_letters"]))
    table.add_row("duplicates dropped / unanswered", "", f"{report['duplicates']} / {report['unanswered']}")
    return table


def plot(report: dict, out: Path, title: str = "exitrec analytics") -> Path:
    """Per window: AUC, latency p50/p99, mean exit layer; and the total exit histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = report["windows"]
    starts = sorted(windows)
    t0 = starts[0] if starts else 0
    x = [(s - t0) / 1000 for s in starts]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    axes[0, 0].plot(x, [windows[s]["auc"] for s in starts], "o-")
    axes[0, 0].axhline(report["total"]["auc"], ls="--", color="grey", label="total")
    axes[0, 0].set(title="AUC of scores joined with clicks", xlabel="window start (s)")
    axes[0, 0].legend()
    axes[0, 1].plot(x, [windows[s]["latency_p50_ms"] for s in starts], "o-", label="p50")
    axes[0, 1].plot(x, [windows[s]["latency_p99_ms"] for s in starts], "o-", label="p99")
    axes[0, 1].set(title="impression -> score latency (ms)", xlabel="window start (s)", yscale="log")
    axes[0, 1].legend()
    axes[1, 0].plot(x, [windows[s]["mean_exit_layer"] for s in starts], "o-")
    axes[1, 0].set(title="mean exit layer", xlabel="window start (s)")
    hist = report["total"]["exit_histogram"]
    axes[1, 1].bar([str(k) for k in hist], list(hist.values()))
    axes[1, 1].set(title="exit layer histogram (total)", xlabel="layer", ylabel="candidates")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


async def run_analytics(settings: Settings, from_beginning: bool, duration_s: float | None, window_s: float,
                        console) -> dict:
    """Follow the topics with a live table until ``duration_s`` passes (or Ctrl-C); return the final report."""
    from rich.live import Live

    join = ScoreJoin(window_ms=int(window_s * 1000))
    reader = TopicReader(settings, join)
    stop = asyncio.Event()
    ended = time.monotonic() + duration_s if duration_s else math.inf
    with Live(report_table(join.report()), console=console, refresh_per_second=2) as live:
        def refresh() -> None:
            live.update(report_table(join.report()))
            if time.monotonic() >= ended:
                stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C ends the run with a final report
            loop.add_signal_handler(sig, stop.set)
        await follow(settings, reader, from_beginning, stop, refresh)
    return {**join.report(), "invalid_records": reader.invalid}
