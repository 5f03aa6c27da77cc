"""The daemon: poll the BYOC indices, keep connectors current, schedule, claim, supervise.

One poll, every ``service.idling`` seconds::

    heartbeat (connector last_seen, at most every service.heartbeat s)
    for each served connector: complete its configuration, validate + ping it, write
        features, validate sync-rule drafts, honour sync_now, create scheduled jobs
    reap jobs nobody updates any more (and release their connectors)
    claim pending/suspended jobs while fewer than max_concurrent_syncs run

Syncs run in child processes supervised by :class:`~launcher.sync_runner.SyncRunner`
threads, so a poll never waits for a sync. SIGTERM/SIGINT stop the loop, suspend the
running jobs and exit. A poll that fails is logged; more than ``service.max_errors``
failures within ``service.max_errors_span`` seconds stop the daemon with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from launcher.config import Config
from launcher.configuration import complete_configuration, validate_configuration, values_of
from launcher.indices import JOBS_INDEX, ensure_indices
from launcher.protocol import (
    Connector, claim_job, connector_problems, create_job, get_connector, job_problems,
    jobs_to_claim, now_iso, search_connectors, update_connector, update_job, Job,
)
from launcher.scheduling import SCHEDULED_AT_FIELD, due_fire_time, validate_cron
from launcher.sync_runner import SyncRunner
from sources.driver import SourceDriver
from sources.errors import IngestError, format_error
from sources.registry import load_source_class
from transforms.sync_rules import validate_rules

__all__ = ["Daemon", "ErrorBudgetExceeded"]

_LOGGER = logging.getLogger(__name__)


class ErrorBudgetExceeded(IngestError):
    pass


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Daemon:
    """The connector service's main loop (see the module docstring)."""

    def __init__(self, config: Config, es: Elasticsearch | None = None):
        self.config = config
        self.es = es or config.elasticsearch.connection().client()
        self.hostname = config.service.hostname or socket.gethostname()
        self.running: dict[str, SyncRunner] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: deque[float] = deque()
        self._last_heartbeat: dict[str, float] = {}
        self._pinged: dict[str, tuple[str, float]] = {}
        self.polls = 0
        self.last_successful_poll: float | None = None

    # -- life ----------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Ask the loop to stop; running jobs are suspended."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, *, max_polls: int | None = None) -> None:
        _LOGGER.info("elastic-ingest serving %s as %s (Elasticsearch %s)", ", ".join(self.served_types()),
                     self.hostname, self.config.elasticsearch.host)
        try:
            while not self._stop.is_set():
                self.poll_once()
                if max_polls is not None and self.polls >= max_polls:
                    break
                self._stop.wait(self.config.service.idling)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            runners = list(self.running.values())
        for runner in runners:
            runner.suspend()
        for runner in runners:
            runner.join(timeout=30)
        _LOGGER.info("elastic-ingest stopped (%d job(s) suspended)", len(runners))

    def poll_once(self) -> None:
        try:
            ensure_indices(self.es)
            connectors = self.served_connectors()
            self.heartbeat(connectors)
            for connector in connectors:
                if self._stop.is_set():
                    return
                try:
                    self.maintain_connector(connector)
                except (ConflictError, NotFoundError):
                    continue  # changed or deleted under us; seen again next poll
            self.reap()
            self.claim_jobs([c.id for c in connectors if not connector_problems(c.doc)])
            self.polls += 1
            self.last_successful_poll = time.time()
        except Exception as exc:  # noqa: BLE001 - the budget decides
            self._count_error(exc)

    def _count_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._errors.append(now)
        span = self.config.service.max_errors_span
        while self._errors and now - self._errors[0] > span:
            self._errors.popleft()
        _LOGGER.error("poll failed (%d in the last %ds): %s", len(self._errors), span, format_error(exc))
        _LOGGER.debug("poll failure", exc_info=True)
        if len(self._errors) > self.config.service.max_errors:
            self._stop.set()
            raise ErrorBudgetExceeded(
                f"{len(self._errors)} polls failed within {span:g}s (service.max_errors is "
                f"{self.config.service.max_errors}); last error: {format_error(exc)}. Stopping."
            ) from exc

    # -- connectors ----------------------------------------------------------------
    def served_types(self) -> list[str]:
        types = set(self.config.sources)
        if self.config.service.service_types:
            types &= set(self.config.service.service_types)
        return sorted(types)

    def served_connectors(self) -> list[Connector]:
        if self.config.service.connector_ids:
            found = search_connectors(self.es, connector_ids=self.config.service.connector_ids)
        else:
            found = search_connectors(self.es, service_types=self.served_types())
        return [c for c in found if not c.get("deleted")]

    def heartbeat(self, connectors: list[Connector]) -> None:
        now = time.monotonic()
        for connector in connectors:
            last = self._last_heartbeat.get(connector.id)
            if last is not None and now - last < self.config.service.heartbeat:
                continue
            try:
                update_connector(self.es, connector.id, {"last_seen": now_iso()})
                self._last_heartbeat[connector.id] = now
            except NotFoundError:
                pass

    def _set_error(self, connector: Connector, message: str) -> None:
        if connector.get("status") != "error" or connector.get("error") != message:
            _LOGGER.warning("connector %s: %s", connector.id, message)
            update_connector(self.es, connector.id, {"status": "error", "error": message})
            connector.doc.update(status="error", error=message)

    def maintain_connector(self, connector: Connector) -> None:
        """One poll's work on one connector (PROTOCOL.md section 2 life-cycle)."""
        problems = connector_problems(connector.doc)
        if problems:
            self._set_error(connector, "; ".join(problems))
            return
        fqn = self.config.sources.get(connector.service_type)
        if fqn is None:
            self._set_error(connector, f"service_type {connector.service_type!r} is not served here; known: "
                                       f"{', '.join(sorted(self.config.sources))}")
            return
        try:
            source_class = load_source_class(fqn)
        except IngestError as exc:
            self._set_error(connector, format_error(exc))
            return
        updates: dict[str, Any] = {}
        configuration = connector.get("configuration")
        schema = source_class.get_default_configuration() if hasattr(source_class, "get_default_configuration") else {}
        if not configuration:
            completed, _ = complete_configuration({}, schema)
            updates.update(configuration=completed, status="needs_configuration")
        else:
            completed, changed = complete_configuration(configuration, schema)
            if changed:
                updates["configuration"] = completed
        features = source_class.features() if hasattr(source_class, "features") else None
        if features is not None and connector.get("features") != features:
            updates["features"] = features
        if updates:
            update_connector(self.es, connector.id, updates)
            connector.doc.update(updates)
        if connector.get("status") in ("created", "needs_configuration"):
            return
        self._check_configuration(connector, source_class)
        self._validate_drafts(connector, source_class)
        self._sync_now(connector)
        self._schedule(connector, source_class)

    def _check_configuration(self, connector: Connector, source_class: type) -> None:
        configuration = connector.get("configuration") or {}
        key = _fingerprint(configuration)
        last = self._pinged.get(connector.id)
        recently = last is not None and last[0] == key and time.monotonic() - last[1] < self.config.service.heartbeat
        if recently and connector.get("status") in ("connected", "error"):
            return
        self._pinged[connector.id] = (key, time.monotonic())
        problems = validate_configuration(configuration)
        if problems:
            self._set_error(connector, "Invalid configuration: " + "; ".join(problems))
            return
        source = None
        try:
            source = source_class(configuration=self._typed(configuration))
            driver = SourceDriver(source)
            try:
                if hasattr(source, "validate_config"):
                    driver.call(source.validate_config)
                if hasattr(source, "ping"):
                    driver.call(source.ping)
            finally:
                driver.close()
        except Exception as exc:  # noqa: BLE001 - any source failure is the connector's error
            self._set_error(connector, format_error(exc))
            return
        if connector.get("status") != "connected" or connector.get("error") is not None:
            if connector.get("last_sync_status") != "in_progress" or connector.get("status") == "error":
                update_connector(self.es, connector.id, {"status": "connected", "error": None})
                connector.doc.update(status="connected", error=None)

    @staticmethod
    def _typed(configuration: Mapping[str, Any]) -> dict[str, Any]:
        typed = values_of(configuration)
        return {name: ({**spec, "value": typed.get(name)} if isinstance(spec, dict) else spec)
                for name, spec in configuration.items()}

    def _validate_drafts(self, connector: Connector, source_class: type) -> None:
        filtering = connector.get("filtering")
        if not isinstance(filtering, list):
            return
        changed = False
        for entry in filtering:
            if not isinstance(entry, dict):
                continue
            draft = entry.get("draft")
            if not isinstance(draft, dict) or (draft.get("validation") or {}).get("state") != "edited":
                continue
            errors = validate_rules(draft.get("rules") or [])
            snippet = (draft.get("advanced_snippet") or {}).get("value")
            if snippet:
                if not getattr(source_class, "advanced_rules_enabled", False):
                    errors.append({"ids": ["advanced_snippet"],
                                   "messages": [f"{source_class.__name__} does not support advanced sync rules"]})
                else:
                    try:
                        source = source_class(configuration=self._typed(connector.get("configuration") or {}))
                        messages = source.validate_advanced_rules(snippet) if hasattr(
                            source, "validate_advanced_rules") else []
                    except Exception as exc:  # noqa: BLE001
                        messages = [format_error(exc)]
                    if messages:
                        errors.append({"ids": ["advanced_snippet"], "messages": list(messages)})
            draft["validation"] = {"state": "invalid" if errors else "valid", "errors": errors}
            if not errors:
                entry["active"] = json.loads(json.dumps(draft))
            changed = True
        if changed:
            update_connector(self.es, connector.id, {"filtering": filtering},
                             if_seq_no=connector.seq_no, if_primary_term=connector.primary_term)
            fresh = get_connector(self.es, connector.id)
            if fresh:
                connector.doc, connector.seq_no, connector.primary_term = fresh.doc, fresh.seq_no, fresh.primary_term

    def _sync_now(self, connector: Connector) -> None:
        if connector.get("sync_now") is not True:
            return
        # Reset first, conditionally: only the instance that resets it creates the job.
        update_connector(self.es, connector.id, {"sync_now": False},
                         if_seq_no=connector.seq_no, if_primary_term=connector.primary_term)
        job_id = create_job(self.es, connector, job_type="full", trigger_method="on_demand")
        _LOGGER.info("connector %s: sync_now -> on-demand job %s", connector.id, job_id)
        fresh = get_connector(self.es, connector.id)
        if fresh:
            connector.doc, connector.seq_no, connector.primary_term = fresh.doc, fresh.seq_no, fresh.primary_term

    def _schedule(self, connector: Connector, source_class: type) -> None:
        scheduling = connector.get("scheduling")
        if not isinstance(scheduling, dict):
            return
        now = datetime.now(timezone.utc)
        for job_type, field in SCHEDULED_AT_FIELD.items():
            entry = scheduling.get(job_type)
            if not isinstance(entry, dict) or entry.get("enabled") is not True:
                continue
            if job_type == "incremental" and not getattr(source_class, "incremental_sync_enabled", False):
                continue
            if job_type == "access_control" and not getattr(source_class, "dls_enabled", False):
                continue
            problem = validate_cron(entry.get("interval"))
            if problem:
                self._set_error(connector, f"scheduling.{job_type}.interval: {problem}")
                continue
            fire = due_fire_time(entry["interval"], last_scheduled_at=connector.get(field), now=now,
                                 created_grace=timedelta(seconds=max(60.0, 3 * self.config.service.idling)))
            if fire is None:
                continue
            try:
                update_connector(self.es, connector.id, {field: fire.isoformat()},
                                 if_seq_no=connector.seq_no, if_primary_term=connector.primary_term)
            except ConflictError:
                return  # another instance took it (or the document changed): re-evaluated next poll
            job_id = create_job(self.es, connector, job_type=job_type, trigger_method="scheduled")
            _LOGGER.info("connector %s: scheduled %s job %s for %s", connector.id, job_type, job_id, fire.isoformat())
            fresh = get_connector(self.es, connector.id)
            if fresh is None:
                return
            connector.doc, connector.seq_no, connector.primary_term = fresh.doc, fresh.seq_no, fresh.primary_term

    # -- jobs ----------------------------------------------------------------------
    def reap(self) -> None:
        """End jobs nobody updates any more, or whose connector is gone; release the lock."""
        stale_before = datetime.now(timezone.utc) - timedelta(seconds=self.config.service.job_stale_after)
        result = self.es.search(
            index=JOBS_INDEX,
            query={"bool": {"filter": [{"terms": {"status": ["in_progress", "canceling"]}}]}},
            size=200, seq_no_primary_term=True,
        )
        with self._lock:
            mine = set(self.running)
        for hit in result["hits"]["hits"]:
            job = Job.from_hit(hit)
            if job.id in mine:
                continue
            connector = get_connector(self.es, job.connector_id) if job.connector_id else None
            last_seen = job.doc.get("last_seen") or job.doc.get("started_at")
            try:
                seen = datetime.fromisoformat(str(last_seen).replace("Z", "+00:00")) if last_seen else None
            except ValueError:
                seen = None
            if seen is not None and seen.tzinfo is None:
                seen = seen.replace(tzinfo=timezone.utc)
            if connector is not None and not connector.get("deleted") and seen is not None and seen > stale_before:
                continue
            reason = ("the job's connector no longer exists" if connector is None or connector.get("deleted")
                      else "the job has not seen any update for some time")
            try:
                update_job(self.es, job.id, {"status": "error", "error": f"StaleJob: {reason}",
                                             "completed_at": now_iso()},
                           if_seq_no=job.seq_no, if_primary_term=job.primary_term)
            except (ConflictError, NotFoundError):
                continue  # it moved: not stale after all
            _LOGGER.warning("reaped job %s: %s", job.id, reason)
            if connector is not None and connector.get("last_sync_status") in ("in_progress", "canceling"):
                try:
                    update_connector(self.es, connector.id, {
                        "last_sync_status": "error", "last_sync_error": f"StaleJob: {reason}",
                        "status": "error", "error": f"StaleJob: {reason}"},
                        if_seq_no=connector.seq_no, if_primary_term=connector.primary_term)
                except (ConflictError, NotFoundError):
                    pass

    def claim_jobs(self, connector_ids: list[str]) -> None:
        with self._lock:
            free = self.config.service.max_concurrent_syncs - len(self.running)
        if free <= 0 or self._stop.is_set():
            return
        for job in jobs_to_claim(self.es, connector_ids):
            if free <= 0 or self._stop.is_set():
                break
            problems = job_problems(job.doc)
            if problems:
                self._fail_unclaimed(job, "; ".join(problems))
                continue
            claim = claim_job(self.es, job.id, self.hostname)
            if claim is None:
                continue
            runner = SyncRunner(self.config, self.es, claim, on_done=self._done)
            with self._lock:
                self.running[job.id] = runner
            runner.start()
            free -= 1

    def _fail_unclaimed(self, job: Job, message: str) -> None:
        try:
            update_job(self.es, job.id, {"status": "error", "error": f"InvalidJob: {message}",
                                         "completed_at": now_iso()},
                       if_seq_no=job.seq_no, if_primary_term=job.primary_term)
            _LOGGER.warning("job %s: %s", job.id, message)
        except (ConflictError, NotFoundError):
            pass

    def _done(self, runner: SyncRunner) -> None:
        with self._lock:
            self.running.pop(runner.job_id, None)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self.running:
                    return True
            time.sleep(0.2)
        return False

