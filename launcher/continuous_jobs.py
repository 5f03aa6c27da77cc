"""Continuous-sync jobs: keep exactly one streaming job for each connector that wants one.

A connector wants one while its configuration's ``continuous_sync`` field is on, its source
supports continuous syncs (:func:`sources.streaming.supports_continuous_sync`) and it is
``connected``, or in ``error`` only because its newest job failed (the job's end wrote its
error on the connector: a stream whose sync process was killed is started again without
waiting for the service's next check of the connector, up to ``service.heartbeat`` later; a
connector whose own check failed, its configuration or ping, gets no stream until it passes).
At each poll :func:`ensure_continuous_job` creates an ``incremental`` job (metadata
``continuous: true`` and a fingerprint of the configuration) when the connector has no job
pending, running or suspended, except:

* the newest job is a continuous job that was ``canceled`` with the same configuration:
  a cancel stays until the configuration changes or a sync is requested (a newer job);
* the newest job is a continuous job that failed with ``SourceConfigError`` (the source
  refused the connector's configuration, e.g. a ``timestamp_column`` no table has) with the
  same configuration: no attempt can pass until the configuration changes (or a sync is
  requested); the connector shows the error meanwhile;
* the newest job is a continuous job that failed after running less than
  :data:`RETRY_AFTER` seconds, less than the back-off ago (the source is down: one attempt
  every so often, not one per poll; the daemon passes ten polls, at least 5 s, doubled for
  each failed attempt before in a row, at most :data:`MAX_RETRY_AFTER`). A stream that had
  run longer (then was killed, or lost its source) is started again at the next poll: if
  that attempt fails at once, the next waits.

While a continuous job runs, :func:`stream_should_stop` tells its supervisor to end it:
``continuous_sync`` turned off (the stream's resources are then released:
:func:`release_stream`), the configuration changed (a new job starts with it), or another
job of the connector waits (a full sync requested: the stream ends, the full sync runs,
then a new stream resumes from the committed position); not for a job the source cannot run
(an incremental job of a source without incremental syncs, e.g. one made by Elastic's CLI for
a ``dir`` connector), which the daemon ends ``error`` at once while the stream goes on. A
connector deleted releases its stream too (:func:`release_deleted`, for ``delete-connector``;
the supervisor of a job still running releases it when it stops the job), or a PostgreSQL
slot would keep WAL forever.

Example usage::

    ensure_continuous_job(store, connector, source_class)   # the new job's id, or None
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from launcher.configuration import values_of
from launcher.protocol import create_job, job_refusal
from launcher.store import Connector, ConnectorStore
from sources.streaming import CONTINUOUS_SYNC_FIELD, continuous_sync_on, supports_continuous_sync

__all__ = ["ensure_continuous_job", "is_continuous", "configuration_fingerprint", "stream_should_stop",
           "release_stream", "release_if_off", "release_deleted", "stream_state", "stream_summary",
           "describe_stream", "RETRY_AFTER"]

_LOGGER = logging.getLogger(__name__)
#: Seconds between two continuous jobs of a connector whose stream failed (doubled for each
#: quick failure in a row, up to MAX_RETRY_AFTER).
RETRY_AFTER = 30.0
MAX_RETRY_AFTER = 600.0
#: A failure no new attempt can get past while the configuration stays the same.
_CONFIGURATION_ERRORS = ("SourceConfigError:",)
_ACTIVE = ("pending", "in_progress", "canceling", "suspended")


def configuration_fingerprint(configuration: Mapping[str, Any] | None) -> str:
    """What identifies a connector's configuration values (sensitive ones included, hashed)."""
    values = values_of(configuration or {}) if isinstance(configuration, Mapping) else {}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_continuous(job_doc: Mapping[str, Any]) -> bool:
    metadata = job_doc.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get("continuous") is True


