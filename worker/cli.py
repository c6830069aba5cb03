"""``exitrec`` command line: broker, schemas, graph training, replay, the graph updater, the scorer, analytics
and the demo."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from infra.runtime.heap import freeze_long_lived
from infra.runtime.logging import configure_logging
from infra.runtime.settings import Settings, get_settings


def serve(app, settings: Settings) -> None:
    """Run ``app`` under a faust worker until interrupted, keeping the logging :func:`configure_logging` set up:
    by default mode's worker replaces the root handler with its own coloured text format and, at WARNING or
    above, sets the root logger to DEBUG for its terminal spinner, so that every debug call of faust and aiokafka
    builds a log record (~8% of the event loop under load, measured with py-spy)."""
    import faust

    faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True, override_logging=False
                 ).execute_from_commandline()


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level)
    return settings


class Commands(click.Group):
    """Turns a dataset problem (a missing column, too many bad rows, an unknown name) into one line, not a
    traceback."""

    def invoke(self, ctx: click.Context):
        from graph_updater.datasets import DatasetError

        try:
            return super().invoke(ctx)
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None


def dataset_of(dataset: str, csv: Path | None, from_topic: bool = False, until: int | None = None) -> str:
    """The dataset a command works on: a snapshot of this deployment's clicks and items topics (``--from-topic``,
    written under ``<cache>/tenants/``), a tenant's CSV folder, else the built-in name."""
    if from_topic:
        from infra.runtime.app import create_topics
        from worker.snapshot import snapshot

        settings = _settings()
        folder = settings.cache_dir / "tenants" / f"{settings.topic_prefix or 'exitrec.'}topics"
        asyncio.run(create_topics(settings))
        counts = asyncio.run(snapshot(settings, folder, until))
        click.echo(f"snapshot of {settings.topic('clicks')} and {settings.topic('items')}: {counts['clicks']:,} "
                   f"clicks, {counts['items']:,} items ({counts['invalid_clicks']} invalid clicks skipped) -> "
                   f"{folder}", err=True)
        return str(folder)
    return str(csv) if csv is not None else dataset


def from_topic_options(command):
    """``--from-topic`` and ``--until`` for the training commands."""
    command = click.option("--until", type=int, default=None,
                           help="with --from-topic: only clicks with ts <= this epoch-ms time")(command)
    return click.option("--from-topic", is_flag=True,
                        help="train on this deployment's own clicks and items topics (EXITREC_TOPIC_PREFIX), read "
                             "up to their current end, instead of --dataset")(command)


CSV_HELP = ("a tenant's own data instead of --dataset: a folder with clicks.csv (user_id,item_id,label,ts) and "
            "optionally items.csv (item_id,text[,category,brand,price])")


@click.group(cls=Commands)
def main() -> None:
    """exitrec: streaming CTR recommender (Kafka clicks -> LightGCN in Qdrant -> early-exit LM scores)."""


# ---- Kafka ---------------------------------------------------------------------------------------------------
@main.group()
def kafka() -> None:
    """A local single-node Apache Kafka broker (KRaft), resolved from Maven Central."""


DEFAULT_PORT = 9092  # the port EXITREC_KAFKA_BOOTSTRAP defaults to


def _run_dir(settings: Settings) -> Path:
    return settings.cache_dir / "kafka-run"


@kafka.command("fetch")
def kafka_fetch() -> None:
    """Resolve the broker's jars into the cache (needs Maven once)."""
    from infra.kafka import broker

    click.echo(broker.resolve_classpath(quiet=False))


@kafka.command("up")
@click.option("--port", type=int, default=None,
              help="PLAINTEXT listener port on 127.0.0.1 for new storage [default: 9092 when free, else any free "
                   "port]; an existing log keeps its own port")
@click.option("--partitions", default=4, show_default=True, help="default partitions of new topics")
@click.option("--fresh", is_flag=True, help="wipe the broker's log (every topic and record) and format new storage")
def kafka_up(port: int | None, partitions: int, fresh: bool) -> None:
    """Start the local broker on its existing log (or new storage) and print its bootstrap address."""
    from infra.kafka import broker

    try:
        info = broker.start(_run_dir(_settings()), port=port, partitions=partitions, fresh=fresh,
                            preferred_port=DEFAULT_PORT)
    except broker.BrokerError as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    how = "restarted on its existing log" if info.restarted else "started on new storage"
    click.echo(f"Kafka {how} at {info.bootstrap} (pid {info.pid})" + (f"; {info.port_note}" if info.port_note else ""))
    if info.bootstrap != _settings().kafka_bootstrap:
        click.echo(f"the other commands read EXITREC_KAFKA_BOOTSTRAP: export EXITREC_KAFKA_BOOTSTRAP={info.bootstrap}")
    else:
        click.echo(f"the other commands will use it (EXITREC_KAFKA_BOOTSTRAP={info.bootstrap})")


