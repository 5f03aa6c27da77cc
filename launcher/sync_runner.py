"""SyncRunner: run one claimed job in its own process and keep its job document current.

The daemon never runs a pipeline in its own process. For each claimed job a SyncRunner
thread:

1. builds the :class:`~pipelines.job.SyncJob` from the job's connector snapshot and
   config.yml (the source FQN comes from config.yml, never from the document), and
   writes it to a private 0600 file;
2. starts ``python -m pipelines.run JOB_FILE RESULT_FILE`` in a new process group;
3. every ``job_progress_interval`` seconds writes the live counters (summed from the
   workers' progress records) and ``last_seen`` to the job; every
   ``cancel_check_interval`` seconds re-reads the job: ``canceling`` (or a deleted job
   or connector) stops the process at once; a job somebody else ended (the reaper) is
   left alone; an unreachable Elasticsearch does not stop the supervision;
4. writes the end state from the process's result (retried while Elasticsearch is
   unreachable), and releases the connector's lock.

Sensitive configuration values are not in job documents (see
:func:`launcher.protocol.job_snapshot`); they are read from the connector document here.

``suspend()`` (on SIGTERM/SIGINT) stops the process and marks the job ``suspended`` so
any instance picks it up again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError
from elasticsearch import ConnectionError as ESConnectionError

from launcher.config import Config
from launcher.configuration import values_of, with_secrets
from launcher.index_ownership import check_index_ownership
from launcher.privileges import check_privileges
from launcher.secret_refs import resolve_references
from launcher.protocol import (
    FINAL_STATUSES, Claim, finish_job, get_connector, get_job, now_iso, snapshot_filtering, update_connector,
    update_job,
)
from pipelines.job import SyncJob
from sources.errors import ConnectorError, JobGone, SyncRulesError, UnknownServiceType, format_error
from transforms.progress import PROGRESS_INDEX, read_progress
from transforms.sync_rules import validate_rules

__all__ = ["SyncRunner", "build_sync_job"]

_LOGGER = logging.getLogger(__name__)
MIB = 1024 * 1024


def build_sync_job(config: Config, claim: Claim) -> SyncJob:
    """The SyncJob for a claimed job; raises a ConnectorError subclass for a bad document."""
    job = claim.job
    snapshot = job.doc.get("connector") or {}
    if not isinstance(snapshot, dict):
        raise ConnectorError(f"connector: expected an object, got {type(snapshot).__name__}", claim.connector.id)
    for key in ("configuration", "pipeline"):
        if snapshot.get(key) is not None and not isinstance(snapshot.get(key), dict):
            raise ConnectorError(f"connector.{key}: expected an object, got {type(snapshot.get(key)).__name__}",
                                 claim.connector.id)
    service_type = snapshot.get("service_type") or claim.connector.service_type
    fqn = config.sources.get(service_type) if isinstance(service_type, str) else None
    if fqn is None:
        raise UnknownServiceType(
            f"service_type {service_type!r} is not in config.yml sources (known: {', '.join(sorted(config.sources))})",
            claim.connector.id,
        )
    active = snapshot_filtering(snapshot)
    rules = active["rules"]
    if not isinstance(rules, list):
        raise SyncRulesError(f"sync rules are invalid: rules must be a list, got {type(rules).__name__}",
                             claim.connector.id)
    errors = validate_rules(rules)
    validation = active["validation"] if isinstance(active["validation"], dict) else {}
    if not errors and validation.get("state") == "invalid":
        listed = validation.get("errors") if isinstance(validation.get("errors"), list) else []
        errors = [e for e in listed if isinstance(e, dict) and isinstance(e.get("messages"), list)] or [
            {"ids": [], "messages": ["the active rules are marked invalid"]}]
    if errors:
        raise SyncRulesError("sync rules are invalid: " + "; ".join(
            str(m) for e in errors for m in (e.get("messages") or [])), claim.connector.id)
    snippet = active["advanced_snippet"]
    advanced = (snippet.get("value") if isinstance(snippet, dict) else None) or None
    pipeline = snapshot.get("pipeline") or {}
    index_name = snapshot.get("index_name") or claim.connector.index_name
    if not isinstance(index_name, str) or not index_name:
        raise ConnectorError(f"the connector has no index_name (got {index_name!r}); set one before syncing",
                             claim.connector.id)
    live = claim.connector.get("configuration")
    live = live if isinstance(live, dict) else {}
    configuration = snapshot.get("configuration") or live
    # Sensitive values come from the connector document; references there are resolved here.
    configuration = resolve_references(with_secrets(configuration, live), config.secrets)
    typed = values_of(configuration)
    merged = {name: ({**spec, "value": typed.get(name, spec.get("value"))} if isinstance(spec, dict) else spec)
              for name, spec in configuration.items()}
    return SyncJob(
        job_id=job.id,
        connector_id=claim.connector.id,
        job_type=job.job_type,
        index_name=index_name,
        service_type=service_type,
        source_fqn=fqn,
        configuration=merged,
        source_settings=config.source_settings.get(service_type, {}),
        basic_rules=[r for r in rules if isinstance(r, dict)],
        advanced_rules=advanced,
        pipeline_flags={
            "_extract_binary_content": bool(pipeline.get("extract_binary_content", True)),
            "_reduce_whitespace": bool(pipeline.get("reduce_whitespace", True)),
            "_run_ml_inference": bool(pipeline.get("run_ml_inference", False)),
        },
        ingest_pipeline=pipeline.get("name") or None,
        sync_cursor=snapshot.get("sync_cursor") if job.job_type == "incremental" else None,
        language=snapshot.get("language"),
    )


class SyncRunner(threading.Thread):
    """Supervises one sync process for one claimed job (see the module docstring)."""

    def __init__(self, config: Config, es: Elasticsearch, claim: Claim, *, on_done=None):
        super().__init__(name=f"sync-{claim.job.id}", daemon=True)
        self.config = config
        self.es = es
        self.claim = claim
        self.job_id = claim.job.id
        self.connector_id = claim.connector.id
        self.on_done = on_done
        self._suspend = threading.Event()
        self.process: subprocess.Popen | None = None
        self.final_status: str | None = None

    # -- control -------------------------------------------------------------------
    def suspend(self) -> None:
        """Stop the sync and leave the job ``suspended`` (graceful shutdown)."""
        self._suspend.set()
        self._stop_process()

    def _stop_process(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    # -- the thread ----------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - never leave a job in_progress because of us
            _LOGGER.error("job %s: supervisor failed: %s", self.job_id, format_error(exc))
            _LOGGER.debug("supervisor failure", exc_info=True)
            self._stop_process()
            if isinstance(exc, (ESConnectionError, TransportError)):
                _LOGGER.error("job %s: Elasticsearch stayed unreachable; the reaper will end the job", self.job_id)
            elif self.final_status is None:  # an end state already written is not overwritten
                try:
                    self._finish("error", error=format_error(exc))
                except Exception as again:  # noqa: BLE001 - the reaper will end it
                    _LOGGER.error("job %s: could not write its end state: %s", self.job_id, format_error(again))
        finally:
            if self.on_done:
                self.on_done(self)

    def _run(self) -> None:
        service = self.config.service
        pipeline_settings = self.config.pipeline_for(self.connector_id)
        if self.claim.problems:
            self._finish("error", error=format_error(JobGone("; ".join(self.claim.problems))))
            return
        try:
            sync_job = build_sync_job(self.config, self.claim)
            check_privileges(self.es, sync_job.index_name, who="the service's credentials (config.yml elasticsearch)")
            # Re-checked for every job: connector documents may have been written by anyone.
            check_index_ownership(self.es, sync_job.index_name, self.connector_id)
        except Exception as exc:  # noqa: BLE001 - a bad document, bad rules, an index that is not its own
            _LOGGER.warning("job %s: %s", self.job_id, format_error(exc))
            self._finish("error", error=format_error(exc))
            return
        # Imported here, not at module level: they pull in Beam, which the daemon itself
        # never needs (it starts, and stops, seconds faster without it).
        from pipelines.run import write_job_file
        from transforms.dead_letter import dead_letter_folder

        workdir = Path(tempfile.mkdtemp(prefix=f"elastic-ingest-{self.job_id}-"))
        job_file, result_file = workdir / "job.json", workdir / "result.json"
        write_job_file(job_file, sync_job, pipeline_settings, self.config.elasticsearch.connection(),
                       progress_interval=min(service.job_progress_interval, 5.0))
        metadata = {"runner": pipeline_settings.runner, "worker_pid": None,
                    "dead_letters": {"location": dead_letter_folder(pipeline_settings.dead_letters, self.job_id)}}
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # glibc gives each thread (bulk senders, scan slices) its own malloc arena, and
        # freed arenas stay resident: 2 arenas cut a 1M-document resync's peak by ~50 MB.
        env.setdefault("MALLOC_ARENA_MAX", "2")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.run", str(job_file), str(result_file)],
            start_new_session=True, env=env, cwd=os.getcwd(),
        )
        metadata["worker_pid"] = self.process.pid
        _LOGGER.info("job %s: %s sync of connector %s started (pid %s)", self.job_id, sync_job.job_type,
                     self.connector_id, self.process.pid)
        last_progress = last_check = 0.0
        canceled, gone, lost = False, None, None
        while self.process.poll() is None:
            if self._suspend.is_set():
                break
            now = time.monotonic()
            if now - last_check >= service.cancel_check_interval:
                last_check = now
                try:
                    canceled, gone, lost = self._check_job()
                except (ESConnectionError, TransportError, ApiError) as exc:
                    # Elasticsearch is away: the sync goes on (it retries its own writes); so do we.
                    _LOGGER.warning("job %s: cannot check the job document: %s", self.job_id, format_error(exc))
                if canceled or gone or lost:
                    self._stop_process()
                    break
            if now - last_progress >= service.job_progress_interval:
                last_progress = now
                self._write_progress(metadata)
            time.sleep(0.2)
        try:
            if self._suspend.is_set():
                self._stop_process()
                self._finish_suspended()
                return
            if lost:
                # Somebody else decided this job's fate (the reaper, a client): leave both
                # documents alone, the connector's lock may belong to another job by now.
                self.final_status = "lost"
                _LOGGER.warning("job %s: %s; stopped without writing its end state", self.job_id, lost)
                return
            if gone:
                self._finish("error", counters=self._final_counters(sync_job.index_name),
                             error=format_error(JobGone(gone)))
                return
            if canceled:
                self._finish("canceled", counters=self._final_counters(sync_job.index_name))
                return
            self._finish_from_result(result_file, metadata)
        finally:
            # The job file (it holds secrets), the result and whatever a killed sync left.
            shutil.rmtree(workdir, ignore_errors=True)

    # -- job document --------------------------------------------------------------
    def _check_job(self) -> tuple[bool, str | None, str | None]:
        """(canceling?, why the job is gone, why it is no longer ours)."""
        job = get_job(self.es, self.job_id)
        if job is None:
            return False, "the job was deleted while it ran", None
        if job.status in FINAL_STATUSES or job.status in ("pending", "suspended"):
            return False, None, f"the job became {job.status} while it ran here"
        if job.doc.get("worker_hostname") not in (None, self.claim.job.doc.get("worker_hostname")):
            return False, None, f"the job was claimed by {job.doc.get('worker_hostname')}"
        connector = get_connector(self.es, self.connector_id)
        if connector is None or connector.get("deleted"):
            return False, "the connector was deleted while the job ran", None
        return job.status == "canceling", None, None

    def _final_counters(self, index_name: str | None) -> dict[str, Any]:
        """Counters of a job stopped early: the workers' last reports, and the index's size."""
        try:
            self.es.indices.refresh(index=PROGRESS_INDEX, ignore_unavailable=True)
        except Exception:  # noqa: BLE001 - the counters are then at most one interval old
            pass
        counters: dict[str, Any] = self._progress_counters()
        if index_name:
            try:
                self.es.indices.refresh(index=index_name, ignore_unavailable=True)
                counters["total_document_count"] = self.es.count(index=index_name)["count"]
            except Exception:  # noqa: BLE001 - no index yet
                pass
        return counters

    def _progress_counters(self) -> dict[str, Any]:
        progress = read_progress(self.es, self.job_id)
        return {
            "indexed_document_count": progress["indexed_document_count"],
            "indexed_document_volume": round(progress["indexed_document_bytes"] / MIB),
            "deleted_document_count": progress["deleted_document_count"],
        }

    def _write_progress(self, metadata: dict[str, Any]) -> None:
        try:
            fields = {**self._progress_counters(), "last_seen": now_iso(), "metadata": metadata}
            update_job(self.es, self.job_id, fields)
        except NotFoundError:
            pass  # noticed by the next check
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried next time
            _LOGGER.warning("job %s: could not write progress: %s", self.job_id, format_error(exc))

    def _finish_from_result(self, result_file: Path, metadata: dict[str, Any]) -> None:
        try:
            outcome = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            code = self.process.returncode if self.process else None
            self._finish("error", counters=self._progress_counters(),
                         error=f"SyncProcessError: the sync process ended with exit code {code} and no result")
            return
        counters = {k: outcome.get(k, 0) for k in ("indexed_document_count", "indexed_document_volume",
                                                   "deleted_document_count")}
        if outcome.get("total_document_count") is not None:
            counters["total_document_count"] = outcome["total_document_count"]
        metadata = {**metadata, "dead_letters": outcome.get("dead_letters", metadata["dead_letters"]),
                    "duration_seconds": outcome.get("duration_seconds"),
                    "source_document_count": outcome.get("source_document_count"),
                    "unchanged_document_count": outcome.get("unchanged_document_count"),
                    "index_digests_from_cache": outcome.get("index_digests_from_cache"),
                    "indexed_document_bytes": outcome.get("indexed_document_bytes"),
                    "bulk_retries": outcome.get("bulk_retries")}
        self._finish(outcome.get("status", "error"), counters=counters, error=outcome.get("error"),
                     sync_cursor=outcome.get("sync_cursor"), metadata=metadata)

    def _finish(self, status: str, *, counters: dict[str, Any] | None = None, error: str | None = None,
                sync_cursor: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Write the end state; while Elasticsearch is unreachable, retry (for up to ``job_stale_after``)."""
        deadline = time.monotonic() + self.config.service.job_stale_after
        delay = 0.5
        while True:
            try:
                self._write_end(status, counters=counters, error=error, sync_cursor=sync_cursor, metadata=metadata)
                return
            except (ESConnectionError, TransportError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                _LOGGER.warning("job %s: cannot write its end state yet (%s); retrying", self.job_id,
                                format_error(exc))
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write_end(self, status: str, *, counters: dict[str, Any] | None, error: str | None, sync_cursor: Any,
                   metadata: dict[str, Any] | None) -> None:
        finish_job(self.es, self.job_id, self.connector_id or None, status, counters=counters, error=error,
                   sync_cursor=sync_cursor, metadata=metadata, job_type=self.claim.job.job_type,
                   previous_sync_status=self.claim.connector.get("last_sync_status"))
        self.final_status = status
        log = _LOGGER.info if status == "completed" else _LOGGER.warning
        log("job %s: %s%s %s", self.job_id, status, f" ({error})" if error else "",
            json.dumps(counters or {}, sort_keys=True))

    def _finish_suspended(self) -> None:
        self.final_status = "suspended"
        stamp = now_iso()
        counters = self._final_counters(self.claim.job.doc.get("connector", {}).get("index_name")
                                        if isinstance(self.claim.job.doc.get("connector"), dict) else None)
        try:
            update_job(self.es, self.job_id, {**counters, "status": "suspended", "last_seen": stamp})
        except NotFoundError:
            pass
        try:
            released = ("suspended" if self.claim.job.job_type != "access_control"
                        else self.claim.connector.get("last_sync_status"))
            update_connector(self.es, self.connector_id, {"last_sync_status": released})
        except NotFoundError:
            pass
        _LOGGER.info("job %s: suspended", self.job_id)
