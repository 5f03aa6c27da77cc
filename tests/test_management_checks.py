"""create/update-connector check now what a sync would find wrong later (issue 23), on the real servers.

* sync rules: validated before saving, advanced ones by the source itself against the real
  PostgreSQL (a query with an SQL error is refused, naming the rule and the problem); the
  documented shape works and is stored once (never ``{"value": {"value": ...}}``);
* the operator's bounds (``allowed_roots``, ``allowed_hosts``) at create/update time;
* an ingest pipeline that does not exist (unless ``--draft``);
* and what the daemon ran without (an invalid draft someone else wrote, a missing pipeline)
  shows in ``connectors``, in the job (``jobs``, ``sync --wait``) and in the log.
"""

from __future__ import annotations

import json
import uuid

import pytest

from launcher.index_store import IndexStore
from launcher.indices import ensure_indices
from launcher.protocol import get_connector, new_connector
from tests.helpers import SOURCES, DaemonProcess, cli, cli_in_process, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def made(es):
    """Connector ids and indices of one test; removed afterwards."""
    from launcher.index_claims import CLAIMS_INDEX

    ensure_indices(es)
    made = {"suffix": uuid.uuid4().hex[:8], "connectors": [], "indices": []}
    yield made
    store = IndexStore(es)
    for connector_id in made["connectors"]:
        store.delete_connector(connector_id)
    for index in made["indices"]:
        es.options(ignore_status=404).delete(index=CLAIMS_INDEX, id=index, refresh=True)
    if made["indices"]:
        es.indices.delete(index=",".join(made["indices"]), ignore_unavailable=True)


@pytest.fixture
def orders_table():
    """A PostgreSQL table of 6 orders on the project's server."""
    from tests.sources.sql_fixtures import require_server

    require_server("PostgreSQL", 5433, "postgresql")
    import psycopg

    table = f"orders_{uuid.uuid4().hex[:10]}"
    conn = psycopg.connect(host="127.0.0.1", port=5433, user="ingest", password="ingest-secret", dbname="ingest_test",
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, total NUMERIC(10,2))')
        cur.execute(f'INSERT INTO "{table}" SELECT n, n * 10 FROM generate_series(1, 6) n')
    yield table
    with conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{table}"')
    conn.close()


def _run(config, *args):
    return cli_in_process(*args, config=config)


def _draft(es, connector_id):
    return get_connector(es, connector_id).get("filtering")[0]["draft"]


