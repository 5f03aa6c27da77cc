"""``python -m bench``: elastic-ingest measured against Elasticsearch's ceiling and the usual loaders.

For each scenario (N documents of ~S bytes from the seeded synthetic source), on the same
cluster, with the same documents, one after the other:

1. ``ceiling``: pre-serialized NDJSON ``_bulk`` bodies posted by concurrent HTTP clients;
2. ``parallel_bulk`` and ``streaming_bulk``: elasticsearch-py helpers, as written by hand;
3. ``ours_full``: a full sync through the real path (connector and job made with the CLI,
   run by an ``elastic-ingest --action poll`` daemon process, Beam on the local runner),
   timed from the job's ``started_at`` to its ``completed_at``; then ``ours_nochange``
   (the same sync again), ``ours_nochange_cached`` (once more: the index was not written
   since the last scan, so its cached digests are used) and ``ours_changed`` (version 1
   of the source: 1% of the documents changed, 1% removed).

The ``dir`` source on a folder of ``--dir`` files of ~1 KB (full sync and no-change
resync, bench/directory.py), the same files on the Samba share read by the ``network_drive``
source over SMB (``--smb``, bench/network_drive.py) and many small ``dir`` connectors requested at once (``--many``,
beside the figures of Elastic's connector service recorded in issue 15) run right after the
scenarios of up to 100k small documents, whose ceiling they are compared with. Then the same source
read as 1, 2 and 4 partitions; the same sync (full, then no change)
on Prism beside the in-process runner, with the memory of every process it runs in
(``--runners``, on ``--runners-size`` documents, default 100k; see bench/runners.py); and
optionally a settings sweep (``--tune``). Each target of issue 15 is then judged MET or
MISSED from this run (bench/targets.py), and the machine's load over the run is recorded
(bench/load.py). Results: ``bench/results/run-<time>.json`` plus ``latest.json``,
``latest.md`` (table) and ``latest.png`` (chart). See docs/benchmarks.md.

Example usage::

    python -m bench --es-url http://127.0.0.1:9210                 # everything, every target (~30 min)
    python -m bench --quick                                        # 10k and 100k, small dir scenarios
    python -m bench --sizes 100k --tune --no-partitions            # settings sweep
    python -m bench --set bulk.max_docs=2000 --set direct_num_workers=2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench.baselines import Dataset, ceiling, helpers_bulk, index_ops, prepare_bodies, settle
from bench.azure import blobs_scenario
from bench.directory import folder_scenario, many_connectors
from bench.redis import redis_scenario
from bench.stream import stream_markdown, stream_scenario
from bench.network_drive import ShareTarget
from bench.load import MachineLoad
from bench.ours import REPO, Service, ensure_ingest_pipeline
from bench.targets import evaluate as evaluate_targets
from bench.report import annotate, chart, markdown
from bench.runners import RUNNER_LABELS, PrismServices
from pipelines.settings import PipelineConfig
from sources.synthetic import variant_counts

__all__ = ["main", "parse_count", "DEFAULT_PIPELINE", "TUNING"]

MB = 1_000_000
#: The shipped defaults (pipelines.settings.PipelineConfig, as config.yml ``pipeline:``
#: writes them out); --set overrides them.
DEFAULT_PIPELINE: dict[str, Any] = PipelineConfig().model_dump(include={
    "runner", "direct_num_workers", "direct_running_mode", "bulk", "read_batch_size", "scan_slices"})
#: --quick: a run of a few minutes (no 1M, no large documents, small directory scenarios).
QUICK: dict[str, Any] = {"sizes": "10k,100k", "large": "0", "dir": "10k", "many": "6x500", "redis": "10k",
                         "no_partitions": True,
                         "no_runners": True}
#: The settings sweep of --tune: (name, overrides of the pipeline settings).
TUNING: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("direct_running_mode=multi_processing, workers=2",
     {"direct_running_mode": "multi_processing", "direct_num_workers": 2}),
    ("direct_running_mode=multi_threading, workers=2",
     {"direct_running_mode": "multi_threading", "direct_num_workers": 2}),
    ("bulk.max_docs=500", {"bulk": {"max_docs": 500}}),
    ("bulk.max_docs=2000", {"bulk": {"max_docs": 2000}}),
    ("bulk.max_docs=5000", {"bulk": {"max_docs": 5000}}),
    ("bulk.max_in_flight=1", {"bulk": {"max_in_flight": 1}}),
    ("bulk.max_in_flight=8", {"bulk": {"max_in_flight": 8}}),
    ("read_batch_size=2000", {"read_batch_size": 2000}),
]


def parse_count(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    factor = 1
    if text.endswith("k"):
        factor, text = 1_000, text[:-1]
    elif text.endswith("m"):
        factor, text = 1_000_000, text[:-1]
    return int(float(text) * factor)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _dotted(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY=VALUE, got {pair!r}")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _flat(settings: dict[str, Any], prefix: str = "") -> str:
    items = []
    for key, value in settings.items():
        if isinstance(value, dict):
            items.append(_flat(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={value}")
    return ", ".join(items)


def machine_facts(es: Any) -> dict[str, Any]:
    import apache_beam
    import elasticsearch
    import psutil

    node = next(iter(es.nodes.info(metric="jvm,os")["nodes"].values()))
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / (1 << 30), 1),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "es_version": node.get("version"),
        "es_heap_gb": round(node["jvm"]["mem"]["heap_max_in_bytes"] / (1 << 30), 2),
        "es_available_processors": (node.get("os") or {}).get("available_processors"),
        "python": platform.python_version(), "beam": apache_beam.__version__,
        "elasticsearch_py": ".".join(map(str, elasticsearch.__versionstr__.split(".")[:3]))
        if hasattr(elasticsearch, "__versionstr__") else str(elasticsearch.__version__),
        "platform": platform.platform(),
    }


def _rates(result: dict[str, Any], docs: int, doc_bytes: int | None, ceiling_rate: float | None,
           throughput: bool = True) -> dict[str, Any]:
    seconds = result.get("seconds") or 0
    if seconds > 0:
        result["docs_per_s"] = round(docs / seconds, 1)
        if throughput and doc_bytes:
            result["mb_per_s"] = round(doc_bytes / seconds / MB, 2)
        if throughput and ceiling_rate:
            result["ratio_to_ceiling"] = round(result["docs_per_s"] / ceiling_rate, 3)
    return result


def _doc_bytes(dataset: Dataset, workdir: Path) -> int:
    path = workdir / "sizing.ndjson"
    _, size = prepare_bodies(dataset, "sizing", str(path), max_docs=1000, max_bytes=8 << 20)
    path.unlink(missing_ok=True)
    return size


class Bench:
    def __init__(self, args: argparse.Namespace):
        from transforms.es_client import ElasticsearchConnection

        self.args = args
        self.es_url = args.es_url
        self.es = ElasticsearchConnection(hosts=(args.es_url,), request_timeout=600).client()
        self.run_id = uuid.uuid4().hex[:6]
        self.workdir = Path(tempfile.mkdtemp(prefix="elastic-ingest-bench-"))
        self.pipeline = _merge(DEFAULT_PIPELINE, _dotted(args.set or []))
        #: service: settings of our daemons (--service KEY=VALUE), e.g. warm_sync_processes=false
        self.service_overrides = _dotted(args.service or [])
        self.log = args.log
        self.ingest_pipeline = ensure_ingest_pipeline(self.es)
        self.on_progress = None
        self.current: dict[str, Any] = {}

    def progress(self) -> None:
        """Write what the current scenario measured so far (see _checkpoint)."""
        if self.on_progress is not None:
            self.on_progress(self.current)

    def say(self, message: str) -> None:
        print(f"[bench {datetime.now(timezone.utc):%H:%M:%S}] {message}", file=self.log, flush=True)

    # -- scenarios -------------------------------------------------------------------
    def ours(self, dataset: Dataset, *, partitions: int, pipeline: dict[str, Any], tag: str,
             resyncs: bool = True, into: dict[str, Any] | None = None, stop_after: str | None = None,
             others: dict[str, int] | None = None) -> dict[str, Any]:
        """Our syncs of ``dataset``: full, then (``resyncs``) no change, no change again, changed;
        ``stop_after`` one of ``ours_full``, ``ours_nochange``... ends there."""
        connector_id = f"bench-{tag}-{self.run_id}"
        index = f"bench-ours-{tag}-{self.run_id}"
        self.es.indices.delete(index=index, ignore_unavailable=True)
        service = Service(self.es_url, self.workdir / connector_id, pipeline=pipeline, connector_ids=[connector_id],
                          others=others, service=self.service_overrides)
        config = {"count": dataset.count, "doc_size": dataset.doc_size, "seed": dataset.seed,
                  "partitions": partitions, "version": 0}
        service.create_connector(connector_id, index, config)
        out: dict[str, Any] = {} if into is None else into
        try:
            with service:
                out["idle"] = service.idle  # the service's memory before its first sync
                settle(self.es)
                self.say(f"  ours: full sync of {dataset.label} ({partitions} partition(s))")
                full = out["ours_full"] = service.sync(self.es, connector_id)
                full["ok"] = (full["status"] == "completed" and full["total"] == dataset.count
                              and full["indexed"] == dataset.count)
                self.progress()
                if not resyncs or stop_after == "ours_full":
                    return out
                settle(self.es)
                before = index_ops(self.es, index)
                self.say("  ours: no-change resync")
                same = out["ours_nochange"] = service.sync(self.es, connector_id)
                after = index_ops(self.es, index)
                same["index_ops_during"] = {k: after[k] - before[k] for k in after}
                same["speedup_vs_full"] = round(full["seconds"] / same["seconds"], 2) if same["seconds"] else None
                same["ok"] = (same["status"] == "completed" and same["indexed"] == 0 and same["deleted"] == 0
                              and not any(same["index_ops_during"].values()))
                self.progress()
                if stop_after == "ours_nochange":
                    return out
                # The steady state of a scheduled sync: nothing was written since the last
                # scan, so the index's cached digests are used and the index is not read.
                settle(self.es)
                self.say("  ours: no-change resync again (index digests cached)")
                again = out["ours_nochange_cached"] = service.sync(self.es, connector_id)
                again["speedup_vs_full"] = round(full["seconds"] / again["seconds"], 2) if again["seconds"] else None
                again["ok"] = (again["status"] == "completed" and again["indexed"] == 0 and again["deleted"] == 0
                               and bool(again.get("index_digests_from_cache")))
                self.progress()
                expected = variant_counts(dataset.count, seed=dataset.seed, version=1)
                service.update_connector(connector_id, {"version": 1})
                settle(self.es)
                self.say(f"  ours: resync with {expected['changed']} changed and {expected['removed']} removed")
                changed = out["ours_changed"] = service.sync(self.es, connector_id)
                changed["expected"] = expected
                changed["ok"] = (changed["status"] == "completed" and changed["indexed"] == expected["changed"]
                                 and changed["deleted"] == expected["removed"] and changed["total"] == expected["present"])
        finally:
            self.es.indices.delete(index=index, ignore_unavailable=True)
            service.remove_connector(self.es, connector_id)
        return out

    def ceiling(self, dataset: Dataset, tag: str) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        tries = []
        for clients in self.args.clients:
            self.say(f"  ceiling: {dataset.label}, {clients} clients")
            result = ceiling(self.es, self.es_url, dataset, f"bench-ceiling-{tag}-{self.run_id}", clients=clients,
                             max_docs=self.pipeline["bulk"]["max_docs"], max_bytes=self.pipeline["bulk"]["max_bytes"],
                             workdir=str(self.workdir), pipeline=self.ingest_pipeline["name"])
            tries.append({"clients": clients, "seconds": result["seconds"]})
            if best is None or result["seconds"] < best["seconds"]:
                best = result
        assert best is not None
        best["tries"] = tries
        return best

    def scenario(self, dataset: Dataset) -> dict[str, Any]:
        tag = f"{dataset.count}x{dataset.doc_size}"
        self.say(f"scenario {dataset.label}")
        results: dict[str, Any] = {}
        self.current = {"label": dataset.label, "count": dataset.count, "doc_size": dataset.doc_size,
                        "results": results}
        doc_bytes = None
        if not self.args.no_baselines:
            results["ceiling"] = self.ceiling(dataset, tag)
            doc_bytes = results["ceiling"]["doc_bytes"]
            self.progress()
            for kind in () if self.args.no_helpers else ("parallel_bulk", "streaming_bulk"):
                self.say(f"  {kind}")
                results[kind] = helpers_bulk(self.es_url, dataset, f"bench-{kind.replace('_', '')}-{tag}-{self.run_id}",
                                             kind=kind, es_admin=self.es, pipeline=self.ingest_pipeline["name"])
                self.progress()
        else:
            doc_bytes = _doc_bytes(dataset, self.workdir)
        self.ours(dataset, partitions=self.args.partitions, pipeline=self.pipeline, tag=tag, into=results)
        ceiling_rate = None
        if "ceiling" in results:
            _rates(results["ceiling"], dataset.count, doc_bytes, None)
            ceiling_rate = results["ceiling"]["docs_per_s"]
            results["ceiling"]["ratio_to_ceiling"] = 1.0
        for key in ("parallel_bulk", "streaming_bulk", "ours_full"):
            if key in results:
                _rates(results[key], dataset.count, doc_bytes, ceiling_rate)
        for key in ("ours_nochange", "ours_nochange_cached"):
            if key in results:
                _rates(results[key], dataset.count, doc_bytes, ceiling_rate, throughput=False)
        if "ours_changed" in results:
            _rates(results["ours_changed"], results["ours_changed"]["expected"]["present"], doc_bytes, ceiling_rate,
                   throughput=False)
        idle = results.pop("idle", None)
        for key, r in results.items():
            self.say(f"  -> {key}: {r.get('seconds')} s, {r.get('docs_per_s')} docs/s, "
                     f"x{r.get('ratio_to_ceiling')}, peak {r.get('peak_rss_mb')} MB RSS / {r.get('peak_pss_mb')} MB "
                     f"PSS, first _bulk {r.get('first_bulk_seconds')} s, CPU {r.get('cpu_us_per_doc')} us/doc "
                     f"(Elasticsearch {r.get('es_cpu_us_per_doc')}), ok={r.get('ok')}")
        return {"label": dataset.label, "count": dataset.count, "doc_size": dataset.doc_size, "seed": dataset.seed,
                "doc_bytes": doc_bytes, "partitions": self.args.partitions, "results": results, "idle": idle}

    def partitions(self, dataset: Dataset, ceiling_rate: float | None, doc_bytes: int | None) -> dict[str, Any]:
        self.say(f"parallel reads: {dataset.label} as {self.args.partition_counts} partitions")
        if ceiling_rate is None and not self.args.no_baselines:
            c = self.ceiling(dataset, f"p{dataset.count}")
            doc_bytes = c["doc_bytes"]
            ceiling_rate = round(dataset.count / c["seconds"], 1)
        doc_bytes = doc_bytes or _doc_bytes(dataset, self.workdir)
        runs = []
        for parts in self.args.partition_counts:
            r = self.ours(dataset, partitions=parts, pipeline=self.pipeline, tag=f"p{parts}-{dataset.count}",
                          resyncs=False)["ours_full"]
            r["partitions"] = parts
            runs.append(_rates(r, dataset.count, doc_bytes, ceiling_rate))
            self.say(f"  -> {parts} partition(s): {r['seconds']} s, {r.get('docs_per_s')} docs/s, "
                     f"x{r.get('ratio_to_ceiling')}, peak {r['peak_rss_mb']} MB")
        return {"label": dataset.label, "count": dataset.count, "ceiling_docs_per_s": ceiling_rate, "runs": runs}

    def runners(self, dataset: Dataset) -> dict[str, Any]:
        """The same full sync and no-change resync on each of ``--runners``, one after the other."""
        self.say(f"runners: {dataset.label} on {', '.join(self.args.runners)}")
        doc_bytes = _doc_bytes(dataset, self.workdir)
        runs = []
        with PrismServices() as prism:
            for name in self.args.runners:
                entry: dict[str, Any] = {"runner": name, "label": RUNNER_LABELS[name]}
                runs.append(entry)
                if name == "prism" and not prism.available:
                    entry["skipped"] = prism.why_not
                    self.say(f"  -> {name}: skipped ({prism.why_not})")
                    continue
                on_prism = name == "prism"
                syncs = self.ours(dataset, partitions=self.args.partitions,
                                  pipeline=prism.pipeline(self.pipeline) if on_prism else self.pipeline,
                                  tag=f"r{name}-{dataset.count}", stop_after="ours_nochange",
                                  others=prism.pids() if on_prism else None)
                entry["idle"] = syncs.pop("idle", None)  # the service before its first sync, not a sync
                for key, r in syncs.items():
                    _rates(r, dataset.count, doc_bytes, None, throughput=key == "ours_full")
                    self.say(f"  -> {name} {key}: {r.get('seconds')} s, {r.get('docs_per_s')} docs/s, "
                             f"peak {r.get('peak_rss_mb')} MB {r.get('peak_rss_by_role_mb')}, ok={r.get('ok')}")
                entry["syncs"] = syncs
        return {"label": dataset.label, "count": dataset.count, "partitions": self.args.partitions, "runs": runs}

    def tuning(self, dataset: Dataset) -> dict[str, Any]:
        self.say(f"tuning sweep on {dataset.label}")
        before = self.ceiling(dataset, f"t{dataset.count}")
        runs = []
        wanted = [w.strip() for w in (self.args.tune_variants or "").split(",") if w.strip()]
        for name, overrides in TUNING:
            if wanted and name not in wanted and not any(w in name for w in wanted):
                continue
            settings = _merge(self.pipeline, overrides)
            r = self.ours(dataset, partitions=self.args.partitions, pipeline=settings,
                          tag=f"t{len(runs)}-{dataset.count}", resyncs=False)["ours_full"]
            r["settings"] = name
            r["pipeline"] = settings
            runs.append(r)
            self.say(f"  -> {name}: {r['seconds']} s, peak {r['peak_rss_mb']} MB")
        after = self.ceiling(dataset, f"t{dataset.count}")
        rate = round(dataset.count / ((before["seconds"] + after["seconds"]) / 2), 1)
        for r in runs:
            _rates(r, dataset.count, before["doc_bytes"], rate)
        return {"label": dataset.label, "count": dataset.count, "partitions": self.args.partitions,
                "ceiling_docs_per_s": rate, "ceiling_seconds": [before["seconds"], after["seconds"]], "runs": runs}

    def close(self) -> None:
        if self.ingest_pipeline["created_by_bench"]:
            self.es.ingest.delete_pipeline(id=self.ingest_pipeline["name"])
        self.es.close()
        if self.args.keep_workdir:
            self.say(f"daemon configs and logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _many_shape(text: str | None) -> tuple[int, int] | None:
    """``--many 24x2000`` as (connectors, files per connector)."""
    if not text or text.strip().lower() in ("none", "0"):
        return None
    connectors, sep, files = text.lower().partition("x")
    if not sep:
        raise SystemExit(f"--many: expected CONNECTORSxFILES, e.g. 24x2000, got {text!r}")
    return parse_count(connectors), parse_count(files)


def _checkpoint(results: dict[str, Any], out: Path, stem: str) -> None:
    """Partial results after each scenario (a long run that is stopped keeps what it measured)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.partial.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


