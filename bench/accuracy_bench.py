"""CTR quality against the classical baseline on the same rows, over seeds -> ``accuracy_<dataset>.json``

    python -m bench.accuracy_bench --dataset ml-100k [--n-train 12000 --n-val 3000 --n-test 2000 --seeds 3]

One run, one dataset, all through the serving code: prequential samples (:func:`scorer.experiment.sample_sets`:
the graph updater folds every earlier click into qdrant-edge and the scorer's own context builder reads the
user, the candidate and the neighbours, as a worker does), training rows then validation rows of the stream slice
in time order, test rows from the test slice. The classical baseline (logistic regression on smoothed user and
item like-rates and log counts) is fitted on the same training rows and scored on the same test rows.

The MiniLM backbone is frozen (the CPU regime): each prompt view is encoded once and its head-layer states
cached (keyed by a digest of the token ids, so states from other prompts are never reused); every configuration
then trains only its heads, ``--seeds`` times (seeds change the heads' initial
weights and the batch order), stops early on validation AUC, fits each head's Platt calibration and the exit
rule on the validation rows (paired-bootstrap bound, :func:`scorer.train.calibrate`), and is scored on the test
rows at full depth and with early exit (calibrated probabilities, the offline replay of the served exit path).
Configurations (ablations):

- ``text_only``: the prompt as before item-level evidence, heads on the text alone;
- ``item_evidence``: + the candidate's like-rate line in the prompt, heads on the text alone;
- ``features``: + the numeric evidence (:data:`scorer.features.FEATURES`: rates, counts, neighbour share,
  LightGCN user-item cosine) into every head and a head before the first block (collaborative path "b");
- ``content``: + the content match of :mod:`scorer.content` (the candidate's text embedding against the user's
  liked and disliked history);
- ``collaborative``: + the collaborative match (:data:`scorer.features.COLLAB_FEATURES`: the candidate's LightGCN
  vector against the user's recently liked and disliked items', and the user's like surprise);
- ``brand``: + the user's taste for the candidate's brand (:data:`scorer.features.BRAND_FEATURES`; a book's
  author on Book-Crossing; MovieLens names no brand, so there the two columns are 0): the default;
- ``<config>_layer0``: that model's layer-0 head alone (no transformer block: what the prompt states add is the
  gap);
- ``norag``: the default without neighbour retrieval (no neighbour line, neighbour features at the prior);
- ``default_bf16``: the default with the backbone in bf16 (AVX512-BF16 here): its states cached again, heads,
  calibration and exit rule fitted on them (``exitrec train-model --precision bf16``); ``precision`` in the
  JSON puts its AUC and requests/s beside fp32's, measured back to back;
- ``default_int8``: the same with PyTorch's dynamic int8 Linear layers after activation smoothing calibrated on the
  view's training prompts (:mod:`scorer.smoothing`, ``--precision int8``);
- ``graph_token``: the default plus a graph token (collaborative path "a", :mod:`scorer.model`: the user's and the
  candidate's LightGCN vectors projected into the first input embedding), trained after the same heads through the
  frozen backbone on the latest ``--graph-token-rows`` training rows (``exitrec train-model --graph-token-epochs``).

The default configuration's seed-0 model is saved as a checkpoint (``--save-default``, by default
``<cache>/models/early-exit-<dataset>-minilm``, where ``exitrec train-model`` writes and the worker and the
end-to-end benchmark read), so the model measured here is the model served; ``default_bf16`` / ``default_int8``
save theirs beside it (``<folder>-bf16``, ``<folder>-int8``).

Requests/s: batched :meth:`~scorer.model.EarlyExitModel.predict` on the first ``--rps-rows`` test rows, full depth
and early exit back to back (seed 0 of each configuration); ``batch_dependence``: how far a test row's deepest-head
probability moves beside 31 other test rows instead of alone (:func:`scorer.experiment.batch_dependence`; 0 but for
int8). Warm rows are those whose user reacted to something
before; cold rows a new user's. A PNG shows AUC per configuration and the default's reliability curve.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import machine
from infra.runtime.logging import configure_logging
from infra.runtime.settings import Settings
from scorer import checkpoint, experiment, quality
from scorer.calibration import HeadCalibration
from scorer.checkpoint import with_precision
from scorer.exit_rules import ExitRule
from scorer.features import ALL_FEATURES, COLLAB_SET, CONTENT_SET, FEATURES, graph_pairs
from scorer.model import EarlyExitModel
from scorer.samples import new_users
from scorer.train import (
    Cached,
    cached_probabilities,
    calibrate,
    fit_heads,
    head_probabilities,
    new_users_at_layer0,
    pooled_states,
    served_exits,
    train,
)

RESULTS = Path(__file__).resolve().parent / "results"
# configuration: (prompt view, the features its heads read, backbone precision)
CONFIGS = {"text_only": ("text_only", (), "fp32"), "item_evidence": ("default", (), "fp32"),
           "features": ("default", FEATURES, "fp32"), "content": ("default", CONTENT_SET, "fp32"),
           "collaborative": ("default", COLLAB_SET, "fp32"), "brand": ("default", ALL_FEATURES, "fp32"),
           "norag": ("norag", ALL_FEATURES, "fp32"),
           "default_bf16": ("default", ALL_FEATURES, "bf16"), "default_int8": ("default", ALL_FEATURES, "int8"),
           "graph_token": ("default", ALL_FEATURES, "fp32")}
GRAPH_TOKEN = "graph_token"  # the default plus a trained graph token (collaborative path "a")
DEFAULT = "brand"
LOWER_PRECISIONS = ("bf16", "int8")  # ``default_<p>``: the default's model at that backbone precision


def slice_metrics(y: np.ndarray, p: np.ndarray, warm: np.ndarray) -> dict:
    overall = quality.report(y, p)
    return {**overall, "auc_warm": quality.auc(y[warm], p[warm]), "auc_cold": quality.auc(y[~warm], p[~warm]),
            "logloss_warm": quality.logloss(y[warm], p[warm]) if warm.any() else float("nan"),
            "logloss_cold": quality.logloss(y[~warm], p[~warm]) if (~warm).any() else float("nan")}


SPLITS = ("train", "val", "test")


def encode_view(tokenizer, sets, view: str, args, embeddings) -> dict[str, experiment.Encoded]:
    """Every split's prompts under one prompt view, tokenized, with all features (once per view: each backbone
    precision and the int8 calibration read the same encodings)."""
    return {split: experiment.encode(tokenizer, getattr(sets, split), args.max_length, sets.prior, view, embeddings)
            for split in SPLITS}


def cache_view(model: EarlyExitModel, encoded: dict[str, experiment.Encoded], view: str, cache: Path,
               precision: str = "fp32") -> dict[str, tuple]:
    """The encoded prompts of one prompt view (:func:`encode_view`) with the cached head-layer states of every
    split at one backbone precision (states on disk, reused by later runs)."""
    out = {}
    for split in SPLITS:
        path = cache / (f"{view}-{split}.pt" if precision == "fp32" else f"{view}-{precision}-{split}.pt")
        enc = encoded[split]
        digest, sidecar = prompts_digest(enc, checkpoint.smoothing_for(precision)), path.with_suffix(".digest")
        if path.exists() and sidecar.exists() and sidecar.read_text() == digest:
            pooled = torch.load(path)
        else:  # new, or cached from other prompts (the sample code changed since): encode again
            pooled = pooled_states(model, enc.ids, enc.mask)
            torch.save(pooled, path)
            sidecar.write_text(digest)
        out[split] = (enc, Cached(pooled, enc.features, enc.labels))
    return out


def prompts_digest(enc, int8_smoothing: float = 0.0) -> str:
    """SHA-256 of the token ids and masks (and of an int8 backbone's smoothing strength, when it has one): cached
    states are reused only for exactly the prompts and quantization they came from."""
    h = hashlib.sha256(enc.ids.numpy().tobytes())
    h.update(enc.mask.numpy().tobytes())
    if int8_smoothing:
        h.update(f"int8 smoothing {int8_smoothing}".encode())
    return h.hexdigest()


def heads_model(backbone, features: tuple[str, ...], layers: list[int], graph_dim: int = 0) -> EarlyExitModel:
    return EarlyExitModel(backbone, layers if features else [x for x in layers if x > 0],
                          n_features=len(features), graph_dim=graph_dim).eval()


def with_features(data: dict[str, tuple], n: int, sets=None, graph_dim: int = 0) -> dict[str, tuple]:
    """The view's splits with only the first ``n`` feature columns (none for ``n = 0``) and, with ``graph_dim``,
    the LightGCN pairs of ``sets``' samples (a graph-token model's input); under ``new_user``, each split's mask of
    new users' rows (no reaction known: what a checkpoint may pin at the layer-0 head)."""
    out: dict = {"new_user": {split: new_users(getattr(sets, split)) for split in data} if sets is not None else {}}
    for split, (enc, cached) in data.items():
        feats = enc.features[:, :n] if n else None
        graph = torch.from_numpy(graph_pairs([s.inputs for s in getattr(sets, split)], graph_dim)) \
            if graph_dim else None
        out[split] = (experiment.Encoded(enc.ids, enc.mask, enc.labels, feats, graph),
                      Cached(cached.pooled, feats, cached.labels))
    return out


