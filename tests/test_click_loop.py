"""The click loop around the graph updater (no broker: the records are built here; the broker path is covered by
tests/test_graph_updater_kafka.py): a BPR refinement runs beside the loop, never in its way, and does not hold up
a stopping process."""

import asyncio
import threading
import time

import numpy as np
import pytest
from aiokafka import ConsumerRecord

from graph_updater import agent, checkpoint, train
from graph_updater.agent import ClickLoop, UpdaterStats
from graph_updater.graph import USER
from graph_updater.store import embedded_copy
from graph_updater.train import RefinementCancelled, run_refinement, train_offline
from infra.runtime.settings import Settings
from schemas.codec import encode
from tests.test_online import click, history


def records(clicks) -> list[ConsumerRecord]:
    return [ConsumerRecord("clicks", 0, k, 0, 0, c.user_id.encode(), encode(c), None, 0, 0, ())
            for k, c in enumerate(clicks)]


async def test_the_loop_keeps_applying_clicks_while_a_refinement_runs(monkeypatch):
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    train_offline(updater.graph, epochs=2, batch_size=64)
    gate = threading.Event()

    def held(job, steps, min_change, cancelled):  # the refinement, held until the test lets it finish
        gate.wait(30)
        return run_refinement(job, steps, min_change, lr=0.05, batch_size=64, cancelled=cancelled)

    monkeypatch.setattr(agent, "run_refinement", held)
    store, stats = embedded_copy(updater), UpdaterStats()
    loop = ClickLoop(None, updater, store, Settings(refine_every_clicks=20, refine_steps=3), stats)
    try:
        await asyncio.wait_for(loop.process(records(click(f"a{k}", f"u{k}", f"i{(k * 7) % 25}")
                                                    for k in range(20))), 10)
        assert loop.refinement is not None  # due after 20 clicks: started, not awaited
        await asyncio.wait_for(loop.process(records(click(f"b{k}", f"late{k}", f"i{k}") for k in range(5))), 10)
        assert stats.clicks == 25 and stats.refinements == 0
        late = store.get(USER, "late0")
        assert late is not None and late[1]["n_liked"] == 1  # written while the steps were still held

        gate.set()
        job, running = loop.refinement
        await asyncio.wait_for(running, 30)
        await loop.process(records([click("c0", "late0", "i9")]))  # the next batch adopts the result
        assert stats.refinements == 1 and loop.refinement is None
        learned = np.flatnonzero(job.learned)
        assert np.abs(updater.graph.base()[learned] - job.base[learned]).max() > 0  # the refined base adopted
        for kind, external_id in [(USER, "u3"), (USER, "late0")]:
            v = updater.graph.node(kind, external_id)
            want = updater.graph.final(np.array([v]))[0]
            np.testing.assert_allclose(store.get(kind, external_id)[0], want / np.linalg.norm(want),
                                       rtol=1e-4, atol=1e-5)
    finally:
        gate.set()
        store.close()


async def test_a_stopping_loop_does_not_wait_for_the_refinement_steps(monkeypatch):
    """When the loop ends (the process stops), a refinement in flight stops at its next BPR step instead of
    running its remaining steps: nothing would adopt it, and a stopping process waits for its worker threads."""
    updater = checkpoint.build_updater(history(), dim=8, num_layers=2)
    train_offline(updater.graph, epochs=2, batch_size=64)
    real_step = train._bpr_step

    def slow_step(*args):  # 1,000 steps of 50 ms: 50 s unless cancelled
        time.sleep(0.05)
        return real_step(*args)

    monkeypatch.setattr(train, "_bpr_step", slow_step)
    store = embedded_copy(updater)
    loop = ClickLoop(None, updater, store, Settings(refine_every_clicks=20, refine_steps=1000), UpdaterStats())

    async def consume_then_stop(settings, topic, group, size, wait_ms, process, kind, metrics=None,
                                max_batch_size=None):
        await process(records(click(f"a{k}", f"u{k}", f"i{(k * 7) % 25}") for k in range(20)))
        raise asyncio.CancelledError  # what stopping the app does to the loop's task

    monkeypatch.setattr(agent, "run_batches", consume_then_stop)
    try:
        with pytest.raises(asyncio.CancelledError):
            await loop.run()
        assert loop.stopping.is_set() and loop.refinement is not None
        started = time.perf_counter()
        with pytest.raises(RefinementCancelled):
            await asyncio.wait_for(loop.refinement[1], 10)
        assert time.perf_counter() - started < 5
    finally:
        store.close()
