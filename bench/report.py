"""Markdown tables of ``bench/results/*.json`` for the README: ``python -m bench.report``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def measured_table(title: str, rows: list[tuple[str, str, str]]) -> str:
    """A ``| title | measured | note |`` Markdown table of ``rows``."""
    return "\n".join([f"| {title} | measured | note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def selected(train: dict) -> str:
    """How the epoch count was chosen (older results trained a fixed number)."""
    if "epochs_max" not in train:
        return f"{train['epochs']} epochs (fixed)"
    return f"{train['epochs']} of ≤{train['epochs_max']} epochs, chosen on a validation slice"


def graph_table(d: dict) -> str:
    rows = [
        ("Recall@20 LightGCN / popularity, MovieLens-100K", f"{fmt(d['recall20_lightgcn'])} / "
         f"{fmt(d['recall20_popularity'])}", f"{d['eval_users']} warm test users; {selected(d['train'])}"),
        ("NDCG@20 LightGCN / popularity, MovieLens-100K", f"{fmt(d['ndcg20_lightgcn'])} / "
         f"{fmt(d['ndcg20_popularity'])}", ""),
        ("Recall@20 LightGCN / popularity, Book-Crossing", f"{fmt(d['recall20_lightgcn_bookcrossing'], 4)} / "
         f"{fmt(d['recall20_popularity_bookcrossing'], 4)}",
         f"{d['eval_users_bookcrossing']:,} test users; {selected(d['train_bookcrossing'])}"),
        ("NDCG@20 LightGCN / popularity, Book-Crossing", f"{fmt(d['ndcg20_lightgcn_bookcrossing'], 4)} / "
         f"{fmt(d['ndcg20_popularity_bookcrossing'], 4)}", ""),
        ("freshness p50 / p99 (click produced → vector readable)",
         f"{fmt(d['freshness_p50_ms'], 0)} / {fmt(d['freshness_p99_ms'], 0)} ms",
         f"{fmt(d['freshness_rate_per_s'], 0)} clicks/s for {d['freshness_clicks']:,} clicks, Book-Crossing"),
        ("… at 5,000 clicks/s offered (12 s)", f"{fmt(d.get('freshness_p50_ms_at_5000'), 0)} / "
         f"{fmt(d.get('freshness_p99_ms_at_5000'), 0)} ms",
         f"achieved {fmt(d.get('freshness_achieved_rate_per_s_at_5000'), 0)} clicks/s for "
         f"{fmt(d.get('freshness_clicks_at_5000'), 0)} clicks"),
        ("max sustained clicks/s (backlog drain)", fmt(d["max_sustained_clicks_per_s"], 0),
         f"{d['max_sustained_clicks']:,} clicks, batches of ≤4096"),
    ]
    if "max_sustained_clicks_per_s_refining" in d:
        r = d["refinement_settings"]
        rows += [
            ("… with BPR refinement on: drain / freshness p50 / p99 at 1,000 clicks/s",
             f"{fmt(d['max_sustained_clicks_per_s_refining'], 0)} clicks/s; {fmt(d['freshness_p50_ms_refining'], 0)}"
             f" / {fmt(d['freshness_p99_ms_refining'], 0)} ms",
             f"{r['refine_steps']} steps every {r['refine_every_clicks']:,} clicks in a thread beside the loop"),
            ("… a refinement: steps + propagation (thread) / merge (loop waits)",
             f"{fmt(float(np.mean(d['refine_steps_ms'])) / 1000, 1)} s / {fmt(float(np.mean(d['refine_merge_ms'])), 0)}"
             " ms", f"mean of {len(d['refine_merge_ms'])}; the loop used to wait for the whole refinement")]
    rows += [
        ("consume rate, empty body: aiokafka getmany / faust take_events",
         f"{fmt(d.get('consume_aiokafka_getmany_per_s'))} / {fmt(d.get('consume_faust_take_events_per_s'))} /s", ""),
    ]
    for size in ("10k", "100k"):
        rows.append((f"top-20 similar users p50 / p99, {size} users (qdrant-edge)",
                     f"{fmt(d[f'retrieval_p50_ms_{size}'], 2)} / {fmt(d[f'retrieval_p99_ms_{size}'], 2)} ms",
                     f"local mode: {fmt(d[f'qdrant_local_retrieval_p50_ms_{size}'], 0)} / "
                     f"{fmt(d[f'qdrant_local_retrieval_p99_ms_{size}'], 0)} ms"))
        rows.append((f"… filtered \"reacted to item X\", {size} users (qdrant-edge)",
                     f"{fmt(d[f'retrieval_p50_ms_{size}_filtered'], 2)} / "
                     f"{fmt(d[f'retrieval_p99_ms_{size}_filtered'], 2)} ms",
                     f"local mode: {fmt(d[f'qdrant_local_retrieval_p50_ms_{size}_filtered'], 0)} / "
                     f"{fmt(d[f'qdrant_local_retrieval_p99_ms_{size}_filtered'], 0)} ms"))
    if "retrieval_p99_ms_1m" in d:
        chosen = d[f"retrieval_1m_{d['retrieval_1m_hnsw']}"]
        rows.append((f"top-20 p50 / p99, plain / filtered, {d['retrieval_1m_users']:,} users (qdrant-edge)",
                     f"{fmt(d['retrieval_p50_ms_1m'], 2)} / {fmt(d['retrieval_p99_ms_1m'], 2)} ms; filtered p99 "
                     f"{fmt(d['retrieval_p99_ms_1m_filtered'], 2)} ms",
                     f"HNSW {d['retrieval_1m_hnsw']} ({chosen['recall20_vs_exact']:.3f} of the exact top-20); "
                     f"{d['retrieval_1m_corpus']}".replace("|", "\\|")))
    if "updater_bytes_per_edge" in d:
        rows += [
            ("updater state, Book-Crossing 85% (tracemalloc)", f"{fmt(d['updater_state_mb'], 0)} MB",
             f"{d['updater_nodes']:,} nodes, {d['updater_edges']:,} like edges, {d['updater_users']:,} users"),
            ("… bytes per node / per edge", f"{d['updater_bytes_per_node']:,} / {d['updater_bytes_per_edge']:,}",
             f"projected for 10M users, 1M items, 500M edges: "
             f"{fmt(d['updater_projected_gb_10m_users_500m_edges'], 0)} GB")]
    if "updater_rss_mb" in d:
        rows.append(("benchmark process RSS after the drain", f"{fmt(d['updater_rss_mb'], 0)} MB",
                     "the updater with faust and aiokafka (the broker runs apart)"))
    return (measured_table("graph path (`bench/results/graph.json`)", rows)
            + f"\n\n100k = all {d['retrieval_users_available']:,} Book-Crossing users with a vector.")


def partitioned_table(d: dict) -> str:
    """The partitioned updaters' drain (``graph_bench --only partitioned``) beside the one-process updater."""
    one = d["partitioned_one_process_clicks_per_s"]
    rows = [("one-process updater", fmt(one, 0), "1.00")]
    for n in (1, 2):
        rate = d[f"partitioned_drain_clicks_per_s_{n}"]
        rows.append((f"{n} partitioned updater process{'es' if n > 1 else ''}", fmt(rate, 0), f"{rate / one:.2f}"))
    for n in (1, 2):
        p50, p99 = (d.get(f"partitioned_freshness_{q}_ms_at_5000_{n}") for q in ("p50", "p99"))
        if p50 is not None:
            rows.append((f"… freshness p50 / p99 at 5,000 clicks/s offered, {n} partitioned",
                         " ; ".join(f"{fmt(a, 0)} / {fmt(b, 0)} ms" for a, b in zip(p50, p99, strict=True)),
                         "per process"))
    if "partitioned_scale_out_stall_s" in d:
        staying, joining, stall = (fmt(d[f"partitioned_scale_out_{key}"], 1)
                                   for key in ("rebuild_s_staying", "rebuild_s_joining", "stall_s"))
        rows.append(("… a second process joins one that drained them: rebuild staying / joining; stall",
                     f"{staying} / {joining} s; {stall} s", "seconds"))
    isa = "AVX-512" if "avx512f" in d["machine"]["matrix_isa"] else "AVX2"
    return "\n".join([f"| updaters ({d['partitioned_clicks']:,} Book-Crossing clicks, {d['machine']['cores']} cores, "
                      f"{isa}) | clicks/s | vs one process |", "|---|---|---|"]
                     + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def accuracy_table(results: list[dict]) -> str:
    """One row per dataset and configuration, the baseline first; AUC as mean ± sd over seeds."""
    head = ("| dataset (test rows: warm / cold) | configuration | AUC | AUC warm | AUC cold | log loss | ECE | "
            "AUC full depth | mean exit layer | requests/s exit / full |")
    lines = [head, "|" + "---|" * 10]
    for d in results:
        where = f"{d['dataset']} ({d['n_warm']:,} / {d['n_cold']:,})"
        lines.append(f"| {where} | baseline: LR on rates and counts | {fmt(d['baseline_auc'])} | "
                     f"{fmt(d['baseline_auc_warm'])} | {fmt(d['baseline_auc_cold'])} | {fmt(d['baseline_logloss'])} | "
                     f"{fmt(d['baseline_ece'])} | — | — | — |")
        for name, c in d["configs"].items():
            marker = " (default)" if name == d["default"] else ""
            speed = f"{fmt(c['rps'], 0)} / {fmt(c['rps_full'], 0)}" if "rps" in c else "—"
            lines.append(f"| {where} | `{name}`{marker} | {fmt(c['auc'])} ± {fmt(c['auc_sd'])} | "
                         f"{fmt(c['auc_warm'])} | {fmt(c['auc_cold'])} | {fmt(c['logloss'])} | {fmt(c['ece'])} | "
                         f"{fmt(c['auc_full'])} | "
                         f"{fmt(c['mean_exit_layer'], 2)} | {speed} |")
    return "\n".join(lines)


def versus(c: dict) -> str:
    """``; +0.012 (−0.004 .. +0.027)``: the served AUC minus the baseline's on the same rows, with its interval."""
    if "auc_minus_baseline" not in c:
        return ""
    low, high = c["auc_minus_baseline_ci95"]
    return f"; {c['auc_minus_baseline']:+.3f} ({low:+.3f} .. {high:+.3f})"


def e2e_table(results: list[dict]) -> str:
    head = ("| dataset | configuration | requests/s (capacity) | p50 / p99 ms at offered rate | AUC (join); "
            "− baseline, 95% paired interval | "
            "log loss | ECE | retrieval p50 ms | mean exit layer | degraded (accuracy phase) |")
    lines = [head, "|" + "---|" * 10]
    for d in results:
        if d.get("precision", "fp32") != "fp32":  # a variant reading of the same dataset with another model
            d = {**d, "dataset": f"{d['dataset']} ({d['precision']} model)"}
        if "baseline_auc" in d:
            lines.append(f"| {d['dataset']} | baseline: LR on rates and counts, same rows | — | — | "
                         f"{fmt(d['baseline_auc'])} | {fmt(d['baseline_logloss'])} | {fmt(d['baseline_ece'])} | "
                         "— | — | — |")
        for name, c in d["configs"].items():
            degraded = ", ".join(f"{k} {v}" for k, v in sorted(c["degraded_in_accuracy_phase"].items())) or "none"
            high = [(k, v) for k, v in c.items() if k.startswith("p99_ms_at_") and k.endswith("rps")]
            latency = f"{fmt(c['p50_ms'], 0)} / {fmt(c['p99_ms'], 0)} at {fmt(d['rate'], 0)}/s" + "".join(
                f"; p99 {fmt(v, 0)} at {k.removeprefix('p99_ms_at_').removesuffix('rps')}/s" for k, v in high)
            lines.append(
                f"| {d['dataset']} | `{name}` | {fmt(c['rps'], 1)} | {latency} | {fmt(c['auc'])}{versus(c)} | "
                f"{fmt(c.get('logloss'))} | {fmt(c.get('ece'))} | {fmt(c['retrieval_p50_ms'], 2)} | "
                f"{fmt(c['mean_exit_layer'], 2)} | {degraded} |")
            if "auc_fp32" in c:  # the same configuration served with the fp32 model, same rows
                lines.append(f"| {d['dataset']} | `{name}`, fp32 reference model | {fmt(c['rps_fp32'], 1)} | — | "
                             f"{fmt(c['auc_fp32'])} | {fmt(c.get('logloss_fp32'))} | — | — | — | — |")
        for key, load in (("slo_mode", "2× capacity"), ("slo_mode_at_high_rate", "the paced rate")):
            slo = d.get(key)
            if slo:
                lines.append(
                    f"| {d['dataset']} | `gcn_exit` + SLO {fmt(slo['slo_ms'], 0)} ms, {fmt(slo['offered_rps'], 0)}/s "
                    f"offered ({load}) | {fmt(slo['answered_rps'], 1)} answered/s, {slo['answered']:,} / "
                    f"{slo['sent']:,} | {fmt(slo['p50_ms'], 0)} / {fmt(slo['p99_ms'], 0)} | {fmt(slo['auc'])} "
                    f"(baseline {fmt(slo['baseline_auc_same_rows'])}){versus(slo)} | {fmt(slo.get('logloss'))} | "
                    f"— | — | {fmt(slo['mean_exit_layer'], 2)} | slo {slo['slo_flagged']:,} |")
    return "\n".join(lines)


# which of the paper's reported figures (bench.paper_table.PAPER keys) sits beside which configuration
PAPER_COLUMNS = {"text_full": (("text_auc", "AUC"),), "gcn_full": (("gcn_auc", "AUC"), ("full_rps", "requests/s")),
                 "gcn_exit": (("exit_rps", "requests/s"),)}


def paired(aucs: list[float], reference: list[float] | None) -> str:
    """Mean ± sd over row blocks of the per-block AUC difference with the reference configuration: the same rows,
    so the row-sampling noise both share cancels."""
    if not reference:
        return "—"
    diff = np.array(aucs) - np.array(reference)
    return f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f}"


