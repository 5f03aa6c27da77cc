"""Recovery: a restarted daemon takes back its own jobs at once, without waiting for the reaper.

A daemon that dies (SIGKILL, an OOM kill, a crash) leaves its jobs ``in_progress`` and
their connectors locked; its sync processes stop within a second (they watch their
parent). Any instance's reaper ends such jobs, but only after ``service.job_stale_after``
seconds without a heartbeat (5 minutes by default). The same service, restarted on the
same host, need not wait: every job it runs carries its :class:`ServiceIdentity`
(``worker_hostname``, and in ``metadata``: ``service_id``, the claiming daemon's pid and
run token, and the sync process's ``worker_pid``), so it can tell its own orphans from
jobs that another service, or a sync still winding down, holds.

A job is taken back when it is ``in_progress`` or ``canceling``, was claimed on this host
by this service (same ``service.id``) in another run of the daemon, and neither that
daemon (unless its pid is ours now: a container restarted) nor its sync process
(``python -m pipelines.run`` for that job) is alive. An ``in_progress`` job becomes
``suspended`` and its connector's lock is released, as a graceful shutdown leaves them,
so the same poll claims and resumes it; a ``canceling`` job becomes ``canceled``. Each
write is conditional on the job as read. A job whose sync process is still alive is left
for the next poll. At start it also removes the job folders (job file, result) a killed
daemon left in the temp dir for jobs that have ended.

``service.id`` (config.yml) names the service; by default it is derived from the host
name and the absolute path of its config.yml, so two services on one host (two config
files) never take each other's jobs.

Example usage::

    identity = ServiceIdentity.of(config)
    recovery = OwnJobs(store, identity)
    recovery.take_back(running=set(daemon.running), connector_ids=[...], service_types=None)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elasticsearch import ConflictError, NotFoundError

from launcher.protocol import now_iso, release_lock
from launcher.store import FINAL_STATUSES, ConnectorStore, Job

__all__ = ["ServiceIdentity", "OwnJobs", "default_service_id", "remove_stale_job_folders"]

_LOGGER = logging.getLogger(__name__)


def default_service_id(hostname: str, config_path: str | None) -> str:
    """``<host>:<12 hex digits of the config file's absolute path>`` (``<default>`` without one)."""
    where = str(Path(config_path).resolve()) if config_path else "<default>"
    return f"{hostname}:{hashlib.sha256(where.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ServiceIdentity:
    """Who claims a job: this service (``service_id``, ``hostname``) in this run of the daemon."""

    service_id: str
    hostname: str
    daemon_pid: int
    instance: str

    @classmethod
    def of(cls, config: Any) -> "ServiceIdentity":
        """The identity of a daemon started now with ``config`` (a :class:`launcher.config.Config`)."""
        hostname = config.service.hostname or socket.gethostname()
        service_id = getattr(config.service, "id", None) or default_service_id(hostname, config.path)
        return cls(service_id=service_id, hostname=hostname, daemon_pid=os.getpid(), instance=uuid.uuid4().hex)

    def metadata(self) -> dict[str, Any]:
        """What a job this daemon runs carries in its ``metadata``."""
        return {"service_id": self.service_id, "daemon_pid": self.daemon_pid, "daemon_instance": self.instance}


def _alive(pid: Any, *, marker: str | None = None, started_by: str | None = None) -> bool:
    """Whether process ``pid`` runs and is the one meant: with ``marker`` in its command line,
    or started by ``started_by`` (an ISO time; a pid reused by a later process does not count)."""
    import psutil

    from launcher.scheduling import parse_time

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if marker is not None and not any(marker in part for part in process.cmdline()):
            return False
        claimed = parse_time(started_by) if started_by else None
        return claimed is None or process.create_time() <= claimed.timestamp() + 1
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


#: A daemon's folder for one job (SyncRunner: ``tempfile.mkdtemp(prefix=f"elastic-ingest-{job_id}-")``).
_JOB_FOLDER = re.compile(r"^elastic-ingest-(?P<job>[A-Za-z0-9_-]{20,64})-[A-Za-z0-9_]{8}$")
#: A folder whose job no longer exists is left this long (it may be another cluster's daemon's).
_MISSING_JOB_GRACE = 86400.0


def remove_stale_job_folders(store: ConnectorStore, directory: Path) -> list[Path]:
    """Remove the job folders (job file with secrets, result) a killed daemon left in ``directory``.

    Only folders of jobs that have ended (or that no longer exist, after a day), and that
    no running process names (a sync process has its job file on its command line).
    """
    import shutil

    import psutil

    candidates = []
    for folder in directory.glob("elastic-ingest-*"):
        match = _JOB_FOLDER.match(folder.name)
        if match and folder.is_dir() and any((folder / name).exists() for name in ("job.json", "result.json")):
            candidates.append((folder, match["job"]))
    if not candidates:
        return []
    in_use = " ".join(" ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"]))
    removed = []
    for folder, job_id in candidates:
        if str(folder) in in_use:
            continue
        job = store.get_job(job_id)
        if job is None:
            try:
                if time.time() - folder.stat().st_mtime < _MISSING_JOB_GRACE:
                    continue
            except OSError:
                continue
        elif job.status not in FINAL_STATUSES:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        _LOGGER.info("removed %s, left by a daemon that was killed (job %s %s)", folder, job_id,
                     job.status if job else "gone")
    return removed


