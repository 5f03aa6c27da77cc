"""The performance targets (issues 15 and 22), each judged MET or MISSED from one benchmark run.

Every target is read from the results of the run it is printed with: the ceiling it is
compared with was measured in the same run, on the same cluster. A target whose scenario
was not run is ``NOT MEASURED`` (with what would measure it).

Example usage::

    for target in evaluate(results):
        print(target["status"], target["target"], target["evidence"])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["evaluate", "TARGETS"]

#: (key, what is promised): the order the report prints them in.
TARGETS = (
    ("fixed_cost", "fixed cost of a sync (job claimed -> first _bulk sent) <= 0.5 s"),
    ("resync_10k", "no-change resync of 10k documents <= 0.7 s end to end"),
    ("ratio_10k", "10k x 1 KB full sync >= 0.4x the ceiling"),
    ("ratio_100k", "100k x 1 KB full sync >= 0.7x the ceiling"),
    ("ratio_1m", "1M x 1 KB full sync >= 0.8x the ceiling"),
    ("dir_100k", "directory source, 100k x 1 KB files: full sync >= 0.5x the ceiling"),
    ("resync_100k", "no-change resync >= 5x faster than the full sync at 100k (through search-default-ingestion)"),
    ("resync_1m", "no-change resync >= 10x faster than the full sync at 1M (through search-default-ingestion)"),
    ("many_connectors", "24 dir connectors x 2,000 files requested at once: >= 3x the throughput of Elastic's "
                        "service, whole tree's peak PSS <= 300 MB"),
    ("memory_100k_1m", "whole service (daemon + warm process + sync process + workers) <= 250 MB peak PSS at "
                       "100k and 1M, one sync running"),
    ("idle_daemon", "idle daemon <= 80 MB (the daemon process alone; it imports neither Beam nor a source)"),
    ("cpu_1m", "our CPU per document <= 10 us at 1M (CPU of the service tree / documents)"),
    ("writes_nothing", "every no-change resync writes nothing (counters 0, index_total/delete_total unchanged)"),
    # Issue 22: on the user's clock (from the job document's creation), and cheaper per document.
    ("dir_100k_created", "directory source, 100k x 1 KB files: full sync >= 0.5x the ceiling timed from the job's "
                         "creation, and its no-change resync >= 5x faster on the same clock"),
    ("cpu_dir", "our CPU per document <= 20 us on the directory source (100k files)"),
    ("first_bulk_created", "job created -> first _bulk sent: p50 <= 0.6 s at idling: 1 (the full syncs; a resync "
                           "writes when it meets its first change)"),
)


def _small(results: dict[str, Any], count: int) -> dict[str, Any] | None:
    return next((s for s in results.get("scenarios", []) if s["count"] == count and s["doc_size"] <= 4096), None)


def _syncs(scenario: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, result in ((scenario or {}).get("results") or {}).items():
        if key.startswith("ours_"):
            yield key, result


def _ceiling(scenario: dict[str, Any] | None) -> float | None:
    return (((scenario or {}).get("results") or {}).get("ceiling") or {}).get("docs_per_s")


def _status(met: bool) -> str:
    return "MET" if met else "MISSED"


def _not_measured(how: str) -> tuple[str, str]:
    return "NOT MEASURED", how


def _fixed_cost(results: dict[str, Any]) -> tuple[str, str]:
    seen = [(s["label"], s["results"]["ours_full"].get("first_bulk_seconds"))
            for s in results.get("scenarios", []) if (s["results"].get("ours_full") or {}).get("first_bulk_seconds")]
    ten = _small(results, 10_000)
    value = ((ten or {}).get("results", {}).get("ours_full") or {}).get("first_bulk_seconds")
    if value is None:
        return _not_measured("the 10k scenario (--sizes 10k)")
    return _status(value <= 0.5), f"{value:.2f} s at 10k; " + ", ".join(f"{label}: {v:.2f} s" for label, v in seen)


def _resync_10k(results: dict[str, Any]) -> tuple[str, str]:
    ten = _small(results, 10_000)
    values = [(key, r["seconds"]) for key, r in _syncs(ten) if key.startswith("ours_nochange")]
    if not values:
        return _not_measured("the 10k scenario (--sizes 10k)")
    return _status(all(v <= 0.7 for _, v in values)), ", ".join(f"{key} {v:.2f} s" for key, v in values)


def _ratio(results: dict[str, Any], count: int, floor: float) -> tuple[str, str]:
    scenario = _small(results, count)
    full = ((scenario or {}).get("results") or {}).get("ours_full") or {}
    if full.get("ratio_to_ceiling") is None:
        return _not_measured(f"the {count:,}-document scenario with its ceiling")
    return _status(full["ratio_to_ceiling"] >= floor), (
        f"{full['ratio_to_ceiling']:.2f}x: {full['docs_per_s']:,.0f} docs/s ({full['seconds']:.2f} s) against "
        f"{_ceiling(scenario):,.0f} docs/s")


def _dir_100k(results: dict[str, Any]) -> tuple[str, str]:
    folder = _dir_scenario(results)
    ceiling = _ceiling(_small(results, 100_000))
    full = ((folder or {}).get("results") or {}).get("ours_full") or {}
    if not full.get("docs_per_s") or not ceiling:
        return _not_measured("--dir 100k with the 100k scenario's ceiling (--sizes 100k)")
    ratio = full["docs_per_s"] / ceiling
    elastic = (folder.get("elastic_service") or {}).get("docs_per_s")
    return _status(ratio >= 0.5), (
        f"{ratio:.2f}x: {full['docs_per_s']:,.0f} docs/s ({full['seconds']:.2f} s) against {ceiling:,.0f} docs/s"
        + (f"; Elastic's service {elastic:,.0f} docs/s on the same files (issue 15)" if elastic else ""))


def _resync(results: dict[str, Any], count: int, factor: float) -> tuple[str, str]:
    scenario = _small(results, count)
    values = [(key, r.get("speedup_vs_full"), r["seconds"]) for key, r in _syncs(scenario)
              if key.startswith("ours_nochange")]
    if not values or any(v is None for _, v, _ in values):
        return _not_measured(f"the {count:,}-document scenario")
    pipeline = (results.get("ingest_pipeline") or {}).get("name")
    full = scenario["results"]["ours_full"]["seconds"]
    return _status(all(v >= factor for _, v, _ in values) and bool(pipeline)), (
        f"full {full:.2f} s; " + ", ".join(f"{key} {s:.2f} s ({v:.1f}x)" for key, v, s in values)
        + (f"; through {pipeline}" if pipeline else "; no ingest pipeline"))


def _many(results: dict[str, Any]) -> tuple[str, str]:
    many = results.get("many_connectors")
    if not many or "docs_per_s" not in many:
        return _not_measured("--many 24x2000")
    if (many["connectors"], many["files"]) != (24, 2000):  # Elastic's figures are of that load
        return _not_measured(f"--many 24x2000 (this run: {many['connectors']}x{many['files']})")
    elastic = many["elastic_service"]
    met = (many.get("speedup_vs_elastic") or 0) >= 3 and many["peak_pss_mb"] <= 300 and many.get("ok")
    return _status(bool(met)), (
        f"{many['seconds']:.1f} s = {many['docs_per_s']:,.0f} docs/s, {many['speedup_vs_elastic']:.2f}x Elastic's "
        f"{elastic['seconds']} s ({elastic['docs_per_s']:,.0f} docs/s, not re-run: issue 15's figure); peak PSS "
        f"{many['peak_pss_mb']:.0f} MB (RSS {many['peak_rss_mb']:.0f} MB; Elastic's {elastic['peak_mb']:.0f} MB), "
        f"{many['concurrency']} syncs at a time")


def _memory(results: dict[str, Any]) -> tuple[str, str]:
    parts, met, measured = [], True, 0
    for count in (100_000, 1_000_000):
        scenario = _small(results, count)
        syncs = list(_syncs(scenario))
        if not syncs:
            continue
        measured += 1
        pss = max(r.get("peak_pss_mb") or 0 for _, r in syncs)
        rss = max(r.get("peak_rss_mb") or 0 for _, r in syncs)
        worst = max(syncs, key=lambda item: item[1].get("peak_pss_mb") or 0)
        met = met and pss <= 250
        parts.append(f"{scenario['label']}: {pss:.0f} MB PSS ({rss:.0f} MB RSS), worst {worst[0]} by role "
                     f"{worst[1].get('peak_pss_by_role_mb')}")
    if measured < 2:
        return _not_measured("the 100k and 1M scenarios (--sizes 100k,1M)") if not parts else (
            "NOT MEASURED at both", "; ".join(parts))
    return _status(met), "; ".join(parts)


def _idle(results: dict[str, Any]) -> tuple[str, str]:
    idle = next((s.get("idle") for s in results.get("scenarios", []) if s.get("idle")), None)
    if not idle or "daemon" not in idle:
        return _not_measured("any scenario with our daemon")
    daemon = idle["daemon"]
    warm = idle.get("warm_process")
    return _status(daemon["pss_mb"] <= 80 and daemon["rss_mb"] <= 80), (
        f"daemon {daemon['pss_mb']:.0f} MB PSS / {daemon['rss_mb']:.0f} MB RSS"
        + (f"; its warm sync process {warm['pss_mb']:.0f} MB PSS / {warm['rss_mb']:.0f} MB RSS" if warm else ""))


def _cpu_per_document(full: dict[str, Any], limit: float, how: str, unit: str = "document") -> tuple[str, str]:
    """Our CPU per document of one full sync, against ``limit`` microseconds."""
    if full.get("cpu_us_per_doc") is None:
        return _not_measured(how)
    return _status(full["cpu_us_per_doc"] <= limit), (
        f"{full['cpu_us_per_doc']:.1f} us per {unit} ({full.get('cpu_seconds')} s by role); Elasticsearch "
        f"{full.get('es_cpu_us_per_doc'):.1f} us per document in the same sync")


def _cpu(results: dict[str, Any]) -> tuple[str, str]:
    full = ((_small(results, 1_000_000) or {}).get("results") or {}).get("ours_full") or {}
    return _cpu_per_document(full, 10, "the 1M scenario (--sizes 1M)")


def _writes_nothing(results: dict[str, Any]) -> tuple[str, str]:
    every = results.get("scenarios", []) + results.get("directory", []) + results.get("sources", [])
    checked = [(s["label"], key, r) for s in every for key, r in _syncs(s) if key.startswith("ours_nochange")]
    if not checked:
        return _not_measured("any scenario")
    bad = [f"{label} {key}" for label, key, r in checked if not r.get("ok")]
    return _status(not bad), ("all" if not bad else "failed: " + ", ".join(bad)) + f" ({len(checked)} resyncs)"


def _dir_scenario(results: dict[str, Any]) -> dict[str, Any] | None:
    """The ``dir`` source's 100k-file scenario of the run, if it ran."""
    return next((d for d in results.get("directory", [])
                 if d["count"] == 100_000 and d.get("source", "dir") == "dir"), None)