def paper_order(name: str) -> tuple[int, int, int]:
    """Sort key of a paper-table configuration ``<retriever>_<full|exit>[_dlr|_nodlr]``: by retriever, then the
    model (frozen heads, depth-aware fine-tuning, plain fine-tuning), full depth before early exit."""
    retriever, depth, *model = name.split("_")
    return (("none", "text", "gcn").index(retriever), ([], ["dlr"], ["nodlr"]).index(model),
            ("full", "exit").index(depth))


def paper_table(d: dict) -> str:
    """Per dataset the classical baseline, then each configuration: AUC mean ± sd over row blocks (seeds), speed,
    retrieval time, exit depth; the paper's reported figure where it gives one."""
    head = ("| dataset (rows × seeds) | configuration | AUC | Δ AUC vs `gcn_full`, paired | log loss | requests/s | "
            "retrieval p50 ms | mean exit layer | paper reports |")
    lines = [head, "|" + "---|" * 9]
    for dataset, r in d["datasets"].items():
        where = f"{dataset} ({r['rows_per_seed']} × {r['seeds']})"
        paper = d["paper_reported"].get(dataset, {})
        reference = r["configs"].get("gcn_full", {}).get("auc_per_seed")
        lines.append(f"| {where} | baseline: LR on rates and counts, same rows | {fmt(r['baseline_auc'])} ± "
                     f"{fmt(r['baseline_auc_sd'])} | {paired(r['baseline_auc_per_seed'], reference)} | — | — | — | "
                     "— | — |")
        for name, c in sorted(r["configs"].items(), key=lambda item: paper_order(item[0])):
            reported = "; ".join(f"{fmt(paper[key], 4 if unit == 'AUC' else 2)} {unit}"
                                 for key, unit in PAPER_COLUMNS.get(name, ()) if key in paper) or "—"
            delta = paired(c["auc_per_seed"], reference) if name != "gcn_full" else "—"
            lines.append(f"| {where} | `{name}` | {fmt(c['auc'])} ± {fmt(c['auc_sd'])} | {delta} | "
                         f"{fmt(c['logloss'])} | {fmt(c['rps'], 1)} | {fmt(c['retrieval_p50_ms'], 2)} | "
                         f"{fmt(c['mean_exit_layer'], 2)} | {reported} |")
    return "\n".join(lines) + "\n\n" + paper_aims(d)


