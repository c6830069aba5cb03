"""Wire contracts of exitrec's Kafka topics (schema version 1).

Every message is one UTF-8 JSON object carrying ``schema_version``. A change that removes or retypes a field
bumps the version; consumers select on it. Unknown fields are rejected, so a producer bug shows up in the
dead-letter topic instead of being silently ignored.

Limits (enforced on decode, see :mod:`schemas.codec`):
- ids (user, item, event, request): 1–64 characters of ``[A-Za-z0-9._:@-]``;
- ``ts``: epoch milliseconds in [1995-01-01, 2100-01-01) — datasets without clock times get synthetic ones;
- ``label``: 1 = clicked, 0 = shown and not clicked;
- an impression carries 1–:data:`MAX_CANDIDATES` distinct candidate items;
- an encoded message is at most :data:`MAX_MESSAGE_BYTES` bytes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CANDIDATES = 100
DEAD_LETTER_VALUE_BYTES = 32 * 1024
DEAD_LETTER_KEY_BYTES = 1024
MAX_HEADS = 64
TS_MIN_MS = 788_918_400_000  # 1995-01-01T00:00:00Z (MovieLens-100K starts in 1997)
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")]
TimestampMs = Annotated[int, Field(ge=TS_MIN_MS, lt=TS_MAX_MS, description="epoch milliseconds")]
Millis = Annotated[float, Field(ge=0.0, le=3_600_000.0)]


class Message(BaseModel):
    """Base of all contracts: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = SCHEMA_VERSION


class Click(Message):
    """``clicks`` topic, key = user_id. One user reaction to one shown item."""

    event_id: Id
    user_id: Id
    item_id: Id
    label: int = Field(ge=0, le=1, description="1 = clicked, 0 = shown and not clicked (booleans rejected)")
    ts: TimestampMs


class ItemClick(Message):
    """``clicks-by-item`` topic (partitioned graph updaters), key = item_id. A click its user's owner applied,
    forwarded to its item's owner: ``edge`` is +1 when the click added the user–item like edge, −1 when it removed
    it, 0 when the edge did not change (the user's owner decides; the item's owner follows)."""

    event_id: Id
    user_id: Id
    item_id: Id
    label: int = Field(ge=0, le=1)
    ts: TimestampMs
    edge: int = Field(ge=-1, le=1)


class ImpressionRequest(Message):
    """``impressions`` topic, key = user_id. Score each candidate item for the user."""

    request_id: Id
    user_id: Id
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_CANDIDATES)
    ts: TimestampMs
    deadline_ms: int | None = Field(default=None, ge=1, le=60_000,
                                    description="time budget after ts; retrieval is skipped when it would miss it")

    @field_validator("item_ids")
    @classmethod
    def _distinct(cls, items: list[str]) -> list[str]:
        if len(set(items)) != len(items):
            raise ValueError("candidate item_ids must be distinct")
        return items


class Item(Message):
    """``items`` topic (compacted), key = item_id. The latest record per item is its catalogue entry: ``text``
    names it in prompts, with the optional attributes appended. A tombstone (key, no value) removes the entry."""

    item_id: Id
    text: str = Field(min_length=1, max_length=2000, description="what the item is, as a person would name it")
    category: str | None = Field(default=None, min_length=1, max_length=200)
    brand: str | None = Field(default=None, min_length=1, max_length=200)
    price: float | None = Field(default=None, ge=0.0, le=1e9)
    ts: TimestampMs

    def prompt_text(self) -> str:
        """``text`` with the attributes that are set, e.g. ``Heat (1995) (Action; Warner; 9.99)``."""
        extra = [x for x in (self.category, self.brand, None if self.price is None else f"{self.price:g}") if x]
        return f"{self.text} ({'; '.join(extra)})" if extra else self.text


class CtrScore(Message):
    """``ctr-scores`` topic, key = user_id. One per (request, candidate); id ``<request_id>:<item_id>``."""

    request_id: Id
    user_id: Id
    item_id: Id
    ctr: float = Field(ge=0.0, le=1.0)
    exit_layer: int = Field(ge=0, le=1024, description="layer whose head produced the score: 0 = the features-only "
                            "head before the first transformer block, l >= 1 = after l blocks")
    model_version: str = Field(min_length=1, max_length=128)
    ts: TimestampMs


class DegradedFlag(StrEnum):
    """Why a request was scored with less than the full pipeline."""

    NO_RETRIEVAL = "no_retrieval"  # vector store unreachable or too slow for the deadline
    COLD_USER = "cold_user"  # user has no LightGCN vector yet (never liked anything)
    COLD_ITEM = "cold_item"  # item has no LightGCN vector yet (never liked)
    DEADLINE = "deadline"  # deadline already passed when the request was taken
    SLO = "slo"  # under latency-SLO pressure: retrieval shed, exit rule relaxed, or the deepest head so far


class CandidateExit(BaseModel):
    """Exit trace of one candidate: confidences of the heads evaluated, up to and including the exit head."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    item_id: Id
    head_confidences: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=1, max_length=MAX_HEADS)
    exit_layer: int = Field(ge=0, le=1024)


class ExitTelemetry(Message):
    """``exit-telemetry`` topic, key = request_id. One per impression request."""

    request_id: Id
    user_id: Id
    candidates: list[CandidateExit] = Field(min_length=1, max_length=MAX_CANDIDATES)
    retrieval_ms: Millis
    queue_ms: Millis
    inference_ms: Millis
    batch_size: int = Field(ge=1, le=100_000)
    neighbours_used: int = Field(ge=0, le=10_000)
    degraded: list[DegradedFlag] = Field(default_factory=list, max_length=len(DegradedFlag))
    model_version: str = Field(min_length=1, max_length=128)
    ts: TimestampMs


class DeadLetter(Message):
    """``<input>.dlq`` topics, key = the original key (its first :data:`DEAD_LETTER_KEY_BYTES`). An input message
    that could not be processed. The original bytes are kept up to :data:`DEAD_LETTER_VALUE_BYTES` (value) and
    :data:`DEAD_LETTER_KEY_BYTES` (key), so that a dead letter always fits the broker's record limit and this
    contract's :data:`MAX_MESSAGE_BYTES`; ``value_bytes`` and ``truncated`` say what was cut."""

    topic: str = Field(min_length=1, max_length=249)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = Field(default=None, description="original key bytes (the first 1 KiB), base64")
    value_b64: str = Field(description="original value bytes (the first 32 KiB), base64 (never parsed or evaluated)")
    value_bytes: int = Field(default=0, ge=0, description="size of the original value in bytes")
    truncated: bool = Field(default=False, description="the key or the value was longer than what is kept")
    error_class: str = Field(min_length=1, max_length=128)
    error_message: str = Field(max_length=4096)
    ts: TimestampMs


CONTRACTS: dict[str, type[Message]] = {
    "click": Click,
    "item_click": ItemClick,
    "impression": ImpressionRequest,
    "item": Item,
    "ctr_score": CtrScore,
    "exit_telemetry": ExitTelemetry,
    "dead_letter": DeadLetter,
}