@kafka.command("down")
def kafka_down() -> None:
    """Stop the broker started by ``exitrec kafka up``."""
    from infra.kafka import broker

    click.echo("stopped" if broker.stop(_run_dir(_settings())) else "no broker was running")


@kafka.command("status")
def kafka_status() -> None:
    from infra.kafka import broker

    info = broker.status(_run_dir(_settings()))
    click.echo(f"running at {info.bootstrap} (pid {info.pid})" if info else "not running")


@main.command("topics")
@click.option("--partitioned", is_flag=True, help="also the partitioned updaters' clicks-by-item and node-layers")
def topics(partitioned: bool) -> None:
    """Create the contract topics that are missing (partitions from EXITREC_TOPIC_PARTITIONS)."""
    from infra.runtime.app import create_topics

    created = asyncio.run(create_topics(_settings(), partitioned=partitioned))
    click.echo(f"created: {', '.join(created) if created else 'none (all exist)'}")


# ---- schemas ---------------------------------------------------------------------------------------------------
@main.group()
def schemas() -> None:
    """Message contracts."""


@schemas.command("export")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="folder (default schemas/json)")
def schemas_export(out: Path | None) -> None:
    """Write the JSON Schema of every contract for analytics consumers."""
    from schemas.export import JSON_DIR, export

    for path in export(out or JSON_DIR):
        click.echo(path)


# ---- graph -----------------------------------------------------------------------------------------------------
DATASETS = click.Choice(["ml-100k", "ml-1m", "bookcrossing", "videogames", "beauty"])


@main.command("train-graph")
@click.option("--dataset", type=DATASETS, default="ml-100k", show_default=True)
@click.option("--csv", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help=CSV_HELP)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="checkpoint folder (default <cache>/graph/<dataset>)")
@click.option("--epochs", default=30, show_default=True)
@click.option("--dim", default=64, show_default=True)
@click.option("--layers", default=3, show_default=True)
@click.option("--lr", default=0.01, show_default=True)
@click.option("--batch-size", default=4096, show_default=True)
@click.option("--train-share", default=0.7, show_default=True, help="time-ordered share used as history")
@click.option("--select/--no-select", default=True, show_default=True,
              help="keep the epoch with the best recall@20 on the stream slice (up to 2,000 of its users)")
@from_topic_options
def train_graph(dataset: str, csv: Path | None, out: Path | None, epochs: int, dim: int, layers: int, lr: float,
                batch_size: int, train_share: float, select: bool, from_topic: bool, until: int | None) -> None:
    """Train LightGCN (BPR) on the dataset's training history and save a checkpoint the updater starts from."""
    import numpy as np

    from graph_updater import checkpoint
    from graph_updater.datasets import dataset_key, load, time_split
    from graph_updater.evaluate import ranking_report
    from graph_updater.train import train_offline

    settings = _settings()
    dataset = dataset_of(dataset, csv, from_topic, until)
    split = time_split(load(dataset, settings.data_dir), train=train_share, stream=(1 - train_share) / 2)
    updater = checkpoint.build_updater(split.train, dim, layers, recent_n=settings.payload_recent_items)
    curve: list[float] = []

    def recall_on_stream(graph) -> float:
        curve.append(ranking_report(graph, split.stream, max_users=2000)["recall20_lightgcn"])
        return curve[-1]

    losses = train_offline(updater.graph, epochs=epochs, lr=lr, batch_size=batch_size,
                           validate=recall_on_stream if select else None)
    report = ranking_report(updater.graph, split.stream)
    out = out or settings.cache_dir / "graph" / dataset_key(dataset)
    checkpoint.save(out, updater, split.train, {
        "dataset": dataset, "epochs": epochs, "lr": lr, "batch_size": batch_size, "train_share": train_share,
        "final_loss": losses[-1] if losses else None, "ranking_on_stream": report,
        "selected_epoch": int(np.argmax(curve)) + 1 if curve else None, "recall20_per_epoch": curve})
    click.echo(json.dumps({"checkpoint": str(out), **report}, indent=2))