def _dir_folder(results: dict[str, Any]) -> dict[str, Any]:
    return (_dir_scenario(results) or {}).get("results") or {}


def _dir_100k_created(results: dict[str, Any]) -> tuple[str, str]:
    syncs = _dir_folder(results)
    full, same = syncs.get("ours_full") or {}, syncs.get("ours_nochange") or {}
    ceiling = _ceiling(_small(results, 100_000))
    if not full.get("docs_per_s_from_created") or not ceiling or not same.get("speedup_vs_full_from_created"):
        return _not_measured("--dir 100k with the 100k scenario's ceiling (--sizes 100k)")
    ratio, speedup = full["docs_per_s_from_created"] / ceiling, same["speedup_vs_full_from_created"]
    return _status(ratio >= 0.5 and speedup >= 5), (
        f"{ratio:.2f}x: {full['docs_per_s_from_created']:,.0f} docs/s ({full['seconds_from_created']:.2f} s from "
        f"creation, {full['seconds']:.2f} s from started_at) against {ceiling:,.0f} docs/s; resync "
        f"{same['seconds_from_created']:.2f} s from creation = {speedup:.1f}x faster")


def _cpu_dir(results: dict[str, Any]) -> tuple[str, str]:
    return _cpu_per_document(_dir_folder(results).get("ours_full") or {}, 20, "--dir 100k", "file")


