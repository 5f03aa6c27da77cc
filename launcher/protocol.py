"""Connector and sync-job documents, and the operations on them (PROTOCOL.md sections 2, 3, 6).

The documents are stored behind :class:`launcher.store.ConnectorStore` (the connector API
or the indices directly); every function here takes a store (or an Elasticsearch client,
used as an :class:`~launcher.index_store.IndexStore`). Every write that decides ownership
is conditional on the document as read, so any number of service instances can share
the connectors:

* :func:`claim_job` takes the connector-level lock (``last_sync_status: in_progress``) and
  then the job, each with a conditional write; a conflict means somebody else was faster;
* :func:`finish_job` writes the job's end state and releases the lock;
* :func:`create_job` writes a job with the connector's snapshot, as Kibana does.

Documents written by others may be wrong: :func:`connector_problems` and
:func:`job_problems` say what is wrong, by field, instead of raising. Documents written by
Elastic's own CLI and service run as they are (shared/fixtures/elastic-framework): a job
without ``connector.sync_cursor`` takes the connector's cursor (:func:`job_sync_cursor`),
and the literal top-level key ``"connector.sync_cursor"`` its claim writes is tolerated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from elasticsearch import ConflictError, NotFoundError

from launcher.store import FINAL_STATUSES, JOB_STATUSES, Connector, ConnectorStore, Job, as_store

__all__ = [
    "now_iso", "Connector", "Job", "Claim", "get_connector", "get_job", "search_connectors", "connector_problems",
    "job_problems", "job_refusal", "create_job", "new_job", "jobs_to_claim", "claim_job", "finish_job", "update_job",
    "update_connector", "job_snapshot", "active_filtering", "snapshot_filtering", "JOB_STATUSES", "FINAL_STATUSES",
    "default_filtering", "new_connector", "replace_connector_object", "release_lock", "index_name_problem",
    "job_sync_cursor", "CONNECTOR_DEFAULTS", "with_protocol_fields", "draft_rules_problem",
]

_LOGGER = logging.getLogger(__name__)

_CLAIM_ATTEMPTS = 5


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def default_filtering() -> list[dict[str, Any]]:
    """The filtering object of a new connector: only the catch-all DEFAULT rule."""
    stamp = now_iso()
    rule = {"id": "DEFAULT", "policy": "include", "field": "_", "rule": "regex", "value": ".*", "order": 0,
            "created_at": stamp, "updated_at": stamp}
    rules = {"rules": [rule], "advanced_snippet": {"value": {}, "created_at": stamp, "updated_at": stamp},
             "validation": {"state": "valid", "errors": []}}
    return [{"domain": "DEFAULT", "active": dict(rules), "draft": dict(rules)}]


#: Every connector field of PROTOCOL.md section 2 (and those Elastic's CLI writes), with the
#: value a new connector has. Kibana's and Elastic's defaults: ``language: "en"``, counters 0,
#: ``pipeline.run_ml_inference: true`` (shared/fixtures/elastic-framework).
CONNECTOR_DEFAULTS: dict[str, Any] = {
    "service_type": None, "index_name": None, "name": "", "description": None, "language": "en",
    "is_native": False, "api_key_id": None, "api_key_secret_id": None, "configuration": {},
    "custom_scheduling": {}, "status": "created", "error": None, "last_seen": None,
    "last_sync_status": None, "last_sync_error": None, "last_synced": None,
    "last_sync_scheduled_at": None, "last_incremental_sync_scheduled_at": None,
    "last_access_control_sync_scheduled_at": None, "last_access_control_sync_status": None,
    "last_access_control_sync_error": None, "last_indexed_document_count": 0,
    "last_deleted_document_count": 0, "features": {}, "sync_cursor": None, "sync_now": False,
    "deleted": False,
}
DEFAULT_SCHEDULING = {job_type: {"enabled": False, "interval": "0 0 0 * * ?"}
                      for job_type in ("access_control", "full", "incremental")}
DEFAULT_PIPELINE = {"name": "search-default-ingestion", "extract_binary_content": True, "reduce_whitespace": True,
                    "run_ml_inference": True}
#: Every sync-job field of PROTOCOL.md section 3 that a creator may leave out, with its empty value.
JOB_DEFAULTS: dict[str, Any] = {
    "error": None, "started_at": None, "completed_at": None, "canceled_at": None, "cancelation_requested_at": None,
    "last_seen": None, "indexed_document_count": 0, "indexed_document_volume": 0, "deleted_document_count": 0,
    "total_document_count": 0, "worker_hostname": None, "metadata": {},
}
# Elasticsearch's rules for index names (MetadataCreateIndexService.validateIndexOrAliasName).
_INDEX_NAME_FORBIDDEN = set('\\/*?"<>| ,#:')
_MAX_INDEX_NAME_BYTES = 255


def with_protocol_fields(doc: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``defaults`` that ``doc`` lacks, with their default values (to add them)."""
    import copy

    return {key: copy.deepcopy(value) for key, value in defaults.items() if key not in doc}


