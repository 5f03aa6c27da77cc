"""Connector and sync-job documents, and the operations on them (PROTOCOL.md sections 2, 3, 6).

Every write that decides ownership uses optimistic concurrency (``if_seq_no`` /
``if_primary_term``), so any number of service instances can share the indices:

* :func:`claim_job` takes the connector-level lock (``last_sync_status: in_progress``) and
  then the job, each with a conditional update; a 409 means somebody else was faster;
* :func:`finish_job` writes the job's end state and releases the lock;
* :func:`create_job` writes a job with the connector's snapshot, as Kibana does.

Documents written by others may be wrong: :func:`connector_problems` and
:func:`job_problems` say what is wrong, by field, instead of raising.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX

__all__ = [
    "now_iso", "Connector", "Job", "Claim", "get_connector", "get_job", "search_connectors", "connector_problems", "job_problems",
    "create_job", "jobs_to_claim", "claim_job", "finish_job", "update_job", "update_connector",
    "job_snapshot", "active_filtering", "snapshot_filtering", "JOB_STATUSES", "FINAL_STATUSES", "default_filtering",
    "new_connector", "replace_connector_object", "release_lock",
]

_LOGGER = logging.getLogger(__name__)

JOB_STATUSES = ("pending", "in_progress", "canceling", "canceled", "suspended", "completed", "error")
FINAL_STATUSES = ("canceled", "completed", "error")
_CLAIM_ATTEMPTS = 5
_UPDATE_RETRIES = 10


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class Connector:
    id: str
    doc: dict[str, Any]
    seq_no: int | None = None
    primary_term: int | None = None
    version: int | None = None  # per document: +1 on each write, unlike the shard-wide _seq_no

    @property
    def service_type(self) -> Any:
        return self.doc.get("service_type")

    @property
    def index_name(self) -> Any:
        return self.doc.get("index_name")

    def get(self, key: str, default: Any = None) -> Any:
        return self.doc.get(key, default)

    @classmethod
    def from_hit(cls, hit: Mapping[str, Any]) -> "Connector":
        return cls(hit["_id"], dict(hit.get("_source") or {}), hit.get("_seq_no"), hit.get("_primary_term"),
                   hit.get("_version"))


@dataclass
class Job:
    id: str
    doc: dict[str, Any]
    seq_no: int | None = None
    primary_term: int | None = None

    @property
    def status(self) -> Any:
        return self.doc.get("status")

    @property
    def connector_id(self) -> Any:
        connector = self.doc.get("connector")
        return connector.get("id") if isinstance(connector, Mapping) else None

    @property
    def job_type(self) -> Any:
        return self.doc.get("job_type", "full")

    @classmethod
    def from_hit(cls, hit: Mapping[str, Any]) -> "Job":
        return cls(hit["_id"], dict(hit.get("_source") or {}), hit.get("_seq_no"), hit.get("_primary_term"))


def default_filtering() -> list[dict[str, Any]]:
    """The filtering object of a new connector: only the catch-all DEFAULT rule."""
    stamp = now_iso()
    rule = {"id": "DEFAULT", "policy": "include", "field": "_", "rule": "regex", "value": ".*", "order": 0,
            "created_at": stamp, "updated_at": stamp}
    rules = {"rules": [rule], "advanced_snippet": {"value": {}, "created_at": stamp, "updated_at": stamp},
             "validation": {"state": "valid", "errors": []}}
    return [{"domain": "DEFAULT", "active": dict(rules), "draft": dict(rules)}]


def new_connector(*, service_type: str, index_name: str, name: str | None = None, configuration: Mapping | None = None,
                  scheduling: Mapping | None = None, pipeline: Mapping | None = None, language: str | None = None,
                  ) -> dict[str, Any]:
    """A connector document shaped as Kibana writes it."""
    return {
        "service_type": service_type,
        "index_name": index_name,
        "name": name or index_name,
        "description": None,
        "language": language,
        "is_native": False,
        "api_key_id": None,
        "configuration": dict(configuration or {}),
        "status": "configured" if configuration else "created",
        "error": None,
        "last_seen": None,
        "last_sync_status": None,
        "last_sync_error": None,
        "last_synced": None,
        "last_sync_scheduled_at": None,
        "last_incremental_sync_scheduled_at": None,
        "last_access_control_sync_scheduled_at": None,
        "last_indexed_document_count": None,
        "last_deleted_document_count": None,
        "scheduling": dict(scheduling or {
            "full": {"enabled": False, "interval": "0 0 0 * * ?"},
            "incremental": {"enabled": False, "interval": "0 0 0 * * ?"},
            "access_control": {"enabled": False, "interval": "0 0 0 * * ?"},
        }),
        "pipeline": dict(pipeline or {"name": "search-default-ingestion", "extract_binary_content": True,
                                      "reduce_whitespace": True, "run_ml_inference": False}),
        "filtering": default_filtering(),
        "features": {},
        "sync_cursor": None,
        "sync_now": False,
        "deleted": False,
    }


def connector_problems(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong with a connector document, field by field (empty: usable)."""
    problems = []
    if not isinstance(doc.get("service_type"), str) or not doc.get("service_type"):
        problems.append(f"service_type: expected a non-empty string, got {doc.get('service_type')!r}")
    index = doc.get("index_name")
    if index is None:
        pass  # not chosen yet (Kibana allows that); a job then fails saying so
    elif not isinstance(index, str) or not index:
        problems.append(f"index_name: expected a non-empty string, got {index!r}")
    elif index != index.lower() or index.startswith(("_", "-", "+", ".")) or any(c in index for c in ' "*\\<|,>/?#:'):
        problems.append(f"index_name: {index!r} is not a valid index name (lowercase, no spaces or \\/*?\"<>|,#:)")
    for key, kind in (("configuration", dict), ("scheduling", dict), ("pipeline", dict), ("filtering", list)):
        if doc.get(key) is not None and not isinstance(doc.get(key), kind):
            problems.append(f"{key}: expected {'an object' if kind is dict else 'a list'}, got {type(doc.get(key)).__name__}")
    return problems


