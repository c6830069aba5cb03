"""What a prompt knows about one (user, candidate) pair, from retrieved payloads (pure: no Kafka, no store I/O).

- **History**: the user's latest ``history_len`` reactions from the ``recent`` payload field (a JSON list of
  ``[item_id, label, ts]``, oldest first), each rendered with the item's catalogue text, and the user's click
  rate over all reactions (``n_liked`` / ``n_liked + n_disliked``).
- **Neighbour evidence**: of the top-N users most similar to the requester among those who reacted to the
  candidate (the vector query does the ranking and the filter), how many liked and how many disliked it. A
  neighbour whose payload no longer lists a reaction to the candidate (its latest-100 window moved on between
  the query and now) counts as neither.
- **Item evidence** (every candidate, cold user or not): the candidate's likes and reactions so far from its
  payload (``n_liked`` / ``n_liked + n_disliked``), and the cosine of the user's and the candidate's LightGCN
  vectors (the collaborative score; None when either is missing).
- **Collaborative match** (:data:`scorer.features.COLLAB_FEATURES`): the mean cosine of the candidate's LightGCN
  vector with those of the items among the user's ``recent`` reactions it liked, and of those it disliked (the
  latest reaction per item; items without a vector skipped), read in one store call per request; from the same
  item payloads, per recent reaction its label and the item's likes and reactions from everyone else (the user's
  like surprise, :func:`others_counts`).
- **Degraded flags** (:class:`~schemas.messages.DegradedFlag`): ``cold_user`` (no LightGCN vector: no
  neighbour line; a user who never reacted has no history either, one who only disliked so far keeps its history
  and rate; the candidate's own evidence is still read), ``cold_item`` (no vector: nobody liked it yet; an item
  nobody reacted to reads "nobody reacted" and "none of the similar users reacted", what training saw for such
  items; one with only dislikes so far keeps its counts and its dislikers as neighbours),
  ``no_retrieval`` (store failed or the retrieval budget ran out: no neighbour line; the candidates whose own
  evidence could not be read get no rate line and prior features), ``deadline`` (the request's deadline had
  passed when it was taken: no retrieval; scored from the prompt text and prior features).

These match how :mod:`scorer.samples` built the training prompts, so the model sees the same kind of text
online as offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from scorer.prompt import NeighbourEvidence

History = tuple[tuple[str, int], ...]


def item_text(catalogue: Mapping[str, str], item_id: str) -> str:
    """The catalogue text of an item, or ``item <id>`` for one the catalogue does not know (as in training)."""
    return catalogue.get(item_id, f"item {item_id}")


def history_from_payload(payload: Mapping, text_of: Callable[[str], str], history_len: int) -> History:
    """The latest ``history_len`` (item text, label) reactions of a user payload, oldest first."""
    raw = payload.get("recent") or "[]"
    recent = json.loads(raw) if isinstance(raw, str) else raw
    return tuple((text_of(str(item)), int(label)) for item, label, *_ in recent[-history_len:])


def rate_from_payload(payload: Mapping) -> tuple[int, int]:
    """``(liked, reacted)`` over all the user's reactions (distinct items, latest reaction per item)."""
    liked, disliked = int(payload.get("n_liked", 0)), int(payload.get("n_disliked", 0))
    return liked, liked + disliked


def evidence_from(reactions: Iterable[int | None]) -> NeighbourEvidence:
    """Likes and dislikes among the neighbours' reactions to the candidate (``None`` = no reaction listed)."""
    reactions = [r for r in reactions if r is not None]
    liked = sum(reactions)
    return NeighbourEvidence(liked, len(reactions) - liked)


def item_rate_from_payload(payload: Mapping) -> tuple[int, int]:
    """``(liked, reacted)`` over every reaction the item received."""
    liked, disliked = int(payload.get("n_liked", 0)), int(payload.get("n_disliked", 0))
    return liked, liked + disliked


def recent_reactions(payload: Mapping) -> dict[str, int]:
    """Item id -> label of the user payload's ``recent`` reactions (the latest reaction per item)."""
    raw = payload.get("recent") or "[]"
    recent = json.loads(raw) if isinstance(raw, str) else raw
    return {str(item): int(label) for item, label, *_ in recent}


def others_counts(label: int, liked: int, reacted: int) -> tuple[int, int, int]:
    """``(label, likes, reactions)`` of an item the user reacted to with ``label``, the user's own reaction taken
    out of the item's ``liked`` of ``reacted`` (its latest one: the counts include every reaction it received)."""
    return label, max(0, liked - label), max(0, reacted - 1)


def unit_rows(vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """``vectors`` as the rows of a matrix, each scaled to unit length (``(0, 0)`` for none)."""
    if len(vectors) == 0:
        return np.zeros((0, 0))
    m = np.asarray(vectors, dtype=np.float64)
    return m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-12)


def graph_match(candidate: Sequence[float] | None, liked: np.ndarray, disliked: np.ndarray
                ) -> tuple[float | None, float | None] | None:
    """Mean cosine of ``candidate`` with the unit rows of ``liked`` and of ``disliked`` (None for an empty side);
    None when the candidate has no vector."""
    if candidate is None:
        return None
    c = unit_rows([candidate])[0]
    return (float((liked @ c).mean()) if len(liked) else None, float((disliked @ c).mean()) if len(disliked) else None)


def cosine(a: Sequence[float] | np.ndarray | None, b: Sequence[float] | np.ndarray | None) -> float | None:
    """Cosine similarity of two vectors, None when either is missing."""
    if a is None or b is None:
        return None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
