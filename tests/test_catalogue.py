"""The item catalogue: the ``items`` contract and overlay (pure), and the items loop on the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from kafka_io import read_topic, wait_for

from graph_updater.online import item_key
from schemas.codec import InvalidMessage, decode, decode_item, encode
from schemas.messages import DeadLetter, ImpressionRequest, Item
from scorer.catalogue import BrandIndex, LiveCatalogue
from scorer.service import prepare_worker

TS = 900_000_000_000


def item(item_id: str, text: str, **extra) -> Item:
    return Item(item_id=item_id, text=text, ts=TS, **extra)


def test_attributes_join_the_text_and_the_latest_record_overlays_the_builtin_text():
    assert item("9", "Heat (1995)", category="Action", price=9.5).prompt_text() == "Heat (1995) (Action; 9.5)"
    catalogue = LiveCatalogue({"1": "Toy Story (1995)", "2": "GoldenEye (1995)"})
    catalogue.put(item("1", "Toy Story, remastered"))
    catalogue.put(item("7", "A new film", brand="Pixar"))
    assert catalogue["1"] == "Toy Story, remastered" and catalogue["7"] == "A new film (Pixar)"
    catalogue.drop("1")
    assert catalogue["1"] == "Toy Story (1995)" and catalogue.get("8") is None
    assert sorted(catalogue) == ["1", "2", "7"] and len(catalogue) == 3


def test_brands_overlay_like_texts_and_count_a_users_reactions_by_payload_key():
    catalogue = LiveCatalogue({"1": "a", "2": "b", "3": "c"}, BrandIndex({"1": "Ann Rule", "2": "ann  rule", "3": "X"}))
    brands = catalogue.brands
    assert brands.of("1") == brands.of("2") == "ann rule" and brands.of("9") is None
    keys = {i: item_key(i) for i in "12349"}
    assert brands.reactions("ann rule", [keys["1"], keys["3"]], [keys["2"], keys["9"]]) == (1, 2)
    assert brands.reactions(None, [keys["1"]], []) is None
    catalogue.put(item("9", "new book", brand="Ann Rule"))  # a live record with a brand joins the index
    catalogue.put(item("1", "re-issued"))  # a live record without one clears the built-in brand
    assert brands.of("9") == "ann rule" and brands.of("1") is None
    assert brands.reactions("ann rule", [keys["1"], keys["9"]], [keys["2"]]) == (1, 2)
    catalogue.drop("1")  # the tombstone restores the built-in brand
    catalogue.drop("9")
    assert brands.of("1") == "ann rule" and brands.of("9") is None
    assert brands.reactions("ann rule", [keys["1"], keys["9"]], []) == (1, 1)


def test_item_records_are_keyed_by_item_id_and_a_keyed_tombstone_is_a_delete():
    good = item("5", "x")
    assert decode_item(b"5", encode(good)) == good
    assert decode_item(b"5", None) is None
    for key, value, kind in ((b"6", encode(good), "KeyMismatch"), (None, None, "EmptyMessage"),
                             (b"5", b'{"item_id":"5","ts":900000000000}', "SchemaViolation")):
        with pytest.raises(InvalidMessage) as err:
            decode_item(key, value)
        assert err.value.error_class == kind


BAD_ITEMS = [(b"1", b"{not json", "InvalidJson"), (b"other", encode(item("1", "wrong key")), "KeyMismatch"),
             (b"4", b'{"item_id":"4","text":"","ts":900000000000}', "SchemaViolation")]


@pytest.mark.integration
async def test_the_worker_keeps_its_catalogue_from_the_items_topic(settings, trained_checkpoint,
                                                                   tiny_scorer_checkpoint):
    settings = settings.model_copy(update={"graph_checkpoint": trained_checkpoint, "catalogue": "ml-100k",
                                           "scorer_checkpoint": tiny_scorer_checkpoint, "replica_id": "r1"})
    builtin_3 = "Four Rooms (1995) (Thriller)"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()

    async def send(key: bytes | None, value: bytes | None) -> None:
        await producer.send_and_wait(settings.topic("items"), value, key=key)

    try:
        service = await prepare_worker(settings)  # creates the topics
        for record in (item("1", "Brand New Title", category="Comedy"), item("2", "first text"),
                       item("2", "second text"), item("3", "replaced, then deleted")):
            await send(record.item_id.encode(), encode(record))
        await send(b"3", None)  # tombstone: item 3 reads its built-in text again
        for key, value, _ in BAD_ITEMS:
            await send(key, value)
        await service.app.start()
        try:
            await wait_for(lambda: service.catalogue.loaded and service.catalogue.dead_letters == len(BAD_ITEMS), 60,
                           "the catalogue")
            text = service.scorer.contexts.text_of
            assert text("1") == "Brand New Title (Comedy)" and text("2") == "second text"
            assert text("3") == builtin_3 and text("unknown-9") == "item unknown-9"
            request = ImpressionRequest(request_id="r", user_id="196", item_ids=["1"], ts=TS)
            assert "Candidate: Brand New Title (Comedy)" in service.scorer.prompt(
                service.scorer.context(request, 0.0, 0.0).inputs[0])
            await send(b"2", encode(item("2", "third text")))  # an update while running
            await wait_for(lambda: text("2") == "third text", 30, "the live update")
        finally:
            await service.app.stop()
            service.store.close()

        again = await prepare_worker(settings)  # a restarted replica: the catalogue is read again from the log
        await again.app.start()
        try:
            await wait_for(lambda: again.catalogue.loaded, 60, "the restarted catalogue")
            await asyncio.sleep(1.0)
            text = again.scorer.contexts.text_of
            assert text("2") == "third text" and text("3") == builtin_3
        finally:
            await again.app.stop()
            again.store.close()
    finally:
        await producer.stop()
    letters = [decode(DeadLetter, r.value) for r in
               await read_topic(settings.kafka_bootstrap, settings.topic("items.dlq"), len(BAD_ITEMS))]
    assert sorted(x.error_class for x in letters) == sorted(kind for *_, kind in BAD_ITEMS)  # once, not per start