def ratio(numerator: dict | None, denominator: dict | None, key: str) -> str:
    """``numerator[key] / denominator[key]`` as ``1.23×``; — when either configuration was not measured."""
    if not numerator or not denominator or not denominator.get(key):
        return "—"
    return f"{numerator[key] / denominator[key]:.2f}×"


def paired_configs(configs: dict, name: str, reference: str) -> str:
    """:func:`paired` of two configurations' per-block AUCs; — when either was not measured."""
    if name not in configs or reference not in configs:
        return "—"
    return paired(configs[name]["auc_per_seed"], configs[reference]["auc_per_seed"])


def paper_aims(d: dict) -> str:
    """The issue's aims per dataset, each from the same run's rows: GCN against text retrieval (paired AUC
    difference over row blocks; how many times faster its retrieval p50), early exit against full depth with GCN
    retrieval (requests/s ratio; paired AUC change) for the frozen backbone's heads and for the backbone
    fine-tuned with the depth-aware learning rate, and that rate on against off (paired, with early exit)."""
    lines = ["| dataset | GCN − text AUC, paired | text / GCN retrieval p50 | `gcn_exit` / `gcn_full` requests/s | "
             "`gcn_exit` − `gcn_full` AUC, paired | `gcn_exit_dlr` / `gcn_full_dlr` requests/s | "
             "`gcn_exit_dlr` − `gcn_full_dlr` AUC, paired | depth-aware LR on − off AUC, paired |",
             "|" + "---|" * 8]
    for dataset, r in d["datasets"].items():
        c = r["configs"]
        lines.append(f"| {dataset} | {paired_configs(c, 'gcn_full', 'text_full')} | "
                     f"{ratio(c.get('text_full'), c.get('gcn_full'), 'retrieval_p50_ms')} | "
                     f"{ratio(c.get('gcn_exit'), c.get('gcn_full'), 'rps')} | "
                     f"{paired_configs(c, 'gcn_exit', 'gcn_full')} | "
                     f"{ratio(c.get('gcn_exit_dlr'), c.get('gcn_full_dlr'), 'rps')} | "
                     f"{paired_configs(c, 'gcn_exit_dlr', 'gcn_full_dlr')} | "
                     f"{paired_configs(c, 'gcn_exit_dlr', 'gcn_exit_nodlr')} |")
    return "\n".join(lines)


