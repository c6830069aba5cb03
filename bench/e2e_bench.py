"""End to end on the real broker, four scorer configurations in one run -> ``bench/results/e2e_<dataset>.json``

    python -m bench.e2e_bench --dataset ml-100k [--accuracy 2000 --capacity 600 --paced 300 --rate 10]

Per configuration a fresh ``exitrec worker`` process (graph updater + scorer, embedded qdrant-edge store) starts
from the dataset's LightGCN checkpoint (first 70% of the timeline), folds in the stream slice's clicks (next
15%), answers a few warm-up requests, and then the same test-slice rows are replayed (:mod:`worker.prequential`,
one candidate per request, each row's click published after its answer) in three phases:

1. **accuracy**: the first ``--accuracy`` rows, strictly prequential (waves of distinct users; a wave waits
   until the updater has committed the previous wave's clicks) -> AUC from the analytics join
   (:class:`~worker.metrics.ScoreJoin`: scores joined with the later clicks), and the paired difference with the
   classical baseline on exactly those rows: ``auc_minus_baseline`` and its 95% paired-bootstrap interval
   ``auc_minus_baseline_ci95`` (:func:`scorer.quality.auc_difference_interval`; a few hundred rows move an
   AUC by ±0.03, the paired difference far less);
2. **capacity**: the next ``--capacity`` rows' requests at once -> requests/s (answered / first send -> last
   answer);
3. **paced**: the next ``--paced`` requests at ``--rate``/s -> impression -> score latency p50 / p99;
4. ``gcn_exit`` only: the next ``--high-paced`` requests at ``--high-rate``/s -> ``p99_ms_at_<rate>rps``.

With ``--reference-checkpoint`` (the fp32 model of a bf16 checkpoint) ``gcn_exit`` runs again with it:
``auc_fp32`` / ``rps_fp32`` on the same rows. Mean exit layer and retrieval time come from the telemetry of the
first three phases. Then **SLO mode**
(``slo_mode``, :func:`run_slo`): a ``gcn_exit`` worker with ``EXITREC_LATENCY_SLO_MS`` offered twice the
capacity ``gcn_exit`` just measured, for a minute (or the rows there are): p99, answered/sent, and the AUC it
paid; and again (``slo_mode_at_high_rate``) with ``--slo-high-ms`` (50) at ``--high-rate`` (150/s), the latency
aim of phase 4, from the same state on the same rows. Configurations:
``norag_full`` (no neighbour retrieval, the user's own history and rate stay; full depth), ``gcn_full``
(LightGCN retrieval, full depth), ``gcn_exit`` (LightGCN retrieval, calibrated early exit), ``textret_exit``
(MiniLM embeddings of users' histories searched in the same kind of store, early exit). The retrieval budget is
generous (1 s) so that AUC compares retrievers rather than budgets; retrieval time is reported beside it.
``offline_auc_*``: the same checkpoint on the same rows with the training-time (static) vectors and no
streaming, the freshness ablation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from bench.machine import machine
from graph_updater.agent import updater_group
from graph_updater.datasets import load, time_split
from graph_updater.events import clicks_of, impressions_of
from graph_updater.recovery import committed_offsets
from infra.kafka import broker
from infra.runtime.app import create_topics
from infra.runtime.heap import freeze_long_lived
from infra.runtime.logging import configure_logging
from infra.runtime.settings import REPO_ROOT, Settings
from scorer import quality
from scorer.service import catalogue_embeddings_ready
from worker.analytics import TopicReader, follow
from worker.demo import ensure_checkpoint, ensure_model
from worker.metrics import ScoreJoin, percentile
from worker.prequential import PrequentialRun, clicks_by_request, run_prequential, run_waves
from worker.replay import publish

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "norag_full": {"retriever": "none", "exit_rule": "never"},
    "gcn_full": {"retriever": "gcn", "exit_rule": "never"},
    "gcn_exit": {"retriever": "gcn", "exit_rule": "calibrated"},
    "textret_exit": {"retriever": "text", "exit_rule": "calibrated"},
}


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    """``exitrec worker`` for ``settings`` in its own process group, its log appended to ``log_path`` (a restarted
    replica keeps writing the same log)."""
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], cwd=REPO_ROOT,
                            env={**os.environ, **settings.environment()}, stdout=subprocess.DEVNULL,
                            stderr=log_path.open("ab"), start_new_session=True)


async def wait_caught_up(settings: Settings, worker: subprocess.Popen, clicks: int, log_path: Path,
                         timeout_s: float = 900) -> float:
    """Seconds until the worker's graph updater committed every warm-up click."""
    started = time.monotonic()
    while True:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited: {log_path.read_text()[-3000:]}")
        done = sum((await committed_offsets(settings.kafka_bootstrap, updater_group(settings),
                                            settings.topic("clicks"))).values())
        if done >= clicks:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"updater committed {done} of {clicks} clicks in {timeout_s}s")
        await asyncio.sleep(1.0)


