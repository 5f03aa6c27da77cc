"""The connector API backend at the request level (no server here has the connector API).

Every request is the one elasticsearch-py builds for its ``connector`` namespace (method,
path, body), recorded with elasticsearch-py's own endpoint id; the answers come from
:mod:`tests.connector_api_fake`. The direct backend is tested end to end on the real
server (tests/test_protocol.py, tests/test_elastic_compat.py, ...).
"""

from __future__ import annotations

import json

import pytest
from elasticsearch import ConflictError

from launcher.api_store import ATOMIC_FIELDS, DOCUMENT_ONLY_FIELDS, ConnectorApiStore, has_connector_api
from launcher.index_store import IndexStore
from launcher.protocol import (
    claim_job, create_job, finish_job, get_connector, new_connector, release_lock, update_connector,
)
from launcher.store import open_store
from tests.connector_api_fake import by_endpoint, connector_api_client

CONNECTORS, JOBS = "/.elastic-connectors", "/.elastic-connectors-sync-jobs"
# elasticsearch-py marks the connector API beta; the service logs that note once (launcher.es_warnings).
pytestmark = pytest.mark.filterwarnings("ignore::elasticsearch.exceptions.GeneralAvailabilityWarning")


@pytest.fixture
def es():
    return connector_api_client()


@pytest.fixture
def store(es):
    return ConnectorApiStore(es)


def _connector(store, connector_id="c1", **fields):
    doc = new_connector(service_type="dir", index_name="search-c1", configuration={"directory": {"value": "/srv"}})
    doc.update(fields)
    store.create_connector(doc, connector_id)
    return get_connector(store, connector_id)


def _since(es, start):
    return es.requests[start:]


def test_open_store_when_cluster_has_the_api_or_not_then_backend_detected():
    assert has_connector_api(connector_api_client()) is True
    assert has_connector_api(connector_api_client(has_api=False)) is False
    assert isinstance(open_store(connector_api_client(), "auto"), ConnectorApiStore)
    assert isinstance(open_store(connector_api_client(has_api=False), "auto"), IndexStore)
    probe = connector_api_client().requests
    assert [(r.method, r.path) for r in probe] == []  # detection is lazy: nothing sent before asked


def test_api_store_when_cli_creates_connector_then_put_and_one_endpoint_per_field(es, store):
    doc = new_connector(service_type="dir", index_name="search-c1", name="Docs",
                        configuration={"directory": {"value": "/srv", "type": "str"}})
    doc["scheduling"]["full"] = {"enabled": True, "interval": "0 0 * * * ?"}
    doc["pipeline"]["name"] = "my-pipeline"

    assert store.create_connector(doc, "c1") == "c1"

    requests = es.requests
    put = next(r for r in requests if r.endpoint == "connector.put")
    assert (put.method, put.path) == ("PUT", "/_connector/c1")
    assert put.body == {"index_name": "search-c1", "is_native": False, "language": "en", "name": "Docs",
                        "service_type": "dir"}
    assert {"connector.update_configuration", "connector.update_scheduling",
            "connector.update_pipeline"} <= set(by_endpoint(requests))
    config = next(r for r in requests if r.endpoint == "connector.update_configuration")
    assert config.path == "/_connector/c1/_configuration" and config.body["configuration"]["directory"]["value"] == "/srv"
    stored = es.cluster_fake.docs[".elastic-connectors"]["c1"]
    for key in ("service_type", "index_name", "name", "configuration", "scheduling", "pipeline", "language",
                "created_at", "updated_at", "last_indexed_document_count"):
        assert stored[key] == doc[key], key
    assert stored["status"] == "configured"