#: --stream-only: the continuous sync's scenario and nothing else.
STREAM_ONLY: dict[str, Any] = {"stream": True, "sizes": "none", "large": "0", "dir": "0", "many": "none", "redis": "0",
                               "no_partitions": True, "no_runners": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--es-url", default=os.environ.get("ES_URL", f"http://127.0.0.1:{os.environ.get('ES_PORT', '9210')}"),
                        help="the benchmark's own Elasticsearch (default: $ES_URL or port $ES_PORT or 9210)")
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: --sizes 10k,100k --large 0 --dir 10k --many 6x500 --no-partitions "
                             "--no-runners (options given beside it win)")
    parser.add_argument("--sizes", default="10k,100k,1M",
                        help="document counts of ~--doc-size documents, e.g. 10k,100k,1M (10M on request); 'none' to skip")
    parser.add_argument("--doc-size", type=int, default=1024, help="bytes per small document (default 1024)")
    parser.add_argument("--large", default="10k", help="count of ~--large-doc-size documents (default 10k; 0: skip)")
    parser.add_argument("--large-doc-size", type=int, default=100 * 1024)
    parser.add_argument("--partitions", type=int, default=2, help="source partitions in the scenarios (default 2)")
    parser.add_argument("--partitions-size", default="100k", help="documents for the parallel-reads runs (0: skip)")
    parser.add_argument("--partition-counts", default="1,2,4")
    parser.add_argument("--no-partitions", action="store_true", help="skip the parallel-reads runs")
    parser.add_argument("--clients", default="4", help="concurrent HTTP clients for the ceiling; a list keeps the best")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="pipeline setting for our daemon, e.g. bulk.max_docs=2000 (repeatable)")
    parser.add_argument("--runners", default="local,prism",
                        help="runners the same sync is compared on: local (FnApiRunner), prism (default: both)")
    parser.add_argument("--runners-size", default="100k", help="documents for the runners comparison")
    parser.add_argument("--no-runners", action="store_true", help="skip the runners comparison")
    parser.add_argument("--service", action="append", metavar="KEY=VALUE",
                        help="service setting for our daemons, e.g. warm_sync_processes=false (repeatable)")
    parser.add_argument("--dir", default="100k", help="files of ~1 KB for the directory source's scenario "
                                                     "(default 100k; 0: skip)")
    parser.add_argument("--redis", default="100k", help="keys of ~1 KB for the redis source's scenario, on "
                                                       "scripts/servers/redis (default 100k; 0: skip)")
    parser.add_argument("--mysql-stream", type=float, default=0.0, metavar="SECONDS",
                        help="seconds of --stream-latency-rate changes/s through a mysql connector's continuous "
                             "sync, on scripts/servers/mysql (MYSQL_PORT; default 0: skip; bench/stream_latency.py)")
    parser.add_argument("--smb", default="0", help="files of ~1 KB on the Samba share for the network_drive "
                                                  "source's scenario (e.g. 100k; default 0: skip)")
    parser.add_argument("--many", default="24x2000", metavar="CONNECTORSxFILES",
                        help="many small dir connectors requested at once (default 24x2000; 'none': skip)")
    parser.add_argument("--azure", default="0", help="blobs of ~1 KB for the azure_blob_storage source's scenario, "
                                                     "on Azurite (scripts/servers/azurite start), e.g. 100k "
                                                     "(default 0: skip)")
    parser.add_argument("--stream", action="store_true",
                        help="also run the continuous sync's scenario on PostgreSQL (bench/stream.py; off by default)")
    parser.add_argument("--stream-only", action="store_true", help="the continuous sync's scenario only")
    parser.add_argument("--stream-duration", type=float, default=300, help="seconds of sustained load (default 300)")
    parser.add_argument("--stream-rate", type=float, default=2000, help="changes/s of the sustained load (default 2000)")
    parser.add_argument("--stream-latency-rate", type=float, default=200, help="changes/s of the latency phase")
    parser.add_argument("--stream-latency-seconds", type=float, default=30, help="seconds of the latency phase")
    parser.add_argument("--stream-rows", default="20k", help="rows of ~1 KB in the table before the stream starts")
    parser.add_argument("--stream-no-kill", action="store_true", help="skip the kill -9 under load")
    parser.add_argument("--tune", action="store_true", help="also run the settings sweep on --tune-size")
    parser.add_argument("--tune-size", default="100k")
    parser.add_argument("--tune-variants", default=None,
                        help="comma-separated names (or parts of names) of the sweep's variants to run (default: all)")
    parser.add_argument("--no-baselines", action="store_true", help="ours only (no ceiling, no helpers)")
    parser.add_argument("--no-helpers", action="store_true", help="skip parallel_bulk and streaming_bulk")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the daemons' configs and logs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="results folder")
    parser.add_argument("--name", default=None, help="results file stem (default run-<UTC time>)")
    parser.add_argument("--allow-10m", action="store_true", help="allow 10M-document scenarios")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # its values become the defaults: options given beside it win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.stream_only:
        parser.set_defaults(**STREAM_ONLY)
        args = parser.parse_args(argv)
    args.log = sys.stderr
    sizes = [] if args.sizes.strip().lower() in ("", "none", "0") else [parse_count(s) for s in args.sizes.split(",")]
    if any(n > 1_000_000 for n in sizes) and not args.allow_10m:
        raise SystemExit("sizes over 1M need --allow-10m (they take hours and tens of GB of disk)")
    args.clients = [int(c) for c in str(args.clients).split(",")]
    args.partition_counts = [int(c) for c in args.partition_counts.split(",")]
    large = parse_count(args.large)
    partitions_size = 0 if args.no_partitions else parse_count(args.partitions_size)
    args.runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    unknown = sorted(set(args.runners) - set(RUNNER_LABELS))
    if unknown:
        raise SystemExit(f"--runners: unknown {', '.join(unknown)}; expected some of {', '.join(RUNNER_LABELS)}")
    runners_size = 0 if args.no_runners else parse_count(args.runners_size)
    dir_count = parse_count(args.dir)
    redis_count = parse_count(args.redis)
    azure_count = parse_count(args.azure)
    smb_count = parse_count(args.smb)
    many = _many_shape(args.many)
    bench = Bench(args)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "schema": 1, "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "es_url": args.es_url,
        "machine": machine_facts(bench.es), "pipeline_settings": _flat(bench.pipeline),
        "pipeline": bench.pipeline, "ingest_pipeline": bench.ingest_pipeline,
        "options": {"sizes": sizes, "doc_size": args.doc_size, "large": large, "large_doc_size": args.large_doc_size,
                    "partitions": args.partitions, "partitions_size": partitions_size,
                    "partition_counts": args.partition_counts, "clients": args.clients, "seed": args.seed,
                    "tune": args.tune, "baselines": not args.no_baselines, "helpers": not args.no_helpers,
                    "runners": args.runners if runners_size else [], "runners_size": runners_size,
                    "dir": dir_count, "many": args.many, "azure": azure_count, "redis": redis_count, "smb": smb_count, "service": bench.service_overrides},
        "scenarios": [], "directory": [], "sources": [],
        "service_idling": bench.service_overrides.get("idling", 1),
    }
    t0 = time.monotonic()
    load = MachineLoad(bench.es).start()
    stem = args.name or f"run-{started:%Y%m%dT%H%M%SZ}"
    bench.on_progress = lambda current: _checkpoint({**results, "in_progress": current}, Path(args.out), stem)
    try:
        datasets = [Dataset(n, args.doc_size, args.seed) for n in sizes]
        if large:
            datasets.append(Dataset(large, args.large_doc_size, args.seed))
        # The directory scenarios right after the ceiling they are compared with (up to 100k
        # documents of ~1 KB), before the long ones leave the node millions of writes behind.
        early = [d for d in datasets if d.count <= max(dir_count, smb_count, 100_000) and d.doc_size == args.doc_size]
        for dataset in early:
            results["scenarios"].append(bench.scenario(dataset))
            _checkpoint(results, Path(args.out), stem)
        if dir_count:
            results["directory"].append(folder_scenario(bench, count=dir_count))
            _checkpoint(results, Path(args.out), stem)
        if smb_count:  # the network drive's folder scenario, beside the dir source's
            results["directory"].append(folder_scenario(bench, count=smb_count, target=ShareTarget()))
            _checkpoint(results, Path(args.out), stem)
        if redis_count:  # the sources on their servers, compared with the same ceiling
            results["sources"].append(redis_scenario(bench, count=redis_count))
            _checkpoint(results, Path(args.out), stem)
        if azure_count:
            results["sources"].append(blobs_scenario(bench, count=azure_count))
            _checkpoint(results, Path(args.out), stem)
        if args.mysql_stream > 0:  # commit -> acknowledged / searchable of a continuous sync
            from bench.stream_latency import measure

            results["stream_latency"] = measure(args.es_url, port=int(os.environ.get("MYSQL_PORT", "3307")),
                                                rate=args.stream_latency_rate, seconds=args.mysql_stream, rows=10_000)
            _checkpoint(results, Path(args.out), stem)
        if many:
            results["many_connectors"] = many_connectors(bench, connectors=many[0], files=many[1])
            _checkpoint(results, Path(args.out), stem)
        for dataset in datasets:
            if dataset not in early:
                results["scenarios"].append(bench.scenario(dataset))
                _checkpoint(results, Path(args.out), stem)
        if partitions_size:
            same = next((s for s in results["scenarios"]
                         if s["count"] == partitions_size and s["doc_size"] == args.doc_size), None)
            rate = (same["results"].get("ceiling") or {}).get("docs_per_s") if same else None
            results["partitions"] = bench.partitions(Dataset(partitions_size, args.doc_size, args.seed), rate,
                                                     same["doc_bytes"] if same else None)
        if runners_size:
            results["runners"] = bench.runners(Dataset(runners_size, args.doc_size, args.seed))
            _checkpoint(results, Path(args.out), stem)
        if args.tune:
            results["tuning"] = bench.tuning(Dataset(parse_count(args.tune_size), args.doc_size, args.seed))
        if args.stream:
            results["stream"] = stream_scenario(
                bench, rows=parse_count(args.stream_rows), latency_rate=args.stream_latency_rate,
                latency_seconds=args.stream_latency_seconds, rate=args.stream_rate, duration=args.stream_duration,
                kill=not args.stream_no_kill)
    finally:
        results["machine"]["load"] = load.stop()
        bench.close()
    results["finished_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    results["wall_seconds"] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    annotate(results)
    results["targets"] = evaluate_targets(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    (out / f"{stem}.json").write_text(text, encoding="utf-8")
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    md = markdown(results) + stream_markdown(results.get("stream"))
    (out / f"{stem}.md").write_text(md, encoding="utf-8")
    if results["scenarios"]:
        chart(results, out / f"{stem}.png")
    if args.name is None and results["scenarios"]:
        (out / "latest.json").write_text(text, encoding="utf-8")
        (out / "latest.md").write_text(md, encoding="utf-8")
        shutil.copyfile(out / f"{stem}.png", out / "latest.png")
    print(md)
    print(f"results: {out / (stem + '.json')}", file=sys.stderr)
    failed = [s["label"] + ":" + k for s in results["scenarios"] + results["directory"] + results["sources"]
              for k, r in s["results"].items() if r.get("ok") is False]
    if (results.get("many_connectors") or {}).get("ok") is False:
        failed.append("many connectors")
    failed += [f"runners {run['runner']}:{k}" for run in (results.get("runners") or {}).get("runs", [])
               for k, r in (run.get("syncs") or {}).items() if r.get("ok") is False]
    if failed:
        print(f"checks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