def run_config(model: EarlyExitModel, data: dict, seed: int, args) -> tuple[dict, np.ndarray, ExitRule]:
    """Train heads, calibrate, choose the exit rule; test metrics (full depth and exit) and test probabilities."""
    started = time.perf_counter()
    fit_heads(model, data["train"][1], data["val"][1], epochs=args.head_epochs, seed=seed, progress=False)
    return evaluate(model, data, cached_probabilities(model, data["val"][1]),
                    cached_probabilities(model, data["test"][1]), time.perf_counter() - started, args)


def run_graph_token(model: EarlyExitModel, data: dict, seed: int, args) -> tuple[dict, np.ndarray, ExitRule]:
    """The same heads as :func:`run_config` (same seed, same cached states: a fresh graph token adds zero), then
    the graph token and heads trained through the frozen backbone on the latest ``--graph-token-rows`` training
    rows for up to ``--graph-token-epochs`` epochs, early stopping on validation AUC (the heads-only model is
    epoch 0); then calibration, exit rule and test as :func:`run_config`."""
    started = time.perf_counter()
    fit_heads(model, data["train"][1], data["val"][1], epochs=args.head_epochs, seed=seed, progress=False)
    train_enc, val_enc, test_enc = (data[split][0] for split in SPLITS)
    rows = slice(max(0, len(train_enc.ids) - args.graph_token_rows), None)
    train(model, train_enc.ids[rows], train_enc.mask[rows], train_enc.labels[rows], train_enc.features[rows],
          regime="graph_token", epochs=args.graph_token_epochs, lr=args.graph_token_lr, seed=seed,
          val=(val_enc.ids, val_enc.mask, val_enc.features, val_enc.labels, val_enc.graph),
          graph=train_enc.graph[rows], progress=True)
    raw_val = head_probabilities(model, val_enc.ids, val_enc.mask, val_enc.features, graph=val_enc.graph)
    raw_test = head_probabilities(model, test_enc.ids, test_enc.mask, test_enc.features, graph=test_enc.graph)
    result, test_probs, rule = evaluate(model, data, raw_val, raw_test, time.perf_counter() - started, args)
    # 0 = early stopping kept the heads-only start: no epoch of the token beat it on validation AUC
    result["graph_token_norm"] = float(model.graph_token.project.weight.detach().norm())
    return result, test_probs, rule