def job_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    connector = doc.get("connector")
    if not isinstance(connector, Mapping) or not isinstance(connector.get("id"), str):
        problems.append("connector.id: expected the connector's id (a string)")
    if doc.get("job_type", "full") not in ("full", "incremental", "access_control"):
        problems.append(f"job_type: expected full, incremental or access_control, got {doc.get('job_type')!r}")
    if doc.get("status") not in JOB_STATUSES:
        problems.append(f"status: expected one of {', '.join(JOB_STATUSES)}, got {doc.get('status')!r}")
    if isinstance(connector, Mapping):
        for key, kinds in (("configuration", (dict,)), ("pipeline", (dict,)), ("filtering", (dict, list)),
                           ("sync_cursor", (dict,))):
            value = connector.get(key)
            if value is not None and not isinstance(value, kinds):
                wanted = " or ".join("an object" if k is dict else "a list" for k in kinds)
                problems.append(f"connector.{key}: expected {wanted}, got {type(value).__name__}")
        index = connector.get("index_name")
        if index is not None and not isinstance(index, str):
            problems.append(f"connector.index_name: expected a string, got {type(index).__name__}")
    return problems


def get_connector(es: Elasticsearch, connector_id: str) -> Connector | None:
    try:
        hit = es.get(index=CONNECTORS_INDEX, id=connector_id)
    except NotFoundError:
        return None
    return Connector.from_hit(hit)


def get_job(es: Elasticsearch, job_id: str) -> Job | None:
    try:
        return Job.from_hit(es.get(index=JOBS_INDEX, id=job_id))
    except NotFoundError:
        return None


