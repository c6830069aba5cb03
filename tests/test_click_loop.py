"""The click loop around the graph updater (no broker: the records are built here; the broker path is covered by
tests/test_graph_updater_kafka.py): a BPR refinement runs beside the loop, never in its way."""

import asyncio
import threading

import numpy as np
from aiokafka import ConsumerRecord

from graph_updater import agent, checkpoint
from graph_updater.agent import ClickLoop, UpdaterStats
from graph_updater.graph import USER
from graph_updater.store import embedded_copy
from graph_updater.train import run_refinement, train_offline
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

    def held(job, steps, min_change):  # the refinement, held until the test lets it finish
        gate.wait(30)
        return run_refinement(job, steps, min_change, lr=0.05, batch_size=64)

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