def waits(run: PrequentialRun) -> dict[str, float]:
    """Where a phase's requests waited, p50 and p99 of each part as the telemetry reports it: ``queue`` (record
    timestamp -> taken by the loop), ``retrieval``, ``inference`` (its micro-batch's), and ``other``: the latency
    less those three (waiting for the previous batch's inference, building and sending the outputs)."""
    other = np.array(run.latency_ms) - np.array(run.queue_ms) - np.array(run.retrieval_ms) - np.array(run.inference_ms)
    parts = {"queue": run.queue_ms, "retrieval": run.retrieval_ms, "inference": run.inference_ms,
             "other": other.tolist()}
    return {f"{part}_p{q}": percentile(values, q) for part, values in parts.items() for q in (50, 99)}


def summary(accuracy: PrequentialRun, capacity: PrequentialRun, paced: PrequentialRun, joined: dict) -> dict:
    runs = (accuracy, capacity, paced)
    layers = [x for r in runs for x in r.exit_layers]
    return {
        "rps": capacity.rps, "p50_ms": percentile(paced.latency_ms, 50), "p99_ms": percentile(paced.latency_ms, 99),
        "auc": joined["auc"], "logloss": joined["logloss"], "ece": joined["ece"], "ctr_ratio": joined["ctr_ratio"],
        "joined": joined["joined"],
        "retrieval_p50_ms": percentile([x for r in runs for x in r.retrieval_ms], 50),
        "mean_exit_layer": float(np.mean(layers)),
        "exit_histogram": {int(k): int(v) for k, v in zip(*np.unique(layers, return_counts=True), strict=True)},
        "degraded_in_accuracy_phase": joined["degraded"], "answered": sum(r.answered for r in runs),
        "duplicates": sum(r.duplicates for r in runs), "paced_rps": paced.rps,
        "paced_queue_p50_ms": percentile(paced.queue_ms, 50),
        "paced_inference_p50_ms": percentile(paced.inference_ms, 50),
        "paced_p90_ms": percentile(paced.latency_ms, 90),
        "capacity_p50_ms": percentile(capacity.latency_ms, 50), "capacity_p99_ms": percentile(capacity.latency_ms, 99),
        "accuracy_phase_s": (accuracy.last_answer_ms - accuracy.first_sent_ms) / 1000.0,
    }


@contextlib.asynccontextmanager
async def warm_worker(settings: Settings, split, work: Path, tag: str) -> AsyncIterator[float]:
    """A fresh ``exitrec worker`` for ``settings`` that has folded in the stream slice's clicks and answered 32
    warm-up requests; yields the catch-up seconds, and stops the process on exit."""
    await create_topics(settings)
    warm = clicks_of(split.stream, first_row=len(split.train))
    await publish(settings.kafka_bootstrap, settings.topic("clicks"), warm, progress=False)
    log_path = work / f"{tag}.log"
    worker = start_worker(settings, log_path)
    try:
        catch_up_s = await wait_caught_up(settings, worker, len(warm), log_path)
        warmups = [r.model_copy(update={"request_id": f"warmup-{k}"})
                   for k, r in enumerate(impressions_of(split.stream.take(slice(0, 32))))]
        await run_prequential(settings, warmups, {}, None, timeout_s=300)
        yield catch_up_s
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


