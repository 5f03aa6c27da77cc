"""A recording stand-in for a cluster with Elasticsearch's connector API (request-level tests).

No server here has the connector API (the integration-test build lacks it), so the API
backend (:class:`launcher.api_store.ConnectorApiStore`) is tested at the request level:
every request elasticsearch-py builds is recorded as it would go on the wire (method,
path, query, body) together with elasticsearch-py's own endpoint id (``connector.claim``,
``update``, ...). Tests assert on those. The answers come from a small in-memory model of
the endpoints, written from Elasticsearch's sources (ConnectorIndexService,
ConnectorSyncJobIndexService, the two state machines): enough for the flows to go on,
and strict where Elasticsearch is (invalid job transitions are 400, unknown requests
are 400 "no handler found").

Example usage::

    es = connector_api_client()
    store = ConnectorApiStore(es)
    ...
    assert es.requests[-1].endpoint == "connector.sync_job_claim"
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, Transport, TransportApiResponse
from elasticsearch import Elasticsearch

__all__ = ["Request", "RecordingElasticsearch", "connector_api_client", "FakeConnectorCluster"]

_CONNECTORS, _JOBS = ".elastic-connectors", ".elastic-connectors-sync-jobs"
_JOB_TRANSITIONS = {  # ConnectorSyncJobStateMachine
    "pending": {"in_progress", "canceled"}, "in_progress": {"canceling", "completed", "suspended", "error"},
    "suspended": {"in_progress", "canceled"}, "canceling": {"canceled", "error"},
    "completed": set(), "canceled": set(), "error": set(),
}
_CONNECTOR_TRANSITIONS = {  # ConnectorStateMachine
    "created": {"needs_configuration", "error"}, "needs_configuration": {"configured"},
    "configured": {"needs_configuration", "connected", "error"}, "connected": {"configured", "error"},
    "error": {"connected", "configured"},
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    endpoint: str | None  # elasticsearch-py's endpoint id, e.g. "connector.sync_job_claim"

    def __repr__(self) -> str:
        return f"{self.method} {self.path} {self.endpoint} {json.dumps(self.body, default=str)[:200]}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class FakeConnectorCluster:
    """In-memory connectors and jobs, reached through the API paths and the direct document paths."""

    def __init__(self, *, has_api: bool = True):
        self.has_api = has_api
        self.docs: dict[str, dict[str, dict[str, Any]]] = {_CONNECTORS: {}, _JOBS: {}}
        self.seq: dict[tuple[str, str], int] = {}
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)

    # -- helpers ---------------------------------------------------------------------
    def _write(self, index: str, doc_id: str, doc: dict[str, Any]) -> int:
        self.docs[index][doc_id] = doc
        self.seq[(index, doc_id)] = next(self._seq)
        return self.seq[(index, doc_id)]

    @staticmethod
    def _missing(what: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error": {"type": "resource_not_found_exception", "reason": f"{what} not found"}, "status": 404}

    @staticmethod
    def _bad(reason: str) -> tuple[int, dict[str, Any]]:
        return 400, {"error": {"type": "status_exception", "reason": reason}, "status": 400}

    def _update(self, index: str, doc_id: str, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        doc = self.docs[index].get(doc_id)
        if doc is None:
            return self._missing(doc_id)
        merged = copy.deepcopy(doc)
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        seq = self._write(index, doc_id, merged)
        return 200, {"result": "updated", "_id": doc_id, "_seq_no": seq, "_primary_term": 1, "_version": seq}

    # -- dispatch --------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] in (_CONNECTORS, _JOBS):
            return self._direct(method, parts, query, body or {})
        if parts and parts[0] == "_connector" and self.has_api:
            if len(parts) > 1 and parts[1] == "_sync_job":
                return self._jobs(method, parts[2:], query, body or {})
            return self._connectors(method, parts[1:], query, body or {})
        return 400, {"error": f"no handler found for uri [{path}] and method [{method}]"}

    def _direct(self, method: str, parts: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        index = parts[0]
        if method == "GET" and len(parts) == 3 and parts[1] == "_doc":
            doc = self.docs[index].get(parts[2])
            if doc is None:
                return 404, {"_index": index, "_id": parts[2], "found": False}
            seq = self.seq[(index, parts[2])]
            return 200, {"_index": index, "_id": parts[2], "found": True, "_source": copy.deepcopy(doc),
                         "_seq_no": seq, "_primary_term": 1, "_version": seq}
        if method in ("POST", "PUT") and len(parts) == 3 and parts[1] in ("_update", "_doc"):
            if "if_seq_no" in query and int(query["if_seq_no"]) != self.seq.get((index, parts[2])):
                return 409, {"error": {"type": "version_conflict_engine_exception", "reason": "conflict"},
                             "status": 409}
            if parts[1] == "_update":
                return self._update(index, parts[2], body.get("doc") or {})
            seq = self._write(index, parts[2], copy.deepcopy(body))  # the whole document, as sent
            return 200, {"result": "updated", "_id": parts[2], "_seq_no": seq, "_primary_term": 1, "_version": seq}
        if method == "POST" and parts[1:] == ["_search"] and index == _JOBS:
            counts: dict[str, int] = {}
            for doc in self.docs[_JOBS].values():
                counts[doc.get("status")] = counts.get(doc.get("status"), 0) + 1
            total = sum(int(d.get("indexed_document_count") or 0) for d in self.docs[_JOBS].values())
            return 200, {"hits": {"hits": []}, "aggregations": {
                "status": {"buckets": [{"key": k, "doc_count": v} for k, v in counts.items()]},
                "indexed": {"value": total}}}
        return 400, {"error": f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]"}

    def _connectors(self, method: str, parts: list[str], query: dict[str, str],
                    body: dict[str, Any]) -> tuple[int, Any]:
        store = self.docs[_CONNECTORS]
        if not parts:
            if method == "GET":
                found = [{"id": k, **v} for k, v in sorted(store.items())
                         if (query.get("include_deleted") == "true" or not v.get("deleted"))
                         and ("service_type" not in query or v.get("service_type") in query["service_type"].split(","))]
                start, size = int(query.get("from", 0)), int(query.get("size", 100))
                return 200, {"count": len(found), "results": found[start:start + size]}
            if method == "POST":
                return self._create_connector(f"generated-{next(self._ids)}", body)
        connector_id, action = parts[0], "/".join(parts[1:])
        if method == "PUT" and not action:
            return self._create_connector(connector_id, body)
        doc = store.get(connector_id)
        if doc is None:
            return self._missing(f"connector [{connector_id}]")
        if method == "GET" and not action:
            if doc.get("deleted") and query.get("include_deleted") != "true":
                return self._missing(f"connector [{connector_id}]")
            return 200, {"id": connector_id, **copy.deepcopy(doc)}
        if method == "DELETE" and not action:
            return self._update(_CONNECTORS, connector_id, {"deleted": True})
        if method != "PUT":
            return 400, {"error": "no handler found"}
        simple = {"_features": "features", "_scheduling": "scheduling", "_pipeline": "pipeline",
                  "_index_name": "index_name", "_native": "is_native"}
        if action == "_check_in":
            return self._update(_CONNECTORS, connector_id, {"last_seen": _now()})
        if action in simple:
            return self._update(_CONNECTORS, connector_id, {simple[action]: body[simple[action]]})
        if action in ("_name", "_api_key_id", "_last_sync"):
            return self._update(_CONNECTORS, connector_id, body)
        if action == "_service_type":
            status = "created" if doc.get("status") == "created" else "needs_configuration"
            return self._update(_CONNECTORS, connector_id, {"service_type": body["service_type"], "status": status})
        if action == "_configuration":
            if "configuration" in body:
                return self._update(_CONNECTORS, connector_id, {"configuration": None} | {
                    "configuration": body["configuration"], "status": "configured"})
            values = {k: {"value": v} for k, v in (body.get("values") or {}).items()}
            return self._update(_CONNECTORS, connector_id, {"configuration": values, "status": "configured"})
        if action == "_error":
            return self._update(_CONNECTORS, connector_id,
                                {"error": body.get("error"), "status": "error" if body.get("error") else "connected"})
        if action == "_status":
            if body["status"] not in _CONNECTOR_TRANSITIONS.get(doc.get("status"), set()):
                return self._bad(f"invalid transition from [{doc.get('status')}] to [{body['status']}]")
            return self._update(_CONNECTORS, connector_id, {"status": body["status"]})
        if action == "_filtering":
            filtering = copy.deepcopy(doc.get("filtering") or [{"domain": "DEFAULT", "active": {}, "draft": {}}])
            if "filtering" in body:
                filtering = body["filtering"]
            else:
                filtering[0]["draft"] = {"rules": body.get("rules", filtering[0]["draft"].get("rules")),
                                         "advanced_snippet": body.get("advanced_snippet",
                                                                      filtering[0]["draft"].get("advanced_snippet")),
                                         "validation": {"state": "edited", "errors": []}}
            return self._update(_CONNECTORS, connector_id, {"filtering": filtering})
        if action == "_filtering/_validation":
            filtering = copy.deepcopy(doc["filtering"])
            filtering[0]["draft"]["validation"] = body["validation"]
            return self._update(_CONNECTORS, connector_id, {"filtering": filtering})
        if action == "_filtering/_activate":
            filtering = copy.deepcopy(doc["filtering"])
            if filtering[0]["draft"]["validation"]["state"] != "valid":
                return self._bad("Filtering draft needs to be validated by the connector service before activation")
            filtering[0]["active"] = copy.deepcopy(filtering[0]["draft"])
            return self._update(_CONNECTORS, connector_id, {"filtering": filtering})
        return 400, {"error": "no handler found"}

    def _create_connector(self, connector_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        stamp = _now()
        rule = {"id": "DEFAULT", "policy": "include", "field": "_", "rule": "regex", "value": ".*", "order": 0,
                "created_at": stamp, "updated_at": stamp}
        rules = {"rules": [rule], "advanced_snippet": {"value": {}, "created_at": stamp, "updated_at": stamp},
                 "validation": {"state": "valid", "errors": []}}
        schedule = {"enabled": False, "interval": "0 0 0 * * ?"}
        doc = {"api_key_id": None, "api_key_secret_id": None, "configuration": {}, "custom_scheduling": {},
               "description": body.get("description"), "error": None, "features": None,
               "filtering": [{"domain": "DEFAULT", "active": rules, "draft": copy.deepcopy(rules)}],
               "index_name": body.get("index_name"), "is_native": bool(body.get("is_native")),
               "language": body.get("language"), "last_seen": None, "last_sync_status": None,
               "last_sync_error": None, "last_synced": None, "last_indexed_document_count": None,
               "last_deleted_document_count": None, "last_sync_scheduled_at": None,
               "last_incremental_sync_scheduled_at": None, "last_access_control_sync_scheduled_at": None,
               "last_access_control_sync_status": None, "last_access_control_sync_error": None,
               "name": body.get("name") or "", "pipeline": None,
               "scheduling": {"access_control": dict(schedule), "full": dict(schedule),
                              "incremental": dict(schedule)},
               "service_type": body.get("service_type"), "status": "created", "sync_cursor": None,
               "sync_now": False, "deleted": False}
        self._write(_CONNECTORS, connector_id, doc)
        return 200, {"result": "created", "id": connector_id}

    def _jobs(self, method: str, parts: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        jobs = self.docs[_JOBS]
        if not parts:
            if method == "POST":
                connector = self.docs[_CONNECTORS].get(body["id"])
                if connector is None:
                    return self._missing(f"connector [{body['id']}]")
                if not connector.get("index_name"):
                    return self._bad("Cannot start a sync for connector with no index attached")
                job_type = body.get("job_type") or "full"
                filtering = connector.get("filtering") or []
                index = connector["index_name"]
                stamp = _now()
                job_id = f"job-{next(self._ids)}"
                self._write(_JOBS, job_id, {
                    "connector": {"id": body["id"], "configuration": connector.get("configuration"),
                                  "filtering": filtering[0].get("active") if filtering else None,
                                  "index_name": f".search-acl-filter-{index}" if job_type == "access_control"
                                  else index,
                                  "language": connector.get("language"), "pipeline": connector.get("pipeline"),
                                  "service_type": connector.get("service_type")},
                    "job_type": job_type, "trigger_method": body.get("trigger_method") or "on_demand",
                    "status": "pending", "created_at": stamp, "last_seen": stamp, "total_document_count": 0,
                    "indexed_document_count": 0, "indexed_document_volume": 0, "deleted_document_count": 0})
                return 200, {"id": job_id}
            if method == "GET":
                found = [{"id": k, **v} for k, v in jobs.items()
                         if query.get("connector_id") in (None, v["connector"]["id"])
                         and query.get("status") in (None, v.get("status"))]
                found.sort(key=lambda j: j.get("created_at") or "", reverse=True)
                start, size = int(query.get("from", 0)), int(query.get("size", 100))
                return 200, {"count": len(found), "results": found[start:start + size]}
        job_id, action = parts[0], "/".join(parts[1:])
        job = jobs.get(job_id)
        if job is None:
            return self._missing(f"connector sync job [{job_id}]")
        if method == "GET" and not action:
            return 200, {"id": job_id, **copy.deepcopy(job)}
        if method != "PUT":
            return 400, {"error": "no handler found"}
        status = job.get("status")
        if action == "_claim":
            fields: dict[str, Any] = {"worker_hostname": body["worker_hostname"], "status": "in_progress",
                                      "last_seen": _now(), "started_at": _now()}
            if body.get("sync_cursor") is not None:
                fields["connector"] = {"sync_cursor": body["sync_cursor"]}
            return self._update(_JOBS, job_id, fields)
        if action == "_check_in":
            return self._update(_JOBS, job_id, {"last_seen": _now()})
        if action == "_stats":
            missing = [k for k in ("deleted_document_count", "indexed_document_count", "indexed_document_volume")
                       if k not in body]
            if missing:
                return self._bad(f"[{missing[0]}] is required")
            return self._update(_JOBS, job_id, {"last_seen": _now(), **body})
        if action == "_error":
            if "error" not in _JOB_TRANSITIONS[status]:
                return self._bad(f"Invalid transition attempt from [{status}] to [error]")
            return self._update(_JOBS, job_id, {"status": "error", "error": body.get("error")})
        if action == "_cancel":
            stamp = _now()
            if status in ("pending", "suspended"):
                return self._update(_JOBS, job_id, {"status": "canceled", "cancelation_requested_at": stamp,
                                                    "canceled_at": stamp, "completed_at": stamp})
            if "canceling" not in _JOB_TRANSITIONS[status]:
                return self._bad(f"Invalid transition attempt from [{status}] to [canceling]")
            return self._update(_JOBS, job_id, {"status": "canceling", "cancelation_requested_at": stamp})
        return 400, {"error": "no handler found"}


class _FakeTransport(Transport):
    """Answers from a :class:`FakeConnectorCluster`; nothing leaves the process."""

    def __init__(self, node_configs: list[NodeConfig], **kwargs: Any):
        super().__init__(node_configs, **kwargs)
        self.cluster = FakeConnectorCluster()
        self.sent: list[Request] = []
        self.endpoint: str | None = None  # set by RecordingElasticsearch for the request under way

    def perform_request(self, method: str, target: str, *, body: Any = None, **_: Any) -> TransportApiResponse:
        split = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.sent.append(Request(method, split.path, query, copy.deepcopy(body), self.endpoint))
        status, answer = self.cluster.handle(method, split.path, query, copy.deepcopy(body))
        meta = ApiResponseMeta(status=status, http_version="1.1",
                               headers=HttpHeaders({"x-elastic-product": "Elasticsearch"}), duration=0.0,
                               node=self.node_pool.get().config)
        return TransportApiResponse(meta, answer)


class RecordingElasticsearch(Elasticsearch):
    """An Elasticsearch client whose every request is recorded with elasticsearch-py's endpoint id."""

    @property
    def cluster_fake(self) -> FakeConnectorCluster:
        return self.transport.cluster  # type: ignore[attr-defined]

    @property
    def requests(self) -> list[Request]:
        return self.transport.sent  # type: ignore[attr-defined]

    def perform_request(self, method: str, path: str, *, params: Any = None, headers: Any = None, body: Any = None,
                        endpoint_id: str | None = None, path_parts: Any = None) -> Any:
        self.transport.endpoint = endpoint_id  # type: ignore[attr-defined]
        return super().perform_request(method, path, params=params, headers=headers, body=body,
                                       endpoint_id=endpoint_id, path_parts=path_parts)


def connector_api_client(*, has_api: bool = True) -> RecordingElasticsearch:
    """A client for a fake cluster (with or without the connector API)."""
    es = RecordingElasticsearch("http://connector-api.invalid:9200", transport_class=_FakeTransport, max_retries=0)
    es.transport.cluster.has_api = has_api  # type: ignore[attr-defined]
    return es


def by_endpoint(requests: list[Request], prefix: str = "") -> list[str]:
    """The endpoint ids of ``requests`` (those starting with ``prefix``), in order."""
    return [r.endpoint or "" for r in requests if (r.endpoint or "").startswith(prefix)]

