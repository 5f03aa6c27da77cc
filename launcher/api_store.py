"""The protocol through Elasticsearch's connector API (``_connector/...``).

Since 8.16 Elastic's connector service talks to this API, and in Elasticsearch 9 the
``.elastic-connectors*`` indices are managed system indices. :class:`ConnectorApiStore`
sends every operation the API has through elasticsearch-py's ``connector`` namespace:

======================================  ==============================================
operation                               request
======================================  ==============================================
read a connector / list them            ``GET _connector/<id>`` / ``GET _connector``
create a connector (CLI)                ``PUT _connector/<id>`` (``POST _connector``), then the updates below
delete a connector (CLI)                ``DELETE _connector/<id>`` (soft delete: ``deleted: true``)
heartbeat                               ``PUT _connector/<id>/_check_in``
status / error                          ``PUT _connector/<id>/_status`` / ``_error``
configuration, features, scheduling,    ``PUT _connector/<id>/_configuration``, ``_features``,
pipeline, index name, name,             ``_scheduling``, ``_pipeline``, ``_index_name``, ``_name``,
service type, API key, native flag      ``_service_type``, ``_api_key_id``, ``_native``
sync rules (draft), validation          ``PUT _connector/<id>/_filtering``, ``_filtering/_validation``,
                                        ``_filtering/_activate``
last sync, scheduled times              ``PUT _connector/<id>/_last_sync``
create a job                            ``POST _connector/_sync_job``
read a job / list jobs                  ``GET _connector/_sync_job/<id>`` / ``GET _connector/_sync_job``
claim a job                             ``PUT _connector/_sync_job/<id>/_claim``
job counters (heartbeat)                ``PUT _connector/_sync_job/<id>/_stats``
job error / cancel request              ``PUT _connector/_sync_job/<id>/_error`` / ``_cancel``
======================================  ==============================================

What the API cannot express is written to the documents directly, exactly where
Elastic's own service does the same:

* **atomic conditional writes** (the connector lock, a fire time taken, ``sync_now``
  reset: :data:`ATOMIC_FIELDS`): the API has no ``if_seq_no``, and without it two
  instances could both take one lock. Such a write re-reads the document (``_seq_no``),
  checks it is still what the decision was made on, and updates it with ``if_seq_no`` /
  ``if_primary_term``. Other conditional writes (a configuration completed, a draft
  validated, a CLI update) are checked the same way, then sent through the endpoints;
* **an object replaced whole** (``sync_cursor``): ``_last_sync`` merges objects key by key,
  so the document is written whole, conditionally on the version read;
* **job end states** ``completed``, ``canceled``, ``suspended`` and their times (the API
  has only ``_error`` and ``_cancel``), and fields no endpoint takes (``sync_now``,
  ``custom_scheduling``, ``language``, ``updated_at``, ``api_key_secret_id`` alone);
* **cluster-wide job totals** for ``/metrics`` (a read-only aggregation).

Elasticsearch 9 answers such direct requests with a deprecation warning, logged once
(:mod:`launcher.es_warnings`). This backend is verified at the request level only
(tests/test_connector_api.py: every call as elasticsearch-py builds it, against a model of
the endpoints written from Elasticsearch's sources): the test cluster has no connector API.

Example usage::

    if has_connector_api(es):
        store = ConnectorApiStore(es)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from elasticsearch import ApiError, ConflictError, NotFoundError

from launcher.es_warnings import log_elasticsearch_warnings_once
from launcher.index_store import IndexStore, filtering_with_validation
from launcher.store import Connector, ConnectorStore, Job, merged_copy

__all__ = ["ConnectorApiStore", "has_connector_api", "CONNECTOR_ENDPOINT_FIELDS", "LAST_SYNC_FIELDS", "ATOMIC_FIELDS",
           "DOCUMENT_ONLY_FIELDS"]

_PAGE = 100

#: connector fields written by ``PUT _connector/<id>/_last_sync`` (its body fields).
LAST_SYNC_FIELDS = (
    "last_access_control_sync_error", "last_access_control_sync_scheduled_at", "last_access_control_sync_status",
    "last_deleted_document_count", "last_incremental_sync_scheduled_at", "last_indexed_document_count",
    "last_seen", "last_sync_error", "last_sync_scheduled_at", "last_sync_status", "last_synced", "sync_cursor",
)

#: one-field endpoints: connector field -> connector namespace method
CONNECTOR_ENDPOINT_FIELDS = {
    "features": "update_features",
    "filtering": "update_filtering",
    "scheduling": "update_scheduling",
    "pipeline": "update_pipeline",
    "index_name": "update_index_name",
    "service_type": "update_service_type",
    "is_native": "update_native",
}
_COUNTERS = ("indexed_document_count", "indexed_document_volume", "deleted_document_count")
_COMPARE_IGNORES = ("last_seen",)
#: Connector fields no endpoint writes: sent to the document (a partial update).
DOCUMENT_ONLY_FIELDS = frozenset({"sync_now", "custom_scheduling", "language", "created_at", "updated_at",
                                  "api_key_secret_id", "deleted"})
#: Fields whose conditional write must be atomic (a lost race would start a job twice):
#: the lock, the fire times, ``sync_now``. They go to the document with ``if_seq_no``.
ATOMIC_FIELDS = frozenset({"last_sync_status", "last_access_control_sync_status", "last_sync_scheduled_at",
                           "last_incremental_sync_scheduled_at", "last_access_control_sync_scheduled_at",
                           "sync_now"})  # heartbeats do not invalidate a decision


def has_connector_api(es: Any) -> bool:
    """Whether the cluster has the connector API (asked once, with a cheap read).

    A cluster without it answers 400 "no handler found" (or takes ``_connector`` for an
    index name); one that has it answers 200, or 401/403 when our credentials may not use
    it (then it exists, and the error will say so on first use).
    """
    try:
        es.connector.sync_job_list(size=0)
    except ApiError as exc:
        if exc.meta.status in (401, 403):
            return True
        if exc.meta.status in (400, 404, 405, 410):
            return False
        raise
    return True


def _from_api(cls: type, body: Mapping[str, Any]) -> Any:
    doc = dict(body)
    return cls(str(doc.pop("id")), doc)


def _comparable(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _COMPARE_IGNORES and k != "id"}


class ConnectorApiStore(ConnectorStore):
    """The connector API backend; see the module docstring."""

    backend = "connector_api"

    def __init__(self, es: Any):
        super().__init__(es)
        log_elasticsearch_warnings_once()
        self._direct = IndexStore(es)  # what the API cannot express, see the module docstring

    def prepare(self) -> list[str]:
        # Elasticsearch manages the indices behind the API: nothing to create or check.
        self.es.connector.sync_job_list(size=0)
        return []

    # -- conditional writes --------------------------------------------------------
    def _still(self, expected: Connector | Job, kind: str) -> Any:
        """Re-read ``expected`` with its ``_seq_no``; ConflictError if it changed since it was read."""
        current = self._direct.get_connector(expected.id) if kind == "connector" else self._direct.get_job(expected.id)
        if current is None:
            raise NotFoundError(404, f"{kind} {expected.id} not found", {})  # type: ignore[arg-type]
        if expected.seq_no is not None:  # read directly: its _seq_no says it all
            if (current.seq_no, current.primary_term) != (expected.seq_no, expected.primary_term):
                raise ConflictError(409, f"{kind} {expected.id} changed since it was read", {})  # type: ignore[arg-type]
        elif _comparable(current.doc) != _comparable(expected.doc):
            raise ConflictError(409, f"{kind} {expected.id} changed since it was read", {})  # type: ignore[arg-type]
        return current

    # -- connectors ----------------------------------------------------------------
    def get_connector(self, connector_id: str) -> Connector | None:
        try:
            return _from_api(Connector, self.es.connector.get(connector_id=connector_id, include_deleted=True).body)
        except NotFoundError:
            return None

    def list_connectors(self, *, service_types: Iterable[str] | None = None,
                        connector_ids: Iterable[str] | None = None, include_deleted: bool = False) -> list[Connector]:
        types = None if service_types is None else list(service_types)
        if types == []:
            return []
        if connector_ids:
            found = [c for c in map(self.get_connector, connector_ids) if c is not None]
            return [c for c in found if (include_deleted or not c.get("deleted"))
                    and (types is None or c.service_type in types)]
        connectors: list[Connector] = []
        while True:
            page = self.es.connector.list(service_type=types, include_deleted=include_deleted, from_=len(connectors),
                                          size=_PAGE).body
            connectors.extend(_from_api(Connector, r) for r in page.get("results") or [])
            if not page.get("results") or len(connectors) >= int(page.get("count") or 0):
                return connectors

    def create_connector(self, doc: Mapping[str, Any], connector_id: str | None = None) -> str:
        created = {k: doc.get(k) for k in ("description", "index_name", "is_native", "language", "name",
                                           "service_type")}
        if connector_id:
            if self.get_connector(connector_id) is not None:
                raise ConflictError(409, f"connector {connector_id} already exists", {})  # type: ignore[arg-type]
            new_id = self.es.connector.put(connector_id=connector_id, **created).body.get("id") or connector_id
        else:
            new_id = self.es.connector.post(**created).body["id"]
        made = self.get_connector(new_id)
        rest = {k: v for k, v in doc.items() if k not in created and (made is None or made.get(k) != v)}
        if rest:
            self.update_connector(new_id, rest)
        return new_id

    def delete_connector(self, connector_id: str) -> bool:
        try:
            self.es.connector.delete(connector_id=connector_id, delete_sync_jobs=False)
        except NotFoundError:
            return False
        return True

    def update_connector(self, connector_id: str, fields: Mapping[str, Any], *,
                         expected: Connector | None = None, conditional: bool = True) -> None:
        if expected is not None and conditional:
            current = self._still(expected, "connector")
            if ATOMIC_FIELDS & set(fields):
                self._direct.update_connector(connector_id, fields, expected=current)
                expected.doc = merged_copy(expected.doc, fields)
                return
        self._route_connector_fields(connector_id, fields)
        if expected is not None:
            expected.doc = merged_copy(expected.doc, fields)

    def _route_connector_fields(self, connector_id: str, fields: Mapping[str, Any]) -> None:
        """Each field through the endpoint that writes it; the others directly (module docstring)."""
        rest = dict(fields)
        api = self.es.connector
        if "configuration" in rest:
            # The endpoint sets status "configured"; another status given with it is written next.
            api.update_configuration(connector_id=connector_id, configuration=rest.pop("configuration"))
            if rest.get("status") == "configured":
                del rest["status"]
        if "status" in rest:
            status, error_given, error = rest.pop("status"), "error" in rest, rest.pop("error", None)
            if (status == "error" and error) or (status == "connected" and error_given and error is None):
                # Sets status error (with the message) or connected (clearing it). elasticsearch-py
                # refuses error=None as an argument; the endpoint takes a null error as the body.
                api.update_error(connector_id=connector_id, body={"error": error})
            else:
                api.update_status(connector_id=connector_id, status=status)  # checks the transition
                if error_given:
                    rest["error"] = error
        # As bodies, so that null values (an index detached, a description cleared) are sent too.
        for name, method in CONNECTOR_ENDPOINT_FIELDS.items():
            if name in rest:
                getattr(api, method)(connector_id=connector_id, body={name: rest.pop(name)})
        if "name" in rest or "description" in rest:
            api.update_name(connector_id=connector_id,
                            body={k: rest.pop(k) for k in ("name", "description") if k in rest})
        if "api_key_id" in rest:
            api.update_api_key_id(connector_id=connector_id,
                                  body={k: rest.pop(k) for k in ("api_key_id", "api_key_secret_id") if k in rest})
        last_sync = {k: rest.pop(k) for k in LAST_SYNC_FIELDS if k in rest}
        if any(v is not None for v in last_sync.values()):
            # null values are left out of the body by elasticsearch-py: clear them directly.
            api.last_sync(connector_id=connector_id, **{k: v for k, v in last_sync.items() if v is not None})
        rest.update({k: v for k, v in last_sync.items() if v is None})
        if rest:
            self._direct.update_connector(connector_id, rest)

    def replace_connector_object(self, connector_id: str, name: str, value: Any) -> None:
        # Directly, in one conditional write of the whole document (IndexStore's): ``_last_sync``
        # merges objects key by key, so replacing a ``sync_cursor`` through it took two writes
        # (clear, then set), and a process killed between them left the connector without its
        # continuous sync's position (the next stream took a new snapshot).
        self._direct.replace_connector_object(connector_id, name, value)

    def check_in(self, connector_id: str, *, expected: Connector | None = None) -> None:
        self.es.connector.check_in(connector_id=connector_id)  # last_seen is ignored by conditional writes

    def update_filtering_validation(self, connector_id: str, validation: Mapping[str, Any], *, activate: bool,
                                    expected: Connector | None = None) -> None:
        if expected is not None:
            # Checked, then written through the endpoints: a draft edited in the instant
            # between is marked valid unvalidated, but every job re-validates its rules.
            self._still(expected, "connector")
        self.es.connector.update_filtering_validation(connector_id=connector_id, validation=dict(validation))
        if activate:
            self.es.connector.update_active_filtering(connector_id=connector_id)
        if expected is not None:
            filtering = filtering_with_validation(expected.get("filtering"), validation, activate=activate)
            if filtering is not None:
                expected.doc = merged_copy(expected.doc, {"filtering": filtering})

    # -- jobs ----------------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        try:
            return _from_api(Job, self.es.connector.sync_job_get(connector_sync_job_id=job_id).body)
        except NotFoundError:
            return None

    def list_jobs(self, *, connector_ids: Iterable[str] | None = None, service_types: Iterable[str] | None = None,
                  statuses: Iterable[str] | None = None, size: int = 100, newest_first: bool = False) -> list[Job]:
        ids = None if connector_ids is None else list(connector_ids)
        types = None if service_types is None else set(service_types)
        if ids == [] or types == set():
            return []
        # The endpoint filters on one connector and one status at a time.
        by_id: list[str | None] = list(ids) if ids is not None and len(ids) <= 10 else [None]
        by_status: list[str | None] = list(statuses) if statuses is not None else [None]
        jobs: dict[str, Job] = {}
        for connector_id in by_id:
            for status in by_status:
                start = 0
                while True:
                    page = self.es.connector.sync_job_list(connector_id=connector_id, status=status, from_=start,
                                                           size=_PAGE).body
                    results = page.get("results") or []
                    for result in results:
                        job = _from_api(Job, result)
                        jobs[job.id] = job
                    start += len(results)
                    if not results or start >= int(page.get("count") or 0):
                        break
        found = [j for j in jobs.values() if (ids is None or j.connector_id in ids)
                 and (types is None or (j.doc.get("connector") or {}).get("service_type") in types)]
        found.sort(key=lambda j: str(j.doc.get("created_at") or ""), reverse=newest_first)
        return found[:size]

    def create_job(self, connector: Connector, doc: Mapping[str, Any]) -> str:
        job_id = self.es.connector.sync_job_post(id=connector.id, job_type=doc.get("job_type", "full"),
                                                 trigger_method=doc.get("trigger_method", "on_demand")).body["id"]
        if doc.get("metadata"):
            self.es.connector.sync_job_update_stats(connector_sync_job_id=job_id, deleted_document_count=0,
                                                    indexed_document_count=0, indexed_document_volume=0,
                                                    metadata=dict(doc["metadata"]))
        return job_id

    def update_job(self, job_id: str, fields: Mapping[str, Any], *, expected: Job | None = None) -> None:
        if expected is not None:
            self._direct.update_job(job_id, fields, expected=self._still(expected, "job"))
            return
        rest = dict(fields)
        if rest.get("status") == "canceling":
            rest.pop("status")
            rest.pop("cancelation_requested_at", None)
            self.es.connector.sync_job_cancel(connector_sync_job_id=job_id)
        if any(k in rest for k in (*_COUNTERS, "total_document_count", "metadata")):
            counters = {k: rest.pop(k) for k in (*_COUNTERS, "total_document_count") if k in rest}
            self.job_stats(job_id, counters, metadata=rest.pop("metadata", None))
            rest.pop("last_seen", None)
        if set(rest) == {"last_seen"}:
            self.es.connector.sync_job_check_in(connector_sync_job_id=job_id)
            return
        if rest:
            self._direct.update_job(job_id, rest)

    def claim_job(self, job: Job, hostname: str, *, sync_cursor: Any = None,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from launcher.protocol import now_iso

        self._still(job, "job")  # the endpoint itself is not conditional
        claimed = ("status", "started_at", "last_seen", "worker_hostname")
        missing = {k: v for k, v in (defaults or {}).items() if k not in claimed}
        if missing:  # fields no endpoint takes (a job Elastic's CLI wrote lacks several)
            self._direct.update_job(job.id, missing)
        kwargs: dict[str, Any] = {"sync_cursor": sync_cursor} if sync_cursor is not None else {}
        self.es.connector.sync_job_claim(connector_sync_job_id=job.id, worker_hostname=hostname, **kwargs)
        stamp = now_iso()
        return {**(defaults or {}), "status": "in_progress", "started_at": stamp, "last_seen": stamp,
                "worker_hostname": hostname}

    def job_stats(self, job_id: str, counters: Mapping[str, Any], *, metadata: Mapping[str, Any] | None = None,
                  ) -> None:
        values = dict(counters)
        missing = [k for k in _COUNTERS if values.get(k) is None]
        if missing:  # the endpoint needs all three
            current = self.get_job(job_id)
            if current is None:
                raise NotFoundError(404, f"job {job_id} not found", {})  # type: ignore[arg-type]
            values.update({k: int(current.doc.get(k) or 0) for k in missing})
        kwargs: dict[str, Any] = {k: values[k] for k in _COUNTERS}
        if values.get("total_document_count") is not None:
            kwargs["total_document_count"] = values["total_document_count"]
        if metadata is not None:
            kwargs["metadata"] = dict(metadata)
        self.es.connector.sync_job_update_stats(connector_sync_job_id=job_id, **kwargs)

    def end_job(self, job: Job | str, status: str, fields: Mapping[str, Any], *,
                expected: Job | None = None) -> None:
        job_id = job.id if isinstance(job, Job) else job
        if expected is not None:
            self._direct.update_job(job_id, {**fields, "status": status}, expected=self._still(expected, "job"))
            return
        rest = dict(fields)
        counters = {k: rest.pop(k) for k in (*_COUNTERS, "total_document_count") if k in rest}
        metadata = rest.pop("metadata", None)
        if counters or metadata is not None:
            self.job_stats(job_id, counters, metadata=metadata)
        if status == "error":
            self.es.connector.sync_job_error(connector_sync_job_id=job_id, error=rest.pop("error", None) or "error")
        else:
            rest["status"] = status  # no endpoint for completed / canceled / suspended
        rest.pop("last_seen", None)
        if rest:
            self._direct.update_job(job_id, rest)

    def cancel_job(self, job: Job) -> str:
        self.es.connector.sync_job_cancel(connector_sync_job_id=job.id)
        return "canceled" if job.status in ("pending", "suspended") else "canceling"

    def job_totals(self) -> tuple[dict[str, int], float]:
        return self._direct.job_totals()
