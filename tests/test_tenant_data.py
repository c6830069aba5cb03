"""A tenant's own data: CSV loading with clear errors, and the newcomer's path from an empty broker to a served,
tenant-trained model (a generated dataset, not one of the built-ins)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from graph_updater.datasets import MIN_TENANT_ROWS, DatasetError, dataset_key, load, time_split


def write_tenant(folder, n_users: int = 120, n_items: int = 60, n_clicks: int = 3000, seed: int = 0,
                 extra_lines: tuple[str, ...] = ()) -> None:
    """Clicks from latent tastes (label = Bernoulli(sigmoid(3 u.i))), epoch seconds, and an item catalogue."""
    rng = np.random.default_rng(seed)
    u, i = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,label,ts"]
    for k in range(n_clicks):
        a, b = rng.integers(n_users), rng.integers(n_items)
        label = int(rng.random() < 1 / (1 + np.exp(-3 * u[a] @ i[b] / 4)))
        lines.append(f"shopper-{a},sku-{b},{label},{1_600_000_000 + 60 * k}")
    (folder / "clicks.csv").write_text("\n".join(lines + list(extra_lines)) + "\n")
    kinds = ["kettle", "lamp", "chair", "mug", "rug", "clock"]
    (folder / "items.csv").write_text("item_id,text,category,price\n" + "\n".join(
        f"sku-{b},{kinds[b % 6]} model {b},{'kitchen' if b % 2 else 'living room'},{5 + b}" for b in range(n_items))
        + "\n")


def test_a_tenant_folder_loads_sorted_with_times_in_ms_and_its_catalogue(tmp_path):
    write_tenant(tmp_path / "shop", n_clicks=600)
    data = load(str(tmp_path / "shop"), tmp_path)
    assert len(data) == 600 and data.ts[0] == 1_600_000_000_000 and (np.diff(data.ts) >= 0).all()
    assert data.item_text["sku-3"] == "mug model 3 (kitchen; 8)"
    assert data.name == dataset_key(str(tmp_path / "shop")) and data.name.startswith("csv-shop-")
    assert len(time_split(data).test) > 0


def test_bad_rows_are_named_by_line_and_skipped_below_one_percent_and_refused_above(tmp_path):
    write_tenant(tmp_path / "few-bad", n_clicks=1000, extra_lines=("shopper-1,sku-1,yes,1600000000",))
    with pytest.warns(UserWarning, match=r"skipped 1 bad row\(s\): line 1002: label 'yes' is not 0 or 1"):
        assert len(load(str(tmp_path / "few-bad"), tmp_path)) == 1000
    bad = tuple(f"shopper 1,sku-1,1,{1600000000 + k}" for k in range(20))  # a space is not allowed in an id
    write_tenant(tmp_path / "many-bad", n_clicks=1000, extra_lines=bad)
    with pytest.raises(DatasetError, match=r"20 of 1020 rows are bad \(more than 1%\); first: line 1002: user_id"):
        load(str(tmp_path / "many-bad"), tmp_path)


def test_a_missing_column_or_too_little_data_is_a_clear_error(tmp_path):
    (tmp_path / "no-label").mkdir()
    (tmp_path / "no-label" / "clicks.csv").write_text("user_id,item_id,ts\nu1,i1,1600000000\n")
    with pytest.raises(DatasetError, match="missing column\\(s\\) label; the header must name user_id, item_id, "
                                           "label, ts"):
        load(str(tmp_path / "no-label"), tmp_path)
    write_tenant(tmp_path / "tiny", n_clicks=MIN_TENANT_ROWS - 1)
    with pytest.raises(DatasetError, match=f"{MIN_TENANT_ROWS - 1} usable rows; at least {MIN_TENANT_ROWS}"):
        load(str(tmp_path / "tiny"), tmp_path)


@pytest.mark.integration
async def test_from_an_empty_broker_to_a_served_tenant_trained_model(settings, tmp_path, monkeypatch):
    """The README's newcomer path, command by command, on the real broker and the real MiniLM."""
    from click.testing import CliRunner
    from kafka_io import read_topic, wait_for

    from graph_updater.events import impressions_of
    from infra.runtime import settings as settings_module
    from schemas.codec import decode
    from schemas.messages import CtrScore
    from scorer.service import prepare_worker
    from worker.cli import main
    from worker.replay import publish

    shop = tmp_path / "shop"
    write_tenant(shop)
    for key, value in settings.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EXITREC_LOG_LEVEL", "WARNING")
    settings_module.get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    def step(*args: str):  # the commands run their own event loops: each in a thread, as from a shell
        return asyncio.to_thread(run, *args)

    try:
        await step("replay", "--csv", str(shop), "--items")
        graph = json.loads(await step("train-graph", "--csv", str(shop), "--epochs", "5", "--dim", "32"))
        model = json.loads(await step("train-model", "--csv", str(shop), "--n-train", "240", "--n-val", "120",
                                      "--max-length", "96", "--head-layers", "0,2,4"))
        await step("replay", "--csv", str(shop), "--part", "stream")
    finally:
        settings_module.get_settings.cache_clear()
    key, graph, model = dataset_key(str(shop)), graph["checkpoint"], model["checkpoint"]
    assert graph.endswith(f"graph/{key}") and model.endswith(f"models/early-exit-{key}-minilm")
    assert json.loads((tmp_path / "cache" / "graph" / key / "config.json").read_text())["dataset"] == str(shop)

    served = settings.model_copy(update={"graph_checkpoint": graph, "scorer_checkpoint": model, "replica_id": "r1"})
    service = await prepare_worker(served)  # catalogue: the items topic alone (EXITREC_CATALOGUE unset)
    data = load(str(shop), tmp_path)
    split = time_split(data)
    requests = impressions_of(split.test.take(slice(0, 60)), len(split.train) + len(split.stream), 2)
    await service.app.start()
    try:
        await wait_for(lambda: service.catalogue.loaded and service.replayed + service.updater_stats.clicks
                       >= len(split.stream), 120, "the catalogue and the stream clicks")
        await publish(served.kafka_bootstrap, served.topic("impressions"), requests, progress=False)
        n = sum(len(r.item_ids) for r in requests)
        scores = [decode(CtrScore, r.value) for r in
                  await read_topic(served.kafka_bootstrap, served.topic("ctr-scores"), n, 120)]
        prompt = service.scorer.prompt(service.scorer.context(requests[0], 0.0, 0.0).inputs[0])
    finally:
        await service.app.stop()
        service.store.close()
    assert len(scores) == n and {s.model_version for s in scores} == {service.scorer.model_version}
    version = service.scorer.model_version  # bf16 where this CPU has native bf16 (train-model's auto precision)
    assert re.search(r"@0-2-4\+f19(\+bf16|\+int8)?#[0-9a-f]{8}\+", version), version
    assert f"Candidate: {data.item_text[requests[0].item_ids[0]]}" in prompt and "model " in prompt


