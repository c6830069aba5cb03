"""Assemble a worker process: the scorer (model loaded once), and with an embedded store its own graph updater.

Two deployments, one code path:
- **embedded store** (the default): a store lives inside one process, so every replica runs the click loop
  too, under its own consumer group ``<group>.graph-updater.<replica_id>`` (each keeps a full graph), and the
  impression loop under the shared group ``<group>.scorer`` (replicas split the requests);
- **Qdrant server** (``EXITREC_QDRANT_URL``): one ``exitrec graph-updater`` writes the store and any number of
  ``exitrec scorer`` replicas read it.

Used by ``exitrec worker`` / ``exitrec scorer`` (under a faust ``Worker``), the demo, the tests and the
end-to-end benchmark, so all of them run the same code.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import faust
import structlog
from tqdm import tqdm

from graph_updater.agent import UpdaterStats, register_updater
from graph_updater.datasets import dataset_key, load
from graph_updater.graph import USER
from graph_updater.online import GraphUpdater
from graph_updater.service import rebuild, store_for
from graph_updater.store import VectorStore, open_store
from infra.runtime.app import Topics, create_app, create_topics, declare_topics
from infra.runtime.monitoring import HealthServer, WorkerMetrics
from infra.runtime.settings import Settings
from scorer import backbones, checkpoint
from scorer.agent import ScorerStats, register_scorer
from scorer.catalogue import LiveCatalogue
from scorer.catalogue_agent import CatalogueLoop
from scorer.content import SentenceEncoder, TextEmbeddings, catalogue_embeddings_path
from scorer.context import item_text
from scorer.exit_rules import ExitRule
from scorer.features import needs_embeddings
from scorer.reload import ModelReloader
from scorer.retrievers import GcnRetriever, TextRetriever, index_most_active
from scorer.scoring import Scorer, ScorerOptions

log = structlog.get_logger("scorer")


@dataclass
class WorkerService:
    app: faust.App
    topics: Topics
    store: VectorStore
    scorer: Scorer
    scorer_stats: ScorerStats
    updater: GraphUpdater | None = None  # None when a Qdrant server is written by a separate graph updater
    updater_stats: UpdaterStats | None = None
    replayed: int = 0
    metrics: WorkerMetrics | None = None
    health: HealthServer | None = None  # /metrics, /healthz, /readyz when EXITREC_METRICS_PORT is set
    reloader: ModelReloader | None = None  # hot model reload when EXITREC_MODEL_RELOAD_S > 0
    catalogue: CatalogueLoop | None = None  # the items loop keeping the scorer's catalogue


def replica_settings(settings: Settings) -> Settings:
    """``settings`` with a replica id (the host name unless set), needed when the updater runs per replica."""
    return settings if settings.replica_id else settings.model_copy(update={"replica_id": socket.gethostname()})


def load_scorer(settings: Settings, store: VectorStore) -> Scorer:
    """The model from ``scorer_checkpoint``, its exit rule (or full depth), the retriever and item catalogue."""
    if settings.scorer_checkpoint is None:
        raise ValueError("EXITREC_SCORER_CHECKPOINT is not set: point it at an early-exit model folder "
                         "(exitrec train-model writes <cache>/models/early-exit-<dataset>-<backbone>)")
    model, tokenizer, card, rule = checkpoint.load(settings.scorer_checkpoint, settings.cache_dir,
                                                   backbones.best_device())
    if settings.exit_rule == "never":
        rule = ExitRule()
    trained_with = card.metrics.get("retriever", "gcn")
    if trained_with != settings.retriever:
        log.warning("retriever_differs_from_training", serving=settings.retriever, trained_with=trained_with,
                    fix=f"train a model for it: exitrec train-model --retriever {settings.retriever}")
    catalogue = LiveCatalogue.of(load(settings.catalogue, settings.data_dir)) if settings.catalogue else LiveCatalogue()
    options = ScorerOptions(settings.neighbours if settings.retriever != "none" else 0, settings.history_len,
                            settings.model_batch_size, settings.retrieval_budget_ms, settings.latency_slo_ms)
    if settings.retriever == "text" and settings.qdrant_url:
        raise ValueError("EXITREC_RETRIEVER=text is not supported with a shared Qdrant server (EXITREC_QDRANT_URL): "
                         "every scorer replica would build and write its own text index; use EXITREC_RETRIEVER=gcn")
    retriever = GcnRetriever(store)  # "none": the user's own payload is still read, no neighbour query runs
    needs_text = settings.retriever == "text" or needs_embeddings(card.features)
    encoder = SentenceEncoder(backbones.resolve("minilm", settings.cache_dir)) if needs_text else None
    if settings.retriever == "text":
        text_store = open_store(settings.vector_backend, settings.qdrant_url, ":memory:",
                                f"{settings.collection_prefix}_text")
        retriever = TextRetriever(store, text_store, encoder, functools.partial(item_text, catalogue),
                                  settings.history_len)
    scorer = Scorer(model, tokenizer, card, rule, retriever, catalogue, options,
                    cached_embeddings(settings, encoder) if encoder is not None else None)
    log.info("scorer_loaded", model_version=scorer.model_version, device=str(scorer.device),
             retriever=settings.retriever, head_layers=model.head_layers, max_length=card.max_length)
    return scorer


def embed_catalogue(settings: Settings, dataset: str) -> dict:
    """Embed the text of every item ``dataset``'s interactions name, once, into ``<cache>/embeddings/`` (what
    :func:`cached_embeddings` starts from); returns the path, the number of texts and the seconds it took."""
    data = load(dataset, settings.data_dir)
    embeddings = TextEmbeddings(SentenceEncoder(backbones.resolve("minilm", settings.cache_dir)))
    texts = list(dict.fromkeys(item_text(data.item_text, str(item)) for item in dict.fromkeys(data.items)))
    texts.sort(key=len)  # encoder batches of similar lengths: little padding
    started = time.perf_counter()
    for start in tqdm(range(0, len(texts), 4096), desc="embedding item texts", unit="x4096"):
        embeddings.ensure(texts[start:start + 4096])
    seconds = time.perf_counter() - started
    path = embeddings.save(catalogue_embeddings_path(settings.cache_dir, dataset_key(dataset),
                                                     embeddings.encoder.identity))
    return {"path": str(path), "texts": len(texts), "seconds": round(seconds, 1),
            "texts_per_s": round(len(texts) / max(seconds, 1e-9), 1)}


def catalogue_embeddings_ready(settings: Settings, dataset: str) -> bool:
    """Embeds ``dataset``'s catalogue (:func:`embed_catalogue`) unless the scorer checkpoint's heads read no
    content features or the file is there already; True when a worker will start from saved embeddings.
    Benchmarks call it so that no request pays for a first-sight embedding of its item's text."""
    if settings.scorer_checkpoint is None:
        return False
    card = json.loads((Path(settings.scorer_checkpoint) / "config.json").read_text())
    if not needs_embeddings(card.get("features", [])):
        return False
    identity = SentenceEncoder.identity_of(backbones.resolve("minilm", settings.cache_dir))
    if not catalogue_embeddings_path(settings.cache_dir, dataset_key(dataset), identity).exists():
        embed_catalogue(settings, dataset)
    return True