@pytest.mark.parametrize(("fields", "endpoint", "path", "body"), [
    ({"last_seen": None, "last_sync_status": "completed", "last_synced": "2026-01-01T00:00:00+00:00"},
     "connector.last_sync", "/_connector/c1/_last_sync",
     {"last_sync_status": "completed", "last_synced": "2026-01-01T00:00:00+00:00"}),
    ({"status": "error", "error": "boom"}, "connector.update_error", "/_connector/c1/_error", {"error": "boom"}),
    ({"status": "connected", "error": None}, "connector.update_error", "/_connector/c1/_error", {"error": None}),
    ({"features": {"incremental_sync": {"enabled": True}}}, "connector.update_features", "/_connector/c1/_features",
     {"features": {"incremental_sync": {"enabled": True}}}),
    ({"scheduling": {"full": {"enabled": False, "interval": "0 0 0 * * ?"}}}, "connector.update_scheduling",
     "/_connector/c1/_scheduling", {"scheduling": {"full": {"enabled": False, "interval": "0 0 0 * * ?"}}}),
    ({"pipeline": {"name": "p"}}, "connector.update_pipeline", "/_connector/c1/_pipeline", {"pipeline": {"name": "p"}}),
    ({"index_name": "search-new"}, "connector.update_index_name", "/_connector/c1/_index_name",
     {"index_name": "search-new"}),
    ({"name": "N", "description": "D"}, "connector.update_name", "/_connector/c1/_name",
     {"name": "N", "description": "D"}),
    ({"service_type": "s3"}, "connector.update_service_type", "/_connector/c1/_service_type", {"service_type": "s3"}),
    ({"api_key_id": "k", "api_key_secret_id": "s"}, "connector.update_api_key_id", "/_connector/c1/_api_key_id",
     {"api_key_id": "k", "api_key_secret_id": "s"}),
    ({"is_native": False}, "connector.update_native", "/_connector/c1/_native", {"is_native": False}),
    ({"configuration": {"x": {"value": 1}}}, "connector.update_configuration", "/_connector/c1/_configuration",
     {"configuration": {"x": {"value": 1}}}),
])
def test_api_store_when_connector_field_updated_then_its_endpoint(es, store, fields, endpoint, path, body):
    _connector(store)
    start = len(es.requests)

    update_connector(store, "c1", fields)

    sent = [r for r in _since(es, start) if r.endpoint == endpoint]
    assert len(sent) == 1, _since(es, start)
    assert (sent[0].method, sent[0].path, sent[0].body) == ("PUT", path, body)


def test_api_store_when_status_not_error_or_connected_then_status_endpoint_checks_transition(es, store):
    _connector(store)  # configured
    start = len(es.requests)

    update_connector(store, "c1", {"status": "needs_configuration"})

    assert [(r.endpoint, r.body) for r in _since(es, start)] == [
        ("connector.update_status", {"status": "needs_configuration"})]


def test_api_store_when_field_has_no_endpoint_then_direct_partial_update(es, store):
    _connector(store)
    start = len(es.requests)

    update_connector(store, "c1", {"sync_now": False, "custom_scheduling": {}})

    (sent,) = _since(es, start)
    assert (sent.endpoint, sent.method, sent.path) == ("update", "POST", f"{CONNECTORS}/_update/c1")
    assert sent.body == {"doc": {"sync_now": False, "custom_scheduling": {}}}


def test_claim_job_when_through_api_then_lock_is_conditional_and_claim_endpoint_carries_cursor(es, store):
    connector = _connector(store, sync_cursor={"timestamp": "2026-01-01T00:00:00+00:00"},
                           status="connected")
    update_connector(store, "c1", {"sync_cursor": {"timestamp": "2026-01-01T00:00:00+00:00"}})
    start = len(es.requests)
    job_id = create_job(store, connector, job_type="incremental")
    post = next(r for r in _since(es, start) if r.endpoint == "connector.sync_job_post")
    assert (post.method, post.path, post.body) == ("POST", "/_connector/_sync_job",
                                                   {"id": "c1", "job_type": "incremental",
                                                    "trigger_method": "on_demand"})
    start = len(es.requests)

    claim = claim_job(store, job_id, "host-a")

    assert claim is not None
    sent = _since(es, start)
    lock = next(r for r in sent if r.path == f"{CONNECTORS}/_update/c1")
    assert lock.query["if_seq_no"] and lock.query["if_primary_term"] == "1"
    assert lock.body["doc"]["last_sync_status"] == "in_progress"
    claimed = next(r for r in sent if r.endpoint == "connector.sync_job_claim")
    assert (claimed.method, claimed.path) == ("PUT", f"/_connector/_sync_job/{job_id}/_claim")
    # The job (created by the API, without a cursor) starts from the connector's cursor.
    assert claimed.body == {"worker_hostname": "host-a", "sync_cursor": {"timestamp": "2026-01-01T00:00:00+00:00"}}
    job = es.cluster_fake.docs[".elastic-connectors-sync-jobs"][job_id]
    assert job["status"] == "in_progress" and job["worker_hostname"] == "host-a"
    assert job["connector"]["sync_cursor"] == {"timestamp": "2026-01-01T00:00:00+00:00"}
    assert all(k in job for k in ("error", "completed_at", "canceled_at", "metadata", "worker_hostname"))


