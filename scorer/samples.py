"""CTR samples from a time-ordered interaction table, built prequentially, two ways.

:func:`build_samples_streaming` (training and evaluation) replays the rows through the graph updater into a
vector store and builds each sample with the scorer's own :class:`~scorer.scoring.ContextBuilder`: the prompt of
row ``t`` is exactly what the online scorer would have built with every click before ``t`` folded in (fresh
vectors, the payload's history and rate, neighbours from the filtered vector query), and only then is ``t``'s
click applied. Training on these is what keeps training and serving prompts the same.

:func:`build_samples` (the static ablation; pure: no store) uses the training-time vectors and never folds in:
for the row at position ``t`` (user ``u``, item ``i``, label ``y``):
- history: ``u``'s last ``history_len`` reactions before ``t`` (item text, label), oldest first, and ``u``'s
  rate (likes, reactions) over distinct items, the latest reaction per item;
- item evidence: ``i``'s likes and reactions before ``t``, and the cosine of ``u``'s and ``i``'s vectors;
- collaborative match: ``i``'s vector against those of ``u``'s last ``recent_n`` reacted items (liked, disliked)
  and, per such item, ``u``'s label and the item's likes and reactions from everyone else (the like surprise);
- brand: ``u``'s likes and reactions among its latest :data:`~graph_updater.online.PAYLOAD_MAX_ITEMS` liked and
  as many disliked items (latest reaction per item) that share ``i``'s brand (``data.item_brand``);
- neighbours (GCN retrieval): among the users who reacted to ``i`` before ``t`` and have a LightGCN vector, the
  ``n_neighbours`` most cosine-similar to ``u``'s vector; their likes and dislikes of ``i`` are the evidence.
  A user without a vector (cold) gets no evidence (``None``), as the online scorer does;
- the label ``y`` is the target. Nothing at or after ``t`` is used, so the sample is what the scorer would have
  known when the impression arrived.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from graph_updater.datasets import Interactions
from graph_updater.events import clicks_of
from graph_updater.graph import ITEM, USER
from graph_updater.online import GraphUpdater, latest_keys
from graph_updater.store import VectorStore
from schemas.messages import ImpressionRequest
from scorer.catalogue import BrandIndex
from scorer.context import cosine, graph_match, item_text, others_counts, unit_rows
from scorer.prompt import NeighbourEvidence, PromptInputs
from scorer.retrievers import GcnRetriever, Retriever
from scorer.scoring import ContextBuilder, ScorerOptions


@dataclass(frozen=True)
class CtrSample:
    user_id: str
    item_id: str
    label: int
    inputs: PromptInputs  # with neighbours (GCN retrieval unless built with another retriever)

    @property
    def warm(self) -> bool:
        """The user had reacted to something before this row (cold rows are a new user's first impression)."""
        return not self.inputs.new_user

    def without_neighbours(self) -> PromptInputs:
        """The no-RAG ablation: no neighbour line (and no neighbour features)."""
        return dataclasses.replace(self.inputs, neighbours=None)

    def text_only(self) -> PromptInputs:
        """The text-only ablation: the prompt as it was before item-level evidence (no candidate rate line)."""
        return dataclasses.replace(self.inputs, item_rate=None)


def new_users(samples: Sequence[CtrSample]) -> np.ndarray:
    """Per sample, whether it is a new user's first impression (not :attr:`CtrSample.warm`)."""
    return np.array([not s.warm for s in samples], dtype=bool)


def neighbour_evidence(user_vector: np.ndarray, reactor_vectors: np.ndarray, reactor_labels: np.ndarray,
                       n: int) -> NeighbourEvidence:
    """Reactions of the ``n`` reactors most cosine-similar to ``user_vector``."""
    if len(reactor_labels) == 0:
        return NeighbourEvidence(0, 0)
    sims = reactor_vectors @ user_vector / (np.linalg.norm(reactor_vectors, axis=1) * np.linalg.norm(user_vector)
                                            + 1e-12)
    top = np.argsort(-sims, kind="stable")[:n]
    liked = int(reactor_labels[top].sum())
    return NeighbourEvidence(liked, len(top) - liked)


def build_samples(data: Interactions, rows: np.ndarray, vector_of: Callable[[str, str], np.ndarray | None],
                  history_len: int = 10, n_neighbours: int = 10, recent_n: int = 20) -> list[CtrSample]:
    """Samples for the table positions ``rows`` (any order); one pass over the table up to the last row.
    ``vector_of(kind, id)`` gives the frozen vector of a user (``u``) or item (``i``), None when it has none."""
    wanted = set(int(r) for r in rows)
    history: dict[str, deque] = defaultdict(lambda: deque(maxlen=history_len))
    recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=recent_n))
    reactions: dict[str, dict[str, int]] = defaultdict(dict)
    reactors: dict[str, list[tuple[str, int]]] = defaultdict(list)
    text, brands = data.item_text, BrandIndex(data.item_brand)
    out: dict[int, CtrSample] = {}
    for t in range(int(max(wanted)) + 1 if wanted else 0):
        user, item, label = data.users[t], data.items[t], int(data.labels[t])
        if t in wanted:
            me = vector_of(USER, user)
            evidence = None
            if me is not None:
                seen = [(v, y) for r, y in reactors[item] if r != user and (v := vector_of(USER, r)) is not None]
                vectors = np.array([v for v, _ in seen]).reshape(len(seen), len(me))
                evidence = neighbour_evidence(me, vectors, np.array([y for _, y in seen], dtype=np.int64),
                                              n_neighbours)
            mine, item_reactions = reactions[user], [y for _, y in reactors[item]]
            candidate = vector_of(ITEM, item)
            latest = dict(recent[user])
            sides = [[v for i, y in latest.items() if y == side and (v := vector_of(ITEM, i)) is not None]
                     for side in (1, 0)]
            keys = [latest_keys({i: y for i, y in mine.items() if y == side}) for side in (1, 0)]
            inputs = PromptInputs(item_text(text, item), tuple(history[user]), evidence,
                                  (sum(mine.values()), len(mine)), (sum(item_reactions), len(item_reactions)),
                                  cosine(me, candidate), graph_match(candidate, *map(unit_rows, sides)),
                                  tuple(others_counts(y, sum(r for _, r in reactors[i]), len(reactors[i]))
                                        for i, y in latest.items()) if reactions[user] else None,
                                  brands.reactions(brands.of(item), *keys), (me, candidate))
            out[t] = CtrSample(user, item, label, inputs)
        recent[user].append((item, label))
        history[user].append((item_text(text, item), label))
        reactions[user].pop(item, None)  # the latest reaction per item, in the order of latest reactions
        reactions[user][item] = label
        reactors[item].append((user, label))
    return [out[int(r)] for r in rows]