def _first_bulk_created(results: dict[str, Any]) -> tuple[str, str]:
    every = results.get("scenarios", []) + results.get("directory", [])
    values = sorted(r["first_bulk_from_created_seconds"] for s in every for key, r in _syncs(s)
                    if key == "ours_full" and r.get("first_bulk_from_created_seconds") is not None)
    if not values:
        return _not_measured("any full sync (--sizes 10k)")
    p50 = values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1:len(values) // 2 + 1]) / 2
    return _status(p50 <= 0.6), (f"p50 {p50:.2f} s over {len(values)} syncs (min {values[0]:.2f}, max "
                                 f"{values[-1]:.2f}); idling {results.get('service_idling', 'as configured')}")


def evaluate(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each target of :data:`TARGETS` with its status and the evidence from ``results``."""
    judges = {
        "fixed_cost": _fixed_cost, "resync_10k": _resync_10k,
        "ratio_10k": lambda r: _ratio(r, 10_000, 0.4), "ratio_100k": lambda r: _ratio(r, 100_000, 0.7),
        "ratio_1m": lambda r: _ratio(r, 1_000_000, 0.8), "dir_100k": _dir_100k,
        "resync_100k": lambda r: _resync(r, 100_000, 5), "resync_1m": lambda r: _resync(r, 1_000_000, 10),
        "many_connectors": _many, "memory_100k_1m": _memory, "idle_daemon": _idle, "cpu_1m": _cpu,
        "writes_nothing": _writes_nothing, "dir_100k_created": _dir_100k_created, "cpu_dir": _cpu_dir,
        "first_bulk_created": _first_bulk_created,
    }
    out = []
    for key, text in TARGETS:
        status, evidence = judges[key](results)
        out.append({"key": key, "target": text, "status": status, "evidence": evidence})
    return out