def neighbour_table(d: dict) -> str:
    """Per dataset and neighbour-evidence form: AUC and log loss (mean over seeds) and the AUC difference from no
    neighbour evidence on the same rows (mean ± sd over seeds; the bootstrap sd of one seed's rows beside it)."""
    lines = ["| dataset (test rows × seeds) | neighbour evidence | AUC | AUC − no neighbours | log loss |",
             "|---|---|---|---|---|"]
    for dataset, r in d.items():
        baseline = np.mean([seed["baseline_auc"] for seed in r["per_seed"].values()])
        lines.append(f"| {dataset} ({r['n_test']:,} × {len(r['seeds'])}) | baseline: LR on rates and counts | "
                     f"{baseline:.4f} | — | — |")
        for name, m in r["summary"].items():
            first = r["per_seed"][next(iter(r["per_seed"]))][name]
            diff = "—" if name == "none" else (f"{m['auc_minus_none']:+.4f} ± {m['auc_minus_none_seed_sd']:.4f} "
                                               f"(one seed's rows: ± {first['auc_minus_none_sd']:.4f})")
            lines.append(f"| {dataset} ({r['n_test']:,} × {len(r['seeds'])}) | `{name}` | {m['auc']:.4f} | {diff} | "
                         f"{m['logloss']:.4f} |")
    return "\n".join(lines)


