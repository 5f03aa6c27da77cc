"""The protocol stored directly in ``.elastic-connectors`` and ``.elastic-connectors-sync-jobs``.

For clusters without the connector API (our integration-test build, older clusters) and
for what the API cannot express: conditional writes use ``if_seq_no`` /
``if_primary_term``, so any number of service instances (and Elastic's own service with
``feature_use_connectors_api: false``) can share the indices.

:meth:`IndexStore.prepare` makes the aliases resolve and checks the mappings of the
fields the service queries (:func:`launcher.indices.ensure_indices`,
:func:`launcher.indices.check_mappings`).

Example usage::

    store = IndexStore(es)
    assert store.prepare() == []
    store.update_connector("c1", {"status": "connected"})
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from elasticsearch import ConflictError, NotFoundError

from launcher.es_warnings import log_elasticsearch_warnings_once
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, check_mappings, ensure_indices
from launcher.store import Connector, ConnectorStore, Job, merged_copy

__all__ = ["IndexStore", "UPDATE_RETRIES", "default_domain", "filtering_with_validation"]

UPDATE_RETRIES = 10


def _conditional(expected: Any) -> dict[str, Any]:
    # Unconditional partial updates retry Elasticsearch's internal get-then-write race;
    # conditional ones must fail on a conflict (that is the point of them).
    if expected is not None and expected.seq_no is not None:
        return {"if_seq_no": expected.seq_no, "if_primary_term": expected.primary_term}
    return {"retry_on_conflict": UPDATE_RETRIES}


def default_domain(filtering: Any) -> dict[str, Any] | None:
    """The DEFAULT domain's entry of a connector's ``filtering`` list, or None."""
    for entry in filtering if isinstance(filtering, list) else []:
        if isinstance(entry, dict) and entry.get("domain", "DEFAULT") == "DEFAULT":
            return entry
    return None


def filtering_with_validation(filtering: Any, validation: Mapping[str, Any], *,
                              activate: bool) -> list[dict[str, Any]] | None:
    """A copy of ``filtering`` whose DEFAULT draft has ``validation`` (and is active when ``activate``)."""
    import copy

    filtering = copy.deepcopy(filtering)
    entry = default_domain(filtering)
    if entry is None or not isinstance(entry.get("draft"), dict):
        return None
    entry["draft"]["validation"] = dict(validation)
    if activate:
        entry["active"] = copy.deepcopy(entry["draft"])
    return filtering


class IndexStore(ConnectorStore):
    """Direct index access; see the module docstring."""

    backend = "indices"

    def __init__(self, es: Any):
        super().__init__(es)
        log_elasticsearch_warnings_once()

    def prepare(self) -> list[str]:
        ensure_indices(self.es)
        return check_mappings(self.es)

    # -- connectors ----------------------------------------------------------------
    def get_connector(self, connector_id: str) -> Connector | None:
        try:
            return Connector.from_hit(self.es.get(index=CONNECTORS_INDEX, id=connector_id))
        except NotFoundError:
            return None

    def list_connectors(self, *, service_types: Iterable[str] | None = None,
                        connector_ids: Iterable[str] | None = None, include_deleted: bool = False) -> list[Connector]:
        filters: list[dict[str, Any]] = []
        if service_types is not None:
            filters.append({"terms": {"service_type": list(service_types)}})
        if connector_ids:
            filters.append({"ids": {"values": list(connector_ids)}})
        must_not = [] if include_deleted else [{"term": {"deleted": True}}]
        result = self.es.search(index=CONNECTORS_INDEX, query={"bool": {"filter": filters, "must_not": must_not}},
                                size=1000, seq_no_primary_term=True, version=True, sort=[{"_doc": "asc"}])
        return [Connector.from_hit(hit) for hit in result["hits"]["hits"]]

    def create_connector(self, doc: Mapping[str, Any], connector_id: str | None = None) -> str:
        kwargs: dict[str, Any] = {"op_type": "create", "id": connector_id} if connector_id else {}
        return self.es.index(index=CONNECTORS_INDEX, document=dict(doc), refresh=True, **kwargs)["_id"]

    def delete_connector(self, connector_id: str) -> bool:
        try:
            self.es.delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        except NotFoundError:
            return False
        return True

    def update_connector(self, connector_id: str, fields: Mapping[str, Any], *,
                         expected: Connector | None = None, conditional: bool = True) -> None:
        result = self.es.update(index=CONNECTORS_INDEX, id=connector_id, doc=dict(fields), refresh=True,
                                **_conditional(expected if conditional else None))
        if expected is None:
            return
        expected.doc = merged_copy(expected.doc, fields)
        # Our copy is current only if nobody wrote in between: our write made the very next
        # version. Otherwise keep the old _seq_no: the next conditional write fails, re-reads,
        # and never acts on a stale copy (e.g. takes a fire time another instance took).
        if (result.get("result") != "noop" and expected.version is not None
                and result.get("_version") == expected.version + 1):
            expected.seq_no, expected.primary_term = result["_seq_no"], result["_primary_term"]
            expected.version = result["_version"]

    def replace_connector_object(self, connector_id: str, name: str, value: Any) -> None:
        # A partial update merges objects key by key, so the document is written whole, with the
        # field replaced, conditionally on the version read (retried when another write came
        # first). Clearing the field, then writing it, left the connector without it in between,
        # and for good when the second write failed: a continuous sync's stored position gone,
        # the next stream took a new snapshot instead of resuming. (No script: a minimal
        # Elasticsearch has no painless.)
        if not isinstance(value, Mapping):
            self.update_connector(connector_id, {name: value})
            return
        for attempt in range(UPDATE_RETRIES):
            current = self.es.get(index=CONNECTORS_INDEX, id=connector_id)
            try:
                self.es.index(index=CONNECTORS_INDEX, id=connector_id, refresh=True,
                              document={**current["_source"], name: dict(value)},
                              if_seq_no=current["_seq_no"], if_primary_term=current["_primary_term"])
                return
            except ConflictError:
                if attempt == UPDATE_RETRIES - 1:
                    raise

    def check_in(self, connector_id: str, *, expected: Connector | None = None) -> None:
        from launcher.protocol import now_iso

        self.update_connector(connector_id, {"last_seen": now_iso()}, expected=expected, conditional=False)

    def update_filtering_validation(self, connector_id: str, validation: Mapping[str, Any], *, activate: bool,
                                    expected: Connector | None = None) -> None:
        current = expected if expected is not None else self.get_connector(connector_id)
        if current is None:
            raise NotFoundError(404, "connector not found", {})  # type: ignore[arg-type]
        filtering = filtering_with_validation(current.get("filtering"), validation, activate=activate)
        if filtering is not None:
            self.update_connector(connector_id, {"filtering": filtering}, expected=expected)

    # -- jobs ----------------------------------------------------------------------
    def get_job(self, job_id: str) -> Job | None:
        try:
            return Job.from_hit(self.es.get(index=JOBS_INDEX, id=job_id))
        except NotFoundError:
            return None

    def list_jobs(self, *, connector_ids: Iterable[str] | None = None, service_types: Iterable[str] | None = None,
                  statuses: Iterable[str] | None = None, size: int = 100, newest_first: bool = False) -> list[Job]:
        filters: list[dict[str, Any]] = []
        for field, values in (("connector.id", connector_ids), ("connector.service_type", service_types),
                              ("status", statuses)):
            if values is not None:
                filters.append({"terms": {field: list(values)}})
        result = self.es.search(
            index=JOBS_INDEX, query={"bool": {"filter": filters}}, size=size, seq_no_primary_term=True,
            sort=[{"created_at": {"order": "desc" if newest_first else "asc", "unmapped_type": "date"}}],
        )
        return [Job.from_hit(hit) for hit in result["hits"]["hits"]]

    def create_job(self, connector: Connector, doc: Mapping[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        self.es.index(index=JOBS_INDEX, id=job_id, document=dict(doc), refresh=True, op_type="create")
        return job_id

    def update_job(self, job_id: str, fields: Mapping[str, Any], *, expected: Job | None = None) -> None:
        self.es.update(index=JOBS_INDEX, id=job_id, doc=dict(fields), refresh=True, **_conditional(expected))

    def claim_job(self, job: Job, hostname: str, *, sync_cursor: Any = None,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from launcher.protocol import now_iso

        stamp = now_iso()
        fields: dict[str, Any] = {**(defaults or {}), "status": "in_progress", "started_at": stamp,
                                  "last_seen": stamp, "worker_hostname": hostname, "error": None}
        if sync_cursor is not None:
            fields["connector"] = {"sync_cursor": sync_cursor}
        self.update_job(job.id, fields, expected=job)
        return fields

    def job_stats(self, job_id: str, counters: Mapping[str, Any], *, metadata: Mapping[str, Any] | None = None,
                  ) -> None:
        from launcher.protocol import now_iso

        fields = {**counters, "last_seen": now_iso()}
        if metadata is not None:
            fields["metadata"] = dict(metadata)
        self.update_job(job_id, fields)

    def end_job(self, job: Job | str, status: str, fields: Mapping[str, Any], *,
                expected: Job | None = None) -> None:
        job_id = job.id if isinstance(job, Job) else job
        self.update_job(job_id, {**fields, "status": status}, expected=expected)

    def cancel_job(self, job: Job) -> str:
        from launcher.protocol import now_iso

        stamp = now_iso()
        if job.status in ("pending", "suspended"):
            fields = {"status": "canceled", "canceled_at": stamp, "completed_at": stamp,
                      "cancelation_requested_at": stamp}
        else:
            fields = {"status": "canceling", "cancelation_requested_at": stamp}
        self.update_job(job.id, fields, expected=job)
        return fields["status"]

    def job_totals(self) -> tuple[dict[str, int], float]:
        result = self.es.search(index=JOBS_INDEX, size=0, aggs={
            "status": {"terms": {"field": "status", "size": 20}},
            "indexed": {"sum": {"field": "indexed_document_count"}}})
        counts = {b["key"]: b["doc_count"] for b in result["aggregations"]["status"]["buckets"]}
        return counts, result["aggregations"]["indexed"]["value"] or 0
