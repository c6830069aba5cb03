"""Offline train / evaluate runs of the early-exit model on real data, shared by the CLI and ``bench/``.

Protocol (one dataset): the time split of :mod:`graph_updater.datasets` (70% history / 15% stream / 15% test).
LightGCN is trained on the history (or loaded from ``<cache>/graph/<dataset>``); training and validation
samples are drawn from the stream slice — validation rows strictly after every training row in time, as test
rows are after both — and test samples from the test slice, all built prequentially through the graph updater
and the scorer's own retrieval (:func:`scorer.samples.build_samples_streaming`). The classical baseline is a
logistic regression on the user's and the item's smoothed like rate and log reaction count before the row (the
same smoothing as :mod:`scorer.features`), fitted on the same training rows and scored on the same test rows.
"""

from __future__ import annotations

import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from graph_updater import checkpoint as graph_checkpoint
from graph_updater.datasets import Interactions, dataset_key, load, time_split
from graph_updater.online import GraphUpdater
from graph_updater.store import EdgeStore, VectorStore, embedded_copy
from graph_updater.train import train_offline
from scorer import backbones, quality
from scorer.calibration import HeadCalibration
from scorer.catalogue import LiveCatalogue
from scorer.content import SentenceEncoder, TextEmbeddings
from scorer.context import item_text
from scorer.exit_rules import ExitRule, FixedHeadRule
from scorer.features import ALL_FEATURES, FEATURES, feature_matrix, graph_pairs, smoothed_logit
from scorer.model import EarlyExitModel
from scorer.prompt import PromptInputs, build_prompt, build_prompts
from scorer.quality import auc, logloss
from scorer.retrievers import Retriever, TextRetriever, index_most_active
from scorer.samples import CtrSample, build_samples_streaming, new_users

BACKBONE_DEFAULTS = {
    # reference: head layers (0 = the features-only head before the first block), training regime
    "minilm": {"head_layers": [0, 1, 2, 3, 4, 5, 6], "regime": "frozen"},
    "smollm2": {"head_layers": [0, 6, 12, 18, 24, 30], "regime": "frozen"},
}
VIEWS = ("default", "norag", "text_only")  # prompt inputs: as served, without neighbours, without item evidence



@dataclass
class Encoded:
    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None
    graph: torch.Tensor | None = None  # LightGCN pairs (scorer.features.graph_pairs), for a graph-token model

    def head(self, n: int) -> Encoded:
        """The first ``n`` rows."""
        return self.take(slice(None, n))

    def take(self, rows) -> Encoded:
        """The rows ``rows`` (a slice or an index tensor)."""
        return Encoded(*(None if t is None else t[rows] for t in (self.ids, self.mask, self.labels, self.features,
                                                                  self.graph)))


@dataclass
class SampleSets:
    train: list[CtrSample]
    val: list[CtrSample]
    test: list[CtrSample]
    prior: float  # positive rate of the graph's history: what features and the baseline smooth towards
    baseline_test: np.ndarray  # the baseline's click probability of each test row
    cold: list[CtrSample] = field(default_factory=list)  # first impressions of new users in the test slice
    baseline_cold: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the baseline's, of each cold row

    @property
    def baseline_auc(self) -> float:
        return auc(np.array([s.label for s in self.test]), self.baseline_test)

    @property
    def baseline_logloss(self) -> float:
        return logloss(np.array([s.label for s in self.test]), self.baseline_test)


def graph_checkpoint_folder(dataset: str, history: Callable[[], Interactions], cache_dir: Path) -> Path:
    """``<cache>/graph/<dataset>`` (what ``exitrec train-graph`` writes), holding LightGCN trained on the 70%
    history: used as it is when it was trained on that share, otherwise trained now on ``history()`` and saved
    there (the demo, the benchmarks and training all start from it)."""
    folder = cache_dir / "graph" / dataset_key(dataset)
    config_file = folder / "config.json"
    if config_file.exists() and json.loads(config_file.read_text()).get("train_share", 0.7) == 0.7:
        return folder
    rows = history()
    updater = graph_checkpoint.build_updater(rows, 64, 3)
    large = len(rows) > 200_000  # Book-Crossing / ML-1M: big batches, few epochs (sparse data overfits)
    config = {"epochs": 6 if large else 30, "lr": 0.05 if large else 0.01, "batch_size": 32768 if large else 4096}
    train_offline(updater.graph, **config)
    return graph_checkpoint.save(folder, updater, rows, {"dataset": dataset, "train_share": 0.7, **config})