def index_name_problem(name: Any) -> str | None:
    """What makes ``name`` an invalid content index name by Elasticsearch's rules; None when valid."""
    if not isinstance(name, str) or not name:
        return f"expected a non-empty string, got {name!r}"
    bad = sorted({c for c in name if c in _INDEX_NAME_FORBIDDEN})
    if bad:
        shown = ", ".join("space" if c == " " else repr(c) for c in bad)
        return f"{name!r} contains {shown}; index names may not contain spaces or any of \\ / * ? \" < > | , # :"
    if name != name.lower():
        return f"{name!r} has capital letters; index names must be lowercase"
    if name.startswith(("_", "-", "+")):
        return f"{name!r} starts with {name[0]!r}; index names may not start with _, - or +"
    if name.startswith("."):
        return f"{name!r} starts with '.'; such names are for hidden and system indices, not content"
    if name in (".", ".."):
        return f"{name!r} is not an index name"
    if len(name.encode("utf-8")) > _MAX_INDEX_NAME_BYTES:
        return f"{name[:40]!r}... is longer than {_MAX_INDEX_NAME_BYTES} bytes"
    return None


def new_connector(*, service_type: str, index_name: str, name: str | None = None, configuration: Mapping | None = None,
                  scheduling: Mapping | None = None, pipeline: Mapping | None = None, language: str | None = "en",
                  ) -> dict[str, Any]:
    """A connector document shaped as Kibana and Elastic's CLI write it (every protocol field)."""
    import copy

    stamp = now_iso()
    doc = copy.deepcopy(CONNECTOR_DEFAULTS)
    doc.update(
        service_type=service_type,
        index_name=index_name,
        name=name or index_name,
        language=language,
        configuration=dict(configuration or {}),
        status="configured" if configuration else "created",
        scheduling=copy.deepcopy(dict(scheduling or DEFAULT_SCHEDULING)),
        pipeline=dict(pipeline or DEFAULT_PIPELINE),
        filtering=default_filtering(),
        created_at=stamp,
        updated_at=stamp,
    )
    return doc


def connector_problems(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong with a connector document, field by field (empty: usable)."""
    problems = []
    if not isinstance(doc.get("service_type"), str) or not doc.get("service_type"):
        problems.append(f"service_type: expected a non-empty string, got {doc.get('service_type')!r}")
    index = doc.get("index_name")
    if index is not None:  # None: not chosen yet (Kibana allows that); a job then fails saying so
        problem = index_name_problem(index)
        if problem:
            problems.append(f"index_name: {problem}")
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


def job_refusal(doc: Mapping[str, Any], source_class: type) -> str | None:
    """Why a job of ``source_class``'s connector cannot run at all (None: it can): an incremental
    job of a source without incremental syncs, an access-control job of one without
    document-level security. A continuous sync's own incremental job is not one (the daemon
    creates it for sources that stream). The daemon ends such a job at once, before claiming it:
    it neither waits for a sync slot nor stops the connector's continuous sync."""
    from sources.base import supports_job_type
    from sources.registry import display_name

    job_type = doc.get("job_type", "full")
    metadata = doc.get("metadata")
    if job_type == "incremental" and isinstance(metadata, Mapping) and metadata.get("continuous") is True:
        return None
    if job_type not in ("incremental", "access_control") or supports_job_type(source_class, job_type):
        return None
    if job_type == "incremental":
        return (f"the {display_name(source_class)} source does not support incremental syncs, so this incremental "
                "job ended without running (a continuous sync of the connector goes on); run a full sync instead")
    return (f"{display_name(source_class)} sources do not support document-level security, so there are no "
            "identities to sync; this access-control job ended without touching any index. Run full or "
            "incremental syncs for this connector")


