"""The click path without Kafka: where one updater's time goes -> ``bench/results/click_path.json``

    python -m bench.click_path [--clicks 60000 --batch 4096]

Book-Crossing's stream clicks after the 85% history (on the graph benchmark's checkpoint, which
``python -m bench.graph_bench --only ranking`` makes) in micro-batches, each through the three stages of
:class:`graph_updater.agent.ClickLoop`: decode (``parse_click`` of the encoded record), graph update and point
building (:meth:`GraphUpdater.apply`), and the store write (:meth:`EdgeStore.upsert`, embedded qdrant-edge), each
timed; beside them, ``fill_seconds``: filling an empty store with every node's whole point first, as a worker's
startup does (building the records, writing them, building the index). The long-lived state is frozen out of the
garbage collector after loading, as the service does after its rebuild (otherwise full collections over the graph
land in whichever stage allocates). Compare two versions of the code by running this in each, back to back on one
machine: the drain figure of ``bench.graph_bench`` adds the broker and varies ~±10% between runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.graph_bench import bookcrossing_checkpoint, bookcrossing_stream
from bench.machine import machine
from graph_updater import checkpoint
from graph_updater.online import parse_click
from graph_updater.store import EdgeStore
from infra.runtime.heap import freeze_long_lived
from infra.runtime.settings import Settings
from schemas.codec import encode

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=RESULTS / "click_path.json")
    args = parser.parse_args()
    settings = Settings()
    folder = bookcrossing_checkpoint(settings.cache_dir)
    if not (folder / "config.json").exists():
        raise SystemExit(f"no Book-Crossing graph checkpoint at {folder}: run python -m bench.graph_bench "
                         "--only ranking")
    if not settings.data_dir.exists():
        raise SystemExit(f"data directory not found: {settings.data_dir} (set EXITREC_DATA_DIR)")
    updater, _ = checkpoint.load(folder)
    records = [(c.user_id.encode(), encode(c)) for c in bookcrossing_stream(settings.data_dir)[:args.clicks]]
    store = EdgeStore()
    store.ensure_collections(updater.graph.dim)
    t0 = time.perf_counter()
    every = updater.all_records()
    t1 = time.perf_counter()
    store.upsert(every)
    t2 = time.perf_counter()
    store.optimize()
    t3 = time.perf_counter()
    fill = {"points": len(every), "records": round(t1 - t0, 2), "upsert": round(t2 - t1, 2),
            "index": round(t3 - t2, 2)}
    freeze_long_lived()
    seconds = {"decode": 0.0, "update": 0.0, "upsert": 0.0}
    points = 0
    for start in range(0, len(records), args.batch):
        t0 = time.perf_counter()
        clicks = [parse_click(key, value) for key, value in records[start:start + args.batch]]
        t1 = time.perf_counter()
        vectors = updater.apply(clicks)
        t2 = time.perf_counter()
        points += store.upsert(vectors)
        t3 = time.perf_counter()
        seconds["decode"] += t1 - t0
        seconds["update"] += t2 - t1
        seconds["upsert"] += t3 - t2
        print(f"{start + len(clicks)} clicks, {sum(seconds.values()):.1f} s", flush=True)
    store.close()
    total = sum(seconds.values())
    result = {"machine": machine(), "command": "python -m bench.click_path" + (
        "" if (args.clicks, args.batch) == (60_000, 4096) else f" --clicks {args.clicks} --batch {args.batch}"),
              "dataset": "bookcrossing", "clicks": len(records), "batch": args.batch, "points_written": points,
              "fill_seconds": fill,
              "seconds": {k: round(v, 2) for k, v in seconds.items()}, "clicks_per_s": round(len(records) / total, 1),
              "store_share": round(seconds["upsert"] / total, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
