"""A dataset the model never saw, used only through the generic tenant path -> ``bench/results/own_data.json``

    python -m bench.own_data [--dataset videogames --n-train 4000 --n-val 1000 --n-test 1500]

The built-in dataset is written out as a tenant CSV folder (``clicks.csv``, ``items.csv``) and from then on only
the commands a tenant runs touch it, each as its own process in a fresh cache (nothing trained on the built-in
datasets is reused): ``exitrec train-graph --csv``, ``exitrec train-model --csv`` (frozen MiniLM, heads,
calibration, exit rule), ``exitrec eval-model --csv`` on test-slice rows, whose report puts the model beside the
classical baseline (logistic regression on smoothed rates and log counts) on the same rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine
from graph_updater.datasets import dataset_key, load
from infra.runtime.settings import REPO_ROOT, Settings

RESULTS = Path(__file__).resolve().parent / "results"


def write_tenant(dataset: str, folder: Path, data_dir: Path) -> int:
    data = load(dataset, data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "clicks.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["user_id", "item_id", "label", "ts"])
        out.writerows(zip(data.users, data.items, data.labels.tolist(), data.ts.tolist(), strict=True))
    with (folder / "items.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["item_id", "text"])
        out.writerows(data.item_text.items())
    return len(data)


def exitrec(env: dict, *args: str) -> dict:
    """Run one ``exitrec`` command as a tenant would; its JSON output."""
    print("$ exitrec " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          text=True)  # stderr (progress bars, errors) passes through
    if done.returncode != 0:
        raise RuntimeError(f"exitrec {args[0]} failed (exit {done.returncode}); its error is above")
    return json.loads(done.stdout[done.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="videogames")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1500)
    args = parser.parse_args()
    settings = Settings()
    work = settings.cache_dir / "bench" / f"own-data-{args.dataset}"
    folder = work / "tenant"
    rows = write_tenant(args.dataset, folder, settings.data_dir)
    env = {**os.environ, "EXITREC_CACHE_DIR": str(work / "cache"), "EXITREC_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    graph = exitrec(env, "train-graph", "--csv", str(folder), "--epochs", "6", "--lr", "0.05", "--batch-size", "32768")
    graph_s = time.perf_counter() - started
    model = exitrec(env, "train-model", "--csv", str(folder), "--n-train", str(args.n_train), "--n-val",
                    str(args.n_val), "--max-length", "96")
    train_s = time.perf_counter() - started
    report = exitrec(env, "eval-model", "--checkpoint", model["checkpoint"], "--csv", str(folder), "--n-test",
                     str(args.n_test))
    result = {
        "dataset": args.dataset, "tenant": dataset_key(str(folder)), "rows": rows, "n_test": report["n_test"],
        "auc": report["exit"]["auc"], "logloss": report["exit"]["logloss"], "ece": report["exit"]["ece"],
        "auc_full": report["full"]["auc"], "baseline_auc": report["baseline"]["auc"],
        "baseline_logloss": report["baseline"]["logloss"], "mean_exit_layer": report["mean_exit_layer"],
        "graph_recall20_on_stream": graph.get("recall20_lightgcn"),
        "graph_recall20_popularity": graph.get("recall20_popularity"),
        "train_wall_s": round(train_s, 1), "graph_wall_s": round(graph_s, 1), "rule": model["rule"],
        "machine": machine(), "command": "python -m bench.own_data " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "own_data.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("auc", "baseline_auc", "logloss", "baseline_logloss", "rows",
                                             "train_wall_s")}, indent=2))


if __name__ == "__main__":
    main()