@pytest.mark.integration
async def test_a_snapshot_of_the_topics_is_the_same_dataset_as_the_csv(settings, tmp_path, monkeypatch):
    """--from-topic: the clicks and items topics become the CSV folder the --csv path reads, up to --until."""
    from aiokafka import AIOKafkaProducer
    from click.testing import CliRunner

    from graph_updater.events import clicks_of, items_of
    from infra.runtime import settings as settings_module
    from infra.runtime.app import create_topics
    from worker.cli import main
    from worker.replay import publish
    from worker.snapshot import snapshot

    shop = tmp_path / "shop"
    write_tenant(shop, n_clicks=800)
    data = load(str(shop), tmp_path)
    await create_topics(settings)
    await publish(settings.kafka_bootstrap, settings.topic("clicks"), clicks_of(data), progress=False)
    await publish(settings.kafka_bootstrap, settings.topic("items"), items_of(data), progress=False)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    await producer.send_and_wait(settings.topic("clicks"), b"{broken", key=b"shopper-1")  # dead-lettered once
    await producer.stop()

    counts = await snapshot(settings, tmp_path / "snap", until_ms=int(data.ts[399]))
    assert counts["clicks"] == int((data.ts <= data.ts[399]).sum()) and counts["invalid_clicks"] == 1
    whole = await snapshot(settings, tmp_path / "whole")
    again = load(whole["folder"], tmp_path)
    assert len(again) == len(data) and again.item_text == data.item_text
    rows = sorted(zip(again.users, again.items, again.ts, strict=True))
    assert rows == sorted(zip(data.users, data.items, data.ts, strict=True))

    for key, value in settings.environment().items():
        monkeypatch.setenv(key, value)
    settings_module.get_settings.cache_clear()
    try:
        result = await asyncio.to_thread(CliRunner().invoke, main, ["train-graph", "--from-topic", "--epochs", "2",
                                                                    "--dim", "16"], catch_exceptions=False)
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    config = json.loads((Path(json.loads(result.stdout)["checkpoint"]) / "config.json").read_text())
    assert config["dataset"].endswith(f"{settings.topic_prefix}topics")


def test_training_twice_on_the_same_tenant_data_gives_the_same_checkpoint(tmp_path, monkeypatch):
    """Same data, same seed: train-graph and train-model write the same checkpoints in two fresh caches (graph
    files and heads byte for byte; the model's digest, which leaves out the wall time it records, equal). Before:
    the digest covered that wall time, so every retraining looked like a new model."""
    from click.testing import CliRunner

    from infra.runtime import settings as settings_module
    from scorer.checkpoint import HEADS, content_digest
    from worker.cli import main

    shop = tmp_path / "shop"
    write_tenant(shop)
    monkeypatch.setenv("EXITREC_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("EXITREC_CATALOGUE", raising=False)
    runs = []
    for name in ("first", "second"):
        monkeypatch.setenv("EXITREC_CACHE_DIR", str(tmp_path / name))
        settings_module.get_settings.cache_clear()
        try:
            for args in (["train-graph", "--csv", str(shop), "--epochs", "3", "--dim", "32"],
                         ["train-model", "--csv", str(shop), "--n-train", "240", "--n-val", "120", "--max-length",
                          "64", "--head-layers", "0,2"]):
                result = CliRunner().invoke(main, args, catch_exceptions=False)
                assert result.exit_code == 0, result.output
        finally:
            settings_module.get_settings.cache_clear()
        runs.append((Path(json.loads(result.stdout)["checkpoint"]), tmp_path / name / "graph" / dataset_key(str(shop))))
    (model_a, graph_a), (model_b, graph_b) = runs
    assert model_a != model_b and content_digest(model_a) == content_digest(model_b)
    assert (model_a / HEADS).read_bytes() == (model_b / HEADS).read_bytes()
    graph_files = sorted(p.name for p in graph_a.iterdir() if p.is_file())
    assert graph_files and all((graph_a / f).read_bytes() == (graph_b / f).read_bytes() for f in graph_files)
