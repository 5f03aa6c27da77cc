"""The reaper: end jobs nobody runs any more, and release locks no job holds.

A service instance that dies (SIGKILL, a lost host) leaves its jobs ``in_progress`` and
its connectors locked (``last_sync_status: in_progress``). Every instance's poll runs
:meth:`Reaper.reap` and :meth:`Reaper.release_orphan_locks` over the connectors it serves:

* ``in_progress`` / ``canceling`` jobs whose ``last_seen`` is older than
  ``service.job_stale_after``, or whose connector no longer exists, end ``error``
  (``StaleJob: ...``) and their connector's lock is released;
* ``pending`` / ``suspended`` jobs whose connector no longer exists end ``error``;
* a connector locked for ``job_stale_after`` seconds while none of its jobs is
  ``in_progress`` or ``canceling`` (an instance died between taking the lock and the job)
  is unlocked (``StaleLock``).

Each write is conditional on the ``_seq_no`` read, so a job that moved meanwhile (its owner
wrote a heartbeat) is left alone. A restarted instance takes back its own jobs sooner
(:mod:`launcher.recovery`).

Example usage::

    reaper = Reaper(config, store, es, serves_job=lambda job: True)
    reaper.reap(running=set(daemon.running))
    reaper.release_orphan_locks(connectors)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from launcher.config import Config
from launcher.protocol import now_iso, release_lock
from launcher.scheduling import parse_time
from launcher.store import Connector, ConnectorStore, Job

__all__ = ["Reaper"]

_LOGGER = logging.getLogger(__name__)


class Reaper:
    """Ends stale jobs and releases orphan locks of the connectors an instance serves."""

    def __init__(self, config: Config, store: ConnectorStore, es: Elasticsearch, *,
                 serves_job: Callable[[Job], bool], served_types: Callable[[], list[str]]):
        self.config = config
        self.store = store
        self.es = es
        self.serves_job = serves_job
        self.served_types = served_types
        self._orphans: dict[str, float] = {}  # connector id -> when it was first seen locked by no job

    def reap(self, running: Iterable[str]) -> None:
        """End the stale jobs of served connectors, except ``running`` (this instance's own)."""
        stale_before = datetime.now(timezone.utc) - timedelta(seconds=self.config.service.job_stale_after)
        ids = list(self.config.service.connector_ids) or None
        jobs = self.store.list_jobs(connector_ids=ids, service_types=None if ids else self.served_types(),
                                    statuses=["in_progress", "canceling", "pending", "suspended"], size=500)
        mine = set(running)
        connectors: dict[str, Connector | None] = {}
        for job in jobs:
            if job.id in mine or not job.connector_id or not self.serves_job(job):
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
            self._end(job, reason, release=not gone and job.status in ("in_progress", "canceling"))

    def _end(self, job: Job, reason: str, *, release: bool) -> None:
        error = f"StaleJob: {reason}"
        try:
            self.store.end_job(job, "error", {"error": error, "completed_at": now_iso()}, expected=job)
        except (ConflictError, NotFoundError):
            return  # it moved: not stale after all
        _LOGGER.warning("reaped job %s of connector %s: %s", job.id, job.connector_id, reason)
        self._delete_progress(job.id)
        if release:
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
        """Unlock the connectors locked for ``job_stale_after`` seconds by no job."""
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
