import base64
import json

import pytest

from schemas.codec import InvalidMessage, dead_letter, decode, encode
from schemas.export import schema_documents
from schemas.messages import (
    MAX_CANDIDATES,
    MAX_MESSAGE_BYTES,
    CandidateExit,
    Click,
    CtrScore,
    DeadLetter,
    DegradedFlag,
    ExitTelemetry,
    ImpressionRequest,
)

TS = 1_700_000_000_000


def click(**over) -> dict:
    return {"event_id": "e-1", "user_id": "196", "item_id": "242", "label": 1, "ts": TS, **over}


def test_click_round_trip():
    c = Click(**click())
    raw = encode(c)
    assert json.loads(raw)["schema_version"] == 1
    assert decode(Click, raw) == c


@pytest.mark.parametrize("field,value", [
    ("label", 2), ("label", "1"), ("label", True), ("user_id", ""), ("user_id", "a" * 65),
    ("user_id", "bad id"), ("item_id", "x;DROP"), ("ts", 5), ("ts", 10**16), ("event_id", None),
])
def test_click_rejects_invalid_fields(field, value):
    with pytest.raises(InvalidMessage) as err:
        decode(Click, json.dumps(click(**{field: value})).encode())
    assert err.value.error_class == "SchemaViolation"
    assert field in str(err.value)


def test_unknown_fields_and_versions_are_rejected():
    with pytest.raises(InvalidMessage, match="extra"):
        decode(Click, json.dumps(click(extra=1)).encode())
    with pytest.raises(InvalidMessage, match="schema_version"):
        decode(Click, json.dumps(click(schema_version=2)).encode())


@pytest.mark.parametrize("raw,kind", [
    (b"not json", "InvalidJson"), (b"\xff\xfe", "InvalidJson"), (b"[1,2]", "SchemaViolation"),
    (b"", "InvalidJson"), (None, "EmptyMessage"), (b" " * (MAX_MESSAGE_BYTES + 1), "MessageTooLarge"),
])
def test_garbage_bytes_raise_invalid_message(raw, kind):
    with pytest.raises(InvalidMessage) as err:
        decode(Click, raw)
    assert err.value.error_class == kind


def test_a_dead_letter_of_an_oversize_record_fits_the_contract_and_says_what_it_cut():
    """Before: the letter carried all of a 900 KB input in base64, over the broker's record limit."""
    import base64

    from schemas.codec import dead_letter, encode
    from schemas.messages import DEAD_LETTER_KEY_BYTES, DEAD_LETTER_VALUE_BYTES, DeadLetter

    raw, key = b"x" * 900_000, b"k" * 5000
    with pytest.raises(InvalidMessage) as err:
        decode(Click, raw)
    letter = decode(DeadLetter, encode(dead_letter("clicks", 1, 7, key, raw, err.value)))
    assert letter.truncated and letter.value_bytes == 900_000 and letter.error_class == "MessageTooLarge"
    assert base64.b64decode(letter.value_b64) == raw[:DEAD_LETTER_VALUE_BYTES]
    assert base64.b64decode(letter.key_b64) == key[:DEAD_LETTER_KEY_BYTES]
    small = dead_letter("clicks", 1, 8, b"196", b"{bad", err.value)
    assert not small.truncated and small.value_bytes == 4 and base64.b64decode(small.value_b64) == b"{bad"


def test_pickle_payload_is_never_unpickled():
    import pickle

    with pytest.raises(InvalidMessage):
        decode(Click, pickle.dumps({"event_id": "e"}))


def test_impression_limits():
    ok = ImpressionRequest(request_id="r1", user_id="u1", item_ids=["a", "b"], ts=TS, deadline_ms=50)
    assert decode(ImpressionRequest, encode(ok)) == ok
    for items in ([], ["a", "a"], [str(i) for i in range(MAX_CANDIDATES + 1)]):
        with pytest.raises(InvalidMessage):
            decode(ImpressionRequest, json.dumps({"request_id": "r", "user_id": "u", "item_ids": items,
                                                  "ts": TS}).encode())
    with pytest.raises(InvalidMessage, match="deadline_ms"):
        decode(ImpressionRequest, json.dumps({"request_id": "r", "user_id": "u", "item_ids": ["a"], "ts": TS,
                                              "deadline_ms": 0}).encode())


def test_score_and_telemetry_round_trip():
    s = CtrScore(request_id="r1", user_id="u1", item_id="i1", ctr=0.25, exit_layer=2, model_version="m@1", ts=TS)
    assert decode(CtrScore, encode(s)) == s
    with pytest.raises(InvalidMessage, match="ctr"):
        decode(CtrScore, encode(s).replace(b"0.25", b"1.5"))
    t = ExitTelemetry(request_id="r1", user_id="u1",
                      candidates=[CandidateExit(item_id="i1", head_confidences=[0.6, 0.93], exit_layer=2)],
                      retrieval_ms=1.5, queue_ms=0.2, inference_ms=12.0, batch_size=8, neighbours_used=10,
                      degraded=[DegradedFlag.COLD_ITEM], model_version="m@1", ts=TS)
    back = decode(ExitTelemetry, encode(t))
    assert back == t and back.degraded == [DegradedFlag.COLD_ITEM]


def test_dead_letter_keeps_original_bytes():
    raw = b"\x00garbage"
    err = InvalidMessage("InvalidJson", "boom")
    dl = dead_letter("clicks", 3, 17, b"u1", raw, err)
    back = decode(DeadLetter, encode(dl))
    assert base64.b64decode(back.value_b64) == raw
    assert base64.b64decode(back.key_b64) == b"u1"
    assert (back.topic, back.partition, back.offset, back.error_class) == ("clicks", 3, 17, "InvalidJson")


def test_exported_json_schemas_match_the_committed_files():
    from schemas.export import JSON_DIR

    docs = schema_documents()
    assert set(docs) == {"click.v1.json", "impression.v1.json", "ctr_score.v1.json", "exit_telemetry.v1.json",
                         "dead_letter.v1.json", "item.v1.json", "item_click.v1.json"}
    for name, doc in docs.items():
        committed = json.loads((JSON_DIR / name).read_text())
        assert committed == doc, f"{name} is stale: run `exitrec schemas export`"
    label = docs["click.v1.json"]["properties"]["label"]
    assert (label["type"], label["minimum"], label["maximum"]) == ("integer", 0, 1)
