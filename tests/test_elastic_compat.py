"""Documents written by Elastic's CLI and connector service, run by our daemon (real Elasticsearch).

The fixtures (tests/fixtures_elastic, from a session that ran Elastic's connector service
9.6 and its CLI beside ours on Elasticsearch 9.5.4) are inserted as they are; our daemon
(in-process, serving only the test's connector) picks them up and completes them. After
that every field of PROTOCOL.md is present, with the protocol's type, in both documents.
Our own documents are compared with Elastic's the same way.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from launcher.config import load_config
from launcher.daemon import Daemon
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices
from launcher.protocol import create_job, get_connector, new_connector
from tests.elastic_documents import (
    CONNECTOR_FIELDS, JOB_FIELDS, elastic_document, insert_connector, insert_job, poll_until_job_final,
    protocol_type_problems,
)
from tests.helpers import SOURCES, index_docs, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for number in range(4):
        (docs / f"note-{number}.txt").write_text(f"note {number}", encoding="utf-8")
    return docs


@pytest.fixture
def ids(es):
    """A fresh connector id and content index; both removed afterwards."""
    ensure_indices(es)
    connector_id = f"elastic-{uuid.uuid4().hex[:10]}"
    yield connector_id, f"test-{connector_id}"
    es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
    es.indices.delete(index=f"test-{connector_id}", ignore_unavailable=True)


def _daemon(tmp_path: Path, es, connector_id: str) -> Daemon:
    config = load_config(write_config(tmp_path / f"config-{uuid.uuid4().hex[:6]}.yml",
                                      service={"connector_ids": [connector_id], "heartbeat": 300},
                                      sources=dict(SOURCES)))
    return Daemon(config, es)


def _docs(es, connector_id: str, job_id: str) -> tuple[dict, dict]:
    return (es.get(index=CONNECTORS_INDEX, id=connector_id)["_source"],
            es.get(index=JOBS_INDEX, id=job_id)["_source"])


def test_daemon_when_elastic_cli_connector_and_job_then_completed_and_every_protocol_field_typed(
        es, ids, folder, tmp_path):
    connector_id, index = ids
    insert_connector(es, connector_id, elastic_document("connector-created-by-elastic-cli.json",
                                                        directory=str(folder)), index_name=index)
    job_id = insert_job(es, elastic_document("full-job-created-by-elastic-cli.json", directory=str(folder)),
                        connector_id=connector_id, index_name=index)

    job = poll_until_job_final(_daemon(tmp_path, es, connector_id), es, job_id)

    assert job["status"] == "completed", job.get("error")
    assert job["indexed_document_count"] == 4 and job["total_document_count"] == 4
    assert len(index_docs(es, index)) == 4
    connector, job = _docs(es, connector_id, job_id)
    assert protocol_type_problems(connector, CONNECTOR_FIELDS) == []
    assert protocol_type_problems(job, JOB_FIELDS) == []
    assert connector["last_sync_status"] == "completed" and connector["last_indexed_document_count"] == 4
    assert connector["status"] == "connected" and connector["error"] is None
    # What Elastic's CLI wrote and we have no reason to touch stays as it was.
    assert connector["language"] == "en" and connector["api_key_secret_id"] is None
    assert connector["created_at"] == "2026-11-30T10:54:45.465093+00:00" and connector["custom_scheduling"] == {}


def test_daemon_when_job_suspended_by_elastic_service_with_dotted_cursor_key_then_resumed_and_completed(
        es, ids, folder, tmp_path):
    connector_id, index = ids
    insert_connector(es, connector_id, elastic_document("connector-after-elastic-service-ran-it.json",
                                                        directory=str(folder)), index_name=index)
    # Elastic's service claimed this job (so the literal "connector.sync_cursor" key) and was
    # stopped before it finished: it left the job suspended and released its lock.
    job_id = insert_job(es, elastic_document("job-after-elastic-service-claimed-and-ran-it.json",
                                             directory=str(folder)),
                        connector_id=connector_id, index_name=index, status="suspended", completed_at=None,
                        worker_hostname="worker-1")
    es.update(index=CONNECTORS_INDEX, id=connector_id, doc={"last_sync_status": "suspended"}, refresh=True)

    job = poll_until_job_final(_daemon(tmp_path, es, connector_id), es, job_id)

    assert job["status"] == "completed", job.get("error")
    assert job["indexed_document_count"] == 4 and "connector.sync_cursor" in job
    connector, job = _docs(es, connector_id, job_id)
    assert protocol_type_problems(connector, CONNECTOR_FIELDS) == []
    assert protocol_type_problems(job, JOB_FIELDS) == []
    assert connector["features"]["native_connector_api_keys"] == {"enabled": False}  # Elastic's own key kept
    assert connector["last_sync_status"] == "completed" and connector["last_indexed_document_count"] == 4


def test_new_connector_when_compared_with_elastic_cli_then_same_fields_defaults_and_types(es, ids):
    elastic = elastic_document("connector-created-by-elastic-cli.json", directory="/srv")
    ours = new_connector(service_type="dir", index_name="peer-made-a", configuration=elastic["configuration"])

    assert set(elastic) <= set(ours), sorted(set(elastic) - set(ours))
    for key in ("language", "pipeline", "api_key_id", "api_key_secret_id", "custom_scheduling", "scheduling",
                "last_access_control_sync_error", "last_access_control_sync_status",
                "last_access_control_sync_scheduled_at", "last_indexed_document_count",
                "last_deleted_document_count", "is_native", "status"):
        assert ours[key] == elastic[key], key
    assert protocol_type_problems(ours, CONNECTOR_FIELDS) == []
    connector_id, index = ids
    es.index(index=CONNECTORS_INDEX, id=connector_id, document={**ours, "index_name": index}, refresh=True)
    job = create_job(es, get_connector(es, connector_id))
    doc = es.get(index=JOBS_INDEX, id=job)["_source"]
    assert set(elastic_document("full-job-created-by-elastic-cli.json")) <= set(doc)
    assert protocol_type_problems(doc, JOB_FIELDS) == []


def test_mappings_when_created_by_us_then_as_the_protocol_defines_them(es):
    ensure_indices(es)
    jobs = es.indices.get_mapping(index=JOBS_INDEX)
    (properties,) = [m["mappings"]["properties"] for m in jobs.body.values()]
    for counter in ("indexed_document_count", "indexed_document_volume", "deleted_document_count",
                    "total_document_count"):
        assert properties[counter]["type"] == "integer", counter
    assert properties["connector"]["properties"]["id"]["type"] == "keyword"
    connectors = es.indices.get_mapping(index=CONNECTORS_INDEX)
    (properties,) = [m["mappings"]["properties"] for m in connectors.body.values()]
    for keyword in ("service_type", "index_name", "status", "last_sync_status"):
        assert properties[keyword]["type"] == "keyword", keyword
    assert properties["created_at"]["type"] == "date" and properties["deleted"]["type"] == "boolean"


def test_open_store_when_cluster_lacks_the_connector_api_then_indices_backend(es):
    from launcher.api_store import has_connector_api
    from launcher.index_store import IndexStore
    from launcher.store import open_store

    # The test build of Elasticsearch has no connector API: auto picks the indices.
    assert has_connector_api(es) is False
    assert isinstance(open_store(es, "auto"), IndexStore)