def cold_users_table(d: dict) -> str:
    """Per dataset: the served model, its layer-0 and last heads, and the baseline on new users' first
    impressions, with the paired 95% interval of the served model's AUC over the baseline's."""
    lines = ["| dataset (first impressions) | served model AUC (layer-0 pin) | layer-0 head | last head | "
             "baseline AUC | served − baseline, 95% paired interval | log loss served / baseline |",
             "|---|---|---|---|---|---|---|"]
    for dataset, r in d.items():
        heads = r["heads_auc"]
        low, high = r["auc_minus_baseline_ci95"]
        lines.append(f"| {dataset} ({r['n_cold']:,}) | {r['model']['auc']:.3f} "
                     f"({'yes' if r['new_users_at_layer0'] else 'no'}) | {heads['0']:.3f} | "
                     f"{heads[max(heads, key=int)]:.3f} | {r['baseline']['auc']:.3f} | "
                     f"{r['auc_minus_baseline']:+.3f} ({low:+.3f} .. {high:+.3f}) | "
                     f"{r['model']['logloss']:.3f} / {r['baseline']['logloss']:.3f} |")
    return "\n".join(lines)


def reliability_table(d: dict) -> str:
    rows = [
        ("worker replica SIGKILLs (2 replicas, restarted at once)", fmt(d["worker_kills"]),
         f"ready again after {fmt(d['worker_ready_again_s_mean'], 1)} s on average"),
        ("broker SIGKILLs, restarted on the same log", fmt(d["broker_restarts"]), "no replica exited"),
        ("requests sent / lost / answered twice", f"{d['requests_sent']:,} / {d['requests_lost']:,} / "
         f"{d['duplicates']:,}", "duplicates: batches scored, not committed before a kill"),
        ("clicks sent / lost (final stores of both replicas)", f"{d['clicks_sent']:,} / {d['clicks_lost']:,}",
         f"payloads differing from a one-pass application: {d['payload_mismatches']:,}"),
        ("malformed records sent / dead-lettered", f"{d['bad_messages']:,} / {d['bad_dead_lettered']:,}",
         "9 kinds over both input topics"),
        (f"soak: {fmt(d['soak_minutes'], 0)} min at {fmt(d['soak_rps'], 0)} rows/s (2× nominal)",
         f"lag at the end {d['soak_lag_end']:,} (max {d['soak_lag_max']:,}, bound {d['soak_lag_bound']:,})",
         f"RSS growth {fmt(d['soak_rss_growth_mb'], 0)} MB (the larger replica)"),
    ]
    return measured_table("fault campaign (`bench/results/reliability.json`)", rows)


