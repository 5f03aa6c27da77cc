"""Scheduled jobs: create the jobs a connector's ``scheduling`` makes due, each fire time once.

A connector schedules ``full``, ``incremental`` and ``access_control`` syncs with Quartz
cron expressions (:mod:`launcher.scheduling` does the cron arithmetic). At each poll
:func:`create_due_jobs` takes each due fire time by writing ``last_*_scheduled_at``
conditionally on the ``_seq_no`` read, then creates the job: whoever loses the race re-reads
the connector and finds the fire time taken, so any number of service instances create one
job per fire time. Job types the source cannot run (incremental without
``incremental_sync_enabled``, access control without document-level security) are never
scheduled.

Example usage::

    problems = cron_problems(connector)        # [] or ["scheduling.full.interval: ..."]
    if not problems:
        create_due_jobs(store, connector, source_class, created_grace=timedelta(seconds=60))
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from elasticsearch import ConflictError

from launcher.protocol import create_job
from launcher.scheduling import SCHEDULED_AT_FIELD, due_fire_time, validate_cron
from launcher.store import Connector, ConnectorStore
from sources.base import supports_job_type

__all__ = ["cron_problems", "create_due_jobs"]

_LOGGER = logging.getLogger(__name__)


def _enabled_entry(connector: Connector, job_type: str) -> dict | None:
    scheduling = connector.get("scheduling")
    entry = scheduling.get(job_type) if isinstance(scheduling, dict) else None
    return entry if isinstance(entry, dict) and entry.get("enabled") is True else None


def cron_problems(connector: Connector) -> list[str]:
    """What is wrong with the connector's enabled schedules (``scheduling.<type>.interval: ...``)."""
    problems = []
    for job_type in SCHEDULED_AT_FIELD:
        entry = _enabled_entry(connector, job_type)
        problem = validate_cron(entry.get("interval")) if entry is not None else None
        if problem:
            problems.append(f"scheduling.{job_type}.interval: {problem}")
    return problems


def create_due_jobs(store: ConnectorStore, connector: Connector, source_class: type, *,
                    created_grace: timedelta) -> list[str]:
    """Create the scheduled jobs that are due now; the ids of those this instance created.

    ``created_grace``: how recent the latest fire time of a schedule never taken before must
    be to fire (enabling an hourly schedule does not start a sync at once). ``connector`` is
    re-read (in place) when another instance wrote it first.
    """
    created = []
    for job_type, field in SCHEDULED_AT_FIELD.items():
        if not supports_job_type(source_class, job_type):
            continue
        for _ in range(3):
            entry = _enabled_entry(connector, job_type)
            if entry is None:
                break
            fire = due_fire_time(entry["interval"], last_scheduled_at=connector.get(field),
                                 now=datetime.now(timezone.utc), created_grace=created_grace)
            if fire is None:
                break
            try:
                store.update_connector(connector.id, {field: fire.isoformat()}, expected=connector, conditional=True)
            except ConflictError:
                if not _reread(store, connector):
                    return created
                continue  # evaluate again against what the winner wrote
            job_id = create_job(store, connector, job_type=job_type, trigger_method="scheduled",
                                metadata={"scheduled_at": fire.isoformat()})
            _LOGGER.info("connector %s: scheduled %s job %s for %s", connector.id, job_type, job_id, fire.isoformat())
            created.append(job_id)
            break
    return created


def _reread(store: ConnectorStore, connector: Connector) -> bool:
    """Refresh ``connector`` in place from the store; False when it is gone."""
    fresh = store.get_connector(connector.id)
    if fresh is None:
        return False
    connector.doc, connector.seq_no, connector.primary_term = fresh.doc, fresh.seq_no, fresh.primary_term
    connector.version = fresh.version
    return True