@main.command("replay")
@click.option("--dataset", type=DATASETS, default="ml-100k", show_default=True)
@click.option("--csv", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help=CSV_HELP)
@click.option("--part", type=click.Choice(["stream", "test", "all"]), default="stream", show_default=True,
              help="which time slice to publish (the updater's checkpoint holds the training slice)")
@click.option("--rate", type=float, default=None, help="clicks per second (default: as fast as possible)")
@click.option("--limit", type=int, default=None, help="publish at most this many clicks")
@click.option("--train-share", default=0.7, show_default=True)
@click.option("--impressions", is_flag=True, help="publish impression requests to `impressions` instead of clicks")
@click.option("--max-candidates", default=1, show_default=True, help="with --impressions: candidates per request")
@click.option("--items", "items", is_flag=True,
              help="publish the dataset's item texts to the compacted `items` topic (the catalogue) instead")
def replay(dataset: str, csv: Path | None, part: str, rate: float | None, limit: int | None, train_share: float,
           impressions: bool, max_candidates: int, items: bool) -> None:
    """Publish a real dataset's rows to ``clicks`` (or as requests to ``impressions``) in time order, or its
    catalogue to ``items``."""
    from graph_updater.datasets import load, time_split
    from graph_updater.events import clicks_of, impressions_of, items_of
    from infra.runtime.app import create_topics
    from worker.replay import publish

    settings = _settings()
    data = load(dataset_of(dataset, csv), settings.data_dir)
    if items:
        asyncio.run(create_topics(settings))
        records = items_of(data)[:limit] if limit else items_of(data)
        sent = asyncio.run(publish(settings.kafka_bootstrap, settings.topic("items"), records, rate))
        click.echo(f"published {sent} items to {settings.topic('items')}")
        return
    split = time_split(data, train=train_share, stream=(1 - train_share) / 2)
    first = {"stream": len(split.train), "test": len(split.train) + len(split.stream), "all": 0}[part]
    rows = {"stream": split.stream, "test": split.test, "all": data}[part]
    rows = rows.take(slice(0, limit)) if limit else rows
    asyncio.run(create_topics(settings))
    topic = settings.topic("impressions" if impressions else "clicks")
    messages = impressions_of(rows, first, max_candidates) if impressions else clicks_of(rows, first)
    sent = asyncio.run(publish(settings.kafka_bootstrap, topic, messages, rate))
    click.echo(f"published {sent} {'requests' if impressions else 'clicks'} to {topic}")


@main.command("graph-updater")
@click.option("--partitioned", is_flag=True,
              help="one of N updaters splitting the click partitions (group <group>.graph-shards; give each its "
                   "own EXITREC_REPLICA_ID): users by clicks partition, items through clicks-by-item")
def graph_updater(partitioned: bool) -> None:
    """Run the click loop (in a faust worker) until interrupted: clicks -> LightGCN fold-in -> vector store."""
    from graph_updater.service import build, rebuild

    settings = _settings()
    if partitioned:
        from graph_updater.partitioned import PartitionCountError, run_shard
        from infra.runtime.monitoring import MetricsPortTaken

        try:
            asyncio.run(run_shard(settings))
        except (PartitionCountError, MetricsPortTaken) as exc:
            raise click.ClickException(str(exc)) from None
        return
    state = asyncio.run(rebuild(settings))
    asyncio.set_event_loop(asyncio.new_event_loop())
    service = build(settings, *state)
    serve(service.app, settings)


def _run_worker(settings: Settings, follow_clicks: bool) -> None:
    from infra.runtime.monitoring import port_free
    from scorer.service import build_worker, rebuild_worker

    if settings.metrics_port and not port_free(settings.metrics_port):
        raise click.ClickException(f"metrics port {settings.metrics_port} is already in use: set "
                                   f"EXITREC_METRICS_PORT to a free port (unset = no endpoint)")

    state = asyncio.run(rebuild_worker(settings, follow_clicks))
    asyncio.set_event_loop(asyncio.new_event_loop())
    service = build_worker(settings, *state)
    freeze_long_lived()  # the model, tokenizer, catalogue and embeddings live as long as the process
    serve(service.app, settings)


@main.command("worker")
def worker() -> None:
    """Run a full replica until interrupted: its own graph updater (embedded store) and the scorer.

    With EXITREC_QDRANT_URL set the store is shared: run one `exitrec graph-updater` and `exitrec scorer` replicas
    instead."""
    from scorer.service import replica_settings

    settings = _settings()
    if settings.qdrant_url:
        raise click.UsageError("with EXITREC_QDRANT_URL set, run `exitrec graph-updater` once and `exitrec scorer` "
                               "per replica (a shared store has one writer)")
    _run_worker(replica_settings(settings), follow_clicks=True)