class OwnJobs:
    """Takes back this service's orphaned jobs (see the module docstring)."""

    def __init__(self, store: ConnectorStore, identity: ServiceIdentity):
        self.store, self.identity = store, identity
        self._pending = True  # at start; again while a job's sync process was still winding down
        self._folders_checked = False

    def _orphaned(self, job: Job) -> str | None:
        """Why ``job`` is ours and orphaned (None: not ours, or still alive somewhere)."""
        meta = job.doc.get("metadata") if isinstance(job.doc.get("metadata"), dict) else {}
        if job.doc.get("worker_hostname") != self.identity.hostname or meta.get("service_id") != \
                self.identity.service_id or meta.get("daemon_instance") == self.identity.instance:
            return None
        daemon = meta.get("daemon_pid")
        if daemon != self.identity.daemon_pid and _alive(daemon, started_by=job.doc.get("started_at")):
            _LOGGER.warning("job %s: claimed by another daemon with this service's id (%s, pid %s) that still "
                            "runs; give each daemon its own service.id", job.id, self.identity.service_id, daemon)
            return None
        if _alive(meta.get("worker_pid"), marker=job.id):
            self._pending = True  # its sync process stops within a second: next poll
            return None
        return f"its daemon (pid {daemon}) and sync process (pid {meta.get('worker_pid')}) are gone"

    def _killed_run_counters(self, job: Job) -> dict[str, Any]:
        """The job's counters after the killed run, when it was the job's first: its workers'
        progress records, exact up to the requests in flight (the last heartbeat may be
        older). A later run's share cannot be told from the earlier runs' in the job
        document: its last heartbeat stands."""
        from launcher.counters import Counters
        from transforms.dead_letter_files import count_dead_letters
        from transforms.progress import PROGRESS_INDEX, read_progress

        meta = job.doc.get("metadata") if isinstance(job.doc.get("metadata"), dict) else {}
        if Counters.carried(job.doc).runs > 1:
            return {}
        try:
            self.store.es.indices.refresh(index=PROGRESS_INDEX, ignore_unavailable=True)
            location = (meta.get("dead_letters") or {}).get("location")
            run = Counters.of_progress(read_progress(self.store.es, job.id),
                                       dead_letters=(count_dead_letters(location) or 0) if location else 0)
        except Exception as exc:  # noqa: BLE001 - the last heartbeat's counters stand
            _LOGGER.warning("job %s: its progress records are unreadable (%s); its counters are the last heartbeat's",
                            job.id, exc)
            return {}
        run = run.at_least(Counters.carried(job.doc))
        return {**run.job_fields(), "metadata": {**meta, **run.metadata(location)}}

    def take_back(self, *, running: Iterable[str], connector_ids: list[str] | None,
                  service_types: list[str] | None) -> list[str]:
        """Suspend (or, if a cancel was asked, cancel) our orphaned jobs; their ids. Cheap once done.

        The first time, also remove the job folders a killed daemon left in the temp dir
        (:func:`remove_stale_job_folders`).
        """
        if not self._pending:
            return []
        if not self._folders_checked:
            self._folders_checked = True
            try:
                remove_stale_job_folders(self.store, Path(tempfile.gettempdir()))
            except Exception as exc:  # noqa: BLE001 - tidying only
                _LOGGER.warning("could not tidy the temp dir's job folders: %s", exc)
        self._pending = False
        mine = set(running)
        jobs = self.store.list_jobs(connector_ids=connector_ids, service_types=service_types,
                                    statuses=["in_progress", "canceling"], size=500)
        taken: list[str] = []
        for job in jobs:
            if job.id in mine or not job.connector_id:
                continue
            reason = self._orphaned(job)
            if reason is None:
                continue
            stamp = now_iso()
            if job.status == "canceling":
                status, fields = "canceled", {"canceled_at": stamp, "completed_at": stamp, "last_seen": stamp}
            else:
                status, fields = "suspended", {"last_seen": stamp}
            fields.update(self._killed_run_counters(job))
            try:
                self.store.end_job(job, status, fields, expected=job)
            except (ConflictError, NotFoundError):
                continue  # it moved meanwhile: not an orphan after all
            release_lock(self.store, job.connector_id, {"last_sync_status": status},
                         only_if=("in_progress", "canceling"))
            _LOGGER.warning("job %s of connector %s: taken back after a restart (%s): %s", job.id, job.connector_id,
                            reason, status)
            taken.append(job.id)
        return taken
