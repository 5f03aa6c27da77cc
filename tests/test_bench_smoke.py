"""The benchmark at a smoke size: it runs end to end and writes the results it promises.

No timing is asserted (the numbers depend on the machine); only that every method ran,
its checks passed, and the JSON, Markdown and PNG outputs carry the expected fields.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sources.base import Partition
from sources.synthetic import SyntheticDataSource, synthetic_docs, variant_counts
from sources.testing import read_partitions
from tests.helpers import ES_URL, REPO


def test_synthetic_source_is_deterministic_and_partitioned():
    config = {"count": 1000, "doc_size": 512, "seed": 7, "partitions": 3}
    first = read_partitions(SyntheticDataSource(config))
    second = read_partitions(SyntheticDataSource(dict(config)))
    assert first == second
    assert sorted(d["_id"] for d in first) == [f"{i:010d}" for i in range(1000)]
    assert len({d["_timestamp"] for d in first}) == 1  # a resync of version 0 changes nothing
    sizes = [len(json.dumps(d, separators=(",", ":"))) for d in first]
    assert 480 <= min(sizes) and max(sizes) <= 560
    assert SyntheticDataSource(config).get_partitions()[0] == Partition("synthetic[0:333]", {"low": 0, "high": 333})


def test_synthetic_variant_changes_and_removes_about_one_percent():
    base = {d["_id"]: d for d in synthetic_docs(count=20000, seed=3)}
    variant = {d["_id"]: d for d in synthetic_docs(count=20000, seed=3, version=1)}
    expected = variant_counts(20000, seed=3, version=1)
    removed = set(base) - set(variant)
    changed = [i for i in variant if variant[i] != base[i]]
    assert len(removed) == expected["removed"] and 150 <= len(removed) <= 250
    assert len(changed) == expected["changed"] and 150 <= len(changed) <= 250
    assert all(variant[i]["_timestamp"] > base[i]["_timestamp"] for i in changed)
    assert not set(variant) - set(base)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_smoke_run_writes_the_expected_results(es, tmp_path):
    from elasticsearch import NotFoundError

    def pipeline_exists() -> bool:
        try:
            es.ingest.get_pipeline(id="search-default-ingestion")
            return True
        except NotFoundError:
            return False

    existed = pipeline_exists()
    command = [sys.executable, "-m", "bench", "--es-url", ES_URL, "--sizes", "300", "--no-partitions", "--no-runners",
               "--large", "0", "--clients", "2", "--dir", "200", "--many", "3x40", "--redis", "200",
               "--out", str(tmp_path),
               "--name", "smoke"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    results = json.loads((tmp_path / "smoke.json").read_text())
    for key in ("cpus", "memory_gb", "es_version", "es_heap_gb", "python", "beam"):
        assert results["machine"][key], key
    assert results["pipeline"]["runner"] == "FnApiRunner"
    # Every sync goes through search-default-ingestion, as on a real cluster (made here if missing, then removed).
    assert results["ingest_pipeline"]["name"] == "search-default-ingestion"
    assert results["ingest_pipeline"]["created_by_bench"] is not existed and pipeline_exists() is existed
    [scenario] = results["scenarios"]
    assert scenario["count"] == 300 and scenario["doc_bytes"] > 0
    methods = scenario["results"]
    assert set(methods) == {"ceiling", "parallel_bulk", "streaming_bulk", "ours_full", "ours_nochange",
                            "ours_nochange_cached", "ours_changed"}
    for name, r in methods.items():
        assert r["ok"] is True, (name, r)
        for field in ("seconds", "docs_per_s", "peak_rss_mb"):
            assert isinstance(r[field], (int, float)) and r[field] > 0, (name, field)
    for name in ("ceiling", "parallel_bulk", "streaming_bulk", "ours_full"):
        assert methods[name]["mb_per_s"] > 0 and methods[name]["ratio_to_ceiling"] > 0, name
    full, same, changed = methods["ours_full"], methods["ours_nochange"], methods["ours_changed"]
    # Its connector and jobs are gone with its indices (it may run against a node others use).
    for name in ("ours_full", "ours_nochange", "ours_nochange_cached", "ours_changed"):
        assert not es.exists(index=".elastic-connectors-sync-jobs", id=methods[name]["job_id"]), name
    assert full["indexed"] == 300 and full["total"] == 300
    assert same["indexed"] == 0 and same["deleted"] == 0 and same["speedup_vs_full"] > 0
    assert same["index_ops_during"] == {"index_total": 0, "delete_total": 0}
    assert same["index_digests_from_cache"] == 1  # the full sync's digests were kept, pipeline and all
    again = methods["ours_nochange_cached"]
    assert again["index_digests_from_cache"] == 1 and again["indexed"] == 0 and again["deleted"] == 0
    assert changed["indexed"] == changed["expected"]["changed"]
    assert changed["deleted"] == changed["expected"]["removed"]
    assert full["max_processes"] >= 3  # the daemon, its warm process and the sync process were sampled
    assert set(full["peak_pss_by_role_mb"]) >= {"daemon", "warm_process", "sync_process"}
    [keys] = results["sources"]  # the redis source's scenario, on scripts/servers/redis
    assert keys["source"] == "redis" and keys["results"]["ours_full"]["ok"] is True
    assert keys["results"]["ours_full"]["indexed"] == 200 and keys["results"]["ours_full"]["docs_per_s"] > 0
    # No modification times in Redis: the content digests make the unchanged resync write nothing.
    assert keys["results"]["ours_nochange"]["ok"] is True and keys["results"]["ours_nochange"]["indexed"] == 0
    assert 0 < full["peak_pss_mb"] <= full["peak_rss_mb"]
    assert full["cpu_us_per_doc"] > 0 and full["es_cpu_us_per_doc"] > 0 and full["cpu_seconds"]["sync_process"] > 0
    assert 0 < full["first_bulk_seconds"] < full["seconds"] and same["first_bulk_seconds"] is None
    assert scenario["idle"]["daemon"]["pss_mb"] > 0 and scenario["idle"]["warm_process"]["rss_mb"] > 0
    [folder] = results["directory"]
    assert folder["results"]["ours_full"]["ok"] and folder["results"]["ours_nochange"]["ok"], folder
    many = results["many_connectors"]
    assert many["ok"] and many["connectors"] == 3 and many["docs_per_s"] > 0 and many["peak_pss_mb"] > 0, many
    statuses = {t["key"]: t["status"] for t in results["targets"]}
    assert statuses["writes_nothing"] == "MET" and statuses["ratio_1m"] == "NOT MEASURED"
    assert statuses["fixed_cost"] == "NOT MEASURED" and statuses["many_connectors"] == "NOT MEASURED"  # 3x40
    table = (tmp_path / "smoke.md").read_text()
    assert "| scenario | method |" in table and "ES ceiling" in table
    assert "| 300 x 1KB | " in table and "| scenario | ceiling docs/s | ours, full sync |" in table  # the summary
    assert "200 x 1KB keys (redis source)" in table
    assert "Directory source, " in table and "Many small connectors" in table and "Elastic's connector service" in table
    load = results["machine"]["load"]
    assert load["loadavg_1m"]["samples"] >= 1 and load["cpu_seconds"]["benchmark"] > 0
    assert load["cpu_seconds"]["elasticsearch"] > 0 and 0 <= load["others_cpu_share"] <= 1
    assert "Load during the run" in table and ("**MISSED**" in table or "**MET**" in table)
    assert (tmp_path / "smoke.png").stat().st_size > 1000


def test_bench_report_when_runners_compared_then_one_row_per_runner_and_sync_with_memory_by_role():
    from bench.report import markdown
    from bench.runners import RUNNER_LABELS

    sync = {"seconds": 5.0, "docs_per_s": 20000.0, "peak_rss_mb": 800.0, "peak_anon_mb": 600.0, "max_processes": 5,
            "peak_rss_by_role_mb": {"daemon": 224.0, "sync_process": 232.0, "worker_pool": 300.0}, "ok": True}
    results = {"started_at": "t", "machine": {"cpus": 2, "memory_gb": 1, "es_version": "9", "es_heap_gb": 1,
                                              "python": "3", "beam": "2", "elasticsearch_py": "9"},
               "pipeline_settings": "", "options": {"partitions": 2}, "scenarios": [],
               "runners": {"label": "100k x 1KB", "partitions": 2, "runs": [
                   {"runner": "local", "label": RUNNER_LABELS["local"], "syncs": {"ours_full": sync}},
                   {"runner": "prism", "label": RUNNER_LABELS["prism"],
                    "syncs": {"ours_full": sync, "ours_nochange": {**sync, "ok": False}}},
                   {"runner": "prism", "label": RUNNER_LABELS["prism"], "skipped": "Prism is not built"}]}}

    rows = [line for line in markdown(results).splitlines() if line.startswith("| ") and "| seconds |" not in line]

    assert len(rows) == 4
    assert rows[0].startswith(f"| {RUNNER_LABELS['local']} | full sync | 5.0 | 20,000 | 800 | 600 | 5 |")
    assert "worker_pool 300" in rows[1] and "no-change resync CHECK FAILED" in rows[2]
    assert "skipped: Prism is not built" in rows[3]


def test_bench_targets_when_scenarios_measured_then_each_met_or_missed_from_the_same_run():
    from bench.directory import ELASTIC_SERVICE
    from bench.targets import TARGETS, evaluate

    def scenario(count, full, ceiling, nochange, pss=200.0):
        return {"label": f"{count}", "count": count, "doc_size": 1024, "results": {
            "ceiling": {"docs_per_s": ceiling},
            "ours_full": {"seconds": count / full, "docs_per_s": full, "ratio_to_ceiling": full / ceiling,
                          "first_bulk_seconds": 0.3, "peak_pss_mb": pss, "peak_rss_mb": pss + 100,
                          "cpu_us_per_doc": 9.0, "es_cpu_us_per_doc": 40.0, "ok": True},
            "ours_nochange": {"seconds": nochange, "speedup_vs_full": count / full / nochange, "peak_pss_mb": pss,
                              "ok": True}},
            "idle": {"daemon": {"pss_mb": 40.0, "rss_mb": 50.0}}}

    results = {"ingest_pipeline": {"name": "search-default-ingestion"}, "scenarios": [
        scenario(10_000, 20_000, 40_000, 0.6), scenario(100_000, 30_000, 40_000, 0.5, pss=260.0),
        scenario(1_000_000, 33_000, 40_000, 2.5)], "directory": []}
    statuses = {t["key"]: t["status"] for t in evaluate(results)}
    many = {"connectors": 24, "files": 2000, "seconds": 10.0, "docs_per_s": 4800.0, "speedup_vs_elastic": 3.35,
            "peak_pss_mb": 290.0, "peak_rss_mb": 500.0, "concurrency": 2, "ok": True,
            "elastic_service": ELASTIC_SERVICE["many_connectors"]}
    assert {t["key"]: t["status"] for t in evaluate({**results, "many_connectors": many})}["many_connectors"] == "MET"
    assert {t["key"]: t["status"] for t in evaluate({**results, "many_connectors": {**many, "peak_pss_mb": 310.0}})
            }["many_connectors"] == "MISSED"

    assert [key for key, _ in TARGETS] == list(statuses)
    assert statuses["fixed_cost"] == statuses["resync_10k"] == statuses["ratio_10k"] == "MET"
    assert statuses["ratio_100k"] == "MET" and statuses["ratio_1m"] == "MET" and statuses["cpu_1m"] == "MET"
    assert statuses["resync_100k"] == "MET" and statuses["resync_1m"] == "MET"
    assert statuses["memory_100k_1m"] == "MISSED"  # 260 MB at 100k
    assert statuses["idle_daemon"] == "MET" and statuses["writes_nothing"] == "MET"
    assert statuses["dir_100k"] == statuses["many_connectors"] == "NOT MEASURED"


def test_bench_report_when_source_scenario_then_its_table_and_summary_row_against_the_ceiling():
    from bench.report import markdown

    full = {"seconds": 50.0, "docs_per_s": 2000.0, "mb_per_s": 2.0, "indexed": 100000, "deleted": 0, "ok": True,
            "peak_pss_mb": 300.0, "peak_rss_mb": 400.0, "cpu_us_per_doc": 500.0, "es_cpu_us_per_doc": 40.0}
    same = {**full, "seconds": 10.0, "indexed": 0, "speedup_vs_full": 5.0, "ok": False}
    results = {"started_at": "t", "machine": {"cpus": 2, "memory_gb": 1, "es_version": "9", "es_heap_gb": 1,
                                              "python": "3", "beam": "2", "elasticsearch_py": "9"},
               "pipeline_settings": "", "options": {"partitions": 2},
               "scenarios": [{"label": "100k x 1KB", "count": 100000, "doc_size": 1024,
                              "results": {"ceiling": {"docs_per_s": 8000.0, "seconds": 12.5}}}],
               "sources": [{"label": "100k x 1KB blobs (azure_blob_storage, Azurite)", "server": "Azurite (local)",
                            "count": 100000, "doc_size": 1024, "upload": {"uploaded": 0, "seconds": 0.0,
                                                                          "reused": 100000},
                            "results": {"ours_full": full, "ours_nochange": same}}]}

    text = markdown(results)

    assert "100k x 1KB blobs (azure_blob_storage, Azurite) (Azurite (local), uploaded before the clock" in text
    assert "ceiling: the 100,000 x 1 KB scenario's, 8,000 docs/s" in text
    assert "| ours: full sync | 50.00 | 2,000 | 2.0 | 0.25 |" in text  # 2,000 / 8,000 docs/s
    assert "CHECK FAILED" in text
    assert "| 100k x 1KB blobs (azure_blob_storage, Azurite) | 8,000 | 2,000 docs/s (50.00 s) | 0.25 |" in text
