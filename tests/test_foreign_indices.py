"""BYOC indices someone else created (real Elasticsearch, the private node of own_es).

A client on a cluster without Elastic's index templates may create ``.elastic-connectors-v1``
and ``.elastic-connectors-sync-jobs-v1`` itself, without the protocol's mappings. Missing
fields get the protocol's mapping at start (and the documents already there become
searchable); a field mapped with the wrong type is one clear error, shown by ``/healthz``
and the log, and the daemon does not pretend to work. These tests replace the private
node's BYOC indices and put the service's own back afterwards.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
import uuid

import pytest

from launcher.config import load_config
from launcher.daemon import Daemon
from launcher.index_store import IndexStore
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX
from tests.elastic_documents import elastic_document, insert_connector, insert_job, poll_until_job_final
from tests.fixtures_security.own_node import FAULT_ES_URL, fast_refresh
from tests.helpers import SOURCES, write_config

pytestmark = pytest.mark.integration


def _replace_indices(es, connectors_mappings, jobs_mappings) -> None:
    for alias, mappings in ((CONNECTORS_INDEX, connectors_mappings), (JOBS_INDEX, jobs_mappings)):
        es.indices.delete(index=f"{alias}-v1", ignore_unavailable=True)
        es.indices.create(index=f"{alias}-v1", mappings=mappings, aliases={alias: {"is_write_index": True}})


@pytest.fixture
def foreign(own_es):
    yield own_es
    for alias in (CONNECTORS_INDEX, JOBS_INDEX):
        own_es.indices.delete(index=f"{alias}-v1", ignore_unavailable=True)
    fast_refresh(own_es)  # the service's own indices again, for the next tests


def _daemon(tmp_path, es, connector_id, **service):
    config = load_config(write_config(tmp_path / f"c-{uuid.uuid4().hex[:6]}.yml", es_url=FAULT_ES_URL,
                                      service={"connector_ids": [connector_id], **service}, sources=dict(SOURCES)))
    return Daemon(config, es)


def _type(es, index, field):
    mapping = es.indices.get_field_mapping(index=index, fields=field).body
    (body,) = mapping.values()
    leaf = field.rsplit(".", 1)[-1]
    return body["mappings"][field]["mapping"][leaf]["type"]


def test_daemon_when_indices_lack_the_protocol_fields_then_mappings_added_and_existing_job_runs(
        foreign, tmp_path):
    es = foreign
    _replace_indices(es, {"dynamic": False, "properties": {"name": {"type": "keyword"}}},
                     {"dynamic": False, "properties": {"created_at": {"type": "date"}}})
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a", encoding="utf-8")
    connector_id = f"foreign-{uuid.uuid4().hex[:8]}"
    insert_connector(es, connector_id, elastic_document("connector-created-by-elastic-cli.json",
                                                        directory=str(folder)), index_name=f"test-{connector_id}")
    job_id = insert_job(es, elastic_document("full-job-created-by-elastic-cli.json", directory=str(folder)),
                        connector_id=connector_id, index_name=f"test-{connector_id}")
    assert es.count(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}})["count"] == 0

    assert IndexStore(es).prepare() == []

    assert _type(es, f"{JOBS_INDEX}-v1", "connector.id") == "keyword"
    assert _type(es, f"{CONNECTORS_INDEX}-v1", "service_type") == "keyword"
    assert es.count(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}})["count"] == 1
    job = poll_until_job_final(_daemon(tmp_path, es, connector_id), es, job_id)
    assert job["status"] == "completed" and job["indexed_document_count"] == 1, job.get("error")
    es.indices.delete(index=f"test-{connector_id}", ignore_unavailable=True)


def test_daemon_when_a_queried_field_has_the_wrong_type_then_one_clear_error_in_healthz_and_log(
        foreign, tmp_path, caplog):
    from launcher.metrics import serve_metrics

    es = foreign
    # What dynamic mapping makes of a job indexed into an index made without mappings.
    _replace_indices(es, {"dynamic": False, "properties": {"service_type": {"type": "keyword"}}},
                     {"properties": {"status": {"type": "text", "fields": {"keyword": {"type": "keyword"}}}}})
    connector_id = f"foreign-{uuid.uuid4().hex[:8]}"
    job_id = insert_job(es, elastic_document("full-job-created-by-elastic-cli.json", directory="/srv"),
                        connector_id=connector_id, index_name=f"test-{connector_id}")
    daemon = _daemon(tmp_path, es, connector_id, metrics_address="127.0.0.1:0")
    server = serve_metrics("127.0.0.1:0", daemon)
    try:
        with caplog.at_level(logging.ERROR, logger="launcher.daemon"):
            daemon.poll_once()
            daemon.poll_once()

        (problem,) = daemon.store_problems
        assert "'status' is mapped as 'text' (the protocol needs 'keyword')" in problem
        assert "'connector.id' is mapped as 'text'" in problem
        assert f"{JOBS_INDEX}-v1" in problem and "_reindex" in problem and "docs/operations.md" in problem
        assert [r.getMessage() for r in caplog.records].count(f"cannot serve connectors: {problem}") == 1
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10)
        assert answer.value.code == 503 and problem in answer.value.read().decode()
        assert daemon.last_successful_poll is None
        assert es.get(index=JOBS_INDEX, id=job_id)["_source"]["status"] == "pending"
    finally:
        server.shutdown()