def search_connectors(es: Elasticsearch, *, service_types: Iterable[str] | None = None,
                      connector_ids: Iterable[str] | None = None, include_deleted: bool = False) -> list[Connector]:
    filters: list[dict[str, Any]] = []
    if service_types is not None:
        filters.append({"terms": {"service_type": list(service_types)}})
    if connector_ids:
        filters.append({"ids": {"values": list(connector_ids)}})
    must_not = [] if include_deleted else [{"term": {"deleted": True}}]
    result = es.search(index=CONNECTORS_INDEX, query={"bool": {"filter": filters, "must_not": must_not}},
                       size=1000, seq_no_primary_term=True, version=True, sort=[{"_doc": "asc"}])
    return [Connector.from_hit(hit) for hit in result["hits"]["hits"]]


def active_filtering(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The active rules of the DEFAULT domain: ``{"rules": [...], "advanced_snippet": {...}}``."""
    for entry in doc.get("filtering") or []:
        if isinstance(entry, Mapping) and entry.get("domain", "DEFAULT") == "DEFAULT":
            active = entry.get("active") or {}
            return {"rules": active.get("rules") or [], "advanced_snippet": active.get("advanced_snippet") or {},
                    "validation": active.get("validation") or {"state": "valid", "errors": []}}
    return {"rules": [], "advanced_snippet": {}, "validation": {"state": "valid", "errors": []}}


def snapshot_filtering(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The active rules in a job's ``connector`` snapshot, whatever shape the writer used.

    Kibana and Elasticsearch's ``_connector`` API store the active filtering object itself
    (``{rules, advanced_snippet, validation}``); older writers stored a list of domains
    (``[{domain, active, draft}]`` or ``[{domain, rules, ...}]``). All are accepted.
    """
    filtering = snapshot.get("filtering") if isinstance(snapshot, Mapping) else None
    if isinstance(filtering, list):
        entry = next((f for f in filtering if isinstance(f, Mapping) and f.get("domain", "DEFAULT") == "DEFAULT"),
                     None)
        filtering = entry.get("active", entry) if isinstance(entry, Mapping) else None
    if not isinstance(filtering, Mapping):
        return {"rules": [], "advanced_snippet": {}, "validation": {"state": "valid", "errors": []}}
    return {"rules": filtering.get("rules") or [], "advanced_snippet": filtering.get("advanced_snippet") or {},
            "validation": filtering.get("validation") or {"state": "valid", "errors": []}}


def job_snapshot(connector: Connector) -> dict[str, Any]:
    """The ``connector`` object of a new job, shaped as Kibana and Elasticsearch write it."""
    from launcher.configuration import without_secrets

    doc = connector.doc
    return {
        "id": connector.id,
        # Sensitive values stay in the connector document; the service reads them there.
        "configuration": without_secrets(doc.get("configuration") or {}),
        "filtering": active_filtering(doc),
        "index_name": doc.get("index_name"),
        "language": doc.get("language"),
        "pipeline": doc.get("pipeline") or {},
        "service_type": doc.get("service_type"),
        "sync_cursor": doc.get("sync_cursor"),
    }


def create_job(es: Elasticsearch, connector: Connector, *, job_type: str = "full",
               trigger_method: str = "on_demand", metadata: Mapping[str, Any] | None = None) -> str:
    """Write a ``pending`` job for ``connector`` and return its id."""
    stamp = now_iso()
    doc = {
        "connector": job_snapshot(connector),
        "job_type": job_type,
        "trigger_method": trigger_method,
        "status": "pending",
        "error": None,
        "created_at": stamp,
        "started_at": None,
        "completed_at": None,
        "canceled_at": None,
        "cancelation_requested_at": None,
        "last_seen": None,
        "indexed_document_count": 0,
        "indexed_document_volume": 0,
        "deleted_document_count": 0,
        "total_document_count": 0,
        "worker_hostname": None,
        "metadata": dict(metadata or {}),
    }
    job_id = uuid.uuid4().hex
    es.index(index=JOBS_INDEX, id=job_id, document=doc, refresh=True, op_type="create")
    return job_id


def jobs_to_claim(es: Elasticsearch, connector_ids: Iterable[str], limit: int = 50) -> list[Job]:
    """``pending`` and ``suspended`` jobs of these connectors, oldest first."""
    ids = list(connector_ids)
    if not ids:
        return []
    result = es.search(
        index=JOBS_INDEX,
        query={"bool": {"filter": [{"terms": {"status": ["pending", "suspended"]}},
                                   {"terms": {"connector.id": ids}}]}},
        sort=[{"created_at": {"order": "asc", "unmapped_type": "date"}}],
        size=limit, seq_no_primary_term=True,
    )
    return [Job.from_hit(hit) for hit in result["hits"]["hits"]]


def update_connector(es: Elasticsearch, connector_id: str, fields: Mapping[str, Any], *,
                     if_seq_no: int | None = None, if_primary_term: int | None = None) -> dict[str, Any]:
    # Unconditional partial updates retry ES's internal get-then-write race; conditional
    # ones must fail on a conflict (that is the point of them).
    kwargs: dict[str, Any] = {"retry_on_conflict": _UPDATE_RETRIES}
    if if_seq_no is not None:
        kwargs = {"if_seq_no": if_seq_no, "if_primary_term": if_primary_term}
    return es.update(index=CONNECTORS_INDEX, id=connector_id, doc=dict(fields), refresh=True, **kwargs)


def replace_connector_object(es: Elasticsearch, connector_id: str, name: str, value: Any) -> None:
    """Set an object field to exactly ``value``.

    A partial update merges objects key by key, so keys the new value lacks would
    survive (a stale ``sync_cursor`` key, say). Clearing the field first replaces it.
    """
    if isinstance(value, Mapping):
        es.update(index=CONNECTORS_INDEX, id=connector_id, doc={name: None}, retry_on_conflict=_UPDATE_RETRIES)
    update_connector(es, connector_id, {name: value})


def release_lock(es: Elasticsearch, connector_id: str, fields: Mapping[str, Any], *,
                 only_if: Iterable[Any] = ("in_progress",), attempts: int = _CLAIM_ATTEMPTS) -> bool:
    """Write ``fields`` (a new ``last_sync_status`` ...) if the connector is still locked.

    Conditional on ``_seq_no``, re-read and retried on conflict (a heartbeat may land in
    between), so a lock is never left behind and a newer owner's lock is never released.
    """
    wanted = tuple(only_if)
    for _ in range(attempts):
        connector = get_connector(es, connector_id)
        if connector is None or connector.get("last_sync_status") not in wanted:
            return False
        try:
            update_connector(es, connector_id, fields, if_seq_no=connector.seq_no,
                             if_primary_term=connector.primary_term)
            return True
        except ConflictError:
            continue
        except NotFoundError:
            return False
    return False


def update_job(es: Elasticsearch, job_id: str, fields: Mapping[str, Any], *,
               if_seq_no: int | None = None, if_primary_term: int | None = None) -> dict[str, Any]:
    # Unconditional partial updates retry ES's internal get-then-write race; conditional
    # ones must fail on a conflict (that is the point of them).
    kwargs: dict[str, Any] = {"retry_on_conflict": _UPDATE_RETRIES}
    if if_seq_no is not None:
        kwargs = {"if_seq_no": if_seq_no, "if_primary_term": if_primary_term}
    return es.update(index=JOBS_INDEX, id=job_id, doc=dict(fields), refresh=True, **kwargs)


@dataclass
class Claim:
    job: Job
    connector: Connector
    problems: list[str] = field(default_factory=list)


def claim_job(es: Elasticsearch, job_id: str, hostname: str) -> Claim | None:
    """Take the connector's lock, then the job. None when another instance has either.

    1. re-read the job: it must still be ``pending`` or ``suspended``;
    2. re-read its connector with ``_seq_no``; ``last_sync_status: in_progress`` means
       another instance owns it;
    3. conditional update of the connector (the lock); on 409 re-read and retry;
    4. conditional update of the job; on 409 (someone else claimed it) release the lock.
    """
    for _ in range(_CLAIM_ATTEMPTS):
        job = get_job(es, job_id)
        if job is None or job.status not in ("pending", "suspended"):
            return None
        connector = get_connector(es, job.connector_id) if job.connector_id else None
        if connector is None or connector.get("deleted"):
            return Claim(job, Connector(job.connector_id or "", {}), ["the job's connector does not exist"])
        if connector.get("last_sync_status") == "in_progress":
            return None
        previous = {"last_sync_status": connector.get("last_sync_status"), "status": connector.get("status"),
                    "error": connector.get("error"), "last_sync_error": connector.get("last_sync_error")}
        try:
            update_connector(es, connector.id, {"last_sync_status": "in_progress", "last_sync_error": None,
                                                "status": "connected", "error": None},
                             if_seq_no=connector.seq_no, if_primary_term=connector.primary_term)
        except ConflictError:
            continue
        stamp = now_iso()
        try:
            update_job(es, job.id, {"status": "in_progress", "started_at": stamp, "last_seen": stamp,
                                    "worker_hostname": hostname, "error": None},
                       if_seq_no=job.seq_no, if_primary_term=job.primary_term)
        except (ConflictError, NotFoundError):
            update_connector(es, connector.id, previous)
            continue
        job.doc.update(status="in_progress", started_at=stamp, worker_hostname=hostname)
        # ``connector`` is the state before the lock: an access-control job gives it back.
        return Claim(job, connector)
    return None


def finish_job(es: Elasticsearch, job_id: str, connector_id: str | None, status: str, *,
               counters: Mapping[str, Any] | None = None, error: str | None = None,
               sync_cursor: Any = None, metadata: Mapping[str, Any] | None = None,
               job_type: str = "full", previous_sync_status: Any = None) -> None:
    """Write a job's end state, then the connector's ``last_*`` fields (releasing its lock).

    ``sync_cursor`` is stored only for a ``completed`` full or incremental job, and
    replaces the previous cursor as a whole. An ``access_control`` job reports in
    ``last_access_control_sync_*`` and gives ``last_sync_status`` (which reports full and
    incremental jobs, and is the lock) back its ``previous_sync_status``.
    """
    stamp = now_iso()
    counters = dict(counters or {})
    fields: dict[str, Any] = {"status": status, "error": error, "completed_at": stamp, "last_seen": stamp, **counters}
    if status == "canceled":
        fields["canceled_at"] = stamp
    if metadata is not None:
        fields["metadata"] = dict(metadata)
    try:
        update_job(es, job_id, fields)
    except NotFoundError:
        _LOGGER.warning("job %s was deleted before it could be finished", job_id)
    if not connector_id:
        return
    connector_fields: dict[str, Any] = {
        "last_sync_status": status,
        "last_sync_error": error,
        "last_synced": stamp,
        "last_indexed_document_count": counters.get("indexed_document_count", 0),
        "last_deleted_document_count": counters.get("deleted_document_count", 0),
    }
    if job_type == "access_control":
        connector_fields.update(last_access_control_sync_status=status, last_access_control_sync_error=error,
                                last_sync_status=previous_sync_status)
        for key in ("last_sync_error", "last_synced", "last_indexed_document_count", "last_deleted_document_count"):
            connector_fields.pop(key)
    if status == "error":
        connector_fields.update(status="error", error=error)
    elif status == "completed":
        connector_fields.update(status="connected", error=None)
    try:
        update_connector(es, connector_id, connector_fields)
        if status == "completed" and job_type in ("full", "incremental") and sync_cursor is not None:
            replace_connector_object(es, connector_id, "sync_cursor", sync_cursor)
    except NotFoundError:
        _LOGGER.warning("connector %s was deleted during job %s", connector_id, job_id)
