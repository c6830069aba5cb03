"""The one JSON codec for every topic: bytes in, validated message out, and back.

Nothing read from the wire is unpickled or evaluated: bytes are size-checked, decoded as UTF-8 JSON by
pydantic's parser, and validated against the contract. Any failure raises :class:`InvalidMessage`, whose
``error_class`` and message go into the dead-letter record.
"""

from __future__ import annotations

import base64
import time
from typing import TypeVar

from pydantic import ValidationError

from schemas.messages import (
    DEAD_LETTER_KEY_BYTES,
    DEAD_LETTER_VALUE_BYTES,
    MAX_MESSAGE_BYTES,
    DeadLetter,
    Item,
    Message,
)

M = TypeVar("M", bound=Message)


class InvalidMessage(ValueError):
    """An input message that violates its contract. ``error_class`` names the kind of violation."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def encode(message: Message) -> bytes:
    """Compact UTF-8 JSON of ``message`` (fields in declaration order)."""
    return message.model_dump_json().encode()


def decode(contract: type[M], data: bytes | None) -> M:
    """Parse and validate ``data`` as ``contract``; raise :class:`InvalidMessage` saying why it is not one."""
    if data is None:
        raise InvalidMessage("EmptyMessage", "message has no value (tombstone)")
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidMessage("MessageTooLarge", f"{len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        return contract.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        kind = "InvalidJson" if any(e["type"] == "json_invalid" for e in errors) else "SchemaViolation"
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:8])
        raise InvalidMessage(kind, f"{contract.__name__}: {detail}") from None


def decode_keyed(contract: type[M], key: bytes | None, value: bytes | None) -> M:
    """:func:`decode` an input record keyed by user id (``clicks``, ``impressions``): the key, when present, must
    be the message's ``user_id`` (the partitioning contract), else :class:`InvalidMessage` ``KeyMismatch``."""
    message = decode(contract, value)
    user_id = message.user_id
    if key is not None and key != user_id.encode():
        raise InvalidMessage("KeyMismatch", f"message key {key[:64]!r} is not user_id {user_id!r}")
    return message


def decode_item(key: bytes | None, value: bytes | None) -> Item | None:
    """Decode an ``items`` record: the key must be the ``item_id``; a tombstone (value None, key set) is a delete
    and decodes to None; a tombstone without a key is ``EmptyMessage``."""
    if value is None and key:
        return None
    item = decode(Item, value)
    if key != item.item_id.encode():
        raise InvalidMessage("KeyMismatch", f"message key {None if key is None else key[:64]!r} is not item_id "
                                            f"{item.item_id!r}")
    return item


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                error: Exception) -> DeadLetter:
    """The dead-letter record for an input message that failed with ``error``: the original bytes, cut to the
    kept sizes (an oversize input must not make an oversize dead letter the broker refuses)."""
    error_class = error.error_class if isinstance(error, InvalidMessage) else type(error).__name__
    value = value or b""
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        key_b64=None if key is None else base64.b64encode(key[:DEAD_LETTER_KEY_BYTES]).decode(),
        value_b64=base64.b64encode(value[:DEAD_LETTER_VALUE_BYTES]).decode(),
        value_bytes=len(value),
        truncated=len(value) > DEAD_LETTER_VALUE_BYTES or (key is not None and len(key) > DEAD_LETTER_KEY_BYTES),
        error_class=error_class[:128],
        error_message=str(error)[:4096],
        ts=int(time.time() * 1000),
    )
