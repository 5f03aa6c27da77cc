"""The daemon: poll the BYOC indices, keep connectors current, schedule, claim, supervise.

One poll, every ``service.idling`` seconds::

    heartbeat (connector last_seen, at most every service.heartbeat s)
    for each served connector: complete its configuration, check that no other connector
        uses its index, resolve its secret references, build its source (within the
        operator's allowed hosts), validate + ping it, write
        features, validate sync-rule drafts, honour sync_now, create scheduled jobs
        (a connector whose document is wrong gets the error; the others are served)
    take back this service's own jobs a crash left behind (suspended, then resumed below)
    reap jobs nobody updates any more, or whose connector is gone (and release the lock)
    release locks no job holds (an instance died between taking the lock and the job)
    claim pending/suspended jobs while fewer than max_concurrent_syncs run

Every write that decides something (a fire time taken, sync_now reset, a configuration
completed, a draft validated, a lock taken) is conditional on the ``_seq_no`` read, so
any number of instances can serve the same connectors.

Syncs run in child processes supervised by :class:`~launcher.sync_runner.SyncRunner`
threads, so a poll never waits for a sync; when one ends, jobs waiting for a free slot
are claimed at once, not at the next poll. SIGTERM/SIGINT stop the loop, suspend the
running jobs and exit. At start the daemon waits for Elasticsearch (one line per attempt,
with backoff); later, while Elasticsearch cannot be reached, polls keep failing and the
outage is logged once, with a reminder every minute and a line when it ends
(:mod:`launcher.outage`). Any other failed poll is logged (the same failure again at most
every minute); more than ``service.max_errors`` of them within ``service.max_errors_span``
seconds stop the daemon with a clear message.
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

from elasticsearch import ConflictError, Elasticsearch, NotFoundError, TransportError
from elasticsearch import ConnectionError as ESConnectionError

from launcher.config import Config
from launcher.configuration import complete_configuration, validate_configuration, values_of
from launcher.protocol import (
    CONNECTOR_DEFAULTS, Connector, Job, claim_job, connector_problems, create_job, job_problems, jobs_to_claim, now_iso, release_lock,
    with_protocol_fields,
)
from launcher.index_ownership import check_index_ownership
from launcher.index_store import default_domain
from launcher.outage import Outage, is_outage, wait_backoff
from launcher.recovery import OwnJobs, ServiceIdentity
from launcher.store import ConnectorStore, open_store
from launcher.scheduling import SCHEDULED_AT_FIELD, due_fire_time, validate_cron, parse_time
from launcher.secret_refs import resolve_references
from launcher.sync_processes import SyncProcesses
from launcher.sync_runner import SyncRunner
from sources.driver import SourceDriver, build_source
from sources.errors import IndexConflict, IngestError, SecretReferenceError, format_error
from sources.base import supports_access_control
from sources.registry import load_source_class
from transforms.sync_rules import validate_rules

__all__ = ["Daemon", "ErrorBudgetExceeded"]

_LOGGER = logging.getLogger(__name__)


class ErrorBudgetExceeded(IngestError):
    pass


def _contains(current: Any, wanted: Any) -> bool:
    """Whether ``current`` already holds ``wanted`` (extra keys, e.g. written by Kibana, allowed)."""
    if isinstance(wanted, Mapping):
        return isinstance(current, Mapping) and all(_contains(current.get(k), v) for k, v in wanted.items())
    return current == wanted


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Daemon:
    """The connector service's main loop (see the module docstring)."""

    def __init__(self, config: Config, es: Elasticsearch | None = None, store: ConnectorStore | None = None):
        self.config = config
        self.es = es or config.elasticsearch.connection().client()
        self._store = store  # chosen at the first poll (auto asks the cluster whether it has the connector API)
        #: what stops the protocol's storage from working (see ConnectorStore.prepare); shown by /healthz
        self.store_problems: list[str] = []
        self.hostname = config.service.hostname or socket.gethostname()
        #: Who this daemon is in the jobs it claims (service id, host, this run): see launcher/recovery.py.
        self.identity = ServiceIdentity.of(config)
        self._own_jobs: OwnJobs | None = None
        self.running: dict[str, SyncRunner] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: deque[float] = deque()
        self._last_failure: tuple[str | None, float] = (None, 0.0)  # the last poll failure logged, and when
        self._last_heartbeat: dict[str, float] = {}
        self._pinged: dict[str, tuple[str, float]] = {}
        self._orphans: dict[str, float] = {}
        self._document_errors: dict[str, str] = {}
        self._unserved: dict[str, list[str]] = {}
        self._unserved_checked = float("-inf")
        self.polls = 0
        self.last_successful_poll: float | None = None
        #: Elasticsearch outages: logged as state changes (launcher/outage.py), never counted as errors.
        self.outage = Outage(_LOGGER, f"Elasticsearch at {config.elasticsearch.host}")
        #: Why the daemon is not serving yet (waiting for Elasticsearch at start), for /healthz.
        self.waiting: str | None = None
        #: Set when a sync ends: a freed slot is given to a waiting job before the next poll.
        self._slot_freed = threading.Event()
        self._served_ids: list[str] = []
        #: Starts sync processes: forked from a warm process (service.warm_sync_processes), else fresh.
        self.processes = SyncProcesses(warm=config.service.warm_sync_processes,
                                       preload=sorted(set(config.sources.values())))

    @property
    def store(self) -> ConnectorStore:
        """Where connectors and jobs live (the connector API, or the indices directly)."""
        if self._store is None:
            self._store = open_store(self.es, self.config.service.protocol_store)
            _LOGGER.info("connectors and jobs through %s", "the connector API" if self._store.backend ==
                         "connector_api" else "the .elastic-connectors indices directly")
        return self._store

    # -- life ----------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Ask the loop to stop; running jobs are suspended."""
        self._stop.set()
        self._slot_freed.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    @property
    def not_ready(self) -> str | None:
        """Why the daemon cannot serve now (None: it can): for ``/healthz``."""
        if self.waiting:
            return self.waiting
        if self.store_problems:
            return "cannot serve connectors:\n" + "\n".join(self.store_problems)
        return self.outage.not_ready

    def wait_for_elasticsearch(self, *, first_backoff: float = 1.0, max_backoff: float = 30.0) -> bool:
        """Wait until Elasticsearch answers as Elasticsearch (True), or a stop is asked (False).

        While it cannot be reached (nothing listens, it is starting, a proxy's upstream is
        down) each attempt logs one line and the next comes after a growing pause (1, 2, 4,
        ... ``max_backoff`` seconds); ``/healthz`` says why meanwhile. Anything a retry cannot
        fix (not Elasticsearch at that URL, credentials refused, an untrusted certificate) is
        raised: only a change of configuration helps.
        """
        from launcher.es_probe import probe_elasticsearch
        from sources.errors import ElasticsearchUnavailable

        host = self.config.elasticsearch.host
        attempt, since = 0, datetime.now(timezone.utc)
        while not self._stop.is_set():
            attempt += 1
            try:
                probe_elasticsearch(self.config.elasticsearch, config_file=self.config.path)
            except ElasticsearchUnavailable as exc:
                pause = wait_backoff(attempt, first=first_backoff, most=max_backoff)
                self.waiting = (f"waiting for Elasticsearch at {host} since {since:%Y-%m-%d %H:%M:%S} UTC "
                                f"({attempt} attempts): {exc}")
                _LOGGER.warning("waiting for Elasticsearch at %s (attempt %d, next in %gs): %s", host, attempt,
                                pause, str(exc).removeprefix(f"cannot reach Elasticsearch at {host}: "))
                self._stop.wait(pause)
                continue
            if attempt > 1:
                _LOGGER.info("Elasticsearch at %s answers (after %d attempts)", host, attempt)
            self.waiting = None
            return True
        self.waiting = None
        return False

    def run(self, *, max_polls: int | None = None) -> None:
        _LOGGER.info("elastic-ingest serving %s as %s (Elasticsearch %s)", ", ".join(self.served_types()),
                     self.hostname, self.config.elasticsearch.host)
        self.processes.start_warm()  # it imports Beam and the sources meanwhile
        try:
            while not self._stop.is_set():
                self.poll_once()
                if max_polls is not None and self.polls >= max_polls:
                    break
                self._idle(self.config.service.idling)
        finally:
            self.shutdown()

    def _idle(self, seconds: float) -> None:
        """Wait for the next poll; when a sync ends meanwhile, claim the jobs waiting for a free
        slot at once (many connectors synced together do not wait a poll each)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or not self._slot_freed.wait(left):
                return
            self._slot_freed.clear()
            if self._stop.is_set() or not self._served_ids:
                return
            try:
                self.claim_jobs(self._served_ids)
            except Exception as exc:  # noqa: BLE001 - as a failed poll
                if is_outage(exc):
                    self.outage.failed(format_error(exc))
                else:
                    self._count_error(exc)

    def shutdown(self) -> None:
        with self._lock:
            runners = list(self.running.values())
        for runner in runners:
            runner.suspend()
        for runner in runners:
            runner.join(timeout=30)
        self.processes.close()
        _LOGGER.info("elastic-ingest stopped (%d job(s) suspended)", len(runners))

    def poll_once(self) -> None:
        try:
            if not self._store_ready():
                return
            connectors = self.served_connectors()
            self._note_unserved()
            self.heartbeat(connectors)
            for connector in connectors:
                if self._stop.is_set():
                    return
                try:
                    self.maintain_connector(connector)
                except (ConflictError, NotFoundError):
                    continue  # changed or deleted under us; seen again next poll
                except (ESConnectionError, TransportError):
                    raise  # the cluster, not this connector: a poll failure
                except Exception as exc:  # noqa: BLE001 - one odd document must not stop the others
                    _LOGGER.debug("connector %s failure", connector.id, exc_info=True)
                    self._try_set_error(connector, f"the service could not process this connector: "
                                                   f"{format_error(exc)}")
            self.take_back_own_jobs()
            self.reap()
            self.release_orphan_locks(connectors)
            # Connectors whose document is wrong too: their jobs are claimed and end ``error``
            # with the reason at once, rather than waiting forever.
            self._served_ids = [c.id for c in connectors]
            self.claim_jobs(self._served_ids)
            self.polls += 1
            self.last_successful_poll = time.time()
            self.outage.ended()
        except Exception as exc:  # noqa: BLE001 - the budget decides (an outage only waits)
            if is_outage(exc):
                self.outage.failed(format_error(exc))
            else:
                self._count_error(exc)

    def _store_ready(self) -> bool:
        """Prepare the storage; while it cannot work, say so (log, /healthz) and do nothing else."""
        problems = self.store.prepare()
        if problems != self.store_problems:
            for problem in problems:
                _LOGGER.error("cannot serve connectors: %s", problem)
            if not problems and self.store_problems:
                _LOGGER.info("the protocol's indices are usable again")
        self.store_problems = problems
        return not problems

    def _count_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._errors.append(now)
        span = self.config.service.max_errors_span
        while self._errors and now - self._errors[0] > span:
            self._errors.popleft()
        said = format_error(exc)
        # The same failure again is logged at most every minute (the count says how often it came).
        if said != self._last_failure[0] or now - self._last_failure[1] >= 60:
            _LOGGER.error("poll failed (%d in the last %ds): %s", len(self._errors), span, said)
            self._last_failure = (said, now)
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
            found = self.store.list_connectors(connector_ids=self.config.service.connector_ids)
        else:
            found = self.store.list_connectors(service_types=self.served_types())
        return [c for c in found if not c.get("deleted")]

    def _note_unserved(self) -> None:
        """Log (INFO, when it changes; looked at every ``service.heartbeat`` s) the connectors of
        service types this instance does not serve: another service may, and their jobs wait
        for it; ``sync --wait`` says so too."""
        now = time.monotonic()
        if self.config.service.connector_ids or now - self._unserved_checked < self.config.service.heartbeat:
            return
        self._unserved_checked = now
        served = set(self.served_types())
        unserved: dict[str, list[str]] = {}
        for connector in self.store.list_connectors():
            if connector.service_type not in served:
                unserved.setdefault(str(connector.service_type), []).append(connector.id)
        summary = {kind: sorted(ids) for kind, ids in unserved.items()}
        if summary and summary != self._unserved:
            _LOGGER.info("connectors of service types not served here (another service may serve them; their jobs "
                         "stay pending until one does): %s", "; ".join(
                             f"{kind} ({len(ids)}: {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
                             for kind, ids in sorted(summary.items())))
        self._unserved = summary

    def heartbeat(self, connectors: list[Connector]) -> None:
        now = time.monotonic()
        for connector in connectors:
            last = self._last_heartbeat.get(connector.id)
            if last is not None and now - last < self.config.service.heartbeat:
                continue
            try:
                self.store.check_in(connector.id, expected=connector)
                self._last_heartbeat[connector.id] = now
            except (NotFoundError, ConflictError):
                pass  # deleted, or too busy a document: next poll

    def _write(self, connector: Connector, fields: Mapping[str, Any], *, conditional: bool = False) -> None:
        """Update the connector and keep our copy current (the store tracks its concurrency token)."""
        self.store.update_connector(connector.id, fields, expected=connector, conditional=conditional)

    def _refresh(self, connector: Connector) -> bool:
        fresh = self.store.get_connector(connector.id)
        if fresh is None:
            return False
        connector.doc, connector.seq_no, connector.primary_term = fresh.doc, fresh.seq_no, fresh.primary_term
        connector.version = fresh.version
        return True

    def _set_error(self, connector: Connector, message: str) -> None:
        if connector.get("status") != "error" or connector.get("error") != message:
            _LOGGER.warning("connector %s: %s", connector.id, message)
            self._write(connector, {"status": "error", "error": message})

    def _document_error(self, connector: Connector, message: str) -> None:
        """An error in the document itself; once fixed, the connector is checked again at once."""
        self._document_errors[connector.id] = message
        self._set_error(connector, message)

    def _try_set_error(self, connector: Connector, message: str) -> None:
        try:
            self._set_error(connector, message)
        except Exception as exc:  # noqa: BLE001 - best effort; logged
            _LOGGER.warning("connector %s: %s (and writing it failed: %s)", connector.id, message, format_error(exc))

    def maintain_connector(self, connector: Connector) -> None:
        """One poll's work on one connector (PROTOCOL.md section 2 life-cycle)."""
        missing = with_protocol_fields(connector.doc, CONNECTOR_DEFAULTS)
        if missing:  # e.g. written by Elastic's CLI or an older Kibana: every protocol field, with its default
            self._write(connector, missing, conditional=True)
        problems = connector_problems(connector.doc)
        if problems:
            self._document_error(connector, "; ".join(problems))
            return
        fqn = self.config.sources.get(connector.service_type)
        if fqn is None:
            self._document_error(connector, f"service_type {connector.service_type!r} is not served here; known: "
                                            f"{', '.join(sorted(self.config.sources))}")
            return
        try:
            source_class = load_source_class(fqn)
        except IngestError as exc:
            self._document_error(connector, format_error(exc))
            return
        configuration = connector.get("configuration")
        schema = source_class.get_default_configuration() if hasattr(source_class, "get_default_configuration") else {}
        if not configuration:
            completed, _ = complete_configuration({}, schema)
            # Conditional: a client writing its values at the same moment must win.
            self._write(connector, {"configuration": completed, "status": "needs_configuration"}, conditional=True)
            return
        completed, changed = complete_configuration(configuration, schema)
        if changed:
            self._write(connector, {"configuration": completed}, conditional=True)
        features = source_class.features() if hasattr(source_class, "features") else None
        if features is not None and not _contains(connector.get("features"), features):
            self._write(connector, {"features": features})
        if connector.get("status") in ("created", "needs_configuration"):
            return
        cron_problems = self._cron_problems(connector, source_class)
        if cron_problems:
            self._document_error(connector, "; ".join(cron_problems))
        else:
            if self._document_errors.get(connector.id) is not None:
                del self._document_errors[connector.id]
                self._pinged.pop(connector.id, None)  # the document was fixed: check it again now
            self._check_configuration(connector, source_class)
        self._validate_drafts(connector, source_class)
        self._sync_now(connector)
        if not cron_problems:
            self._schedule(connector, source_class)

    @staticmethod
    def _cron_problems(connector: Connector, source_class: type) -> list[str]:
        scheduling = connector.get("scheduling")
        problems = []
        for job_type in SCHEDULED_AT_FIELD:
            entry = scheduling.get(job_type) if isinstance(scheduling, dict) else None
            if not isinstance(entry, dict) or entry.get("enabled") is not True:
                continue
            problem = validate_cron(entry.get("interval"))
            if problem:
                problems.append(f"scheduling.{job_type}.interval: {problem}")
        return problems

    def _check_configuration(self, connector: Connector, source_class: type) -> None:
        configuration = connector.get("configuration") or {}
        key = _fingerprint([configuration, connector.index_name])
        last = self._pinged.get(connector.id)
        recently = last is not None and last[0] == key and time.monotonic() - last[1] < self.config.service.heartbeat
        if recently and connector.get("status") in ("connected", "error"):
            return
        self._pinged[connector.id] = (key, time.monotonic())
        if isinstance(connector.index_name, str) and connector.index_name:
            try:
                check_index_ownership(self.store, connector.index_name, connector.id)
            except IndexConflict as exc:
                self._set_error(connector, format_error(exc))
                return
        try:
            configuration = resolve_references(configuration, self.config.secrets)
        except SecretReferenceError as exc:
            self._set_error(connector, f"Invalid configuration: {exc}")
            return
        problems = validate_configuration(configuration)
        if problems:
            self._set_error(connector, "Invalid configuration: " + "; ".join(problems))
            return
        source = None
        try:
            source = build_source(source_class, self._typed(configuration), self._settings(connector))
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
            self._write(connector, {"status": "connected", "error": None})

    def _settings(self, connector: Connector) -> dict[str, Any]:
        """The operator's settings for the connector's source (config.yml)."""
        return self.config.source_settings.get(connector.service_type, {})

    @staticmethod
    def _typed(configuration: Mapping[str, Any]) -> dict[str, Any]:
        typed = values_of(configuration)
        return {name: ({**spec, "value": typed.get(name)} if isinstance(spec, dict) else spec)
                for name, spec in configuration.items()}

    def _validate_drafts(self, connector: Connector, source_class: type) -> None:
        """Validate an ``edited`` DEFAULT draft; a valid one becomes the active rules."""
        entry = default_domain(connector.get("filtering"))
        draft = entry.get("draft") if entry is not None else None
        if not isinstance(draft, dict) or (draft.get("validation") or {}).get("state") != "edited":
            return
        errors = validate_rules(draft.get("rules") or [])
        snippet = (draft.get("advanced_snippet") or {}).get("value")
        if snippet:
            if not getattr(source_class, "advanced_rules_enabled", False):
                errors.append({"ids": ["advanced_snippet"],
                               "messages": [f"{source_class.__name__} does not support advanced sync rules"]})
            else:
                driver = None
                try:
                    configuration = resolve_references(connector.get("configuration") or {}, self.config.secrets)
                    source = build_source(source_class, self._typed(configuration), self._settings(connector))
                    driver = SourceDriver(source)
                    messages = driver.call(source.validate_advanced_rules, snippet) if hasattr(
                        source, "validate_advanced_rules") else []
                except Exception as exc:  # noqa: BLE001 - the source's own error: the draft's problem
                    messages = [format_error(exc)]
                finally:
                    if driver is not None:
                        driver.close()
                if messages:
                    errors.append({"ids": ["advanced_snippet"], "messages": list(messages)})
        validation = {"state": "invalid" if errors else "valid", "errors": errors}
        self.store.update_filtering_validation(connector.id, validation, activate=not errors, expected=connector)

    def _sync_now(self, connector: Connector) -> None:
        if connector.get("sync_now") is not True:
            return
        # Reset first, conditionally: only the instance that resets it creates the job.
        self._write(connector, {"sync_now": False}, conditional=True)
        job_id = create_job(self.store, connector, job_type="full", trigger_method="on_demand")
        _LOGGER.info("connector %s: sync_now -> on-demand job %s", connector.id, job_id)

    def _schedule(self, connector: Connector, source_class: type) -> None:
        """Create the scheduled jobs that are due; each fire time is taken by one instance only.

        The fire time is taken by writing ``last_*_scheduled_at`` conditionally on the
        ``_seq_no`` we read; whoever loses the race re-reads and finds it taken.
        """
        for job_type, field in SCHEDULED_AT_FIELD.items():
            if job_type == "incremental" and not getattr(source_class, "incremental_sync_enabled", False):
                continue
            if job_type == "access_control" and not supports_access_control(source_class):
                continue
            for _ in range(3):
                scheduling = connector.get("scheduling")
                entry = scheduling.get(job_type) if isinstance(scheduling, dict) else None
                if not isinstance(entry, dict) or entry.get("enabled") is not True:
                    break
                fire = due_fire_time(entry["interval"], last_scheduled_at=connector.get(field),
                                     now=datetime.now(timezone.utc),
                                     created_grace=timedelta(seconds=max(60.0, 3 * self.config.service.idling)))
                if fire is None:
                    break
                try:
                    self._write(connector, {field: fire.isoformat()}, conditional=True)
                except ConflictError:
                    if not self._refresh(connector):
                        return
                    continue  # re-evaluate against what the winner wrote
                job_id = create_job(self.store, connector, job_type=job_type, trigger_method="scheduled",
                                    metadata={"scheduled_at": fire.isoformat()})
                _LOGGER.info("connector %s: scheduled %s job %s for %s", connector.id, job_type, job_id,
                             fire.isoformat())
                break

    # -- jobs ----------------------------------------------------------------------
    def _serves_job(self, job: Job) -> bool:
        """Whether this instance is responsible for ``job`` (its connector is one we serve)."""
        if self.config.service.connector_ids:
            return job.connector_id in self.config.service.connector_ids
        snapshot = job.doc.get("connector")
        service_type = snapshot.get("service_type") if isinstance(snapshot, Mapping) else None
        return service_type in self.served_types()

    def take_back_own_jobs(self) -> list[str]:
        """Suspend the jobs an earlier run of this service left behind (a crash), so they resume now."""
        if self._own_jobs is None:
            self._own_jobs = OwnJobs(self.store, self.identity)
        ids = list(self.config.service.connector_ids) or None
        with self._lock:
            running = set(self.running)
        return self._own_jobs.take_back(running=running, connector_ids=ids,
                                        service_types=None if ids else self.served_types())

    def reap(self) -> None:
        """End jobs nobody updates any more, or whose connector is gone; release the lock.

        * ``in_progress`` / ``canceling`` jobs whose ``last_seen`` is older than
          ``service.job_stale_after``, or whose connector no longer exists: ``error``;
        * ``pending`` / ``suspended`` jobs whose connector no longer exists: ``error``.

        Each write is conditional on the ``_seq_no`` read, so a job that moved meanwhile
        (its owner wrote a heartbeat) is left alone. Only jobs of served connectors.
        """
        stale_before = datetime.now(timezone.utc) - timedelta(seconds=self.config.service.job_stale_after)
        ids = list(self.config.service.connector_ids) or None
        jobs = self.store.list_jobs(connector_ids=ids, service_types=None if ids else self.served_types(),
                                    statuses=["in_progress", "canceling", "pending", "suspended"], size=500)
        with self._lock:
            mine = set(self.running)
        connectors: dict[str, Connector | None] = {}
        for job in jobs:
            if job.id in mine or not job.connector_id or not self._serves_job(job):
                continue
            if job.connector_id not in connectors:
                connectors[job.connector_id] = self.store.get_connector(job.connector_id)
            connector = connectors[job.connector_id]
            gone = connector is None or bool(connector.get("deleted"))
            if job.status in ("pending", "suspended"):
                if not gone:
                    continue
                reason = "the job's connector no longer exists"
            else:
                seen = parse_time(job.doc.get("last_seen") or job.doc.get("started_at"))
                if not gone and seen is not None and seen > stale_before:
                    continue
                reason = ("the job's connector no longer exists" if gone
                          else "the job has not seen any update for some time")
            error = f"StaleJob: {reason}"
            try:
                self.store.end_job(job, "error", {"error": error, "completed_at": now_iso()}, expected=job)
            except (ConflictError, NotFoundError):
                continue  # it moved: not stale after all
            _LOGGER.warning("reaped job %s of connector %s: %s", job.id, job.connector_id, reason)
            self._delete_progress(job.id)
            if not gone and job.status in ("in_progress", "canceling"):
                release_lock(self.store, job.connector_id, {
                    "last_sync_status": "error", "last_sync_error": error, "last_synced": now_iso(),
                    "status": "error", "error": error}, only_if=("in_progress", "canceling"))

    def _delete_progress(self, job_id: str) -> None:
        """An ended job's progress records go with it (best effort)."""
        from transforms.progress import delete_progress

        try:
            delete_progress(self.es, job_id)
        except Exception as exc:  # noqa: BLE001 - left-overs only cost a little space
            _LOGGER.debug("job %s: progress records not deleted: %s", job_id, exc)

    def release_orphan_locks(self, connectors: list[Connector]) -> None:
        """Release locks held by no job (an instance died between taking the lock and the job).

        A connector whose ``last_sync_status`` stays ``in_progress`` for ``job_stale_after``
        seconds while none of its jobs is ``in_progress`` or ``canceling`` is unlocked.
        """
        locked = [c for c in connectors if c.get("last_sync_status") in ("in_progress", "canceling")]
        now = time.monotonic()
        for connector_id in list(self._orphans):
            if connector_id not in {c.id for c in locked}:
                del self._orphans[connector_id]
        if not locked:
            return
        owned = {job.connector_id for job in self.store.list_jobs(
            connector_ids=[c.id for c in locked], statuses=["in_progress", "canceling"], size=10 * len(locked))}
        for connector in locked:
            if connector.id in owned:
                self._orphans.pop(connector.id, None)
                continue
            first = self._orphans.setdefault(connector.id, now)
            if now - first >= self.config.service.job_stale_after:
                if release_lock(self.store, connector.id, {"last_sync_status": "error",
                                                        "last_sync_error": "StaleLock: no job held this lock"},
                                only_if=("in_progress", "canceling")):
                    _LOGGER.warning("connector %s: released a lock no job held", connector.id)
                self._orphans.pop(connector.id, None)

    def claim_jobs(self, connector_ids: list[str]) -> None:
        with self._lock:
            free = self.config.service.max_concurrent_syncs - len(self.running)
        if free <= 0 or self._stop.is_set():
            return
        for job in jobs_to_claim(self.store, connector_ids):
            if free <= 0 or self._stop.is_set():
                break
            problems = job_problems(job.doc)
            if problems:
                self._fail_unclaimed(job, "; ".join(problems))
                continue
            claim = claim_job(self.store, job.id, self.hostname)
            if claim is None:
                continue
            runner = SyncRunner(self.config, self.es, claim, on_done=self._done, store=self.store,
                                owner=self.identity.metadata(), outage=self.outage, processes=self.processes)
            with self._lock:
                self.running[job.id] = runner
            runner.start()
            free -= 1

    def _fail_unclaimed(self, job: Job, message: str) -> None:
        try:
            self.store.end_job(job, "error", {"error": f"InvalidJob: {message}", "completed_at": now_iso()},
                               expected=job)
            _LOGGER.warning("job %s: %s", job.id, message)
        except (ConflictError, NotFoundError):
            pass

    def _done(self, runner: SyncRunner) -> None:
        with self._lock:
            self.running.pop(runner.job_id, None)
        self._slot_freed.set()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self.running:
                    return True
            time.sleep(0.2)
        return False