def test_claim_job_when_connector_changed_after_read_then_no_lock_written(es, store, monkeypatch):
    connector = _connector(store, status="connected")
    job_id = create_job(store, connector)
    original = store.get_connector

    def read_then_someone_writes(connector_id):
        found = original(connector_id)
        es.cluster_fake.docs[".elastic-connectors"][connector_id]["name"] += " (renamed by Kibana)"
        es.cluster_fake.seq[(".elastic-connectors", connector_id)] += 1
        return found

    monkeypatch.setattr(store, "get_connector", read_then_someone_writes)
    start = len(es.requests)

    assert claim_job(store, job_id, "host-a") is None

    assert not [r for r in _since(es, start) if r.path == f"{CONNECTORS}/_update/c1"]
    assert es.cluster_fake.docs[".elastic-connectors-sync-jobs"][job_id]["status"] == "pending"


def test_api_store_when_conditional_write_of_atomic_fields_and_doc_changed_then_conflict(es, store):
    connector = _connector(store)
    es.cluster_fake.docs[".elastic-connectors"]["c1"]["status"] = "error"

    with pytest.raises(ConflictError):
        store.update_connector("c1", {"last_sync_scheduled_at": "2026-01-01T00:00:00+00:00"}, expected=connector)
    assert ATOMIC_FIELDS >= {"last_sync_status", "last_sync_scheduled_at", "sync_now"}


def test_job_life_when_through_api_then_stats_error_cancel_and_last_sync_endpoints(es, store):
    connector = _connector(store, status="connected")
    job_id = create_job(store, connector)
    claim = claim_job(store, job_id, "host-a")
    start = len(es.requests)

    store.job_stats(job_id, {"indexed_document_count": 3, "indexed_document_volume": 0,
                             "deleted_document_count": 1}, metadata={"runner": "FnApiRunner"})
    finish_job(store, job_id, "c1", "error", counters={"indexed_document_count": 3, "indexed_document_volume": 0,
                                                      "deleted_document_count": 1, "total_document_count": 3},
               error="SourceUnavailable: gone", previous_sync_status=claim.connector.get("last_sync_status"))

    sent = _since(es, start)
    stats = [r for r in sent if r.endpoint == "connector.sync_job_update_stats"]
    assert stats[0].path == f"/_connector/_sync_job/{job_id}/_stats"
    assert stats[0].body == {"indexed_document_count": 3, "indexed_document_volume": 0, "deleted_document_count": 1,
                             "metadata": {"runner": "FnApiRunner"}}
    assert stats[1].body["total_document_count"] == 3
    error = next(r for r in sent if r.endpoint == "connector.sync_job_error")
    assert (error.method, error.path, error.body) == ("PUT", f"/_connector/_sync_job/{job_id}/_error",
                                                      {"error": "SourceUnavailable: gone"})
    last_sync = next(r for r in sent if r.endpoint == "connector.last_sync")
    assert last_sync.body["last_sync_status"] == "error" and last_sync.body["last_sync_error"] == "SourceUnavailable: gone"
    job = es.cluster_fake.docs[".elastic-connectors-sync-jobs"][job_id]
    assert job["status"] == "error" and job["completed_at"] and job["indexed_document_count"] == 3

    second = store.get_job(create_job(store, connector))
    start = len(es.requests)
    assert store.cancel_job(second) == "canceled"
    assert [(r.endpoint, r.method, r.path) for r in _since(es, start)] == [
        ("connector.sync_job_cancel", "PUT", f"/_connector/_sync_job/{second.id}/_cancel")]