def evaluate(model: EarlyExitModel, data: dict, raw_val: np.ndarray, raw_test: np.ndarray, train_s: float, args
             ) -> tuple[dict, np.ndarray, ExitRule]:
    """From the heads' raw validation and test probabilities: per-head Platt calibration, the exit rule and whether
    new users answer at the layer-0 head (:func:`~scorer.train.new_users_at_layer0`) on the validation rows, test
    metrics at full depth and as served (:func:`~scorer.train.served_exits`)."""
    y_val = data["val"][1].labels.numpy()
    model.calibration = HeadCalibration.fit(raw_val, y_val)
    val_probs = model.calibration.apply_all(raw_val)
    rule, curve = calibrate(val_probs, y_val, model.head_layers, args.rule, args.budget)
    pinned, evidence = new_users_at_layer0(val_probs, y_val, data["new_user"]["val"], model.head_layers)
    test_probs = model.calibration.apply_all(raw_test)
    exits = served_exits(test_probs, rule, data["new_user"]["test"] if pinned else None)
    layers = np.array(model.head_layers)
    return {"exit": test_probs[np.arange(len(test_probs)), exits], "full": test_probs[:, -1],
            "mean_exit_layer": float(layers[exits].mean()), "train_s": train_s, "rule": rule.to_dict(),
            "new_users_at_layer0": pinned, "new_users_validation": evidence,
            "val_curve": curve, "heads_auc": [quality.auc(data["test"][1].labels.numpy(), test_probs[:, j])
                                              for j in range(len(layers))]}, test_probs, rule