class RowJoin(ScoreJoin):
    """The analytics join that also keeps each (user, item)'s first served ``ctr``: the worker's score of a row,
    for the paired comparison with the baseline on the same rows."""

    def __init__(self) -> None:
        super().__init__()
        self.ctr_of: dict[tuple[str, str], float] = {}

    def score(self, score, ts: int) -> None:
        self.ctr_of.setdefault((score.user_id, score.item_id), score.ctr)
        super().score(score, ts)


def versus_baseline(rows, served: dict[tuple[str, str], float], baseline: np.ndarray) -> dict:
    """The served scores of table ``rows`` against the baseline's (same order): ``AUC(served) - AUC(baseline)`` on
    the rows the worker answered, and its 95% paired-bootstrap interval."""
    keys = list(zip(rows.users, rows.items, strict=True))
    answered = np.array([k in served for k in keys])
    ctr = np.array([served.get(k, np.nan) for k in keys])[answered]
    y, base = rows.labels[answered], baseline[answered]
    low, high = quality.auc_difference_interval(y, ctr, base)
    return {"auc_minus_baseline": quality.auc(y, ctr) - quality.auc(y, base),
            "auc_minus_baseline_ci95": [low, high], "rows_versus_baseline": int(answered.sum())}


@contextlib.asynccontextmanager
async def joining(settings: Settings) -> AsyncIterator[RowJoin]:
    """The analytics join of scores with later clicks while the block runs (plus 3 s for the last clicks)."""
    join, stop = RowJoin(), asyncio.Event()
    reader = asyncio.create_task(follow(settings, TopicReader(settings, join), True, stop))
    try:
        yield join
        await asyncio.sleep(3.0)  # the last clicks reach the join
    finally:
        stop.set()
        await reader


async def run_config(name: str, base: Settings, split, args, work: Path, baseline: np.ndarray) -> dict:
    """One configuration's phases; ``baseline``: the classical baseline's probabilities of the accuracy rows."""
    tag = f"e2e-{args.dataset}-{name}-{int(time.time())}"
    settings = base.model_copy(update={"topic_prefix": f"{tag}.", "consumer_group": tag, **CONFIGS[name]})
    first = len(split.train) + len(split.stream)

    def phase_rows(start: int, n: int):
        rows = split.test.take(slice(start, start + n))
        requests = impressions_of(rows, first_row=first + start)
        return requests, clicks_by_request(requests, clicks_of(rows, first_row=first + start))

    async with warm_worker(settings, split, work, tag) as catch_up_s:
        async with joining(settings) as join:
            requests, answers = phase_rows(0, args.accuracy)
            accuracy = await run_waves(settings, requests, answers, updater_group(settings), len(split.stream))
        joined = join.report()["total"]
        paired = versus_baseline(split.test.take(slice(0, args.accuracy)), join.ctr_of, baseline)
        print(f"  {name}: accuracy phase AUC {joined['auc']:.3f} over {joined['joined']} clicks, "
              f"{paired['auc_minus_baseline']:+.3f} vs the baseline (95%: {paired['auc_minus_baseline_ci95'][0]:+.3f}"
              f" .. {paired['auc_minus_baseline_ci95'][1]:+.3f})", flush=True)
        phases = [accuracy]
        for start, n, rate in ((args.accuracy, args.capacity, None),
                               (args.accuracy + args.capacity, args.paced, args.rate)):
            requests, answers = phase_rows(start, n)
            await asyncio.sleep(3.0)  # the previous phase's clicks are folded in before this one starts
            phases.append(await run_prequential(settings, requests, answers, rate, timeout_s=1800))
            print(f"  {name}: phase {'capacity' if rate is None else 'paced'} {phases[-1].answered} answered, "
                  f"{phases[-1].rps:.1f} rps, p99 {percentile(phases[-1].latency_ms, 99):.0f} ms", flush=True)
        high = {}
        if name == "gcn_exit" and args.high_paced:
            requests, answers = phase_rows(args.accuracy + args.capacity + args.paced, args.high_paced)
            await asyncio.sleep(3.0)
            run = await run_prequential(settings, requests, answers, args.high_rate, timeout_s=1800)
            at = f"at_{args.high_rate:g}rps"
            high = {f"p50_ms_{at}": percentile(run.latency_ms, 50), f"p99_ms_{at}": percentile(run.latency_ms, 99),
                    f"answered_rps_{at}": run.rps, f"mean_exit_layer_{at}": float(np.mean(run.exit_layers)),
                    **{f"{part}_ms_{at}": ms for part, ms in waits(run).items()}}
            print(f"  {name}: {args.high_rate:g}/s offered: p99 {high[f'p99_ms_{at}']:.0f} ms", flush=True)
    return {**CONFIGS[name], **summary(*phases, joined), **paired, "catch_up_s": catch_up_s, **high}