def test_cli_rules_when_advanced_rules_given_then_the_source_validates_them_before_saving(
        es, made, tmp_path, orders_table):
    config = write_config(tmp_path / "config.yml")
    connector_id, index = f"rules-{made['suffix']}", f"test-rules-{made['suffix']}"
    made["connectors"].append(connector_id)
    made["indices"].append(index)
    rule = [{"tables": [orders_table], "query": f'SELECT * FROM "{orders_table}" WHERE id <= 2'}]
    code, _, err = _run(config, "--action", "create-connector", "--connector-id", connector_id, "--service-type",
                        "postgresql", "--index-name", index, "--set", "host=127.0.0.1", "--set", "port=5433",
                        "--set", "username=ingest", "--set", "password=ingest-secret", "--set", "database=ingest_test",
                        "--set", f"tables={orders_table}", "--rules", json.dumps({"advanced_snippet": rule}))
    assert code == 0, err
    assert _draft(es, connector_id)["advanced_snippet"]["value"] == rule
    active = get_connector(es, connector_id).get("filtering")[0]["active"]  # checked, so active at once
    assert active["advanced_snippet"]["value"] == rule and active["validation"]["state"] == "valid"

    # Kibana's stored shape given back is stored once, not {"value": {"value": ...}}.
    code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id, "--rules",
                        json.dumps({"advanced_snippet": {"value": rule}}))
    assert code == 0, err
    assert _draft(es, connector_id)["advanced_snippet"]["value"] == rule

    # An SQL error: refused, naming the rule and PostgreSQL's problem; the saved draft is untouched.
    broken = [{"tables": [orders_table], "query": f'SELECT * FROM "{orders_table}" WHERE nope > 1'}]
    code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id, "--rules",
                        json.dumps({"advanced_snippet": broken}))
    assert code == 1
    assert "the sync rules are invalid, nothing saved" in err and "advanced_snippet: rule 1:" in err, err
    assert "nope" in err and "does not exist" in err, err
    assert _draft(es, connector_id)["advanced_snippet"]["value"] == rule

    # The advanced shape given bare (as a basic-rules list): refused, showing where it goes.
    code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id, "--rules",
                        json.dumps(rule))
    assert code == 1 and "rule 1 is not a basic rule" in err and "advanced_snippet" in err, err

    # A basic rule with a bad regex: refused, naming the rule.
    bad = [{"policy": "exclude", "field": "total", "rule": "regex", "value": "(["}]
    code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id, "--rules",
                        json.dumps(bad))
    assert code == 1 and "rule rule-1: invalid regex" in err, err

    # The saved rule is the one a sync uses: 2 rows of 6, through a real daemon.
    served = write_config(tmp_path / "served.yml", service={"connector_ids": [connector_id]})
    daemon = DaemonProcess(served, tmp_path / "daemon.log")
    try:
        synced = cli("--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "120", config=served)
    finally:
        daemon.stop()
    assert synced.returncode == 0, synced.stdout + synced.stderr + daemon.output()
    assert "2 documents indexed" in synced.stdout and "warning" not in synced.stdout, synced.stdout
    es.indices.refresh(index=index)
    assert sorted(hit["_source"]["id"] for hit in es.search(index=index, size=10)["hits"]["hits"]) == [1, 2]


def test_cli_rules_when_source_has_no_advanced_rules_then_refused(es, made, tmp_path):
    config = write_config(tmp_path / "config.yml")
    connector_id, index = f"rules-dir-{made['suffix']}", f"test-rules-dir-{made['suffix']}"
    made["indices"].append(index)
    code, _, err = _run(config, "--action", "create-connector", "--connector-id", connector_id, "--service-type",
                        "dir", "--index-name", index, "--set", f"directory={tmp_path}", "--rules",
                        json.dumps({"advanced_snippet": {"query": 1}}))
    assert code == 1 and "do not support advanced sync rules" in err, err
    assert get_connector(es, connector_id) is None


def test_cli_when_directory_outside_allowed_roots_then_create_and_update_refused_naming_the_setting(
        es, made, tmp_path):
    config = write_config(tmp_path / "config.yml")
    connector_id, index = f"roots-{made['suffix']}", f"test-roots-{made['suffix']}"
    made["connectors"].append(connector_id)
    made["indices"].append(index)
    code, _, err = _run(config, "--action", "create-connector", "--connector-id", connector_id, "--service-type",
                        "dir", "--index-name", index, "--set", "directory=/etc")
    assert code == 1 and "/etc is outside the folders" in err and "allowed_roots" in err, err
    assert get_connector(es, connector_id) is None
    code, _, err = _run(config, "--action", "create-connector", "--connector-id", connector_id, "--service-type",
                        "dir", "--index-name", index, "--set", f"directory={tmp_path}")
    assert code == 0, err
    code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id,
                        "--set", "directory=/etc")
    assert code == 1 and "allowed_roots" in err, err
    assert get_connector(es, connector_id).get("configuration")["directory"]["value"] == str(tmp_path)


def test_cli_when_host_outside_allowed_hosts_then_create_refused_naming_the_setting(es, made, tmp_path):
    sources = {**SOURCES, "postgresql": {"class": "sources.postgresql:PostgreSQLDataSource",
                                         "allowed_hosts": ["10.0.0.0/8"]}}
    config = write_config(tmp_path / "config.yml", sources=sources)
    connector_id, index = f"hosts-{made['suffix']}", f"test-hosts-{made['suffix']}"
    made["indices"].append(index)
    code, _, err = _run(config, "--action", "create-connector", "--connector-id", connector_id, "--service-type",
                        "postgresql", "--index-name", index, "--set", "host=127.0.0.1", "--set", "username=u",
                        "--set", "database=d")
    assert code == 1 and "'127.0.0.1' is refused" in err and "allowed_hosts" in err, err
    assert get_connector(es, connector_id) is None


def test_cli_when_pipeline_does_not_exist_then_refused_unless_draft(es, made, tmp_path):
    config = write_config(tmp_path / "config.yml")
    connector_id, index = f"pipe-{made['suffix']}", f"test-pipe-{made['suffix']}"
    made["connectors"].append(connector_id)
    made["indices"].append(index)
    missing, existing = f"test-missing-{made['suffix']}", f"test-pipeline-{made['suffix']}"
    common = ("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
              "--index-name", index, "--set", f"directory={tmp_path}")
    code, _, err = _run(config, *common, "--pipeline", missing)
    assert code == 1 and f"ingest pipeline {missing!r} does not exist" in err and "--draft" in err, err
    assert get_connector(es, connector_id) is None
    code, _, err = _run(config, *common, "--pipeline", missing, "--draft")
    assert code == 0, err
    code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id,
                        "--pipeline", f"{missing}-2")
    assert code == 1 and "does not exist" in err, err
    es.ingest.put_pipeline(id=existing, processors=[])
    try:
        code, _, err = _run(config, "--action", "update-connector", "--connector-id", connector_id,
                            "--pipeline", existing)
        assert code == 0, err
        assert get_connector(es, connector_id).get("pipeline")["name"] == existing
    finally:
        es.ingest.delete_pipeline(id=existing)


