"""Prometheus metrics and health endpoints of one worker process (what autoscalers and dashboards read).

:class:`WorkerMetrics` owns a private :class:`prometheus_client.CollectorRegistry` (several workers may share a
process in tests and the demo) with these series:

=====================================  ======================================================================
``exitrec_consumer_lag{loop,topic,partition}``  records between the loop's position and the partition's end
``exitrec_records_total{loop}``        input records taken (valid or not); ``loop`` is ``click``, ``impression``,
                                       or ``shard`` (a partitioned graph updater: clicks and clicks-by-item)
``exitrec_batches_total{loop}``        micro-batches processed
``exitrec_batch_size{loop}``           histogram of records per micro-batch
``exitrec_score_latency_seconds``      histogram: impression produced (record timestamp) -> its scores sent
``exitrec_inference_seconds``          histogram: model time per micro-batch
``exitrec_exit_layer``                 histogram of the layer each candidate's score came from (0 = features head)
``exitrec_degraded_total{flag}``       requests scored with a degraded flag (cold_user, no_retrieval, ...)
``exitrec_dead_letters_total{topic}``  input records dead-lettered, by dead-letter topic
``exitrec_vectors_written_total``      user and item vectors upserted by the click loop
``exitrec_model_info{model_version}``  1 for the model version being served
``exitrec_model_reloads_total{outcome}``  hot reloads of the model folder: ``loaded`` or ``refused``
=====================================  ======================================================================

:class:`HealthServer` serves ``/metrics`` (text exposition), ``/healthz`` (the process's event loop answers) and
``/readyz`` (200 only when every readiness check passes: model loaded, the loops' consumers hold their
assignment, the vector store answers; 503 with the failing checks otherwise) on one port (aiohttp, on the
worker's own event loop).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LAYER_BUCKETS = tuple(float(x) for x in (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48))


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether ``port`` can be bound now (checked before the worker loads its model, to fail fast)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class MetricsPortTaken(RuntimeError):
    """The metrics port is in use by another process."""


class WorkerMetrics:
    """The series of one worker process (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.lag = Gauge("exitrec_consumer_lag", "records between the loop's position and the partition end",
                         ["loop", "topic", "partition"], registry=r)
        self.records = Counter("exitrec_records", "input records taken (valid or not)", ["loop"], registry=r)
        self.batches = Counter("exitrec_batches", "micro-batches processed", ["loop"], registry=r)
        self.batch_size = Histogram("exitrec_batch_size", "records per micro-batch", ["loop"], buckets=SIZE_BUCKETS,
                                    registry=r)
        self.score_latency = Histogram("exitrec_score_latency_seconds", "impression produced -> scores sent",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("exitrec_inference_seconds", "model time per micro-batch", buckets=LATENCY_BUCKETS,
                                   registry=r)
        self.exit_layer = Histogram("exitrec_exit_layer", "layer whose head produced a candidate's score",
                                    buckets=LAYER_BUCKETS, registry=r)
        self.degraded = Counter("exitrec_degraded", "requests scored with a degraded flag", ["flag"], registry=r)
        self.dead_letters = Counter("exitrec_dead_letters", "input records dead-lettered", ["topic"], registry=r)
        self.vectors_written = Counter("exitrec_vectors_written", "vectors upserted by the click loop", registry=r)
        self.model_info = Gauge("exitrec_model_info", "1 for the model version being served", ["model_version"],
                                registry=r)
        self.reloads = Counter("exitrec_model_reloads", "hot model reloads by outcome (loaded, refused)", ["outcome"],
                               registry=r)
        self._model_version: str | None = None
        self.assigned: dict[str, bool] = {}  # loop -> its consumer holds an assignment
        self._lag_labels: dict[str, set[tuple[str, str]]] = {}

    def serving(self, model_version: str) -> None:
        """Mark ``model_version`` as the one served (the previous one's series drops to 0)."""
        if self._model_version is not None and self._model_version != model_version:
            self.model_info.labels(self._model_version).set(0)
        self.model_info.labels(model_version).set(1)
        self._model_version = model_version

    def batch(self, loop: str, records: int) -> None:
        self.records.labels(loop).inc(records)
        self.batches.labels(loop).inc()
        self.batch_size.labels(loop).observe(records)

    def partitions(self, loop: str, lags: dict[tuple[str, int], int]) -> None:
        """The loop's lag per assigned ``(topic, partition)``; partitions no longer assigned drop their series."""
        labels = {(t, str(p)) for t, p in lags}
        for gone in self._lag_labels.get(loop, set()) - labels:
            self.lag.remove(loop, *gone)
        for (topic, partition), lag in lags.items():
            self.lag.labels(loop, topic, str(partition)).set(lag)
        self._lag_labels[loop] = labels
        self.assigned[loop] = bool(lags)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


ReadinessCheck = tuple[str, Callable[[], bool]]


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (0 = any free port; :attr:`port` says which)."""

    def __init__(self, metrics: WorkerMetrics, checks: Iterable[ReadinessCheck], host: str = "0.0.0.0",
                 port: int = 9400) -> None:
        self.metrics, self.checks, self.host, self.port = metrics, list(checks), host, port
        self._runner: web.AppRunner | None = None

    def failing(self) -> list[str]:
        """Names of the readiness checks that fail now (a check that raises fails)."""
        out = []
        for name, check in self.checks:
            try:
                ok = check()
            except Exception:
                ok = False
            if not ok:
                out.append(name)
        return out

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        failing = self.failing()
        return web.json_response({"ready": not failing, "failing": failing}, status=503 if failing else 200)

    async def start(self) -> None:
        """Listen; :class:`MetricsPortTaken` (naming the port and the setting) when the port is in use."""
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics), web.get("/healthz", self._healthz),
                        web.get("/readyz", self._readyz)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise MetricsPortTaken(f"metrics port {self.port} is already in use: set EXITREC_METRICS_PORT to a "
                                       f"free port (unset = no endpoint)") from None
            raise
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