def build_samples_streaming(data: Interactions, first_row: int, rows, updater: GraphUpdater, store: VectorStore,
                            catalogue: Mapping[str, str], options: ScorerOptions | None = None,
                            progress: bool = True, retriever: Retriever | None = None) -> list[CtrSample]:
    """Samples for the positions ``rows`` (all ``>= first_row``; any order) as the online scorer sees them.

    ``updater`` and ``store`` hold the state of every row before ``first_row``; both are advanced in place to
    the last wanted row. Retrieval runs without a time budget (a training sample never degrades for speed), with
    ``retriever`` reading ``store`` (default: the GCN retriever; a model served with another one trains with it)."""
    options = options or ScorerOptions(retrieval_budget_ms=float("inf"))
    builder = ContextBuilder(retriever or GcnRetriever(store), catalogue, options)
    wanted = sorted(set(int(r) for r in rows))
    if wanted and wanted[0] < first_row:
        raise ValueError(f"row {wanted[0]} is before first_row {first_row}: its state is not replayable")
    applied, out = first_row, {}
    for t in tqdm(wanted, desc="prequential samples", unit="sample", disable=not progress):
        if applied < t:
            store.upsert(updater.apply(clicks_of(data.take(slice(applied, t)), first_row=applied)))
            applied = t
        user, item, label = str(data.users[t]), str(data.items[t]), int(data.labels[t])
        request = ImpressionRequest(request_id=f"{data.name}-sample-{t}", user_id=user, item_ids=[item],
                                    ts=int(data.ts[t]))
        out[t] = CtrSample(user, item, label, builder.context(request, 0.0, 0.0).inputs[0])
    return [out[int(r)] for r in rows]