async def run_slo(base: Settings, data, split, args, work: Path, capacity_rps: float, slo_ms: float,
                  rate: float) -> dict:
    """SLO mode: a ``gcn_exit`` worker with ``EXITREC_LATENCY_SLO_MS = slo_ms`` offered ``rate`` requests/s for
    ``--slo-seconds``, on test rows after the other phases' (each row's click published after its answer; every
    SLO phase starts from the same warm state on the same first rows). Latency (and where it was spent:
    :func:`waits`), answered/sent, the share flagged ``slo``, and the AUC of exactly those answers (the analytics
    join), beside the baseline's on the same rows."""
    tag = f"e2e-{args.dataset}-slo-{int(time.time())}"
    settings = base.model_copy(update={"topic_prefix": f"{tag}.", "consumer_group": tag, **CONFIGS["gcn_exit"],
                                       "latency_slo_ms": slo_ms})
    first = len(split.train) + len(split.stream)
    start = args.accuracy + args.capacity + args.paced + args.high_paced
    rows = split.test.take(slice(start, start + int(rate * args.slo_seconds)))
    requests = impressions_of(rows, first_row=first + start)
    async with warm_worker(settings, split, work, tag), joining(settings) as join:
        run = await run_prequential(settings, requests, clicks_by_request(requests, clicks_of(rows, first + start)),
                                    rate, timeout_s=args.slo_seconds + 600)
    joined = join.report()["total"]
    baseline = baseline_scores(data, split, first + start, len(rows))
    print(f"  slo {slo_ms:g} ms: {run.answered}/{len(requests)} answered at {rate:.0f}/s offered, p99 "
          f"{percentile(run.latency_ms, 99):.0f} ms, AUC {joined['auc']:.3f}", flush=True)
    return {"slo_ms": slo_ms, "offered_rps": rate, "capacity_rps_gcn_exit": capacity_rps,
            "seconds": len(requests) / rate, "sent": len(requests), "answered": run.answered,
            "p50_ms": percentile(run.latency_ms, 50), "p99_ms": percentile(run.latency_ms, 99),
            "answered_rps": run.rps, "auc": joined["auc"], "logloss": joined["logloss"], "joined": joined["joined"],
            "slo_flagged": joined["degraded"].get("slo", 0), "mean_exit_layer": float(np.mean(run.exit_layers)),
            **{f"{part}_ms": ms for part, ms in waits(run).items()},
            "baseline_auc_same_rows": quality.auc(split.test.labels[start:start + len(rows)], baseline),
            **versus_baseline(rows, join.ctr_of, baseline)}


def baseline_scores(data, split, first_row: int, n_rows: int) -> np.ndarray:
    """The classical baseline's probabilities of table rows ``first_row ..`` (fitted on the stream slice)."""
    from sklearn.linear_model import LogisticRegression

    from scorer import experiment

    prior = float(split.train.labels.mean())
    history = np.arange(len(split.train), len(split.train) + len(split.stream))
    rows = np.arange(first_row, first_row + n_rows)
    lr = LogisticRegression().fit(experiment.baseline_features(data, history, prior), data.labels[history])
    return lr.predict_proba(experiment.baseline_features(data, rows, prior))[:, 1]


