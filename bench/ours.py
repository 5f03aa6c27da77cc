"""Ours: syncs through the real path, timed as a user sees them.

One :class:`Service` is one ``elastic-ingest --action poll`` daemon process with a config
written for the benchmark (the benchmark's node, the synthetic source, the pipeline
settings under test, ``service.connector_ids`` so that it serves only our connectors).
Connectors are created, changed and synced with the ``elastic-ingest`` CLI, exactly as a
user would; a sync is timed from the job's ``started_at`` (the daemon claimed it) to its
``completed_at``, both written by the daemon. Memory is the peak of the daemon's whole
process tree (daemon + warm process + sync processes + Beam workers) during the job, plus
the trees the job runs in elsewhere (a Prism job service, its worker pool and SDK
workers), as RSS and as PSS (shared pages divided among the processes sharing them); CPU is
the tree's (the sync process reports its own, the daemon's and the warm process's are read
before and after), beside Elasticsearch's own (its node's process CPU) over the same job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.memory import TreeSampler, process_memory, tree_cpu_seconds, tree_processes, tree_rss

__all__ = ["Service", "REPO", "INGEST_PIPELINE", "ensure_ingest_pipeline", "es_cpu_seconds"]

REPO = Path(__file__).resolve().parent.parent
SOURCE_FQN = "sources.synthetic:SyntheticDataSource"
#: Every real cluster has it and new connectors name it: the benchmark's connectors do too.
INGEST_PIPELINE = "search-default-ingestion"


def ensure_ingest_pipeline(es: Any) -> dict[str, Any]:
    """Make sure ``search-default-ingestion`` exists, as on a real cluster; what was found or made.

    A cluster that has it (Elastic's own, with its processors) is used as it is. The
    integ-test build the benchmark's node runs lacks the ingest-common processors the real
    one uses, so there it is created with none: every document still goes through the
    ingest service, as on a real cluster, without the processors' own cost.
    """
    from elasticsearch import NotFoundError

    try:
        found = es.ingest.get_pipeline(id=INGEST_PIPELINE)[INGEST_PIPELINE]
        return {"name": INGEST_PIPELINE, "created_by_bench": False, "processors": len(found.get("processors") or [])}
    except NotFoundError:
        es.ingest.put_pipeline(id=INGEST_PIPELINE, processors=[],
                               description="created by elastic-ingest's benchmark: the real one's processors "
                                           "(ingest-common, attachment) are missing from this build")
        return {"name": INGEST_PIPELINE, "created_by_bench": True, "processors": 0}


class Service:
    """A benchmark daemon and the CLI calls around it."""

    def __init__(self, es_url: str, workdir: Path, *, pipeline: dict[str, Any], connector_ids: list[str],
                 env: dict[str, str] | None = None, others: dict[str, int] | None = None,
                 service: dict[str, Any] | None = None, sources: dict[str, Any] | None = None):
        self.es_url = es_url
        self.others = others  # more process trees the syncs run in (role -> pid), measured with the daemon's
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "daemon.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_PROXY": "*", **(env or {})}
        config = {
            "elasticsearch": {"host": es_url, "request_timeout": 300},
            # idling 1: the setting issue 22's creation -> first _bulk target is judged at.
            "service": {"idling": 1, "heartbeat": 300, "job_progress_interval": 5, "cancel_check_interval": 2,
                        "max_concurrent_syncs": 1, "connector_ids": list(connector_ids), **(service or {})},
            "sources": sources or {"synthetic": SOURCE_FQN},
            # One benchmark node: no replica (the baselines' indices are created the same way).
            "pipeline": {"dead_letters": str(self.workdir / "dead_letters"),
                         "digest_cache_dir": str(self.workdir / "index-digests"),
                         "content_index": {"number_of_replicas": 0}, **pipeline},
        }
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.process: subprocess.Popen | None = None
        self.sampler: TreeSampler | None = None
        self.baseline_rss_mb: float | None = None
        #: The idle service's memory (daemon alone, warm process), measured once it started.
        self.idle: dict[str, Any] = {}
        self.warm = (service or {}).get("warm_sync_processes", True)

    # -- the CLI ---------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300) -> str:
        command = [sys.executable, "-m", "launcher.cli", "-c", str(self.config_path), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"elastic-ingest {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result.stdout

    def create_connector(self, connector_id: str, index: str, configuration: dict[str, Any]) -> None:
        sets = [arg for key, value in configuration.items() for arg in ("--set", f"{key}={value}")]
        self.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "synthetic",
                 "--index-name", index, "--pipeline", INGEST_PIPELINE, "--json", *sets)

    def remove_connector(self, es: Any, connector_id: str) -> None:
        """Delete the connector, its jobs and their progress records: a benchmark leaves no trace."""
        from transforms.progress import PROGRESS_INDEX

        self.cli("--action", "delete-connector", "--connector-id", connector_id)
        jobs = ".elastic-connectors-sync-jobs"
        es.indices.refresh(index=jobs)
        ids = [hit["_id"] for hit in es.search(index=jobs, query={"term": {"connector.id": connector_id}},
                                               size=10000, source=False)["hits"]["hits"]]
        for index, query in ((jobs, {"ids": {"values": ids}}), (PROGRESS_INDEX, {"terms": {"job_id": ids}})):
            es.indices.refresh(index=index, ignore_unavailable=True)
            found = es.search(index=index, query=query, size=10000, source=False, ignore_unavailable=True)
            operations = [{"delete": {"_index": index, "_id": hit["_id"]}} for hit in found["hits"]["hits"]]
            if operations:
                es.bulk(operations=operations, refresh=True)

    def update_connector(self, connector_id: str, configuration: dict[str, Any]) -> None:
        sets = [arg for key, value in configuration.items() for arg in ("--set", f"{key}={value}")]
        self.cli("--action", "update-connector", "--connector-id", connector_id, *sets)

    # -- the daemon ------------------------------------------------------------------
    def start(self) -> "Service":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "-c", str(self.config_path), "--action", "poll"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True,
        )
        self._wait_ready()
        if self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited at once ({self.process.returncode}); see {self.log_path}")
        self.idle = self.idle_memory()
        self.baseline_rss_mb = round(tree_rss(self.process.pid)[0] / (1 << 20), 1)
        self.sampler = TreeSampler(self.process.pid, others=self.others).start()
        return self

    def _wait_ready(self, timeout: float = 180.0) -> None:
        """Until the daemon polled once and (warm syncs) its warm process imported everything."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process is not None and self.process.poll() is None:
            log = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
            if "elastic-ingest serving" in log and (not self.warm or "warm sync process ready" in log):
                time.sleep(1.0)  # a poll or two
                return
            time.sleep(0.2)

    def idle_memory(self) -> dict[str, Any]:
        """RSS and PSS (MB) of the daemon process alone and of its warm process, idle."""
        out: dict[str, Any] = {}
        assert self.process is not None
        for process, role in tree_processes(self.process.pid):
            try:
                rss, pss, _ = process_memory(process)
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue
            out[role] = {"rss_mb": round(rss / (1 << 20), 1), "pss_mb": round(pss / (1 << 20), 1)}
        return out

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- a sync ----------------------------------------------------------------------
    def sync(self, es: Any, connector_id: str, *, job_type: str = "full", timeout: float = 7200) -> dict[str, Any]:
        """Request a sync with the CLI, wait for the daemon to finish it; timings and counters."""
        assert self.sampler is not None and self.process is not None
        self.sampler.reset()
        cpu_before, es_before = tree_cpu_seconds(self.process.pid), es_cpu_seconds(es)
        job_id = json.loads(self.cli("--action", "sync", "--connector-id", connector_id, "--job-type", job_type,
                                     "--json"))["job_id"]
        doc = self.wait_job(es, job_id, timeout)
        cpu_after, es_after = tree_cpu_seconds(self.process.pid), es_cpu_seconds(es)
        return self.measured(doc, job_id, cpu_before, cpu_after, es_after - es_before)

    def wait_job(self, es: Any, job_id: str, timeout: float = 7200) -> dict[str, Any]:
        """The job's document once it ended."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon died ({self.process.returncode}); see {self.log_path}")
            doc = es.get(index=".elastic-connectors-sync-jobs", id=job_id)["_source"]
            if doc.get("status") in ("completed", "error", "canceled"):
                return doc
            time.sleep(0.1)
        raise RuntimeError(f"job {job_id} did not end within {timeout}s; see {self.log_path}")

    def measured(self, doc: dict[str, Any], job_id: str, cpu_before: dict[str, float], cpu_after: dict[str, float],
                 es_cpu: float) -> dict[str, Any]:
        """What one ended job measured: timings, counters, memory, CPU."""
        assert self.sampler is not None
        started = datetime.fromisoformat(doc["started_at"])
        completed = datetime.fromisoformat(doc["completed_at"])
        created = datetime.fromisoformat(doc["created_at"])
        meta = doc.get("metadata") or {}
        seconds = (completed - started).total_seconds()
        cpu = {role: round(cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0), 3) for role in cpu_after}
        cpu["sync_process"] = meta.get("cpu_seconds")
        ours_cpu = sum(v for v in cpu.values() if v)
        docs = max(1, int(meta.get("source_document_count") or doc.get("indexed_document_count") or 0))
        first_bulk = meta.get("first_bulk_sent_at")
        return {
            "job_id": job_id, "status": doc.get("status"), "error": doc.get("error"),
            "seconds": round(seconds, 3),
            "claim_latency_seconds": round((started - created).total_seconds(), 3),
            # What a user waits for: the job document written -> completed.
            "seconds_from_created": round((completed - created).total_seconds(), 3),
            "sync_process_seconds": meta.get("duration_seconds"),
            "indexed": doc.get("indexed_document_count"), "deleted": doc.get("deleted_document_count"),
            "total": doc.get("total_document_count"), "source_documents": meta.get("source_document_count"),
            "unchanged": meta.get("unchanged_document_count"), "bulk_retries": meta.get("bulk_retries"),
            "index_digests_from_cache": meta.get("index_digests_from_cache"),
            "dead_letters": (meta.get("dead_letters") or {}).get("count"),
            "peak_rss_mb": self.sampler.phase_peak_mb, "peak_anon_mb": self.sampler.phase_peak_anon_mb,
            "peak_pss_mb": self.sampler.phase_peak_pss_mb,
            "max_processes": self.sampler.phase_max_processes,
            "peak_rss_by_role_mb": self.sampler.phase_peak_by_role_mb,
            "peak_pss_by_role_mb": self.sampler.phase_peak_pss_by_role_mb,
            "daemon_baseline_rss_mb": self.baseline_rss_mb,
            # Job claimed -> first _bulk sent (None when nothing was written).
            "first_bulk_seconds": round(first_bulk - started.timestamp(), 3) if first_bulk else None,
            "first_bulk_from_created_seconds": round(first_bulk - created.timestamp(), 3) if first_bulk else None,
            "timings": meta.get("timings"),
            "cpu_seconds": cpu, "cpu_us_per_doc": round(ours_cpu / docs * 1e6, 2),
            "es_cpu_seconds": round(es_cpu, 3), "es_cpu_us_per_doc": round(es_cpu / docs * 1e6, 2),
        }


def es_cpu_seconds(es: Any) -> float:
    """CPU seconds Elasticsearch's node processes used so far (summed over the cluster's nodes)."""
    try:
        nodes = es.nodes.stats(metric="process")["nodes"]
    except Exception:  # noqa: BLE001 - unknown: 0 (reported as such)
        return 0.0
    return sum(((n.get("process") or {}).get("cpu") or {}).get("total_in_millis", 0) for n in nodes.values()) / 1000.0