def get_connector(store: ConnectorStore | Any, connector_id: str) -> Connector | None:
    return as_store(store).get_connector(connector_id)


def get_job(store: ConnectorStore | Any, job_id: str) -> Job | None:
    return as_store(store).get_job(job_id)


def search_connectors(store: ConnectorStore | Any, *, service_types: Iterable[str] | None = None,
                      connector_ids: Iterable[str] | None = None, include_deleted: bool = False) -> list[Connector]:
    return as_store(store).list_connectors(service_types=service_types, connector_ids=connector_ids,
                                           include_deleted=include_deleted)


def draft_rules_problem(doc: Mapping[str, Any], *, pending: bool = False) -> str | None:
    """What is wrong with the connector's sync-rules draft, when the service found it invalid
    (syncs then go on with the active rules: this says so), else None. With ``pending``, a draft
    not validated yet (``edited``: a job that runs now runs without it) is one too."""
    for entry in doc.get("filtering") or []:
        if isinstance(entry, Mapping) and entry.get("domain", "DEFAULT") == "DEFAULT":
            draft = entry.get("draft")
            validation = draft.get("validation") if isinstance(draft, Mapping) else None
            if pending and isinstance(validation, Mapping) and validation.get("state") == "edited":
                return ("the sync rules draft was not validated yet (the service validates it at its next poll), so "
                        "this sync used the active rules")
            if not isinstance(validation, Mapping) or validation.get("state") != "invalid":
                return None
            errors = validation.get("errors") if isinstance(validation.get("errors"), list) else []
            messages = [str(m) for e in errors if isinstance(e, Mapping) for m in (e.get("messages") or [])]
            return ("the sync rules draft is invalid, so syncs use the active rules: "
                    + ("; ".join(messages) or "no reason given"))
    return None


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


def job_sync_cursor(job_doc: Mapping[str, Any], connector: Connector | Mapping[str, Any] | None) -> Any:
    """The cursor an incremental job starts from: the job's snapshot when it has one, else the connector's.

    Elastic's own service creates jobs without ``connector.sync_cursor`` and keeps the cursor
    in the connector document; its claim writes a literal top-level key
    ``"connector.sync_cursor"``, read here too.
    """
    snapshot = job_doc.get("connector")
    if isinstance(snapshot, Mapping) and snapshot.get("sync_cursor") is not None:
        return snapshot["sync_cursor"]
    if job_doc.get("connector.sync_cursor") is not None:
        return job_doc["connector.sync_cursor"]
    doc = connector.doc if isinstance(connector, Connector) else connector
    return doc.get("sync_cursor") if isinstance(doc, Mapping) else None