def rps(model: EarlyExitModel, enc, rule: ExitRule, rows: int) -> float:
    experiment.throughput(model, enc.head(32), rule)
    return experiment.throughput(model, enc.head(rows), rule)[0]


def summarize(per_seed: list[dict], y: np.ndarray, warm: np.ndarray) -> dict:
    exit_metrics = [slice_metrics(y, r["exit"], warm) for r in per_seed]
    full_metrics = [slice_metrics(y, r["full"], warm) for r in per_seed]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    return {"auc": mean(exit_metrics, "auc"), "auc_sd": float(np.std([r["auc"] for r in exit_metrics], ddof=1))
            if len(exit_metrics) > 1 else 0.0,
            "auc_seeds": [r["auc"] for r in exit_metrics],
            "auc_warm": mean(exit_metrics, "auc_warm"), "auc_cold": mean(exit_metrics, "auc_cold"),
            "logloss": mean(exit_metrics, "logloss"), "logloss_warm": mean(exit_metrics, "logloss_warm"),
            "logloss_cold": mean(exit_metrics, "logloss_cold"), "ece": mean(exit_metrics, "ece"),
            "ctr_ratio": mean(exit_metrics, "ctr_ratio"),
            "auc_full": mean(full_metrics, "auc"), "logloss_full": mean(full_metrics, "logloss"),
            "ece_full": mean(full_metrics, "ece"),
            "auc_exit_minus_full": float(np.mean([e["auc"] - f["auc"] for e, f in
                                                  zip(exit_metrics, full_metrics, strict=True)])),
            "mean_exit_layer": float(np.mean([r["mean_exit_layer"] for r in per_seed])),
            "heads_auc": np.mean([r["heads_auc"] for r in per_seed], axis=0).tolist(),
            "rules": [r["rule"] for r in per_seed], "train_s": mean(per_seed, "train_s"),
            **({"new_users_at_layer0": [r["new_users_at_layer0"] for r in per_seed],
                "new_users_validation_seed0": per_seed[0]["new_users_validation"]}
               if "new_users_at_layer0" in per_seed[0] else {}),
            **({"graph_token_norms": [r["graph_token_norm"] for r in per_seed]} if "graph_token_norm" in per_seed[0]
               else {}),
            "val_curve_seed0": per_seed[0]["val_curve"]}