def own_data_table(d: dict) -> str:
    head = ("| tenant data (`bench/results/own_data.json`) | test rows | AUC (baseline) | log loss (baseline) | ECE | "
            "mean exit layer | train wall s |")
    return "\n".join([head, "|" + "---|" * 7, (
        f"| {d['dataset']} as a CSV folder | {d['n_test']:,} | {fmt(d['auc'])} ({fmt(d['baseline_auc'])}) | "
        f"{fmt(d['logloss'])} ({fmt(d['baseline_logloss'])}) | {fmt(d['ece'])} | {fmt(d['mean_exit_layer'], 2)} | "
        f"{fmt(d['train_wall_s'], 0)} |")])


def containers_table(d: dict) -> str:
    builds = d["image_build_s"]
    first = "cold" if "cold" in builds else "first"
    skipped = "; ".join(f"{x['test']}: {x['reason'][:90]}" for x in d["testcontainers_skip_reasons"]) or "none"
    rows = [
        (f"image build, {first} / cached (s)", f"{fmt(builds[first], 0)} / {fmt(builds['cached'], 1)}",
         ", ".join(f"{k} {fmt(v, 0)}" for k, v in builds["per_image"].items())),
        ("compose up, embedded profile (s)", fmt(d["compose_up_s"], 1),
         f"{d['replicas']} worker replicas ready (/readyz); {d['compose']}; engine {d['engine']}"),
        ("requests sent / answered", f"{d['requests_sent']:,} / {d['requests_answered']:,}",
         f"scorer group members {d['scorer_group_members']}, workers running {d['workers_running']}"),
        ("testcontainers tests passed / failed / skipped",
         f"{d['testcontainers_tests_passed']} / {d['testcontainers_tests_failed']} / "
         f"{d['testcontainers_tests_skipped']}", f"skipped: {skipped}"),
    ]
    return measured_table("containers (`bench/results/containers.json`)", rows)


def main() -> None:
    graph = RESULTS / "graph.json"
    if graph.exists():
        print(graph_table(json.loads(graph.read_text())))
    accuracy = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("accuracy_*.json"))]
    if accuracy:
        print()
        print(accuracy_table(accuracy))
    e2e = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("e2e_*.json"))]
    if e2e:
        print()
        print(e2e_table(e2e))
    for name, table in (("machines/graph_partitioned_avx512.json", partitioned_table),
                        ("cold_users.json", cold_users_table),
                        ("neighbour_evidence.json", neighbour_table), ("paper_table.json", paper_table),
                        ("machines/paper_table_nval1000.json", paper_table),
                        ("own_data.json", own_data_table),
                        ("reliability.json", reliability_table),
                        ("containers.json", containers_table)):
        if (RESULTS / name).exists():
            print()
            print(table(json.loads((RESULTS / name).read_text())))


if __name__ == "__main__":
    main()