def new_job(connector: Connector, *, job_type: str = "full", trigger_method: str = "on_demand",
            metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``pending`` job document for ``connector``, with every protocol field."""
    stamp = now_iso()
    return {
        **JOB_DEFAULTS,
        "connector": job_snapshot(connector),
        "job_type": job_type,
        "trigger_method": trigger_method,
        "status": "pending",
        "created_at": stamp,
        "last_seen": stamp,
        "metadata": dict(metadata or {}),
    }


def create_job(store: ConnectorStore | Any, connector: Connector, *, job_type: str = "full",
               trigger_method: str = "on_demand", metadata: Mapping[str, Any] | None = None) -> str:
    """Write a ``pending`` job for ``connector`` and return its id."""
    doc = new_job(connector, job_type=job_type, trigger_method=trigger_method, metadata=metadata)
    return as_store(store).create_job(connector, doc)


def jobs_to_claim(store: ConnectorStore | Any, connector_ids: Iterable[str], limit: int = 50) -> list[Job]:
    """``pending`` and ``suspended`` jobs of these connectors, oldest first."""
    ids = list(connector_ids)
    if not ids:
        return []
    return as_store(store).list_jobs(connector_ids=ids, statuses=["pending", "suspended"], size=limit)


def _expected(kind: type, object_id: str, if_seq_no: int | None, if_primary_term: int | None) -> Any:
    # Callers holding only a _seq_no (a direct read): a stand-in carrying it.
    if if_seq_no is None:
        return None
    if kind is Connector:
        return Connector(object_id, {}, if_seq_no, if_primary_term)
    return Job(object_id, {}, if_seq_no, if_primary_term)


def update_connector(store: ConnectorStore | Any, connector_id: str, fields: Mapping[str, Any], *,
                     if_seq_no: int | None = None, if_primary_term: int | None = None,
                     expected: Connector | None = None) -> None:
    """Partial update; conditional on ``expected`` (or on ``if_seq_no``/``if_primary_term``)."""
    as_store(store).update_connector(
        connector_id, fields, expected=expected or _expected(Connector, connector_id, if_seq_no, if_primary_term))


def replace_connector_object(store: ConnectorStore | Any, connector_id: str, name: str, value: Any) -> None:
    """Set an object field to exactly ``value`` (a partial update would merge it key by key)."""
    as_store(store).replace_connector_object(connector_id, name, value)


def release_lock(store: ConnectorStore | Any, connector_id: str, fields: Mapping[str, Any], *,
                 only_if: Iterable[Any] = ("in_progress",), attempts: int = _CLAIM_ATTEMPTS) -> bool:
    """Write ``fields`` (a new ``last_sync_status`` ...) if the connector is still locked.

    Conditional on the connector as read, re-read and retried on conflict (a heartbeat may
    land in between), so a lock is never left behind and a newer owner's lock is never
    released.
    """
    store = as_store(store)
    wanted = tuple(only_if)
    for _ in range(attempts):
        connector = store.get_connector(connector_id)
        if connector is None or connector.get("last_sync_status") not in wanted:
            return False
        try:
            store.update_connector(connector_id, fields, expected=connector)
            return True
        except ConflictError:
            continue
        except NotFoundError:
            return False
    return False


def update_job(store: ConnectorStore | Any, job_id: str, fields: Mapping[str, Any], *,
               if_seq_no: int | None = None, if_primary_term: int | None = None, expected: Job | None = None) -> None:
    """Partial update; conditional on ``expected`` (or on ``if_seq_no``/``if_primary_term``)."""
    as_store(store).update_job(job_id, fields,
                               expected=expected or _expected(Job, job_id, if_seq_no, if_primary_term))


@dataclass
class Claim:
    job: Job
    connector: Connector
    problems: list[str] = field(default_factory=list)


def claim_job(store: ConnectorStore | Any, job_id: str, hostname: str) -> Claim | None:
    """Take the connector's lock, then the job. None when another instance has either.

    1. re-read the job: it must still be ``pending`` or ``suspended``;
    2. re-read its connector; ``last_sync_status: in_progress`` means another instance
       owns it;
    3. conditional update of the connector (the lock); on conflict re-read and retry;
    4. conditional claim of the job (an incremental job records the cursor it starts from,
       as Elastic's service does, and the protocol fields its creator left out); on
       conflict (someone else claimed it) give the lock back.
    """
    store = as_store(store)
    for _ in range(_CLAIM_ATTEMPTS):
        job = store.get_job(job_id)
        if job is None or job.status not in ("pending", "suspended"):
            return None
        connector = store.get_connector(job.connector_id) if job.connector_id else None
        if connector is None or connector.get("deleted"):
            return Claim(job, Connector(job.connector_id or "", {}), ["the job's connector does not exist"])
        if connector.get("last_sync_status") == "in_progress":
            return None
        previous = {"last_sync_status": connector.get("last_sync_status"), "status": connector.get("status"),
                    "error": connector.get("error"), "last_sync_error": connector.get("last_sync_error")}
        before = Connector(connector.id, dict(connector.doc), connector.seq_no, connector.primary_term,
                           connector.version)
        try:
            store.update_connector(connector.id, {"last_sync_status": "in_progress", "last_sync_error": None,
                                                  "status": "connected", "error": None}, expected=connector)
        except ConflictError:
            continue
        cursor = job_sync_cursor(job.doc, connector) if job.job_type == "incremental" else None
        try:
            claimed = store.claim_job(job, hostname, sync_cursor=cursor,
                                      defaults=with_protocol_fields(job.doc, JOB_DEFAULTS))
        except (ConflictError, NotFoundError):
            store.update_connector(connector.id, previous)
            continue
        # As Elasticsearch merged the claim into the stored job: the cursor joins the job's
        # ``connector`` snapshot, which keeps its rules, pipeline and configuration (replacing the
        # snapshot with ``{"sync_cursor": ...}`` made an incremental job with a cursor run without
        # its sync rules: issue 20).
        job.doc.update({key: value for key, value in claimed.items() if key != "connector"})
        if cursor is not None:
            snapshot = job.doc.get("connector")
            job.doc["connector"] = {**(snapshot if isinstance(snapshot, dict) else {}), "sync_cursor": cursor}
        # ``before`` is the state before the lock: an access-control job gives it back.
        return Claim(job, before)
    return None


def finish_job(store: ConnectorStore | Any, job_id: str, connector_id: str | None, status: str, *,
               counters: Mapping[str, Any] | None = None, error: str | None = None,
               sync_cursor: Any = None, metadata: Mapping[str, Any] | None = None,
               job_type: str = "full", previous_sync_status: Any = None) -> None:
    """Write a job's end state, then the connector's ``last_*`` fields (releasing its lock).

    ``sync_cursor`` is stored only for a ``completed`` full or incremental job, and
    replaces the previous cursor as a whole. An ``access_control`` job reports in
    ``last_access_control_sync_*`` and gives ``last_sync_status`` (which reports full and
    incremental jobs, and is the lock) back its ``previous_sync_status``.
    """
    store = as_store(store)
    stamp = now_iso()
    counters = dict(counters or {})
    fields: dict[str, Any] = {"error": error, "completed_at": stamp, "last_seen": stamp, **counters}
    if status == "canceled":
        fields["canceled_at"] = stamp
    if metadata is not None:
        fields["metadata"] = dict(metadata)
    try:
        store.end_job(job_id, status, fields)
    except NotFoundError:
        _LOGGER.warning("job %s was deleted before it could be finished", job_id)
    if not connector_id:
        return
    if job_type == "access_control":
        connector_fields: dict[str, Any] = {"last_access_control_sync_status": status,
                                            "last_access_control_sync_error": error,
                                            "last_sync_status": previous_sync_status}
    else:
        connector_fields = {
            "last_sync_status": status,
            "last_sync_error": error,
            "last_synced": stamp,
            "last_indexed_document_count": counters.get("indexed_document_count", 0),
            "last_deleted_document_count": counters.get("deleted_document_count", 0),
        }
    if status == "error":
        connector_fields.update(status="error", error=error)
    elif status == "completed":
        connector_fields.update(status="connected", error=None)
    try:
        store.update_connector(connector_id, connector_fields)
        if status == "completed" and job_type in ("full", "incremental") and sync_cursor is not None:
            store.replace_connector_object(connector_id, "sync_cursor", sync_cursor)
    except NotFoundError:
        _LOGGER.warning("connector %s was deleted during job %s", connector_id, job_id)