def plot(out: Path, result: dict, y: np.ndarray, p_default: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["configs"])
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(names))
    for k, (key, label) in enumerate((("auc", "all"), ("auc_warm", "warm users"), ("auc_cold", "cold users"))):
        ax.bar(x + (k - 1) * 0.27, [result["configs"][n][key] for n in names], 0.27, label=label,
               yerr=[result["configs"][n]["auc_sd"] for n in names] if key == "auc" else None)
    for key, style in (("baseline_auc", "-"), ("baseline_auc_warm", "--"), ("baseline_auc_cold", ":")):
        ax.axhline(result[key], color="k", ls=style, lw=1, label=key.replace("_", " "))
    ax.set_xticks(x, names, rotation=20)
    lo = min(min(result["configs"][n][k] for n in names for k in ("auc", "auc_warm", "auc_cold")),
             result["baseline_auc_cold"])
    ax.set_ylim(max(0.4, lo - 0.05), None)
    ax.set_ylabel(f"test AUC (mean of {len(result['seeds'])} seeds, early exit)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{result['dataset']}: {result['n_rows']:,} test rows")
    for label, p in (("default", p_default), ("baseline", np.asarray(result["_baseline_p"]))):
        b = np.minimum((p * 10).astype(int), 9)
        pts = [(p[b == k].mean(), y[b == k].mean()) for k in range(10) if (b == k).sum() >= 10]
        rel.plot(*zip(*pts, strict=True), "o-", label=label)
    rel.plot([0, 1], [0, 1], "k:", lw=1)
    rel.set_xlabel("predicted ctr (10 bins, ≥10 rows)")
    rel.set_ylabel("observed click rate")
    rel.set_title(f"calibration: ECE default {result['configs'][result['default']]['ece']:.3f}, "
                  f"baseline {result['baseline_ece']:.3f}")
    rel.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


SAME_ROWS = ("dataset", "n_rows", "n_train", "n_val", "seeds", "max_length", "baseline_auc")


def merged(result: dict, path: Path) -> dict:
    """``result`` with the configurations of the earlier result at ``path`` it does not hold; both must score the
    same rows (:data:`SAME_ROWS` equal), and ``commands`` lists every command whose figures the file holds."""
    earlier = json.loads(path.read_text())
    differ = [k for k in SAME_ROWS if earlier.get(k) != result[k]]
    if differ:
        raise SystemExit(f"--merge: {path} was measured on other rows ({', '.join(differ)} differ); rerun all "
                         f"configurations without --merge")
    kept = {k: v for k, v in earlier["configs"].items() if k not in result["configs"]}
    commands = [*earlier.get("commands", [earlier["command"]]), result["command"]]
    return {**result, "configs": {**kept, **result["configs"]}, "commands": commands}


