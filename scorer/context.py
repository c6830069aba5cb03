"""What a prompt knows about one (user, candidate) pair, from retrieved payloads (pure: no Kafka, no store I/O).

- **History**: the user's latest ``history_len`` reactions from the ``recent`` payload field (a JSON list of
  ``[item_id, label, ts]``, oldest first), each rendered with the item's catalogue text, and the user's click
  rate over all reactions (``n_liked`` / ``n_liked + n_disliked``).
- **Neighbour evidence**: of the top-N users most similar to the requester among those who reacted to the
  candidate (the vector query does the ranking and the filter), how many liked and how many disliked it. A
  neighbour whose payload no longer lists a reaction to the candidate (its latest-100 window moved on between
  the query and now) counts as neither.
- **Degraded flags** (:class:`~schemas.messages.DegradedFlag`): ``cold_user`` (no vector: no history, no
  neighbour line), ``cold_item`` (no vector: nobody reacted to it yet, so the evidence is "none of the similar
  users reacted", what training saw for such items), ``no_retrieval`` (store failed or the retrieval budget ran
  out: no neighbour line), ``deadline`` (the request's deadline had passed when it was taken: no retrieval).

These match how :mod:`scorer.samples` built the training prompts, so the model sees the same kind of text
online as offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping

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