def cached_embeddings(settings: Settings, encoder: SentenceEncoder) -> TextEmbeddings:
    """Item-text embeddings for the content-match features, starting from the catalogue's saved ones when
    ``exitrec embed-catalogue`` wrote them (else every item text is embedded on first sight, on the request path:
    most of a fresh Book-Crossing worker's scoring time)."""
    embeddings = TextEmbeddings(encoder)
    path = catalogue_embeddings_path(settings.cache_dir, dataset_key(settings.catalogue), encoder.identity) \
        if settings.catalogue else None
    if path is not None and path.exists():
        log.info("catalogue_embeddings_loaded", texts=embeddings.load(path), path=str(path))
    else:
        log.info("catalogue_embeddings_absent", path=str(path), fix="exitrec embed-catalogue --dataset <catalogue>")
    return embeddings


def reload_scorer(settings: Settings, current: Scorer) -> Scorer:
    """The checkpoint now in ``scorer_checkpoint`` as a new scorer on the current one's retriever, catalogue,
    options and text embeddings (the content-match encoder is loaded only when the new heads need it first)."""
    model, tokenizer, card, rule = checkpoint.load(settings.scorer_checkpoint, settings.cache_dir, current.device)
    if settings.exit_rule == "never":
        rule = ExitRule()
    embeddings = current.embeddings
    if embeddings is None and needs_embeddings(card.features):
        embeddings = cached_embeddings(settings, SentenceEncoder(backbones.resolve("minilm", settings.cache_dir)))
    c = current.contexts
    return Scorer(model, tokenizer, card, rule, c.retriever, c.catalogue, c.options, embeddings)