def graph_state(dataset: str, history: Interactions, cache_dir: Path) -> GraphUpdater:
    """The graph updater at the end of the 70% history (:func:`graph_checkpoint_folder`)."""
    return graph_checkpoint.load(graph_checkpoint_folder(dataset, lambda: history, cache_dir))[0]


def static_vectors(updater: GraphUpdater):
    """``(kind, id) -> LightGCN vector`` frozen at the updater's current state (None for nodes without edges)."""
    final = updater.graph.final()

    def vector_of(kind: str, external_id: str) -> np.ndarray | None:
        v = updater.graph.node(kind, external_id)
        return None if v is None or not updater.graph.adj[v] else final[v]

    return vector_of


def baseline_features(data: Interactions, rows: np.ndarray, prior: float) -> np.ndarray:
    """Per row: logit of the user's and the item's smoothed like rate and ``ln(1+reactions)`` of each, from the
    rows strictly before it (the baseline's inputs; the same smoothing as :mod:`scorer.features`)."""
    wanted = set(int(r) for r in rows)
    stats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    feats = {}
    for t in range(max(wanted) + 1 if wanted else 0):
        u, i, y = ("u", data.users[t]), ("i", data.items[t]), float(data.labels[t])
        if t in wanted:
            feats[t] = [smoothed_logit(*stats[k], prior) for k in (u, i)] + [np.log1p(stats[k][1]) for k in (u, i)]
        for k in (u, i):
            stats[k][0] += y
            stats[k][1] += 1
    return np.array([feats[int(r)] for r in rows]).reshape(len(rows), 4)


