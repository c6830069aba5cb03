r"""LightGCN training with the BPR loss (``torch_geometric.nn.LightGCN``), offline and as online refinement.

BPR (Rendle et al., 2009) over sampled triples (user :math:`u`, clicked item :math:`i`, random item :math:`j`):

.. math::
    \mathcal{L} = -\frac{1}{|B|}\sum_{(u,i,j) \in B} \ln \sigma(e_u^\top e_i - e_u^\top e_j)
                  + \lambda \lVert e^{(0)}_{u,i,j} \rVert^2

with :math:`e` the layer-averaged LightGCN embeddings and only the base embeddings :math:`e^{(0)}` trained.
The adjacency is handed to PyG as a sparse CSR tensor (same result as ``edge_index``, several times faster here).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.nn import LightGCN
from torch_geometric.utils import to_torch_csr_tensor
from tqdm import tqdm

from graph_updater.graph import ITEM, USER, LightGCNGraph, propagated

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # PyG's CSR path: fine


def _model(num_layers: int, edges: np.ndarray, base: np.ndarray) -> tuple[LightGCN, torch.Tensor]:
    """PyG's LightGCN over the undirected ``(2, E)`` ``edges`` of ``len(base)`` nodes, starting from ``base``."""
    n, dim = base.shape
    e = torch.from_numpy(edges)
    edge_index = torch.cat([e, e.flip(0)], dim=1)
    adjacency = to_torch_csr_tensor(edge_index, size=(n, n))
    model = LightGCN(num_nodes=n, embedding_dim=dim, num_layers=num_layers)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(base.copy()))
    return model, adjacency


def _bpr_step(model: LightGCN, adjacency: torch.Tensor, opt: torch.optim.Optimizer, batch: np.ndarray,
              neg: np.ndarray, weight_decay: float) -> float:
    """One Adam step of the BPR loss on the (user, clicked item) rows of ``batch`` against the items ``neg``."""
    users = torch.from_numpy(batch[:, 0])
    pos, neg_t = torch.from_numpy(batch[:, 1]), torch.from_numpy(neg)
    emb = model.get_embedding(adjacency)
    pos_rank = (emb[users] * emb[pos]).sum(-1)
    neg_rank = (emb[users] * emb[neg_t]).sum(-1)
    node_id = torch.cat([users, pos, neg_t])
    loss = model.recommendation_loss(pos_rank, neg_rank, node_id=node_id, lambda_reg=weight_decay)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach().item()