def precision_effect(configs: dict) -> dict:
    """Per lower backbone precision measured beside the default: its AUC minus fp32's and its requests/s over
    fp32's (early exit and full depth; compare only when both were measured in one run, back to back)."""
    out = {}
    for p in LOWER_PRECISIONS:
        low, fp32 = configs.get(f"default_{p}"), configs.get(DEFAULT)
        if low is not None and fp32 is not None:
            out |= {f"auc_{p}_minus_fp32": low["auc"] - fp32["auc"], f"rps_{p}_over_fp32": low["rps"] / fp32["rps"],
                    f"rps_full_{p}_over_fp32": low["rps_full"] / fp32["rps_full"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m", "bookcrossing"])
    parser.add_argument("--n-train", type=int, default=12000)
    parser.add_argument("--n-val", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--head-epochs", type=int, default=60)
    parser.add_argument("--rule", default="max_prob")
    parser.add_argument("--budget", type=float, default=0.002)
    parser.add_argument("--rps-rows", type=int, default=512)
    parser.add_argument("--graph-token-rows", type=int, default=3000,
                        help="graph_token: the latest training rows its token trains on (back-propagation through "
                             "the backbone costs ~3 forward passes per row)")
    parser.add_argument("--graph-token-epochs", type=int, default=2)
    parser.add_argument("--graph-token-lr", type=float, default=1e-3)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--merge", action="store_true",
                        help="keep the configurations of the existing accuracy_<dataset>.json that this run does not "
                             "measure (the rows must be the same: same sizes and seeds)")
    parser.add_argument("--save-default", type=Path, default=None,
                        help="checkpoint folder for the default's seed-0 model (default "
                             "<cache>/models/early-exit-<dataset>-minilm)")
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = Settings()
    started = time.perf_counter()
    sets = experiment.sample_sets(args.dataset, settings.data_dir, settings.cache_dir, args.n_train, args.n_val,
                                  args.n_test)
    samples_s = time.perf_counter() - started
    print(f"samples: {len(sets.train)} train, {len(sets.val)} val, {len(sets.test)} test in {samples_s:.0f} s",
          flush=True)
    base, tokenizer = experiment.new_model("minilm", settings.cache_dir)
    embeddings = experiment.content_embeddings(settings.cache_dir)
    layers = base.head_layers
    cache = settings.cache_dir / "bench" / f"accuracy-{args.dataset}-{args.n_train}-{args.n_val}-{args.n_test}-" \
                                          f"{args.max_length}"
    cache.mkdir(parents=True, exist_ok=True)
    y = np.array([s.label for s in sets.test])
    warm = ~new_users(sets.test)
    configs, views, encoded, timings, default_p = {}, {}, {}, {}, None
    backbones = {"fp32": base}
    for name in args.configs.split(","):
        view, features, precision = CONFIGS[name]
        t0 = time.perf_counter()
        if view not in encoded:
            encoded[view] = encode_view(tokenizer, sets, view, args, embeddings)
        if precision not in backbones:
            smoothing = None
            if precision == "int8":  # smoothing scales from this view's training prompts, as train-model does
                smoothing = checkpoint.int8_scales(base, encoded[view]["train"].ids, encoded[view]["train"].mask)
            backbones[precision] = with_precision(copy.deepcopy(base), precision, smoothing=smoothing)
        key = view if precision == "fp32" else f"{view}-{precision}"
        if key not in views:
            views[key] = cache_view(backbones[precision], encoded[view], view, cache, precision)
            timings[f"encode_{key}_s"] = round(time.perf_counter() - t0, 1)
            print(f"view {key} cached in {timings[f'encode_{key}_s']} s", flush=True)
            if key == "default":  # the numeric evidence of every split, for analyses beside the heads
                np.savez(cache / "features-default.npz", warm=warm, baseline=sets.baseline_test,
                         **{f"{split}_{part}": getattr(views[key][split][0], part).numpy()
                            for split in SPLITS for part in ("features", "labels")})
        per_seed, models = [], []
        graph_dim = experiment.graph_dim_of(sets.train) if name == GRAPH_TOKEN else 0
        data = with_features(views[key], len(features), sets, graph_dim)
        for seed in range(args.seeds):
            model = heads_model(backbones[precision].backbone, features, layers, graph_dim)
            result, test_probs, rule = (run_graph_token if graph_dim else run_config)(model, data, seed, args)
            per_seed.append(result)
            models.append((model, rule, test_probs))
        configs[name] = summarize(per_seed, y, warm)
        model, rule, test_probs = models[0]
        enc = data["test"][0]
        configs[name]["rps"] = rps(model, enc, rule, args.rps_rows)
        configs[name]["rps_full"] = rps(model, enc, ExitRule(), args.rps_rows)
        configs[name]["speedup"] = configs[name]["rps"] / configs[name]["rps_full"]
        configs[name]["batch_dependence"] = experiment.batch_dependence(model, enc)
        if features:  # the layer-0 head alone: the same seeds' models, no transformer block
            head0 = [{"exit": p[:, 0], "full": p[:, 0], "mean_exit_layer": 0.0, "train_s": r["train_s"],
                      "rule": {"rule": "fixed_head", "head": 0}, "val_curve": [], "heads_auc": r["heads_auc"][:1]}
                     for (_, _, p), r in zip(models, per_seed, strict=True)]
            configs[f"{name}_layer0"] = summarize(head0, y, warm)
        if name == DEFAULT or name in (f"default_{p}" for p in LOWER_PRECISIONS):
            folder = args.save_default or settings.cache_dir / "models" / f"early-exit-{args.dataset}-minilm"
            if name == DEFAULT:
                default_p = np.mean([r["exit"] for r in per_seed], axis=0)
            else:  # the same model at a lower precision, beside the default's folder
                folder = folder.with_name(f"{folder.name}-{precision}")
            card = checkpoint.ModelCard("minilm", model.head_layers, model.pooling, args.max_length, False,
                                        rule.to_dict(), per_seed[0]["val_curve"],
                                        {"dataset": args.dataset, "n_train": len(sets.train), "n_val": len(sets.val),
                                         "regime": "frozen", "source": "bench.accuracy_bench seed 0"},
                                        list(features), sets.prior, precision,
                                        int8_smoothing=checkpoint.smoothing_for(precision),
                                        new_users_at_layer0=per_seed[0]["new_users_at_layer0"])
            checkpoint.save(folder, model, tokenizer, card)
            print(f"{name} model saved: {folder}", flush=True)
        c = configs[name]
        print(f"{name}: AUC {c['auc']:.4f} ± {c['auc_sd']:.4f} (full {c['auc_full']:.4f}), warm {c['auc_warm']:.4f}, "
              f"cold {c['auc_cold']:.4f}, logloss {c['logloss']:.4f}, ECE {c['ece']:.4f}, mean exit layer "
              f"{c['mean_exit_layer']:.2f}, rps {c['rps']:.1f} vs {c['rps_full']:.1f}", flush=True)
    baseline = slice_metrics(y, sets.baseline_test, warm)
    result = {
        "dataset": args.dataset, "default": DEFAULT, "seeds": list(range(args.seeds)), "n_rows": len(y),
        "n_train": len(sets.train), "n_val": len(sets.val), "n_warm": int(warm.sum()), "n_cold": int((~warm).sum()),
        "test_positive_rate": float(y.mean()), "max_length": args.max_length, "backbone": "minilm (frozen)",
        "head_layers": layers, "features": list(ALL_FEATURES), "budget": args.budget, "rule": args.rule,
        "baseline": "logistic regression on smoothed user and item like-rates and log reaction counts, fitted on "
                    "the training rows",
        "baseline_auc": baseline["auc"], "baseline_auc_warm": baseline["auc_warm"],
        "baseline_auc_cold": baseline["auc_cold"], "baseline_logloss": baseline["logloss"],
        "baseline_logloss_warm": baseline["logloss_warm"], "baseline_logloss_cold": baseline["logloss_cold"],
        "baseline_ece": baseline["ece"], "configs": configs,
        "timings_s": {"samples": round(samples_s, 1), **timings, "total": round(time.perf_counter() - started, 1)},
        "machine": machine(),
        "command": "python -m bench.accuracy_bench " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                for k, v in vars(args).items()),
    }
    out = RESULTS / f"accuracy_{args.dataset}.json"
    if args.merge:
        result = merged(result, out)
    result["precision"] = precision_effect(result["configs"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    if default_p is not None:
        plot(out.with_suffix(".png"), {**result, "_baseline_p": sets.baseline_test.tolist()}, y, default_p)
    print(json.dumps({k: result[k] for k in ("baseline_auc", "baseline_auc_warm", "baseline_auc_cold",
                                             "baseline_logloss", "baseline_ece")}, indent=2))


if __name__ == "__main__":
    main()