@main.command("scorer")
def scorer() -> None:
    """Run the impression loop until interrupted, reading the vector store a graph updater writes
    (EXITREC_QDRANT_URL). Replicas share the impressions partitions (group <group>.scorer)."""
    settings = _settings()
    if not settings.qdrant_url:
        click.echo("warning: no EXITREC_QDRANT_URL: an embedded store is private to this process and stays empty; "
                   "every request is scored cold (use `exitrec worker`)", err=True)
    _run_worker(settings, follow_clicks=False)


@main.command("analytics")
@click.option("--from-beginning", is_flag=True, help="read the topics from their start (default: from now)")
@click.option("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
@click.option("--window", type=float, default=10.0, show_default=True, help="window length in seconds")
@click.option("--png", type=click.Path(path_type=Path), default=None, help="save a plot of the windows here")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="save the report here")
def analytics(from_beginning: bool, duration: float | None, window: float, png: Path | None,
              json_out: Path | None) -> None:
    """Join scores with later clicks and report live AUC, exits, latency, degraded and dead-letter counts."""
    from rich.console import Console

    from worker.analytics import plot, report_table, run_analytics

    console = Console(stderr=True)
    report = asyncio.run(run_analytics(_settings(), from_beginning, duration, window, console))
    console.print(report_table(report, "exitrec analytics (final)"))
    if png:
        click.echo(f"plot: {plot(report, png)}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str))
        click.echo(f"report: {json_out}")


# ---- early-exit model ------------------------------------------------------------------------------------------
@main.command("train-model")
@click.option("--dataset", type=DATASETS, default="bookcrossing", show_default=True)
@click.option("--csv", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help=CSV_HELP)
@click.option("--backbone", default="minilm", show_default=True, help="minilm, smollm2 or a local HF model folder")
@click.option("--n-train", default=2000, show_default=True)
@click.option("--n-val", default=500, show_default=True)
@click.option("--max-length", default=128, show_default=True, help="prompt token budget")
@click.option("--head-layers", default=None,
              help="comma-separated layers, 0 = the features-only head before the first block (default per backbone)")
@click.option("--regime", type=click.Choice(["frozen", "full"]), default=None,
              help="frozen: cache the backbone's states, train heads (CPU default); full: fine-tune the backbone too")
@click.option("--epochs", default=1, show_default=True, help="fine-tuning epochs (full regime)")
@click.option("--head-epochs", default=40, show_default=True, help="head epochs (frozen regime; early stopping)")
@click.option("--layer-lr-decay", default=0.8, show_default=True,
              help="depth-aware learning rate (full regime): block l trains at lr * decay**l; 1.0 = off")
@click.option("--retriever", type=click.Choice(["gcn", "text", "none"]), default="gcn", show_default=True,
              help="the EXITREC_RETRIEVER the model will be served with: its prompts and features are trained on")
@click.option("--rule", type=click.Choice(["ratio_trend", "max_prob", "entropy", "patience"]), default="max_prob",
              show_default=True, help="max_prob reads calibrated probabilities at every head, the layer-0 one included "
                                      "(ratio_trend never exits at a first head)")
@click.option("--budget", default=0.002, show_default=True, help="allowed AUC loss of early exit vs full depth")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]), default="auto", show_default=True,
              help="backbone precision at inference; auto = bf16 for the frozen regime on a CPU with AVX512-BF16 "
                   "(same AUC, ~2x requests/s measured), else fp32; int8 = dynamic int8 Linear layers (CPU). Heads, "
                   "calibration and exit rule are fitted on it, the checkpoint records it (model_version +int8)")
@click.option("--graph-token-epochs", default=0, show_default=True,
              help="> 0: add a graph token (the user's and candidate's LightGCN vectors projected into the first "
                   "input embedding) and train it, backbone frozen, for up to this many epochs after the heads (fp32)")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="checkpoint folder (default <cache>/models/early-exit-<dataset>-<backbone>)")