def train_then_validation(first: int, end: int, n_train: int, n_val: int, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``n_train + n_val`` rows drawn from ``[first, end)``, sorted: the earliest ``n_train`` train, the rest
    validate, so every validation row is later in time than every training row (as test rows are later still)."""
    rows = np.sort(rng.choice(np.arange(first, end), min(n_train + n_val, end - first), replace=False))
    return rows[:n_train], rows[n_train:n_train + n_val]


def first_impressions(users: np.ndarray, start: int) -> np.ndarray:
    """Positions ``>= start`` that are their user's first row: a new user's first impression (a cold row)."""
    _, first = np.unique(np.asarray(users), return_index=True)
    return np.sort(first[first >= start])


@functools.lru_cache(maxsize=2)
def sample_sets(dataset: str, data_dir: Path, cache_dir: Path, n_train: int, n_val: int, n_test: int,
                seed: int = 0, retriever: str | Callable[[VectorStore], Retriever] = "gcn",
                text_index_users: int = 10_000, n_cold: int = 0) -> SampleSets:
    """Prequential samples: ``n_train`` then ``n_val`` rows of the stream slice (validation after training in
    time), ``n_test`` rows of the test slice; and the baseline fitted on the training rows. ``retriever``: whose
    neighbours the samples carry, as the worker's ``EXITREC_RETRIEVER`` (``gcn`` or ``none``: LightGCN neighbours,
    dropped by the ``norag`` view; ``text``: a :class:`~scorer.retrievers.TextRetriever` whose collection starts
    with the ``text_index_users`` most active users' histories, as a worker's start builds it; or a function of
    the store giving the retriever, as a benchmark's own). ``n_cold``: also up to that many of the test slice's
    cold rows (:func:`first_impressions`, a random subset when there are more), whether or not they are among the
    test rows, built in the same pass, with the baseline's probabilities. Kept per process for the last two
    argument sets (models trained one after another on the same rows build them once)."""
    data = load(dataset, data_dir)
    split = time_split(data)
    rng = np.random.default_rng(seed)
    a, b = len(split.train), len(split.train) + len(split.stream)
    train_rows, val_rows = train_then_validation(a, b, n_train, n_val, rng)
    test_rows = np.sort(rng.choice(np.arange(b, len(data)), min(n_test, len(data) - b), replace=False))
    cold_rows = first_impressions(data.users, b) if n_cold else np.zeros(0, dtype=np.int64)
    if len(cold_rows) > n_cold:
        cold_rows = np.sort(rng.choice(cold_rows, n_cold, replace=False))
    updater = graph_state(dataset, split.train, cache_dir)
    store = embedded_copy(updater)
    text_store = None
    try:
        searcher = None
        if callable(retriever):
            searcher = retriever(store)
        elif retriever == "text":
            text_store = EdgeStore()
            searcher = TextRetriever(store, text_store, SentenceEncoder(backbones.resolve("minilm", cache_dir)),
                                     functools.partial(item_text, data.item_text))
            index_most_active(searcher, updater.histories, text_index_users)
        wanted = np.concatenate([train_rows, val_rows, test_rows, cold_rows])
        samples = build_samples_streaming(data, len(split.train), wanted, updater, store, LiveCatalogue.of(data),
                                          retriever=searcher)
    finally:
        store.close()
        if text_store is not None:
            text_store.close()
    ends = np.cumsum([len(train_rows), len(val_rows), len(test_rows)])
    train, val, test, cold = samples[:ends[0]], samples[ends[0]:ends[1]], samples[ends[1]:ends[2]], samples[ends[2]:]
    prior = float(split.train.labels.mean())
    lr = LogisticRegression().fit(baseline_features(data, train_rows, prior), data.labels[train_rows])

    def baseline(rows: np.ndarray) -> np.ndarray:
        return lr.predict_proba(baseline_features(data, rows, prior))[:, 1] if len(rows) else np.zeros(0)

    return SampleSets(train, val, test, prior, baseline(test_rows), cold, baseline(cold_rows))


def view(sample: CtrSample, name: str) -> PromptInputs:
    """The sample's prompt inputs under one of :data:`VIEWS`."""
    if name == "norag":
        return sample.without_neighbours()
    if name == "text_only":
        return sample.text_only()
    if name != "default":
        raise ValueError(f"unknown view {name!r}; choose one of {VIEWS}")
    return sample.inputs


def encode(tokenizer, samples: list[CtrSample], max_length: int, prior: float | None = None,
           view_name: str = "default", embeddings: TextEmbeddings | None = None,
           names: Sequence[str] | None = None, graph_dim: int = 0) -> Encoded:
    """Prompts within ``max_length`` tokens (truncation order of :mod:`scorer.prompt`), tokenized and padded,
    and the numeric features ``names`` (:mod:`scorer.features`; default: all of them with ``embeddings``, the
    first eight without) when ``prior`` is given; with ``graph_dim`` the LightGCN pairs of a graph token."""
    def count(text: str) -> int:
        return len(tokenizer(text).input_ids)

    def count_many(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts).input_ids] if texts else []

    inputs = [view(s, view_name) for s in samples]
    texts = build_prompts(inputs, count_many, max_length, lambda x: build_prompt(x, count, max_length))
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    names = names if names is not None else ALL_FEATURES if embeddings is not None else FEATURES
    features = None if prior is None else torch.from_numpy(feature_matrix(inputs, prior, names, embeddings))
    graph = torch.from_numpy(graph_pairs(inputs, graph_dim)) if graph_dim else None
    return Encoded(enc["input_ids"], enc["attention_mask"], torch.tensor([s.label for s in samples]), features,
                   graph)


def graph_dim_of(samples: Sequence[CtrSample]) -> int:
    """The LightGCN dimension of the samples' vectors (0 when none has one)."""
    for s in samples:
        for v in s.inputs.graph_vectors or ():
            if v is not None:
                return len(v)
    return 0


def new_model(reference: str, cache_dir: Path, head_layers: list[int] | None = None,
              device: torch.device | None = None, seed: int = 0, n_features: int = len(ALL_FEATURES),
              precision: str = "fp32", graph_dim: int = 0):
    """Backbone + freshly initialised heads (seeded, so runs do not depend on what consumed the RNG before) and,
    with ``graph_dim``, a graph token (zero at the start); on CPU the backbone runs at ``precision``
    (:data:`scorer.checkpoint.PRECISIONS`), on a GPU in bf16."""
    from scorer.checkpoint import with_precision

    folder = backbones.resolve(reference, cache_dir)
    device = device or backbones.best_device()
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    backbone, tokenizer = backbones.load(folder, device, dtype)
    layers = head_layers or BACKBONE_DEFAULTS.get(reference, {}).get("head_layers") \
        or list(range(0, backbone.config.num_hidden_layers + 1))
    if not n_features:
        layers = [layer for layer in layers if layer > 0]
    torch.manual_seed(seed)
    model = EarlyExitModel(backbone, layers, n_features=n_features, graph_dim=graph_dim).to(device)
    return (with_precision(model, precision) if device.type == "cpu" else model), tokenizer


