"""The management CLI: what Kibana does, from a terminal or a script (``--json``).

Each test runs ``elastic-ingest`` as a process against the real Elasticsearch, on its own
connector ids; a sensitive configuration value must never appear in any output.
"""

from __future__ import annotations

import json
import uuid

import pytest

from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices
from launcher.protocol import get_connector, get_job
from tests.helpers import SOURCES, cli, write_config

pytestmark = pytest.mark.integration

SECRET = "tok-" + uuid.uuid4().hex  # never printed


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "config.yml", sources={**SOURCES, "slow": "tests.fixtures_sources.slow:SlowSource"})


@pytest.fixture
def connector_id(es):
    ensure_indices(es)
    connector_id = f"cli-{uuid.uuid4().hex[:10]}"
    yield connector_id
    es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)


class _Outputs:
    """Every CLI run of a test, so the test can check that the secret never showed."""

    def __init__(self, config):
        self.config, self.seen = config, []

    def __call__(self, *args: str, expect: int = 0):
        result = cli(*args, config=self.config)
        self.seen.append(result.stdout + result.stderr)
        assert result.returncode == expect, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)

    def assert_secret_never_shown(self):
        assert all(SECRET not in text for text in self.seen)


def test_cli_when_connector_created_updated_listed_then_documents_as_kibana_writes_them(es, config, connector_id):
    run = _Outputs(config)
    rule = {"id": "r1", "policy": "exclude", "field": "title", "rule": "equals", "value": "document 1"}
    created = run.json("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
                       "--index-name", f"search-{connector_id}", "--name", "CLI test", "--set", "count=4",
                       "--set", f"token={SECRET}", "--schedule", "full=0 0 3 * * ?", "--pipeline", "my-pipeline",
                       "--pipeline-flag", "reduce_whitespace=false", "--rules", json.dumps([rule]))
    assert created == {"id": connector_id, "result": "created"}
    doc = get_connector(es, connector_id).doc
    assert doc["service_type"] == "slow" and doc["index_name"] == f"search-{connector_id}" and doc["name"] == "CLI test"
    assert doc["status"] == "configured" and doc["is_native"] is False and doc["deleted"] is False
    assert doc["configuration"]["count"]["value"] == 4 and doc["configuration"]["token"]["value"] == SECRET
    assert doc["configuration"]["token"]["sensitive"] is True
    assert doc["scheduling"]["full"] == {"enabled": True, "interval": "0 0 3 * * ?"}
    assert doc["pipeline"] == {"name": "my-pipeline", "extract_binary_content": True, "reduce_whitespace": False,
                               "run_ml_inference": False}
    draft = doc["filtering"][0]["draft"]
    assert draft["validation"]["state"] == "edited" and [r["id"] for r in draft["rules"]] == ["r1", "DEFAULT"]

    updated = run.json("--action", "update-connector", "--connector-id", connector_id, "--set", "count=6",
                       "--schedule", "full=off", "--schedule", "incremental=0 */5 * * * ?",
                       "--index-name", f"search-{connector_id}-2", "--pipeline-flag", "run_ml_inference=true")
    assert updated["fields"] == ["configuration", "index_name", "pipeline", "scheduling"]
    doc = get_connector(es, connector_id).doc
    assert doc["configuration"]["count"]["value"] == 6 and doc["configuration"]["token"]["value"] == SECRET
    assert doc["scheduling"]["full"]["enabled"] is False
    assert doc["scheduling"]["incremental"] == {"enabled": True, "interval": "0 */5 * * * ?"}
    assert doc["index_name"] == f"search-{connector_id}-2"
    assert doc["pipeline"]["run_ml_inference"] is True and doc["pipeline"]["name"] == "my-pipeline"

    listed = run.json("--action", "connectors", "--connector-id", connector_id)
    assert [c["id"] for c in listed] == [connector_id]
    assert listed[0]["configuration"]["token"]["value"] == "****"
    assert listed[0]["configuration"]["count"]["value"] == 6
    table = run("--action", "connectors", "--connector-id", connector_id).stdout
    assert connector_id in table and "slow" in table and "configured" in table

    assert run.json("--action", "delete-connector", "--connector-id", connector_id) == {
        "id": connector_id, "result": "deleted"}
    assert get_connector(es, connector_id) is None
    run.assert_secret_never_shown()


def test_cli_when_sync_requested_listed_and_canceled_then_jobs_written(es, config, connector_id):
    run = _Outputs(config)
    from launcher.configuration import complete_configuration
    from launcher.protocol import create_job, new_connector
    from tests.fixtures_sources.slow import SlowSource

    configuration, _ = complete_configuration({}, SlowSource.get_default_configuration())
    configuration["token"]["value"] = SECRET
    es.index(index=CONNECTORS_INDEX, id=connector_id, refresh=True, document=new_connector(
        service_type="slow", index_name=f"search-{connector_id}", configuration=configuration))
    full = run.json("--action", "sync", "--connector-id", connector_id)["job_id"]
    access = create_job(es, get_connector(es, connector_id))
    job = get_job(es, full).doc
    assert job["status"] == "pending" and job["trigger_method"] == "on_demand" and job["job_type"] == "full"
    assert job["connector"]["id"] == connector_id and job["connector"]["service_type"] == "slow"
    assert job["connector"]["configuration"]["token"]["value"] == SECRET  # the snapshot, for the service
    assert job["indexed_document_count"] == 0 and job["created_at"]

    es.indices.refresh(index=JOBS_INDEX)
    listed = run.json("--action", "jobs", "--connector-id", connector_id)
    assert {j["id"] for j in listed} == {full, access}
    assert all(j["connector"]["configuration"]["token"]["value"] == "****" for j in listed)
    table = run("--action", "jobs", "--connector-id", connector_id).stdout
    assert full[:8] in table and "pending" in table and "on_demand" in table

    assert run.json("--action", "cancel", "--job-id", full) == {"id": full, "status": "canceled"}
    job = get_job(es, full).doc
    assert job["status"] == "canceled" and job["canceled_at"] and job["cancelation_requested_at"]
    # A running job is asked to stop: canceling (the service then writes canceled).
    es.update(index=JOBS_INDEX, id=access, doc={"status": "in_progress"}, refresh=True)
    assert run.json("--action", "cancel", "--job-id", access) == {"id": access, "status": "canceling"}
    # An ended job cannot be canceled; a source without incremental syncs cannot run one.
    assert "already ended (canceled)" in run("--action", "cancel", "--job-id", full, expect=1).stderr
    error = run("--action", "sync", "--connector-id", connector_id, "--job-type", "incremental", expect=1).stderr
    assert error.startswith("ConnectorError:") and "do not support incremental syncs" in error
    es.update(index=JOBS_INDEX, id=access, doc={"status": "canceled"}, refresh=True)
    run.assert_secret_never_shown()


def test_cli_when_input_is_wrong_then_type_and_message_and_exit_1(es, config, connector_id):
    run = _Outputs(config)
    error = run("--action", "update-connector", "--connector-id", connector_id, "--set", "count=1", expect=1).stderr
    assert error.strip() == f"ConnectorError: no connector with id '{connector_id}'"
    error = run("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
                "--index-name", "search-x", "--set", "count=many", "--set", f"token={SECRET}",
                "--schedule", "full=every day", expect=1).stderr
    assert error.startswith("ConfigError: invalid --set values:") and "count: expected an integer" in error
    assert get_connector(es, connector_id) is None
    assert "Traceback" not in "".join(run.seen)
    run.assert_secret_never_shown()
