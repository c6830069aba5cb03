"""CTR samples from a time-ordered interaction table, built prequentially (pure: no Kafka, no vector store).

For the row at position ``t`` (user ``u``, item ``i``, label ``y``):
- history: ``u``'s last ``history_len`` reactions before ``t`` (item text, label), oldest first;
- neighbours (GCN retrieval): among the users who reacted to ``i`` before ``t`` and have a LightGCN vector, the
  ``n_neighbours`` most cosine-similar to ``u``'s vector; their likes and dislikes of ``i`` are the evidence.
  A user without a vector (cold) gets no evidence (``None``), as the online scorer does;
- the label ``y`` is the target. Nothing at or after ``t`` is used, so the sample is what the scorer would have
  known when the impression arrived.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graph_updater.datasets import Interactions
from scorer.prompt import NeighbourEvidence, PromptInputs


@dataclass(frozen=True)
class CtrSample:
    user_id: str
    item_id: str
    label: int
    inputs: PromptInputs  # with neighbours (GCN retrieval)

    def without_neighbours(self) -> PromptInputs:
        return PromptInputs(self.inputs.target, self.inputs.history, None)


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


def build_samples(data: Interactions, rows: np.ndarray, vector_of: Callable[[str], np.ndarray | None],
                  history_len: int = 10, n_neighbours: int = 10) -> list[CtrSample]:
    """Samples for the table positions ``rows`` (any order); one pass over the table up to the last row."""
    wanted = set(int(r) for r in rows)
    history: dict[str, deque] = defaultdict(lambda: deque(maxlen=history_len))
    reactors: dict[str, list[tuple[str, int]]] = defaultdict(list)
    text = data.item_text
    out: dict[int, CtrSample] = {}
    for t in range(int(max(wanted)) + 1 if wanted else 0):
        user, item, label = data.users[t], data.items[t], int(data.labels[t])
        if t in wanted:
            me = vector_of(user)
            evidence = None
            if me is not None:
                seen = [(v, y) for r, y in reactors[item] if r != user and (v := vector_of(r)) is not None]
                vectors = np.array([v for v, _ in seen]).reshape(len(seen), len(me))
                evidence = neighbour_evidence(me, vectors, np.array([y for _, y in seen], dtype=np.int64),
                                              n_neighbours)
            inputs = PromptInputs(text.get(item, f"item {item}"), tuple(history[user]), evidence)
            out[t] = CtrSample(user, item, label, inputs)
        history[user].append((text.get(item, f"item {item}"), label))
        reactors[item].append((user, label))
    return [out[int(r)] for r in rows]