async def rebuild_worker(settings: Settings, follow_clicks: bool, store: VectorStore | None = None,
                         updater: GraphUpdater | None = None) -> tuple[GraphUpdater | None, VectorStore, int]:
    """The graph state of a worker: rebuilt from checkpoint + click log when it follows the clicks itself,
    else just the (shared) store."""
    if follow_clicks:
        return await rebuild(settings, store, updater)
    await create_topics(settings)
    return None, store or store_for(settings), 0


def build_worker(settings: Settings, updater: GraphUpdater | None, store: VectorStore, replayed: int,
                 scorer: Scorer | None = None) -> WorkerService:
    """One faust app hosting the impression loop, and the click loop when ``updater`` is given."""
    app = create_app(settings)
    topics = declare_topics(app, settings)
    scorer = scorer or load_scorer(settings, store)
    metrics = WorkerMetrics()
    service = WorkerService(app, topics, store, scorer, ScorerStats(), updater, None, replayed, metrics)
    if updater is not None:
        service.updater_stats = UpdaterStats()
        register_updater(app, topics, updater, store, settings, service.updater_stats, metrics)
    if updater is not None and isinstance(scorer.contexts.retriever, TextRetriever):
        index_most_active(scorer.contexts.retriever, updater.histories, settings.text_index_users)
    if not isinstance(scorer.contexts.catalogue, LiveCatalogue):  # a scorer built by the caller
        scorer.contexts.catalogue = LiveCatalogue(scorer.contexts.catalogue)
    service.catalogue = CatalogueLoop(topics, scorer.contexts.catalogue, settings, metrics)

    @app.task
    async def catalogue_loop() -> None:
        await service.catalogue.run()

    loop = register_scorer(app, topics, scorer, settings, service.scorer_stats, metrics)
    if settings.model_reload_s and settings.scorer_checkpoint is not None:
        service.reloader = ModelReloader(settings.scorer_checkpoint, lambda: reload_scorer(settings, loop.scorer),
                                         loop, lambda new: swapped(service, new),
                                         lambda _: metrics.reloads.labels("refused").inc())

        @app.task
        async def watch_model() -> None:
            await service.reloader.run(settings.model_reload_s)
    if settings.metrics_port is not None:
        service.health = health_server(service, settings.metrics_port)

        @app.task
        async def serve_health() -> None:  # cancelled with the app: the port closes with it
            await service.health.start()
            log.info("metrics_endpoint", port=service.health.port, paths=["/metrics", "/healthz", "/readyz"])
            try:
                await asyncio.Event().wait()
            finally:
                await service.health.stop()
    return service


def swapped(service: WorkerService, scorer: Scorer) -> None:
    """After a hot reload: the service and the metrics name the new model."""
    service.scorer = scorer
    service.metrics.serving(scorer.model_version)
    service.metrics.reloads.labels("loaded").inc()


def health_server(service: WorkerService, port: int) -> HealthServer:
    """The endpoints of ``service``: ready when the model is loaded, the vector store answers a count, the
    catalogue has read the ``items`` topic up to where it ended at start, and every loop's consumer holds an
    assignment."""
    loops = ["impression"] + (["click"] if service.updater is not None else [])
    checks = [("model_loaded", lambda: service.scorer is not None),
              ("store_reachable", lambda: service.store.count(USER) >= 0),
              ("catalogue_loaded", lambda: service.catalogue is not None and service.catalogue.loaded)]
    checks += [(f"{loop}_assigned", lambda loop=loop: service.metrics.assigned.get(loop, False)) for loop in loops]
    return HealthServer(service.metrics, checks, port=port)


async def prepare_worker(settings: Settings, follow_clicks: bool = True, store: VectorStore | None = None,
                         updater: GraphUpdater | None = None, scorer: Scorer | None = None) -> WorkerService:
    """:func:`rebuild_worker` then :func:`build_worker`, for callers running the app in their own loop."""
    updater, store, replayed = await rebuild_worker(settings, follow_clicks, store, updater)
    return build_worker(settings, updater, store, replayed, scorer)