def stream_state(job_doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stream`` record a continuous job keeps in its metadata (position, lag, counts), or ``{}``."""
    metadata = job_doc.get("metadata")
    state = metadata.get("stream") if isinstance(metadata, Mapping) else None
    return dict(state) if isinstance(state, Mapping) else {}


def _position(cursor: Any) -> str | None:
    """The source's position from a stream's cursor, short (``lsn=0/3700000``); None when unknown."""
    if not isinstance(cursor, Mapping) or not cursor:
        return None
    names = [k for k in ("lsn", "gtid", "position", "file", "checkpoint") if k in cursor] or sorted(cursor)
    return " ".join(f"{k}={cursor[k]}" for k in names)[:80]


def stream_summary(job_id: str, status: Any, state: Mapping[str, Any]) -> dict[str, Any]:
    """What ``connectors``, ``/healthz`` and ``/metrics`` show of a streaming connector's job."""
    return {"job_id": job_id, "status": status, "snapshot": state.get("snapshot"),
            "lag_seconds": state.get("lag_seconds"), "position": _position(state.get("cursor")),
            "acknowledged_at": state.get("acknowledged_at"), "changes_applied": state.get("changes_applied"),
            "version_conflicts": state.get("version_conflicts"), "pending_changes": state.get("pending_changes")}


def describe_stream(summary: Mapping[str, Any]) -> str:
    """One line: ``streaming, lag 0.24s, at lsn=0/3700000, last acknowledged 2026-...`` (what is known)."""
    status = summary.get("status")
    words = ["streaming" if status == "in_progress" else
             "pending (not claimed yet: waits for a service with a free sync slot)" if status == "pending"
             else str(status)]
    if summary.get("snapshot") == "reading":
        words.append("taking its snapshot")
    lag = summary.get("lag_seconds")
    if isinstance(lag, (int, float)):
        words.append(f"lag {lag:.2f}s")
    if summary.get("position"):
        words.append(f"at {summary['position']}")
    if summary.get("acknowledged_at"):
        words.append(f"last acknowledged {summary['acknowledged_at']}")
    return ", ".join(words)


def _when(stamp: Any) -> datetime | None:
    """An ISO 8601 stamp (UTC when it names no zone); None when it is not one."""
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _seconds_since(stamp: Any) -> float:
    when = _when(stamp)
    return float("inf") if when is None else (datetime.now(timezone.utc) - when).total_seconds()


def _seconds_between(start: Any, end: Any) -> float:
    """Seconds from ``start`` to ``end`` (ISO 8601 stamps); 0 when either is missing or unreadable."""
    begun, ended = _when(start), _when(end)
    return (ended - begun).total_seconds() if begun is not None and ended is not None else 0.0


def _failed_by_its_job(connector: Connector, latest: Any) -> bool:
    """Whether the connector is in ``error`` only because its newest job failed (the job's end
    wrote the job's error on the connector), not because of its own check."""
    return (latest is not None and latest.status == "error" and connector.get("status") == "error"
            and connector.get("error") == latest.doc.get("error"))


def _quick_failure(job: Any, within: float) -> bool:
    """Whether ``job`` failed after running less than ``within`` seconds."""
    return _seconds_between(job.doc.get("started_at"), job.doc.get("completed_at")) < within


def ensure_continuous_job(store: ConnectorStore, connector: Connector, source_class: type, *,
                          retry_after: float = RETRY_AFTER) -> str | None:
    """Create the connector's continuous job when it wants one and has none (see the module docstring)."""
    configuration = connector.get("configuration")
    if (not supports_continuous_sync(source_class) or not continuous_sync_on(configuration)
            or connector.get("status") not in ("connected", "error")):
        return None
    newest = store.list_jobs(connector_ids=[connector.id], size=8, newest_first=True)
    latest = newest[0] if newest else None
    if connector.get("status") == "error" and not _failed_by_its_job(connector, latest):
        return None  # its configuration or ping failed: the service's check says when it passes
    fingerprint = configuration_fingerprint(configuration)
    if latest is not None:
        if latest.status in _ACTIVE:
            return None
        metadata = latest.doc.get("metadata") if isinstance(latest.doc.get("metadata"), Mapping) else {}
        if is_continuous(latest.doc):
            if latest.status == "canceled" and metadata.get("config_fingerprint") == fingerprint:
                return None  # canceled: stays stopped until the configuration changes or a sync is requested
            if (latest.status == "error" and str(latest.doc.get("error") or "").startswith(_CONFIGURATION_ERRORS)
                    and metadata.get("config_fingerprint") == fingerprint):
                return None  # the configuration was refused: only a new one (or a sync requested) can pass
            if latest.status == "error" and _quick_failure(latest, retry_after):
                failures = 0
                for job in newest:  # quick failures of continuous jobs in a row, newest first
                    if not (is_continuous(job.doc) and job.status == "error" and _quick_failure(job, retry_after)):
                        break
                    failures += 1
                wait = min(MAX_RETRY_AFTER, retry_after * 2 ** (failures - 1))
                if _seconds_since(latest.doc.get("completed_at")) < wait:
                    return None
    job_id = create_job(store, connector, job_type="incremental", trigger_method="scheduled",
                        metadata={"continuous": True, "config_fingerprint": fingerprint})
    _LOGGER.info("connector %s: continuous sync job %s", connector.id, job_id)
    return job_id


def stream_should_stop(store: ConnectorStore, job_doc: Mapping[str, Any], connector: Connector, *,
                       source_class: type | None = None) -> str | None:
    """Why a running continuous job should end now (None: it goes on). With ``source_class``, a
    waiting job the source cannot run at all (:func:`launcher.protocol.job_refusal`: the daemon
    ends it at once) does not stop the stream."""
    configuration = connector.get("configuration")
    if not continuous_sync_on(configuration):
        return f"{CONTINUOUS_SYNC_FIELD} was turned off"
    metadata = job_doc.get("metadata") if isinstance(job_doc.get("metadata"), Mapping) else {}
    wanted = metadata.get("config_fingerprint")
    if wanted and wanted != configuration_fingerprint(configuration):
        return "the configuration changed; a new continuous job starts with it"
    waiting = [job for job in store.list_jobs(connector_ids=[connector.id], statuses=["pending"], size=10)
               if source_class is None or job_refusal(job.doc, source_class) is None]
    if waiting:
        kind = str(waiting[0].job_type)
        article = "an" if kind[:1] in ("a", "e", "i", "o", "u") else "a"
        return f"{article} {kind} sync was requested; the stream resumes after it"
    return None


def release_stream(source_class: type, configuration: Mapping[str, Any], settings: Mapping[str, Any],
                   connector_id: str, *, why: str = "continuous sync off") -> None:
    """Drop what the source keeps for the connector's stream (``continuous_sync`` turned off, or
    the connector deleted: ``why``)."""
    from sources.driver import SourceDriver, build_source

    source = build_source(source_class, configuration, settings)
    driver = SourceDriver(source)
    try:
        driver.call(source.release_change_stream, None, stream_id=connector_id)
    finally:
        driver.close()
    _LOGGER.info("connector %s: %s; the source released its stream", connector_id, why)


def release_deleted(store: ConnectorStore, connector: Connector, source_class: type,
                    configuration: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """Once ``connector`` is deleted: release what its source keeps for its stream, and say what was
    done (None: it does not stream). A continuous job still running is the business of the service
    running it, which stops the job (its connector is gone) and releases the stream then."""
    if not supports_continuous_sync(source_class):
        return None
    newest = store.list_jobs(connector_ids=[connector.id], size=1, newest_first=True)
    unreleased = bool(newest) and is_continuous(newest[0].doc) and not newest[0].doc["metadata"].get(
        "stream_released")
    if not unreleased and not continuous_sync_on(connector.get("configuration")):
        return None
    running = store.list_jobs(connector_ids=[connector.id], statuses=["in_progress", "canceling"], size=1)
    if running:
        return (f"the service running its continuous sync (job {running[0].id}) stops it and releases what the "
                "source keeps for the stream")
    release_stream(source_class, configuration, settings, connector.id, why="connector deleted")
    return "what the source kept for its continuous sync was released"


def release_if_off(store: ConnectorStore, connector: Connector, source_class: type, configuration: Mapping[str, Any],
                   settings: Mapping[str, Any]) -> bool:
    """When ``continuous_sync`` is off and the connector's newest job is an ended continuous job whose
    stream was not released yet (it was canceled, or failed, before the toggle): release it now."""
    if not supports_continuous_sync(source_class) or continuous_sync_on(connector.get("configuration")):
        return False
    newest = store.list_jobs(connector_ids=[connector.id], size=1, newest_first=True)
    if not newest or not is_continuous(newest[0].doc) or newest[0].status in _ACTIVE:
        return False
    job = newest[0]
    if job.doc["metadata"].get("stream_released"):
        return False
    release_stream(source_class, configuration, settings, connector.id)
    store.update_job(job.id, {"metadata": {**job.doc["metadata"], "stream_released": True}})
    return True