def throughput(model: EarlyExitModel, data: Encoded, rule: ExitRule, batch_size: int = 32) -> tuple[float, object]:
    """Requests/s of batched early-exit inference over ``data`` (one pass), and the concatenated result."""
    device = next(model.parameters()).device
    started = time.perf_counter()
    results = [model.predict(data.ids[s:s + batch_size].to(device), data.mask[s:s + batch_size].to(device), rule,
                             None if data.features is None else data.features[s:s + batch_size],
                             graph=None if data.graph is None else data.graph[s:s + batch_size])
               for s in range(0, len(data.ids), batch_size)]
    elapsed = time.perf_counter() - started
    merged = type(results[0])(*(np.concatenate([getattr(r, f) for r in results])
                                for f in ("probs", "exit_head", "exit_layer", "ctr")))
    return len(data.ids) / elapsed, merged


def batch_dependence(model: EarlyExitModel, data: Encoded, rows: int = 64, mates: int = 31, seed: int = 0) -> dict:
    """How far each of the first ``rows`` rows' deepest-head click probability moves when it is scored beside
    ``mates`` other rows of ``data`` (drawn from the rest, padded to the longest) instead of alone: 0 up to float
    rounding for fp32 and bf16, whose rows never mix; dynamic int8 takes its activation scale per batch."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)

    def last_head(index: torch.Tensor) -> float:
        part = data.take(index)
        width = int(part.mask.sum(1).max())  # padded to the longest of these rows only
        return float(model.predict(part.ids[:, :width].to(device), part.mask[:, :width].to(device), ExitRule(),
                                   part.features, graph=part.graph).probs[0, -1])

    moved = []
    with torch.inference_mode():
        for r in range(min(rows, len(data.ids) - mates)):
            others = rng.choice(np.arange(rows, len(data.ids)), mates, replace=False)
            moved.append(abs(last_head(torch.from_numpy(np.concatenate([[r], others]))) - last_head(torch.tensor([r]))))
    return {"rows": len(moved), "mates": mates, "mean": float(np.mean(moved)), "p90": float(np.percentile(moved, 90)),
            "max": float(np.max(moved))}


def latencies_ms(model: EarlyExitModel, data: Encoded, rule: ExitRule, n: int) -> np.ndarray:
    """Batch-1 latency of ``n`` requests (padding stripped, as a lone request would arrive)."""
    device = next(model.parameters()).device
    out = []
    for r in range(min(n, len(data.ids))):
        length = int(data.mask[r].sum())
        ids, mask = data.ids[r:r + 1, :length].to(device), data.mask[r:r + 1, :length].to(device)
        features = None if data.features is None else data.features[r:r + 1]
        graph = None if data.graph is None else data.graph[r:r + 1]
        started = time.perf_counter()
        model.predict(ids, mask, rule, features, graph=graph)
        out.append((time.perf_counter() - started) * 1000)
    return np.array(out)


def per_head_latency_ms(model: EarlyExitModel, data: Encoded, n: int) -> list[float]:
    """Median batch-1 latency when every request is forced to exit at head j, for each head."""
    return [float(np.median(latencies_ms(model, data, FixedHeadRule(j), n))) for j in range(len(model.head_layers))]


@functools.cache
def content_embeddings(cache_dir: Path) -> TextEmbeddings:
    """The item-text embeddings the content-match features read (MiniLM sentence encoder from the wheel); one
    per process, so that texts embedded for one model are not embedded again for the next."""
    return TextEmbeddings(SentenceEncoder(backbones.resolve("minilm", cache_dir)))


def default_precision(regime: str) -> str:
    """bf16 for a frozen backbone on a CPU with native bf16 matrix math (AVX512-BF16 / AMX), else fp32: measured
    here at the same AUC and ~2x the requests/s (``bench/results/accuracy_ml-100k.json``, ``precision``)."""
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if regime == "frozen" and native and backbones.best_device().type == "cpu" else "fp32"


def train_checkpoint(data_dir: Path, cache_dir: Path, dataset: str, backbone: str, out: Path, n_train: int = 2000,
                     n_val: int = 500, max_length: int = 128, head_layers: list[int] | None = None, epochs: int = 1,
                     head_epochs: int = 40, rule: str = "max_prob", budget: float = 0.002,
                     regime: str | None = None, precision: str = "auto", decay: float = 0.8,
                     retriever: str = "gcn", text_index_users: int = 10_000, graph_token_epochs: int = 0,
                     graph_token_lr: float = 1e-3) -> ExitRule:
    """Train on prequential RAG prompts and features (early stopping on validation AUC), fit each head's
    calibration and the exit rule on the validation rows (after the training rows in time), save the checkpoint
    at ``out`` (what ``exitrec train-model`` and the demo's first run do); return the chosen rule. ``decay``: the
    depth-aware learning rate's factor per block (:func:`scorer.train.depth_aware_groups`; full regime only).
    ``retriever``: the ``EXITREC_RETRIEVER`` the model will be served with; its prompts and features are what it
    trains on (a model trained on GCN neighbours and served without any sees inputs it never saw), recorded in
    the card's metrics. ``graph_token_epochs > 0``: the model gets a graph token (the collaborative path "a",
    :mod:`scorer.model`), trained for up to that many epochs at ``graph_token_lr`` after the heads (regime
    ``graph_token`` of :func:`scorer.train.train`; fp32 backbone)."""
    from scorer import checkpoint
    from scorer.train import calibrate, head_probabilities, new_users_at_layer0, train

    started = time.perf_counter()
    sets = sample_sets(dataset, data_dir, cache_dir, n_train, n_val, 0,
                       retriever="text" if retriever == "text" else "gcn", text_index_users=text_index_users)
    view_name = "norag" if retriever == "none" else "default"
    regime = regime or BACKBONE_DEFAULTS.get(backbone, {}).get("regime", "frozen")
    if precision == "auto":
        precision = "fp32" if graph_token_epochs else default_precision(regime)
    if precision != "fp32" and (regime != "frozen" or graph_token_epochs):
        raise ValueError(f"precision {precision} serves a frozen backbone's heads; fine-tuning (regime full) "
                         "and a graph token train through the backbone in fp32")
    graph_dim = graph_dim_of(sets.train) if graph_token_epochs else 0
    model, tokenizer = new_model(backbone, cache_dir, head_layers, graph_dim=graph_dim,
                                 precision="fp32" if precision == "int8" else precision)
    embeddings = content_embeddings(cache_dir)
    train_set = encode(tokenizer, sets.train, max_length, sets.prior, view_name, embeddings, graph_dim=graph_dim)
    if precision == "int8":  # activation smoothing calibrated on the training prompts, then int8 (scorer.smoothing)
        checkpoint.with_precision(model, "int8", smoothing=checkpoint.int8_scales(model, train_set.ids, train_set.mask))
    val = encode(tokenizer, sets.val, max_length, sets.prior, view_name, embeddings, graph_dim=graph_dim)
    val_rows = (val.ids, val.mask, val.features, val.labels, val.graph)
    train(model, train_set.ids, train_set.mask, train_set.labels, train_set.features, regime=regime,
          epochs=epochs if regime == "full" else head_epochs, decay=decay, val=val_rows, graph=train_set.graph)
    if graph_token_epochs:
        train(model, train_set.ids, train_set.mask, train_set.labels, train_set.features, regime="graph_token",
              epochs=graph_token_epochs, lr=graph_token_lr, val=val_rows, graph=train_set.graph)
    raw = head_probabilities(model, val.ids, val.mask, val.features, graph=val.graph)
    y_val = val.labels.numpy()
    model.calibration = HeadCalibration.fit(raw, y_val)
    val_probs = model.calibration.apply_all(raw)
    chosen, curve = calibrate(val_probs, y_val, model.head_layers, rule, budget)
    pinned, new_users_validation = new_users_at_layer0(val_probs, y_val, new_users(sets.val), model.head_layers)
    metrics = {"dataset": dataset, "n_train": len(sets.train), "n_val": len(sets.val), "regime": regime,
               "new_users_validation": new_users_validation,
               "layer_lr_decay": decay if regime == "full" else None, "retriever": retriever,
               "graph_token_epochs": graph_token_epochs,
               "val_heads": [quality.report(y_val, val_probs[:, j]) for j in range(val_probs.shape[1])],
               "train_seconds": round(time.perf_counter() - started, 1)}
    card = checkpoint.ModelCard(backbone, model.head_layers, model.pooling, max_length, regime == "full",
                                chosen.to_dict(), curve, metrics, list(ALL_FEATURES), sets.prior, precision,
                                graph_dim=graph_dim, int8_smoothing=checkpoint.smoothing_for(precision),
                                new_users_at_layer0=pinned)
    checkpoint.save(out, model, tokenizer, card)
    return chosen