def _triples(pairs: np.ndarray, items: np.ndarray, batch_size: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """A batch of click pairs drawn with replacement and as many random items as negatives."""
    batch = pairs[rng.integers(len(pairs), size=min(batch_size, len(pairs)))]
    return batch, items[rng.integers(len(items), size=len(batch))]


def positive_pairs(graph: LightGCNGraph) -> np.ndarray:
    """All (user node, item node) click edges as an ``(E, 2)`` array."""
    pairs = [(v, u) for v, key in enumerate(graph.keys) if key.startswith(USER + ":") for u in graph.adj[v]]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def item_nodes(graph: LightGCNGraph) -> np.ndarray:
    return np.array([v for v, key in enumerate(graph.keys) if key.startswith(ITEM + ":")], dtype=np.int64)


def bpr_train(graph: LightGCNGraph, pairs: np.ndarray, steps: int, lr: float = 0.01,
              batch_size: int = 4096, weight_decay: float = 1e-4, seed: int = 0,
              progress: str | None = None, validate: Callable[[LightGCNGraph], float] | None = None,
              every: int = 0) -> list[float]:
    """Run ``steps`` Adam steps of BPR on batches drawn from ``pairs``; write the base embeddings back into
    ``graph``, mark the nodes of ``pairs`` as trained and re-propagate all layers. Returns per-step losses.

    With ``validate`` (higher is better) the embeddings are written back and scored every ``every`` steps and
    at the end, and the best-scoring ones are kept (epoch selection)."""
    if len(pairs) == 0 or steps <= 0:
        return []
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, adjacency = _model(graph.num_layers, graph.edges(), graph.base())
    items = item_nodes(graph)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, best = [], (-np.inf, None)
    n = len(graph)
    trained = graph.trained[:n] | np.isin(np.arange(n), pairs.ravel())

    def write_back() -> None:
        graph.set_base(model.embedding.weight.detach().numpy().copy(), trained=trained)
        graph.propagate_full()

    for step in tqdm(range(steps), desc=progress, disable=progress is None, unit="step"):
        losses.append(_bpr_step(model, adjacency, opt, *_triples(pairs, items, batch_size, rng), weight_decay))
        if validate is not None and (step + 1 == steps or (every and (step + 1) % every == 0)):
            write_back()
            score = float(validate(graph))
            if score > best[0]:
                best = (score, graph.base().copy())
    if validate is None:
        write_back()
    else:
        graph.set_base(best[1], trained=trained)
        graph.propagate_full()
    return losses


@dataclass(frozen=True)
class RefineJob:
    """What an online refinement reads, copied from the graph at one moment (:meth:`of`), so that its BPR steps
    and propagation can run in a worker thread while the click loop keeps changing the graph: the like edges,
    the base embeddings of the ``len(base)`` nodes of that moment and their final embeddings (what the store
    holds for them), the item nodes (negatives), the recent click pairs, and ``learned``: the nodes whose refined
    base is adopted (learned before, or in ``pairs``; the others keep their fold-in)."""

    num_layers: int
    edges: np.ndarray
    base: np.ndarray
    final: np.ndarray
    items: np.ndarray
    pairs: np.ndarray
    learned: np.ndarray

    @classmethod
    def of(cls, graph: LightGCNGraph, pairs: np.ndarray) -> RefineJob:
        n = len(graph)
        return cls(graph.num_layers, graph.edges(), graph.base().copy(), graph.final(), item_nodes(graph), pairs,
                   graph.trained[:n] | np.isin(np.arange(n), pairs.ravel()))


@dataclass(frozen=True)
class Refined:
    """A finished refinement of a :class:`RefineJob`: all layers of the job's nodes propagated from their
    refined base over the job's edges, and which of them moved more than ``min_change`` against ``job.final``."""

    layers: np.ndarray
    moved: np.ndarray


class RefinementCancelled(Exception):
    """The refinement's ``cancelled`` event was set (its process is stopping): no result."""


def refined_base(job: RefineJob, steps: int, lr: float = 0.005, batch_size: int = 2048,
                 weight_decay: float = 1e-4, seed: int = 0, cancelled: threading.Event | None = None) -> np.ndarray:
    """``steps`` BPR steps (as :func:`bpr_train`) on the job's copy; the base embeddings of its nodes, refined
    for the learned ones and as they were for the others. Raises :class:`RefinementCancelled` before a step when
    ``cancelled`` is set, so a stopping process does not wait for the remaining steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, adjacency = _model(job.num_layers, job.edges, job.base)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        if cancelled is not None and cancelled.is_set():
            raise RefinementCancelled
        _bpr_step(model, adjacency, opt, *_triples(job.pairs, job.items, batch_size, rng), weight_decay)
    base = job.base.copy()
    base[job.learned] = model.embedding.weight.detach().numpy()[job.learned]
    return base


def run_refinement(job: RefineJob, steps: int, min_change: float = 1e-3, lr: float = 0.005, batch_size: int = 2048,
                   seed: int = 0, cancelled: threading.Event | None = None) -> Refined:
    """:func:`refined_base`, propagated over the job's edges, and the nodes whose final embedding moved more
    than ``min_change`` (Euclidean, relative to the norm of ``job.final``). Reads nothing but ``job``: safe to
    run in a thread beside the code that changes the graph."""
    layers = propagated(job.edges, refined_base(job, steps, lr=lr, batch_size=batch_size, seed=seed,
                                                cancelled=cancelled), job.num_layers)
    shift = np.linalg.norm(layers.mean(axis=0) - job.final, axis=1)
    return Refined(layers, shift > min_change * (np.linalg.norm(job.final, axis=1) + 1e-12))


def train_offline(graph: LightGCNGraph, epochs: int = 30, lr: float = 0.01, batch_size: int = 4096,
                  seed: int = 0, validate: Callable[[LightGCNGraph], float] | None = None) -> list[float]:
    """Train from a fresh Xavier initialisation on every edge of ``graph`` (``epochs`` passes over the edges);
    with ``validate``, keep the epoch whose embeddings score best on it (scored after every epoch)."""
    torch.manual_seed(seed)
    init = torch.empty(len(graph), graph.dim)
    torch.nn.init.xavier_uniform_(init)
    graph.set_base(init.numpy(), trained=False)
    pairs = positive_pairs(graph)
    per_epoch = max(1, len(pairs) // batch_size)
    return bpr_train(graph, pairs, max(1, epochs * per_epoch), lr=lr, batch_size=batch_size, seed=seed,
                     progress="LightGCN BPR", validate=validate, every=per_epoch)
