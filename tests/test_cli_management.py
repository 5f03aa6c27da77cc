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
from tests.helpers import SOURCES, cli, local_http_server, write_config

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

    def parallel(self, *runs: tuple[tuple[str, ...], int]) -> list:
        """Independent commands at once (each ``(args, expected exit code)``); their results in order."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(runs)) as pool:
            futures = [pool.submit(self, *args, expect=expect) for args, expect in runs]
            return [future.result() for future in futures]

    def assert_secret_never_shown(self):
        assert all(SECRET not in text for text in self.seen)


def test_cli_when_connector_created_updated_listed_then_documents_as_kibana_writes_them(es, config, connector_id):
    run = _Outputs(config)
    rule = {"id": "r1", "policy": "exclude", "field": "title", "rule": "equals", "value": "document 1"}
    es.ingest.put_pipeline(id="test-my-pipeline", processors=[])  # a --pipeline must exist
    created = run.json("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
                       "--index-name", f"test-{connector_id}", "--name", "CLI test", "--set", "count=4",
                       "--set", f"token={SECRET}", "--schedule", "full=0 0 3 * * ?", "--pipeline", "test-my-pipeline",
                       "--pipeline-flag", "reduce_whitespace=false", "--rules", json.dumps([rule]))
    assert created == {"id": connector_id, "result": "created"}
    doc = get_connector(es, connector_id).doc
    assert doc["service_type"] == "slow" and doc["index_name"] == f"test-{connector_id}" and doc["name"] == "CLI test"
    assert doc["status"] == "configured" and doc["is_native"] is False and doc["deleted"] is False
    assert doc["configuration"]["count"]["value"] == 4 and doc["configuration"]["token"]["value"] == SECRET
    assert doc["configuration"]["token"]["sensitive"] is True
    assert doc["scheduling"]["full"] == {"enabled": True, "interval": "0 0 3 * * ?"}
    assert doc["pipeline"] == {"name": "test-my-pipeline", "extract_binary_content": True, "reduce_whitespace": False,
                               "run_ml_inference": True}
    draft = doc["filtering"][0]["draft"]
    # Validated by the CLI, so active at once (the next sync uses it), as the service does with a valid draft.
    assert draft["validation"]["state"] == "valid" and [r["id"] for r in draft["rules"]] == ["r1", "DEFAULT"]
    assert [r["id"] for r in doc["filtering"][0]["active"]["rules"]] == ["r1", "DEFAULT"]

    updated = run.json("--action", "update-connector", "--connector-id", connector_id, "--set", "count=6",
                       "--schedule", "full=off", "--schedule", "incremental=0 */5 * * * ?",
                       "--index-name", f"test-{connector_id}-2", "--pipeline-flag", "run_ml_inference=false")
    assert updated["fields"] == ["configuration", "index_name", "pipeline", "scheduling"]
    doc = get_connector(es, connector_id).doc
    assert doc["configuration"]["count"]["value"] == 6 and doc["configuration"]["token"]["value"] == SECRET
    assert doc["scheduling"]["full"]["enabled"] is False
    assert doc["scheduling"]["incremental"] == {"enabled": True, "interval": "0 */5 * * * ?"}
    assert doc["index_name"] == f"test-{connector_id}-2"
    assert doc["pipeline"]["run_ml_inference"] is False and doc["pipeline"]["name"] == "test-my-pipeline"

    as_json, as_table = run.parallel((("--action", "connectors", "--connector-id", connector_id, "--json"), 0),
                                     (("--action", "connectors", "--connector-id", connector_id), 0))
    listed = json.loads(as_json.stdout)
    assert [c["id"] for c in listed] == [connector_id]
    assert listed[0]["configuration"]["token"]["value"] == "****"
    assert listed[0]["configuration"]["count"]["value"] == 6
    table = as_table.stdout
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
        service_type="slow", index_name=f"test-{connector_id}", configuration=configuration))
    full = run.json("--action", "sync", "--connector-id", connector_id)["job_id"]
    access = create_job(es, get_connector(es, connector_id))
    job = get_job(es, full).doc
    assert job["status"] == "pending" and job["trigger_method"] == "on_demand" and job["job_type"] == "full"
    assert job["connector"]["id"] == connector_id and job["connector"]["service_type"] == "slow"
    assert SECRET not in json.dumps(job)  # secrets stay in the connector document
    assert job["indexed_document_count"] == 0 and job["created_at"]

    es.indices.refresh(index=JOBS_INDEX)
    as_json, as_table, incremental = run.parallel(
        (("--action", "jobs", "--connector-id", connector_id, "--json"), 0),
        (("--action", "jobs", "--connector-id", connector_id), 0),
        (("--action", "sync", "--connector-id", connector_id, "--job-type", "incremental"), 1))
    listed = json.loads(as_json.stdout)
    assert {j["id"] for j in listed} == {full, access}
    assert all(j["connector"]["configuration"]["token"]["value"] in (None, "****") for j in listed)
    table = as_table.stdout
    assert full[:8] in table and "pending" in table and "on_demand" in table
    # A source without incremental syncs cannot run one.
    error = incremental.stderr
    assert error.startswith("ConnectorError:") and "do not support incremental syncs" in error

    # A pending job is canceled at once; a running one is asked to stop (the service writes canceled).
    es.update(index=JOBS_INDEX, id=access, doc={"status": "in_progress"}, refresh=True)
    pending, running = run.parallel((("--action", "cancel", "--job-id", full, "--json"), 0),
                                    (("--action", "cancel", "--job-id", access, "--json"), 0))
    assert json.loads(pending.stdout) == {"id": full, "status": "canceled"}
    assert json.loads(running.stdout) == {"id": access, "status": "canceling"}
    job = get_job(es, full).doc
    assert job["status"] == "canceled" and job["canceled_at"] and job["cancelation_requested_at"]
    assert get_job(es, access).doc["status"] == "canceling"
    # An ended job cannot be canceled.
    assert "already ended (canceled)" in run("--action", "cancel", "--job-id", full, expect=1).stderr
    es.update(index=JOBS_INDEX, id=access, doc={"status": "canceled"}, refresh=True)
    run.assert_secret_never_shown()


def test_cli_when_sync_waits_behind_another_job_of_its_connector_then_wait_says_so(es, config, connector_id):
    from launcher.configuration import complete_configuration
    from launcher.protocol import claim_job, create_job, new_connector
    from tests.fixtures_sources.slow import SlowSource

    configuration, _ = complete_configuration({}, SlowSource.get_default_configuration())
    es.index(index=CONNECTORS_INDEX, id=connector_id, refresh=True, document=new_connector(
        service_type="slow", index_name=f"test-{connector_id}", configuration=configuration))
    running = create_job(es, get_connector(es, connector_id))
    assert claim_job(es, running, "busy-host") is not None  # another service runs it: the connector is locked

    waited = cli("--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "2", config=config)

    assert waited.returncode == 1 and "still pending after 2s" in waited.stderr
    assert f"waits behind job {running} of the same connector (in_progress on busy-host since" in waited.stderr


def test_cli_when_input_is_wrong_then_type_and_message_and_exit_1(es, config, connector_id):
    run = _Outputs(config)
    missing, invalid = run.parallel(
        (("--action", "update-connector", "--connector-id", connector_id, "--set", "count=1"), 1),
        (("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
          "--index-name", "search-x", "--set", "count=many", "--set", f"token={SECRET}",
          "--schedule", "full=every day"), 1))
    assert missing.stderr.strip() == f"ConnectorError: no connector with id '{connector_id}'"
    error = invalid.stderr
    assert error.startswith("ConfigError: invalid --set values:") and "count: expected an integer" in error
    assert get_connector(es, connector_id) is None
    assert "Traceback" not in "".join(run.seen)
    run.assert_secret_never_shown()


def test_cli_when_elasticsearch_refuses_credentials_then_host_and_settings_named(tmp_path):
    import http.server

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = json.dumps({"error": {"type": "security_exception", "reason": "unable to authenticate user [me]"},
                               "status": 401}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with local_http_server(Refuse) as url:
        config = write_config(tmp_path / "c.yml", es_url=url,
                              elasticsearch={"username": "me", "password": SECRET, "max_retries": 0})
        result = cli("--action", "connectors", config=config)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("AuthenticationException: ") and url in last and "401" in last
    assert "unable to authenticate user [me]" in last and "elasticsearch.username" in last and "api_key" in last
    assert SECRET not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_cli_when_index_name_breaks_elasticsearch_rules_then_refused_on_create_and_update(es, config, connector_id):
    run = _Outputs(config)
    for name in ("Bad Name", "UPPER", "_under", "a,b", "a#b"):
        create = run("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
                     "--index-name", name, expect=2)
        assert "Invalid value for '--index-name'" in create.stderr and repr(name) in create.stderr, create.stderr
    assert get_connector(es, connector_id) is None
    run("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
        "--index-name", f"test-{connector_id}", "--set", "count=1")
    update = run("--action", "update-connector", "--connector-id", connector_id, "--index-name", "Search Me", expect=2)
    assert "'Search Me' contains space" in update.stderr
    assert get_connector(es, connector_id).doc["index_name"] == f"test-{connector_id}"


def test_cli_when_access_control_for_source_without_dls_then_refused(es, config, connector_id):
    run = _Outputs(config)
    run("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow",
        "--index-name", f"test-{connector_id}", "--set", "count=1")

    refused = run("--action", "sync", "--connector-id", connector_id, "--job-type", "access_control", expect=1)

    assert refused.stderr.startswith("ConnectorError: Slow (tests) sources do not support document-level security")
    es.indices.refresh(index=JOBS_INDEX)
    assert es.count(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}})["count"] == 0


def test_cli_when_sync_wait_and_no_service_serves_the_connector_then_says_so_and_stops_unless_asked(
        es, config, connector_id):
    from launcher.protocol import new_connector

    run = _Outputs(config)
    # Written directly, as Kibana could: a service type no running daemon serves.
    es.index(index=CONNECTORS_INDEX, id=connector_id, refresh=True, document=new_connector(
        service_type="nobody_serves_this", index_name=f"test-{connector_id}"))

    stopped, kept = run.parallel(
        (("--action", "sync", "--connector-id", connector_id, "--wait", "--unclaimed-after", "1"), 1),
        (("--action", "sync", "--connector-id", connector_id, "--wait", "--unclaimed-after", "1", "--keep-waiting",
          "--timeout", "5"), 1))

    assert "no service has claimed it" in stopped.stderr and "last seen never" in stopped.stderr
    assert "service type 'nobody_serves_this'" in stopped.stderr and "status 'created'" in stopped.stderr
    assert "left pending (no service has claimed it)" in stopped.stderr
    assert "no service has claimed it" in kept.stderr and "still pending after 5s" in kept.stderr
    es.indices.refresh(index=JOBS_INDEX)
    jobs = es.search(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}})["hits"]["hits"]
    assert [j["_source"]["status"] for j in jobs] == ["pending", "pending"]  # another service may still come
    for job in jobs:
        es.update(index=JOBS_INDEX, id=job["_id"], doc={"status": "canceled"}, refresh=True)


def test_cli_when_create_connector_with_draft_then_saved_as_needs_configuration_until_completed(es, config,
                                                                                                connector_id):
    run = _Outputs(config)
    run("--action", "create-connector", "--connector-id", connector_id, "--service-type", "postgresql",
        "--index-name", f"search-{connector_id}", "--set", "host=127.0.0.1", "--draft")
    assert get_connector(es, connector_id).get("status") == "needs_configuration"

    refused = run("--action", "update-connector", "--connector-id", connector_id, "--set", "username=ingest",
                  expect=1)
    assert "not updated: postgresql needs a value for database" in refused.stderr
    run("--action", "update-connector", "--connector-id", connector_id, "--set", "username=ingest",
        "--set", "database=ingest_test")
    assert get_connector(es, connector_id).get("status") == "configured"


def test_cli_when_sync_wait_interrupted_then_job_goes_on_and_cancel_command_printed(es, config, connector_id):
    import signal
    import subprocess
    import sys

    from launcher.protocol import new_connector
    from tests.helpers import REPO, wait_for

    es.index(index=CONNECTORS_INDEX, id=connector_id, refresh=True, document=new_connector(
        service_type="nobody_serves_this", index_name=f"search-{connector_id}"))
    waiting = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "-c", str(config), "--action", "sync", "--connector-id", connector_id,
         "--wait", "--keep-waiting"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        es.indices.refresh(index=JOBS_INDEX)
        job = wait_for(lambda: es.search(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}})[
            "hits"]["hits"] or es.indices.refresh(index=JOBS_INDEX) and None, what="the job")[0]
        wait_for(lambda: waiting.poll() is None and es.count(index=JOBS_INDEX)["count"], what="the wait")
        import time

        time.sleep(2)  # in the wait loop
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 130, err
    assert f"stopped waiting; job {job['_id']} goes on (pending). To cancel it: elastic-ingest -c {config} " \
           f"--action cancel --job-id {job['_id']}" in err
    assert "Aborted" not in err and "Traceback" not in err
    assert get_job(es, job["_id"]).status == "pending"
    es.update(index=JOBS_INDEX, id=job["_id"], doc={"status": "canceled"}, refresh=True)


def test_cli_connectors_when_listed_then_index_documents_and_last_sync_counts_apart(es, config, connector_id):
    from launcher.protocol import new_connector

    index = f"search-{connector_id}"
    doc = new_connector(service_type="slow", index_name=index)
    doc.update(last_indexed_document_count=0, last_deleted_document_count=1, last_sync_status="completed")
    es.index(index=CONNECTORS_INDEX, id=connector_id, refresh=True, document=doc)
    for n in range(3):  # what an earlier sync left: a no-change resync indexes nothing
        es.index(index=index, id=str(n), document={"n": n})
    es.indices.refresh(index=index)
    try:
        listed = _Outputs(config).json("--action", "connectors", "--connector-id", connector_id)
        table = cli("--action", "connectors", "--connector-id", connector_id, config=config).stdout
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)

    assert listed[0]["index_document_count"] == 3 and listed[0]["last_indexed_document_count"] == 0
    header = next(line for line in table.splitlines() if "docs in index" in line)
    row = next(line for line in table.splitlines() if connector_id in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    columns = [c.strip() for c in header.split("┃")[1:-1]]
    assert dict(zip(columns, cells))["docs in index"] == "3"
    assert dict(zip(columns, cells))["last sync indexed"] == "0"
    assert dict(zip(columns, cells))["last sync deleted"] == "1"


def test_update_connector_when_another_writer_lands_between_read_and_write_then_reread_and_both_kept(
        es, config, connector_id, monkeypatch):
    """The daemon's heartbeat (or Kibana) may write the connector while the CLI works out its
    change: the CLI's conditional write then loses, reads again and succeeds, and neither
    write is lost (it once failed with ConflictError)."""
    from launcher import cli as cli_module
    from launcher.protocol import update_connector
    from tests.helpers import cli_in_process

    code, _, err = cli_in_process("--action", "create-connector", "--connector-id", connector_id,
                                  "--service-type", "slow", "--index-name", f"test-{connector_id}",
                                  "--set", "count=3", config=config)
    assert code == 0, err
    reads = []
    real_get = cli_module.get_connector

    def get_then_someone_writes(store, wanted):
        connector = real_get(store, wanted)
        reads.append(connector.seq_no)
        if len(reads) == 1:  # after the CLI's first read, before its write: a heartbeat lands
            update_connector(store, wanted, {"last_seen": "2026-11-30T00:00:00+00:00"})
        return connector

    monkeypatch.setattr(cli_module, "get_connector", get_then_someone_writes)
    code, out, err = cli_in_process("--action", "update-connector", "--connector-id", connector_id,
                                    "--set", "count=7", config=config)
    assert code == 0, err
    assert len(reads) == 2 and reads[1] > reads[0]
    doc = get_connector(es, connector_id).doc
    assert doc["configuration"]["count"]["value"] == 7
    assert doc["last_seen"] == "2026-11-30T00:00:00+00:00"