def test_daemon_when_draft_invalid_and_pipeline_missing_then_the_job_and_connectors_say_so(es, made, tmp_path):
    """Written by another client (not the CLI): the daemon marks the draft invalid and runs with
    the active rules and without the pipeline; both are in the job, ``sync --wait``, ``jobs``,
    ``connectors`` and the log."""
    connector_id, index = f"warn-{made['suffix']}", f"test-warn-{made['suffix']}"
    made["connectors"].append(connector_id)
    made["indices"].append(index)
    missing = f"test-missing-{made['suffix']}"
    (tmp_path / "docs").mkdir()
    for number in range(3):
        (tmp_path / "docs" / f"{number}.txt").write_text(f"file {number}", encoding="utf-8")
    config = write_config(tmp_path / "config.yml", service={"connector_ids": [connector_id]})
    doc = new_connector(service_type="dir", index_name=index, configuration={
        "directory": {"value": str(tmp_path / "docs")}})
    doc["status"] = "configured"
    doc["pipeline"] = {"name": missing, "extract_binary_content": True, "reduce_whitespace": True,
                       "run_ml_inference": False}
    bad_rule = {"id": "r1", "policy": "exclude", "field": "title", "rule": "regex", "value": "([", "order": 1}
    doc["filtering"][0]["draft"]["rules"] = [bad_rule, *doc["filtering"][0]["draft"]["rules"]]
    doc["filtering"][0]["draft"]["validation"] = {"state": "edited", "errors": []}
    IndexStore(es).create_connector(doc, connector_id)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        synced = cli("--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "120", config=config)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "warning: the sync rules draft is invalid, so syncs use the active rules: rule r1: invalid regex" \
               in synced.stdout, synced.stdout
        assert f"warning: ingest pipeline {missing!r} does not exist" in synced.stdout, synced.stdout
        assert "3 documents indexed" in synced.stdout
        jobs = json.loads(cli("--action", "jobs", "--connector-id", connector_id, "--json", config=config,
                              check=True).stdout)
        warnings = jobs[0]["metadata"]["warnings"]
        assert len(warnings) == 2 and "invalid regex" in warnings[0] and missing in warnings[1], warnings
        listed = json.loads(cli("--action", "connectors", "--connector-id", connector_id, "--json", config=config,
                                check=True).stdout)
        assert "rule r1: invalid regex" in listed[0]["sync_rules_error"]
        table = cli("--action", "connectors", "--connector-id", connector_id, config=config, check=True).stdout
        assert "draftisinvalid" in "".join(ch for ch in table if ch.isalnum())  # folded (and interleaved) in the table
    finally:
        daemon.stop()
    log = daemon.output()
    assert "sync rules draft is invalid" in log and f"ingest pipeline {missing!r} does not exist" in log


def test_cli_summary_when_one_document_then_singular():
    from launcher.cli import _summary

    assert ": 1 document indexed, 0 deleted; the index holds 1" in _summary("j", {
        "status": "completed", "indexed_document_count": 1, "total_document_count": 1})
    assert ": 2 documents indexed" in _summary("j", {"status": "completed", "indexed_document_count": 2})


def test_draft_rules_problem_when_draft_not_validated_yet_then_a_job_says_it_ran_without_it():
    from launcher.protocol import draft_rules_problem

    doc = new_connector(service_type="dir", index_name="x", configuration={})
    assert draft_rules_problem(doc, pending=True) is None  # a new connector's draft is valid
    doc["filtering"][0]["draft"]["validation"] = {"state": "edited", "errors": []}
    assert draft_rules_problem(doc) is None  # not an error of the connector: the service validates it soon
    assert "not validated yet" in draft_rules_problem(doc, pending=True)
    doc["filtering"][0]["draft"]["validation"] = {"state": "invalid", "errors": [{"ids": ["r1"], "messages": ["m"]}]}
    assert draft_rules_problem(doc) == "the sync rules draft is invalid, so syncs use the active rules: m"
