"""Results -> Markdown table and PNG chart (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["markdown", "summary", "chart", "VARIANTS"]

VARIANTS = (
    ("ceiling", "ES ceiling (pre-serialized _bulk)"),
    ("parallel_bulk", "helpers.parallel_bulk"),
    ("streaming_bulk", "helpers.streaming_bulk"),
    ("ours_full", "ours: full sync"),
    ("ours_nochange", "ours: no-change resync"),
    ("ours_nochange_cached", "ours: no-change resync again (digests cached)"),
    ("ours_changed", "ours: 1% changed + 1% removed"),
)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def annotate(results: dict[str, Any]) -> None:
    """Add ``best_baseline`` (the fastest of the three baselines) to each scenario.

    On a busy machine the ceiling run can land in a noisy minute and come out slower than a
    helper; ours is then also compared with the best baseline, the more demanding yardstick.
    """
    for scenario in results.get("scenarios", []):
        rates = {k: (scenario["results"].get(k) or {}).get("docs_per_s") for k in ("ceiling", "parallel_bulk",
                                                                                  "streaming_bulk")}
        rates = {k: v for k, v in rates.items() if v}
        if not rates:
            continue
        best = max(rates, key=rates.get)
        scenario["best_baseline"] = {"method": best, "docs_per_s": rates[best]}
        full = scenario["results"].get("ours_full")
        if full and full.get("docs_per_s"):
            full["ratio_to_best_baseline"] = round(full["docs_per_s"] / rates[best], 3)


def markdown(results: dict[str, Any]) -> str:
    annotate(results)
    m = results["machine"]
    lines = [
        f"# Benchmark results ({results['started_at']})",
        "",
        f"Machine: {m['cpus']} CPUs ({m.get('cpu_model') or 'unknown CPU'}), {m['memory_gb']} GB RAM, "
        f"load average at start {m.get('loadavg_start')}; Elasticsearch {m['es_version']} "
        f"(heap {m['es_heap_gb']} GB, same machine); Python {m['python']}, Beam {m['beam']}, "
        f"elasticsearch-py {m['elasticsearch_py']}.",
        f"Pipeline settings: `{results['pipeline_settings']}`; source partitions: {results['options']['partitions']}.",
        *_load_lines(m.get("load")),
        "",
        *summary(results),
        "Throughput counts documents (and their serialized bytes, 1 MB = 10^6 bytes) from the first document "
        "to the last acknowledged one; ours is timed from the job's `started_at` to its `completed_at` "
        "(whole sync process, start-up included). Peak memory: ours = daemon + warm sync process + sync "
        "process + Beam workers, as PSS (shared pages divided among the processes sharing them: what the tree "
        "holds) and RSS (shared pages counted per process); baselines = the benchmark process. CPU per document: "
        "the service tree's CPU seconds over the documents read, beside Elasticsearch's (its node's process CPU) "
        "in the same sync. First _bulk: the job claimed -> its first _bulk request sent. Ratio = docs/s over the "
        "ceiling's docs/s in the same scenario.",
        "",
        "| scenario | method | seconds | docs/s | MB/s | peak PSS MB | peak RSS MB | CPU us/doc (ES) | "
        "first _bulk s | x ceiling | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scenario in results["scenarios"]:
        for key, label in VARIANTS:
            r = scenario["results"].get(key)
            if r is None:
                continue
            notes = []
            if key.startswith("ours"):
                notes.append(f"indexed {_fmt(r.get('indexed'))}, deleted {_fmt(r.get('deleted'))}")
                if r.get("ratio_to_best_baseline") is not None and scenario.get("best_baseline"):
                    notes.append(f"{r['ratio_to_best_baseline']:.2f}x best baseline "
                                 f"({scenario['best_baseline']['method']})")
                if r.get("peak_pss_by_role_mb"):
                    notes.append("peak PSS MB by role " + ", ".join(
                        f"{k} {v:g}" for k, v in r["peak_pss_by_role_mb"].items()))
                if r.get("peak_anon_mb") is not None:
                    notes.append(f"anonymous (without mapped files) {_fmt(r['peak_anon_mb'])} MB")
                if key.startswith("ours_nochange"):
                    notes.append(f"{_fmt(r.get('speedup_vs_full'), 1)}x faster than full")
                if "index_ops_during" in r:
                    notes.append(f"index ops during: {r.get('index_ops_during')}")
                if r.get("status") != "completed":
                    notes.append(f"status {r.get('status')}: {r.get('error')}")
            elif key == "ceiling":
                notes.append(f"{r.get('clients')} clients")
            if r.get("ok") is False:
                notes.append("CHECK FAILED")
            cpu = (f"{_fmt(r.get('cpu_us_per_doc'), 1)} ({_fmt(r.get('es_cpu_us_per_doc'), 1)})"
                   if r.get("cpu_us_per_doc") is not None else "-")
            lines.append(
                f"| {scenario['label']} | {label} | {_fmt(r.get('seconds'), 2)} | {_fmt(r.get('docs_per_s'))} | "
                f"{_fmt(r.get('mb_per_s'), 1)} | {_fmt(r.get('peak_pss_mb'))} | {_fmt(r.get('peak_rss_mb'))} | {cpu} | "
                f"{_fmt(r.get('first_bulk_seconds'), 2)} | {_fmt(r.get('ratio_to_ceiling'), 2)} | {'; '.join(notes)} |"
            )
    lines += _directory_lines(results)
    lines += _source_lines(results)
    if results.get("partitions"):
        p = results["partitions"]
        lines += ["", f"Parallel reads ({p['label']}, full sync, ceiling {_fmt(p.get('ceiling_docs_per_s'))} docs/s):", "",
                  "| partitions | seconds | docs/s | MB/s | peak RSS MB | x ceiling |", "|---:|---:|---:|---:|---:|---:|"]
        for r in p["runs"]:
            lines.append(f"| {r['partitions']} | {_fmt(r.get('seconds'), 1)} | {_fmt(r.get('docs_per_s'))} | "
                         f"{_fmt(r.get('mb_per_s'), 1)} | {_fmt(r.get('peak_rss_mb'))} | "
                         f"{_fmt(r.get('ratio_to_ceiling'), 2)} |")
    if results.get("runners"):
        r = results["runners"]
        lines += ["", f"Runners ({r['label']}, {r['partitions']} partitions; peak RSS of every process the sync runs "
                      "in, by role):", "",
                  "| runner | sync | seconds | docs/s | peak RSS MB | anonymous MB | processes | by role (MB) |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for run in r["runs"]:
            if run.get("skipped"):
                lines.append(f"| {run['label']} | skipped: {run['skipped']} | | | | | | |")
                continue
            for key, sync in run["syncs"].items():
                if key not in dict(VARIANTS):
                    continue
                roles = ", ".join(f"{k} {v:g}" for k, v in (sync.get("peak_rss_by_role_mb") or {}).items())
                check = "" if sync.get("ok") is not False else " CHECK FAILED"
                lines.append(f"| {run['label']} | {dict(VARIANTS)[key][6:]}{check} | {_fmt(sync.get('seconds'), 1)} | "
                             f"{_fmt(sync.get('docs_per_s'))} | {_fmt(sync.get('peak_rss_mb'))} | "
                             f"{_fmt(sync.get('peak_anon_mb'))} | {_fmt(sync.get('max_processes'))} | {roles} |")
    if results.get("tuning"):
        t = results["tuning"]
        lines += ["", f"Tuning ({t['label']}, full sync; ceiling {_fmt(t.get('ceiling_docs_per_s'))} docs/s):", "",
                  "| settings | seconds | docs/s | peak RSS MB | x ceiling |", "|---|---:|---:|---:|---:|"]
        for r in t["runs"]:
            lines.append(f"| `{r['settings']}` | {_fmt(r.get('seconds'), 1)} | {_fmt(r.get('docs_per_s'))} | "
                         f"{_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('ratio_to_ceiling'), 2)} |")
    if results.get("targets"):
        lines += ["", "Targets:", ""]
        for target in results["targets"]:
            lines.append(f"- **{target['status']}** {target['target']}: {target['evidence']}")
    return "\n".join(lines) + "\n"


def summary(results: dict[str, Any]) -> list[str]:
    """The run in one table (README's performance table is this): each scenario's full sync
    against its ceiling, its no-change resync, the whole tree's peak PSS, CPU per document."""
    lines = ["| scenario | ceiling docs/s | ours, full sync | x ceiling | first _bulk | no-change resync | "
             "peak PSS, whole service (full / resync) | CPU us/doc, ours (Elasticsearch) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(s["label"], s["results"], (s["results"].get("ceiling") or {}).get("docs_per_s"))
            for s in results.get("scenarios", [])]
    ceilings = _small_ceilings(results)
    rows += [(d["label"], d["results"], ceilings.get(d["count"]))
             for d in (results.get("directory") or []) + (results.get("sources") or [])]
    for label, r, ceiling in rows:
        full, same = r.get("ours_full") or {}, r.get("ours_nochange") or {}
        if not full.get("seconds"):
            continue
        rate = full.get("docs_per_s")
        resync = (f"{_fmt(same['seconds'], 2)} s ({same['speedup_vs_full']:.1f}x faster)"
                  if same.get("seconds") and same.get("speedup_vs_full") else "-")
        lines.append(f"| {label} | {_fmt(ceiling)} | {_fmt(rate)} docs/s ({_fmt(full['seconds'], 2)} s) | "
                     f"{_fmt(rate / ceiling, 2) if rate and ceiling else '-'} | {_fmt(full.get('first_bulk_seconds'), 2)} s | "
                     f"{resync} | {_fmt(full.get('peak_pss_mb'))} / {_fmt(same.get('peak_pss_mb'))} MB | "
                     f"{_fmt(full.get('cpu_us_per_doc'), 1)} ({_fmt(full.get('es_cpu_us_per_doc'), 1)}) |")
    many = results.get("many_connectors")
    if many and many.get("seconds"):
        lines.append(f"| {many['connectors']} dir connectors x {many['files']:,} files, requested at once | - | "
                     f"{_fmt(many['docs_per_s'])} docs/s ({_fmt(many['seconds'], 1)} s; "
                     f"{many['speedup_vs_elastic']:.2f}x Elastic's service) | - | - | - | {_fmt(many['peak_pss_mb'])} MB | "
                     f"{_fmt(many['cpu_seconds'] / (many['connectors'] * many['files']) * 1e6, 1)} "
                     f"({_fmt(many['es_cpu_seconds'] / (many['connectors'] * many['files']) * 1e6, 1)}) |")
    return lines + [""] if len(lines) > 2 else []


def _load_lines(load: dict[str, Any] | None) -> list[str]:
    """The machine's load over the run (bench/load.py): how much of it was someone else's."""
    if not load:
        return []
    avg, cpu = load["loadavg_1m"], load["cpu_seconds"]
    share = load.get("others_cpu_share")
    return [f"Load during the run ({_fmt(load['wall_seconds'] / 60, 1)} min): 1-minute load average "
            f"{avg['min']}-{avg['max']} (mean {avg['mean']}, with the benchmark's own work); CPU seconds: the "
            f"benchmark's processes {cpu['benchmark']}, Elasticsearch {cpu['elasticsearch']}, other processes "
            f"{cpu['others']} ({_fmt(share * 100 if share is not None else None, 1)}% of the machine's "
            f"{load['cpus']} CPUs over the run)."]


def _small_ceilings(results: dict[str, Any]) -> dict[int, float | None]:
    """The ceiling's docs/s of each small-document scenario, by document count."""
    return {s["count"]: (s["results"].get("ceiling") or {}).get("docs_per_s") for s in results.get("scenarios", [])
            if s["doc_size"] <= 4096}


def _sync_table(syncs: dict[str, Any], ceiling: float | None, what: str) -> list[str]:
    """A source scenario's syncs (full, no-change), each against the ceiling of its size."""
    lines = [f"| sync | seconds | docs/s | MB/s ({what}) | x ceiling | peak PSS MB | peak RSS MB | CPU us/doc (ES) "
             "| notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, r in syncs.items():
        notes = [f"indexed {_fmt(r.get('indexed'))}, deleted {_fmt(r.get('deleted'))}"]
        if r.get("speedup_vs_full"):
            notes.append(f"{r['speedup_vs_full']:.1f}x faster than full")
        if r.get("timings"):
            notes.append("sync process " + ", ".join(f"{k} {v:g}" for k, v in r["timings"].items()))
        if r.get("ok") is False:
            notes.append("CHECK FAILED")
        rate = r.get("docs_per_s") if key == "ours_full" else None
        lines.append(f"| {dict(VARIANTS)[key]} | {_fmt(r.get('seconds'), 2)} | {_fmt(rate)} | "
                     f"{_fmt(r.get('mb_per_s') if rate else None, 1)} | "
                     f"{_fmt(rate / ceiling, 2) if rate and ceiling else '-'} | {_fmt(r.get('peak_pss_mb'))} | "
                     f"{_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('cpu_us_per_doc'), 1)} "
                     f"({_fmt(r.get('es_cpu_us_per_doc'), 1)}) | {'; '.join(notes)} |")
    return lines


def _source_lines(results: dict[str, Any]) -> list[str]:
    """The sources' scenarios on their own servers (bench/azure.py), beside the ceiling of their size."""
    lines: list[str] = []
    ceilings = _small_ceilings(results)
    for scenario in results.get("sources") or []:
        ceiling = ceilings.get(scenario["count"])
        upload = scenario.get("upload") or {}
        lines += ["", f"{scenario['label']} ({scenario['server']}, uploaded before the clock starts: "
                      f"{_fmt(upload.get('uploaded'))} in {_fmt(upload.get('seconds'), 1)} s, "
                      f"{_fmt(upload.get('reused'))} kept from an earlier run; ceiling: the "
                      f"{scenario['count']:,} x 1 KB scenario's"
                      f"{f', {ceiling:,.0f} docs/s' if ceiling else ', not measured'}):", ""]
        lines += _sync_table(scenario["results"], ceiling, "blobs")
    return lines


def _directory_lines(results: dict[str, Any]) -> list[str]:
    """The directory source's folder scenario and the many-connectors scenario, beside Elastic's figures."""
    lines: list[str] = []
    ceilings = _small_ceilings(results)
    for folder in results.get("directory") or []:
        ceiling = ceilings.get(folder["count"])
        elastic = folder.get("elastic_service") or {}
        where = ("Network drive source over SMB (Samba on this machine)" if folder.get("source") == "network_drive"
                 else "Directory source")
        lines += ["", f"{where}, {folder['label']} (files written before the clock starts, read from the "
                      f"page cache; ceiling: the {folder['count']:,} x 1 KB scenario's"
                      f"{f', {ceiling:,.0f} docs/s' if ceiling else ', not measured'}):", ""]
        lines += _sync_table(folder["results"], ceiling, "files")
        if elastic:
            lines.append(f"| Elastic's connector service (issue 15, not re-run) | - | {_fmt(elastic['docs_per_s'])} | - | "
                         f"{_fmt(elastic['docs_per_s'] / ceiling, 2) if ceiling else '-'} | - | "
                         f"{_fmt(elastic['peak_mb'])} | - | measured side by side by an earlier session |")
    many = results.get("many_connectors")
    if many and "seconds" in many:
        elastic = many["elastic_service"]
        ceiling = ceilings.get(100_000)
        lines += ["", f"Many small connectors: {many['connectors']} dir connectors x {many['files']:,} files of ~1 KB, "
                      "all requested at once (first job created -> last job completed), one service; x ceiling: "
                      f"over the 100,000 x 1 KB scenario's ceiling{f' ({ceiling:,.0f} docs/s)' if ceiling else ''}:", "",
                  "| service | syncs at a time | seconds | docs/s | MB/s (files) | x ceiling | peak PSS MB | peak RSS MB "
                  "| notes |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        roles = ", ".join(f"{k} {v:g}" for k, v in (many.get("peak_pss_by_role_mb") or {}).items())

        def over(rate: float | None) -> str:
            return _fmt(rate / ceiling, 2) if rate and ceiling else "-"
        lines.append(f"| elastic-ingest | {many['concurrency']} | {_fmt(many['seconds'], 1)} | {_fmt(many['docs_per_s'])} | "
                     f"{_fmt(many.get('mb_per_s'), 1)} | {over(many['docs_per_s'])} | {_fmt(many['peak_pss_mb'])} | {_fmt(many['peak_rss_mb'])} | {many['speedup_vs_elastic']:.2f}x "
                     f"Elastic's throughput; PSS by role {roles}; CPU {many['cpu_seconds']} s, Elasticsearch "
                     f"{many['es_cpu_seconds']} s{'' if many.get('ok') else '; CHECK FAILED'} |")
        lines.append(f"| Elastic's connector service (issue 15, not re-run) | {elastic['concurrency']} | "
                     f"{_fmt(elastic['seconds'], 1)} | {_fmt(elastic['docs_per_s'])} | - | {over(elastic['docs_per_s'])} | "
                     f"- | {_fmt(elastic['peak_mb'])} | "
                     "measured side by side on this machine by an earlier session |")
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results["scenarios"]
    labels = [s["label"] for s in scenarios]
    names = dict(VARIANTS)
    panels = (
        ("docs_per_s", "throughput (documents / s, log)", ("ceiling", "parallel_bulk", "streaming_bulk", "ours_full")),
        ("ratio_to_ceiling", "throughput / ES ceiling", ("parallel_bulk", "streaming_bulk", "ours_full")),
        ("peak_rss_mb", "peak RSS (MB)", ("ceiling", "parallel_bulk", "streaming_bulk", "ours_full",
                                          "ours_nochange", "ours_nochange_cached", "ours_changed")),
    )
    colors = {key: f"C{n}" for n, (key, _) in enumerate(VARIANTS)}
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    for ax, (metric, title, keys) in zip(axes, panels):
        width = 0.8 / len(keys)
        for n, key in enumerate(keys):
            values = [(s["results"].get(key) or {}).get(metric) or 0 for s in scenarios]
            positions = [i + (n - (len(keys) - 1) / 2) * width for i in range(len(scenarios))]
            ax.bar(positions, values, width=width, label=names[key], color=colors[key])
        ax.set_xticks(range(len(scenarios)), labels, rotation=15)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        if metric == "docs_per_s":
            ax.set_yscale("log")
        if metric == "ratio_to_ceiling":
            ax.axhline(0.8, color="grey", linestyle="--", linewidth=1, label="0.8x target")
    handles, legend_labels = axes[2].get_legend_handles_labels()
    h1, l1 = axes[1].get_legend_handles_labels()
    for handle, label in zip(h1, l1):
        if label == "0.8x target":
            handles.append(handle)
            legend_labels.append(label)
    fig.legend(handles, legend_labels, loc="lower center", ncol=7, fontsize=8)
    m = results["machine"]
    fig.suptitle(f"elastic-ingest vs Elasticsearch's ceiling - {m['cpus']} CPUs, ES {m['es_version']} "
                 f"heap {m['es_heap_gb']} GB ({results['started_at']})")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