def offline_auc(base: Settings, data, split, n_rows: int) -> dict:
    """AUC of the checkpoint on the same test rows, prompts built with the training-time (static) vectors."""
    from scorer import checkpoint, experiment
    from scorer.exit_rules import ExitRule
    from scorer.features import needs_embeddings
    from scorer.quality import auc
    from scorer.samples import build_samples

    first = len(split.train) + len(split.stream)
    rows = np.arange(first, first + n_rows)
    vector_of = experiment.static_vectors(experiment.graph_state(data.name, split.train, base.cache_dir))
    samples = build_samples(data, rows, vector_of)
    model, tokenizer, card, rule = checkpoint.load(base.scorer_checkpoint, base.cache_dir)
    embeddings = experiment.content_embeddings(base.cache_dir) if needs_embeddings(card.features) else None
    y = np.array([s.label for s in samples])
    out = {}
    for neighbours in (True, False):
        enc = experiment.encode(tokenizer, samples, card.max_length, card.prior if card.features else None,
                                "default" if neighbours else "norag", embeddings, card.features, card.graph_dim)
        for label, r in (("full", ExitRule()), ("exit", rule)):
            _, result = experiment.throughput(model, enc, r)
            out[f"offline_auc_{'gcn' if neighbours else 'norag'}_{label}"] = auc(y, result.ctr)
    return out


def plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CONFIGS if n in result["configs"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in zip(axes, ("rps", "p99_ms", "auc"), ("requests/s (capacity)",
                                                                  f"p99 latency at {result['rate']}/s (ms)",
                                                                  "AUC (joined with clicks)"), strict=True):
        ax.bar(names, [result["configs"][n][key] for n in names], color=["C0", "C1", "C2", "C3"][:len(names)])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    axes[2].set_ylim(0.5, max(0.8, max(result["configs"][n]["auc"] for n in names) + 0.02))
    fig.suptitle(f"exitrec end to end on {result['dataset']} (real Kafka, {result['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


async def main_async(args) -> dict:
    base = Settings(log_level="WARNING")
    configure_logging("WARNING")
    data = load(args.dataset, base.data_dir)
    split = time_split(data)
    base = base.model_copy(update={
        "graph_checkpoint": ensure_checkpoint(base, args.dataset),
        "scorer_checkpoint": args.checkpoint or benchmarked_model(base, args.dataset), "catalogue": args.dataset,
        "replica_id": "bench",
        "text_index_users": args.text_index_users, "retrieval_budget_ms": args.retrieval_budget_ms})
    work = base.cache_dir / "bench" / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    embedded = catalogue_embeddings_ready(base, args.dataset)  # no request pays a first-sight text embedding
    if args.reference_checkpoint:
        catalogue_embeddings_ready(base.model_copy(update={"scorer_checkpoint": args.reference_checkpoint}),
                                   args.dataset)
    info = broker.start(work / "kafka")
    base = base.model_copy(update={"kafka_bootstrap": info.bootstrap})
    configs = {}
    baseline = baseline_scores(data, split, len(split.train) + len(split.stream), args.accuracy)
    freeze_long_lived()  # the dataset's objects: otherwise the load generator's full collections pause its pacing
    try:
        for name in args.configs.split(","):
            print(f"{name} ...", flush=True)
            configs[name] = await run_config(name, base, split, args, work, baseline)
            print(f"  {name}: {json.dumps({k: configs[name][k] for k in ('rps', 'p50_ms', 'p99_ms', 'auc')})}",
                  flush=True)
        if args.reference_checkpoint and "gcn_exit" in configs:
            print("gcn_exit with the reference (fp32) model ...", flush=True)
            reference = await run_config("gcn_exit", base.model_copy(update={
                "scorer_checkpoint": args.reference_checkpoint}), split, args, work, baseline)
            configs["gcn_exit"].update({"auc_fp32": reference["auc"], "logloss_fp32": reference["logloss"],
                                        "auc_minus_baseline_fp32": reference["auc_minus_baseline"],
                                        "rps_fp32": reference["rps"],
                                        "reference_model": str(args.reference_checkpoint)})
        capacity = configs["gcn_exit"]["rps"] if "gcn_exit" in configs else None
        slo = await run_slo(base, data, split, args, work, capacity, args.slo_ms,
                            args.slo_rps or args.slo_over * capacity) if args.slo_ms and capacity else None
        slo_high = await run_slo(base, data, split, args, work, capacity, args.slo_high_ms, args.high_rate) \
            if args.slo_high_ms and capacity else None
    finally:
        broker.stop(work / "kafka")
    precision = json.loads((Path(base.scorer_checkpoint) / "config.json").read_text()).get("precision", "fp32")
    return {"dataset": args.dataset, "machine": machine(), "slo_mode": slo, "slo_mode_at_high_rate": slo_high,
            "command": "python -m bench.e2e_bench " + " ".join(sys.argv[1:]),
            "accuracy_requests": args.accuracy, "capacity_requests": args.capacity, "paced_requests": args.paced,
            "rate": args.rate, "high_rate": args.high_rate, "high_paced_requests": args.high_paced,
            "retrieval_budget_ms": args.retrieval_budget_ms, "candidates_per_request": 1,
            "warm_clicks": len(split.stream),
            "model": str(base.scorer_checkpoint),
            "precision": precision, "quantization": precision, "catalogue_embeddings_saved": embedded,
            "configs": configs,
            **baseline_on_accuracy_rows(data, split, baseline), **offline_auc(base, data, split, args.accuracy)}


def benchmarked_model(settings: Settings, dataset: str) -> Path:
    """The model ``bench.accuracy_bench`` measured and saved (``<cache>/models/early-exit-<dataset>-minilm``),
    else the demo's quick model (trained now if missing)."""
    folder = settings.cache_dir / "models" / f"early-exit-{dataset}-minilm"
    return folder if (folder / "calibration.json").exists() else ensure_model(settings, dataset)


def baseline_on_accuracy_rows(data, split, p: np.ndarray) -> dict:
    """The quality of the classical baseline (LR on smoothed user and item rates and log counts, fitted on the
    stream slice: the model's training history) on exactly the accuracy phase's rows, ``p`` its probabilities."""
    first = len(split.train) + len(split.stream)
    return {f"baseline_{k}": v for k, v in quality.report(data.labels[first:first + len(p)], p).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m", "bookcrossing", "videogames"])
    parser.add_argument("--accuracy", type=int, default=2000,
                        help="requests replayed strictly prequentially (AUC; 400 rows moved it by ±0.03)")
    parser.add_argument("--capacity", type=int, default=600, help="requests sent at once (requests/s)")
    parser.add_argument("--paced", type=int, default=300, help="requests sent at --rate (latency)")
    parser.add_argument("--rate", type=float, default=10.0, help="offered requests/s of the paced phase")
    parser.add_argument("--high-rate", type=float, default=150.0, help="gcn_exit: a second paced phase at this rate")
    parser.add_argument("--high-paced", type=int, default=1500, help="requests of that phase (0 = skip)")
    parser.add_argument("--reference-checkpoint", type=Path, default=None,
                        help="gcn_exit again with this model (the fp32 one of a bf16 checkpoint): auc_fp32, rps_fp32")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="early-exit model (default: the one bench.accuracy_bench saved, else the demo's)")
    parser.add_argument("--text-index-users", type=int, default=10_000)
    parser.add_argument("--slo-ms", type=float, default=100.0, help="SLO mode phase: the latency aim (0 = skip)")
    parser.add_argument("--slo-over", type=float, default=2.0, help="SLO mode phase: offered load / gcn_exit capacity")
    parser.add_argument("--slo-rps", type=float, default=None,
                        help="SLO mode phase: offer this many requests/s instead of --slo-over x capacity (A/B runs "
                             "of two versions at one load)")
    parser.add_argument("--slo-seconds", type=float, default=60.0, help="SLO mode phase: how long the load is offered")
    parser.add_argument("--slo-high-ms", type=float, default=50.0,
                        help="a second SLO mode phase with this SLO at --high-rate (0 = skip)")
    parser.add_argument("--retrieval-budget-ms", type=float, default=1000.0,
                        help="generous, so that AUC compares retrievers, not budgets (retrieval time is reported)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/e2e_<dataset>.json; a variant reading elsewhere)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"e2e_{args.dataset}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} and {plot(result, out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