@from_topic_options
def train_model(dataset: str, csv: Path | None, backbone: str, n_train: int, n_val: int, max_length: int,
                head_layers: str | None, regime: str | None, epochs: int, head_epochs: int, layer_lr_decay: float,
                retriever: str, rule: str, budget: float, precision: str, graph_token_epochs: int, out: Path | None,
                from_topic: bool, until: int | None) -> None:
    """Train the early-exit model on prequential RAG prompts and features, calibrate each head's probabilities and
    the exit rule on later validation rows, save a checkpoint."""
    from graph_updater.datasets import dataset_key
    from scorer.experiment import train_checkpoint

    settings = _settings()
    dataset = dataset_of(dataset, csv, from_topic, until)
    layers = [int(x) for x in head_layers.split(",")] if head_layers else None
    out = out or settings.cache_dir / "models" / f"early-exit-{dataset_key(dataset)}-{Path(backbone).name}"
    chosen = train_checkpoint(settings.data_dir, settings.cache_dir, dataset, backbone, out, n_train=n_train,
                              n_val=n_val, max_length=max_length, head_layers=layers, epochs=epochs,
                              head_epochs=head_epochs, rule=rule, budget=budget, regime=regime, precision=precision,
                              decay=layer_lr_decay, retriever=retriever,
                              text_index_users=settings.text_index_users, graph_token_epochs=graph_token_epochs)
    click.echo(json.dumps({"checkpoint": str(out), "rule": chosen.to_dict()}, indent=2))


@main.command("eval-model")
@click.option("--checkpoint", "folder", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--dataset", type=DATASETS, default="bookcrossing", show_default=True)
@click.option("--csv", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help=CSV_HELP)
@click.option("--n-test", default=1000, show_default=True)
def eval_model(folder: Path, dataset: str, csv: Path | None, n_test: int) -> None:
    """AUC, log loss, ECE, exit histogram and requests/s of a checkpoint on the dataset's test slice, beside the
    classical baseline on the same rows."""
    import numpy as np

    from scorer import checkpoint, experiment, quality
    from scorer.exit_rules import ExitRule
    from scorer.features import needs_embeddings

    settings = _settings()
    dataset = dataset_of(dataset, csv)
    model, tokenizer, card, rule = checkpoint.load(folder, settings.cache_dir, experiment.backbones.best_device())
    sets = experiment.sample_sets(dataset, settings.data_dir, settings.cache_dir, 1000, 0, n_test)  # baseline fit
    embeddings = experiment.content_embeddings(settings.cache_dir) if needs_embeddings(card.features) else None
    test = experiment.encode(tokenizer, sets.test, card.max_length, card.prior if card.features else None,
                             embeddings=embeddings, names=card.features, graph_dim=card.graph_dim)
    y = test.labels.numpy()
    rps_full, full = experiment.throughput(model, test, ExitRule())
    rps_exit, exited = experiment.throughput(model, test, rule)
    click.echo(json.dumps({
        "n_test": len(y), "full": quality.report(y, full.ctr), "exit": quality.report(y, exited.ctr),
        "baseline": quality.report(y, sets.baseline_test),
        "mean_exit_layer": float(exited.exit_layer.mean()),
        "exit_histogram": {int(k): int(v) for k, v in zip(*np.unique(exited.exit_layer, return_counts=True),
                                                          strict=True)},
        "rps_full": rps_full, "rps_exit": rps_exit, "speedup": rps_exit / rps_full}, indent=2))


@main.command("embed-catalogue")
@click.option("--dataset", type=DATASETS, default="bookcrossing", show_default=True)
@click.option("--csv", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help=CSV_HELP)
def embed_catalogue(dataset: str, csv: Path | None) -> None:
    """Embed the text of every item the dataset's interactions name, once, into <cache>/embeddings/: a scorer
    whose heads read content-match features starts from it instead of embedding each item on first sight."""
    from scorer.service import embed_catalogue as embed

    click.echo(json.dumps(embed(_settings(), dataset_of(dataset, csv)), indent=2))


@main.command("demo")
@click.option("--dataset", type=DATASETS, default="ml-100k", show_default=True)
@click.option("--rate", type=float, default=2000.0, show_default=True, help="replayed stream clicks per second")
@click.option("--limit", type=int, default=None, help="stream clicks to replay first (default: the whole slice)")
@click.option("--requests", "requests_n", type=int, default=1500, show_default=True,
              help="test rows replayed as impression requests (then as clicks)")
@click.option("--request-rate", type=float, default=10.0, show_default=True, help="impression requests per second")
def demo(dataset: str, rate: float, limit: int | None, requests_n: int, request_rate: float) -> None:
    """Local broker + embedded store: fold in replayed clicks, then score replayed impressions, live."""
    from worker.demo import run_demo

    run_demo(_settings(), dataset, rate, limit, requests_n, request_rate)


if __name__ == "__main__":
    main()