def test_finish_job_when_completed_through_api_then_cursor_replaced_in_one_conditional_write(es, store):
    connector = _connector(store, status="connected")
    update_connector(store, "c1", {"sync_cursor": {"old": 1, "stale": True}})
    job_id = create_job(store, connector)
    claim_job(store, job_id, "host-a")
    start = len(es.requests)

    finish_job(store, job_id, "c1", "completed", counters={"indexed_document_count": 2, "indexed_document_volume": 0,
                                                          "deleted_document_count": 0},
               sync_cursor={"timestamp": "t2"})

    assert es.cluster_fake.docs[".elastic-connectors"]["c1"]["sync_cursor"] == {"timestamp": "t2"}
    job = es.cluster_fake.docs[".elastic-connectors-sync-jobs"][job_id]
    assert job["status"] == "completed"
    end = next(r for r in _since(es, start) if r.path == f"{JOBS}/_update/{job_id}")
    assert end.body["doc"]["status"] == "completed"  # no endpoint for completed: the document, as Elastic's service
    cursor_writes = [r for r in _since(es, start) if "sync_cursor" in json.dumps(r.body or {})
                     and r.method in ("PUT", "POST")]
    # One write, conditional on the version read: never a connector without its cursor in between.
    assert len(cursor_writes) == 1 and cursor_writes[0].path == f"/.elastic-connectors/_doc/c1"
    assert cursor_writes[0].query.get("if_seq_no") is not None
    assert cursor_writes[0].body["sync_cursor"] == {"timestamp": "t2"}


def test_release_lock_and_check_in_when_through_api_then_conditional_update_and_check_in_endpoint(es, store):
    _connector(store, status="connected")
    update_connector(store, "c1", {"last_sync_status": "in_progress"})
    start = len(es.requests)

    assert release_lock(store, "c1", {"last_sync_status": "error"}) is True
    store.check_in("c1")

    sent = _since(es, start)
    lock = next(r for r in sent if r.path == f"{CONNECTORS}/_update/c1")
    assert "if_seq_no" in lock.query and lock.body == {"doc": {"last_sync_status": "error"}}
    assert sent[-1].endpoint == "connector.check_in" and sent[-1].path == "/_connector/c1/_check_in"


def test_filtering_validation_when_through_api_then_validation_and_activate_endpoints(es, store):
    connector = _connector(store)
    start = len(es.requests)

    store.update_filtering_validation("c1", {"state": "valid", "errors": []}, activate=True, expected=connector)

    assert by_endpoint(_since(es, start), "connector.") == ["connector.update_filtering_validation",
                                                             "connector.update_active_filtering"]
    filtering = es.cluster_fake.docs[".elastic-connectors"]["c1"]["filtering"][0]
    assert filtering["draft"]["validation"]["state"] == "valid"


def test_list_when_through_api_then_pages_and_filters_of_the_endpoints(es, store):
    for number in range(3):
        _connector(store, f"c{number}")
    start = len(es.requests)

    found = store.list_connectors(service_types=["dir"])
    jobs = store.list_jobs(connector_ids=["c1"], statuses=["pending", "suspended"])

    assert sorted(c.id for c in found) == ["c0", "c1", "c2"] and jobs == []
    sent = _since(es, start)
    assert (sent[0].endpoint, sent[0].query["service_type"], sent[0].query["size"]) == ("connector.list", "dir", "100")
    assert [(r.endpoint, r.query.get("connector_id"), r.query.get("status")) for r in sent[1:]] == [
        ("connector.sync_job_list", "c1", "pending"), ("connector.sync_job_list", "c1", "suspended")]


