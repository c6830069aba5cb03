"""The impression loop's batch order, without a broker (the Kafka tests run the whole loop): one inference at a
time in batch order, outputs published in batch order, and a batch's inference overlapping the previous batch's
delivery."""

from __future__ import annotations

import asyncio
import time

from scorer.agent import ImpressionLoop


class TimedScorer:
    """``infer`` sleeps as long as its batch says (a model pass) and records when it starts and ends."""

    def __init__(self, events: list, seconds: dict[str, float], failing: str | None = None) -> None:
        self.events, self.seconds, self.failing = events, seconds, failing

    def infer(self, contexts: list[str]) -> str:
        batch = contexts[0]
        self.events.append(("infer", batch, "start"))
        time.sleep(self.seconds[batch])
        if batch == self.failing:
            raise RuntimeError("a poison batch")
        self.events.append(("infer", batch, "end"))
        return batch


def loop_recording(events: list, delivery_s: float) -> ImpressionLoop:
    """An impression loop whose publishing records its start and end around a delivery wait."""
    loop = ImpressionLoop.__new__(ImpressionLoop)

    async def publish(scorer, requests, contexts, inference) -> None:
        events.append(("publish", inference, "start"))
        await asyncio.sleep(delivery_s)
        events.append(("publish", inference, "end"))

    loop.publish = publish
    return loop


async def two_batches(loop: ImpressionLoop, scorer: TimedScorer) -> None:
    """Batches ``a`` then ``b`` chained as :meth:`ImpressionLoop.process` chains them."""
    a_inferred, b_inferred = asyncio.Event(), asyncio.Event()
    a = asyncio.ensure_future(loop.complete(scorer, [], ["a"], None, None, a_inferred))
    await asyncio.sleep(0)
    b = asyncio.ensure_future(loop.complete(scorer, [], ["b"], a, a_inferred, b_inferred))
    await asyncio.gather(a, b)
    assert a_inferred.is_set() and b_inferred.is_set()


async def test_the_next_batch_infers_during_the_previous_delivery_and_publishes_after_it():
    events: list = []
    await two_batches(loop_recording(events, delivery_s=0.4), TimedScorer(events, {"a": 0.05, "b": 0.05}))
    assert events == [("infer", "a", "start"), ("infer", "a", "end"), ("publish", "a", "start"),
                      ("infer", "b", "start"), ("infer", "b", "end"), ("publish", "a", "end"),
                      ("publish", "b", "start"), ("publish", "b", "end")]


async def test_a_batch_whose_inference_fails_does_not_hold_up_the_next():
    """Batch ``a`` raises in the model: it goes to the one-by-one path (no requests here, so nothing is sent),
    and ``b`` still infers and publishes."""
    events: list = []
    await two_batches(loop_recording(events, delivery_s=0.05),
                      TimedScorer(events, {"a": 0.05, "b": 0.05}, failing="a"))
    assert events == [("infer", "a", "start"), ("infer", "b", "start"), ("infer", "b", "end"),
                      ("publish", "b", "start"), ("publish", "b", "end")]
