"""The daemon: poll the BYOC indices, keep connectors current, schedule, claim, supervise.

The daemon's loop only orchestrates; each concern is a unit of its own. One poll, every
``service.idling`` seconds (between polls, waiting jobs are looked for every
``service.job_check_interval`` seconds, and when a sync ends)::

    prepare the protocol's storage (launcher.store: the indices, or the connector API)
    heartbeat (connector last_seen, at most every service.heartbeat s)
    for each served connector: launcher.maintenance (protocol fields, configuration,
        checks and ping, features, sync-rule drafts, sync_now, and the scheduled jobs that
        are due: launcher.scheduled_jobs); a connector whose document is wrong gets the
        error, the others are served
    take back this service's own jobs a crash left behind (launcher.recovery)
    end stale jobs, release locks no job holds (launcher.reaper)
    claim pending/suspended jobs while fewer than max_concurrent_syncs run
        (launcher.protocol.claim_job) and supervise each (launcher.sync_runner); a
        continuous sync holds its slot until it is stopped, so when streams hold every
        slot, the jobs left waiting are named (log, /healthz) with the setting to raise

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

import functools
import logging
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from elasticsearch import ConflictError, Elasticsearch, NotFoundError, TransportError
from elasticsearch import ConnectionError as ESConnectionError

from launcher.config import Config
from launcher.maintenance import ConnectorMaintenance
from launcher.outage import Outage, is_outage, wait_backoff
from launcher.protocol import Connector, Job, claim_job, job_problems, job_refusal, jobs_to_claim, now_iso
from launcher.reaper import Reaper
from launcher.recovery import OwnJobs, ServiceIdentity
from launcher.store import ConnectorStore, open_store
from launcher.sync_processes import SyncProcesses
from launcher.sync_runner import SyncRunner
from sources.errors import IngestError, format_error
from sources.registry import load_source_class

__all__ = ["Daemon", "ErrorBudgetExceeded"]

_LOGGER = logging.getLogger(__name__)


class ErrorBudgetExceeded(IngestError):
    pass


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
        #: Jobs waiting while continuous syncs hold every sync slot, for /healthz (None: no such wait).
        self.slots_held: str | None = None
        self._slots_checked = float("-inf")
        self._told_waiting: set[str] = set()
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

    @functools.cached_property
    def maintenance(self) -> ConnectorMaintenance:
        """Keeps the served connector documents current (configuration, checks, drafts, schedules)."""
        return ConnectorMaintenance(self.config, self.store)

    @functools.cached_property
    def reaper(self) -> Reaper:
        """Ends jobs nobody runs any more and releases locks no job holds."""
        return Reaper(self.config, self.store, self.es, serves_job=self._serves_job, served_types=self.served_types)

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
        """Wait for the next poll. Meanwhile, every ``service.job_check_interval`` seconds and
        at once when a sync ends (a slot freed), claim the jobs waiting: a sync requested
        between polls starts within about that interval, and many connectors synced together
        do not wait a poll each. Connectors' maintenance (schedules, checks, drafts) stays
        once per poll."""
        deadline = time.monotonic() + seconds
        check = min(self.config.service.job_check_interval, seconds)
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._slot_freed.wait(min(left, check)):
                self._slot_freed.clear()
            elif left <= check:
                return  # the poll comes now: it claims too
            if self._stop.is_set() or not self._served_ids:
                return
            with self._lock:
                full = len(self.running) >= self.config.service.max_concurrent_syncs
            if full or self.outage.ongoing:
                continue  # nothing to claim with; an outage is retried by the polls, not 4 times a second
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
                    self.maintenance.set_error_quietly(
                        connector, f"the service could not process this connector: {format_error(exc)}")
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

    def maintain_connector(self, connector: Connector) -> None:
        """One poll's work on one connector (:mod:`launcher.maintenance`)."""
        self.maintenance.maintain(connector)

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
        """End stale jobs of served connectors, never this instance's own (:mod:`launcher.reaper`)."""
        with self._lock:
            running = set(self.running)
        self.reaper.reap(running)

    def release_orphan_locks(self, connectors: list[Connector]) -> None:
        """Unlock served connectors no job holds (:mod:`launcher.reaper`)."""
        self.reaper.release_orphan_locks(connectors)

    def claim_jobs(self, connector_ids: list[str]) -> None:
        with self._lock:
            free = self.config.service.max_concurrent_syncs - len(self.running)
        if self._stop.is_set():
            return
        # Every poll, slots free or not: a job its source cannot run ends at once, without waiting
        # for a slot, nor for the connector's running job (a continuous sync goes on).
        waiting = jobs_to_claim(self.store, connector_ids)
        if free > 0:
            self.slots_held = None
        else:
            self._note_slots_held(waiting)
        for job in waiting:
            if self._stop.is_set():
                break
            problems = job_problems(job.doc)
            if problems:
                self._fail_unclaimed(job, "; ".join(problems))
                continue
            refusal = self._refusal(job)
            if refusal:
                self._refuse(job, refusal)
                continue
            if free <= 0:
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

    def _note_slots_held(self, jobs: list[Job]) -> None:
        """Every sync slot is taken. When continuous syncs hold them all (they run until stopped),
        name the jobs left waiting and the setting to raise, once per job in the log and in
        /healthz while it lasts: else they would wait in silence, for as long as the streams run.
        A job of a streaming connector is not counted: its stream makes room for it."""
        now = time.monotonic()
        if now - self._slots_checked < max(5.0, self.config.service.idling):
            return
        self._slots_checked = now
        with self._lock:
            runners = list(self.running.values())
        streaming = {str(r.connector_id) for r in runners if getattr(r, "continuous", False)}
        waiting = [job for job in jobs if job.connector_id not in streaming]
        if not waiting or len(streaming) < len(runners):  # a batch sync ends, and frees its slot
            self.slots_held = None
            return
        limit = self.config.service.max_concurrent_syncs
        names = ", ".join(f"{job.id} ({job.connector_id})" for job in waiting[:5]) + (", ..." if len(waiting) > 5
                                                                                       else "")
        self.slots_held = (f"{len(waiting)} job(s) wait for a sync slot: all {limit} "
                           f"(service.max_concurrent_syncs) are held by continuous syncs, which run until stopped "
                           f"({', '.join(sorted(streaming))}); raise service.max_concurrent_syncs. Waiting: {names}")
        new = [job for job in waiting if job.id not in self._told_waiting]
        self._told_waiting = {job.id for job in waiting}
        if new:
            _LOGGER.warning("%s", self.slots_held)

    def _refusal(self, job: Job) -> str | None:
        """Why ``job``'s source cannot run it at all (:func:`launcher.protocol.job_refusal`), None: it can
        (or its source is not known here: claiming it says so)."""
        if job.job_type not in ("incremental", "access_control"):
            return None
        snapshot = job.doc.get("connector")
        service_type = snapshot.get("service_type") if isinstance(snapshot, Mapping) else None
        fqn = self.config.sources.get(service_type) if isinstance(service_type, str) else None
        try:
            return job_refusal(job.doc, load_source_class(fqn)) if fqn else None
        except Exception:  # noqa: BLE001 - a source that cannot be loaded: the claim ends the job saying why
            return None

    def _refuse(self, job: Job, reason: str) -> None:
        """End a job its source cannot run: ``error`` with ``reason``, the connector's lock untouched
        (its running job, e.g. a continuous sync, goes on); an access-control job is reported on
        the connector's ``last_access_control_sync_*``, as when it ends after a claim."""
        error = f"ConnectorError: {reason}"
        if not self._end_unclaimed(job, error, last_seen=True):
            return
        _LOGGER.warning("job %s of connector %s: %s", job.id, job.connector_id, reason)
        if job.job_type == "access_control" and job.connector_id:
            try:
                self.store.update_connector(job.connector_id, {"last_access_control_sync_status": "error",
                                                               "last_access_control_sync_error": error})
            except NotFoundError:
                pass

    def _fail_unclaimed(self, job: Job, message: str) -> None:
        if self._end_unclaimed(job, f"InvalidJob: {message}"):
            _LOGGER.warning("job %s: %s", job.id, message)

    def _end_unclaimed(self, job: Job, error: str, *, last_seen: bool = False) -> bool:
        """End a job that was never claimed ``error``, conditionally on the job as read; False when it
        was claimed, canceled or deleted meanwhile."""
        stamp = now_iso()
        try:
            self.store.end_job(job, "error", {"error": error, "completed_at": stamp,
                                              **({"last_seen": stamp} if last_seen else {})}, expected=job)
        except (ConflictError, NotFoundError):
            return False
        return True

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