def test_api_store_when_flows_run_then_direct_writes_only_where_the_api_has_no_endpoint(es, store):
    connector = _connector(store, status="connected")
    job_id = create_job(store, connector, metadata={"scheduled_at": "2026-01-01T00:00:00+00:00"})
    claim_job(store, job_id, "host-a")
    store.job_stats(job_id, {"indexed_document_count": 1, "indexed_document_volume": 0, "deleted_document_count": 0})
    finish_job(store, job_id, "c1", "completed", counters={"indexed_document_count": 1})

    direct = [r for r in es.requests if r.path.startswith(("/.elastic-connectors/_update",
                                                           "/.elastic-connectors-sync-jobs/_update"))]
    # The lock write names status, error and last_sync_error with the lock; some fields have no endpoint.
    allowed_connector = ATOMIC_FIELDS | DOCUMENT_ONLY_FIELDS | {"error", "status", "last_sync_error"}
    allowed_job = {"status", "completed_at", "canceled_at", "error", "started_at", "last_seen", "worker_hostname",
                   "cancelation_requested_at", "metadata", "indexed_document_count", "indexed_document_volume",
                   "deleted_document_count", "total_document_count"}
    for request in direct:
        fields = set(request.body["doc"])
        allowed = allowed_connector if request.path.startswith("/.elastic-connectors/") else allowed_job
        assert fields <= allowed, request
    assert all(r.endpoint.startswith("connector.") for r in es.requests if r.path.startswith("/_connector"))


def test_daemon_when_polling_through_api_then_heartbeat_and_unrunnable_job_ended_through_endpoints(es, store,
                                                                                                     tmp_path):
    from launcher.config import load_config
    from launcher.daemon import Daemon
    from tests.helpers import SOURCES, write_config

    connector = _connector(store, index_name="Bad Name")  # as another client could write it
    job_id = create_job(store, connector)
    config = load_config(write_config(tmp_path / "c.yml", service={"connector_ids": ["c1"]}, sources=dict(SOURCES)))
    daemon = Daemon(config, es, store=open_store(es, "auto"))
    start = len(es.requests)

    daemon.poll_once()
    assert daemon.wait_idle(30)

    assert daemon.store.backend == "connector_api" and daemon.store_problems == []
    endpoints = by_endpoint(_since(es, start), "connector.")
    for expected in ("connector.get", "connector.check_in", "connector.sync_job_list", "connector.sync_job_claim",
                     "connector.sync_job_error", "connector.last_sync"):
        assert expected in endpoints, (expected, endpoints)
    job = es.cluster_fake.docs[".elastic-connectors-sync-jobs"][job_id]
    assert job["status"] == "error" and "'Bad Name' contains space" in job["error"]
    doc = es.cluster_fake.docs[".elastic-connectors"]["c1"]
    assert doc["status"] == "error" and doc["last_sync_status"] == "error" and doc["last_seen"]


def test_api_store_when_caller_holds_only_a_seq_no_then_conditional_on_it(es, store):
    _connector(store)
    seq = es.cluster_fake.seq[(".elastic-connectors", "c1")]

    update_connector(store, "c1", {"sync_now": False}, if_seq_no=seq, if_primary_term=1)
    with pytest.raises(ConflictError):
        update_connector(store, "c1", {"sync_now": True}, if_seq_no=seq, if_primary_term=1)

    assert es.cluster_fake.docs[".elastic-connectors"]["c1"]["sync_now"] is False


def test_api_store_when_error_cleared_alone_or_index_detached_then_status_kept_and_null_sent(es, store):
    _connector(store)  # configured
    start = len(es.requests)

    update_connector(store, "c1", {"error": None, "index_name": None})

    sent = _since(es, start)
    assert [(r.endpoint, r.body) for r in sent] == [("connector.update_index_name", {"index_name": None}),
                                                    ("update", {"doc": {"error": None}})]
    assert es.cluster_fake.docs[".elastic-connectors"]["c1"]["status"] == "configured"
