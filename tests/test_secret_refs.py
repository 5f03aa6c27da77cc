"""Secrets outside the connector document: ``${env:NAME}`` / ``${file:/path}`` references.

First the references alone (what resolves, what the operator's ``secrets:`` refuses, what
errors say); then a real daemon syncing a real PostgreSQL whose password the connector
document only names: the CLI's ``--set-env`` writes the reference, the service resolves
it in its own process, and the password is stored nowhere in Elasticsearch.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from launcher.config import SecretsConfig, parse_config
from launcher.secret_refs import resolve_references
from sources.errors import ConfigError, SecretReferenceError

PG_PORT = int(os.environ.get("PG_PORT", "5433"))
PG = {"host": "127.0.0.1", "port": PG_PORT, "username": "ingest", "database": "ingest_test"}
PG_PASSWORD = "ingest-secret"  # the shared test server's (scripts/servers/postgresql)


def field(value, *, sensitive=True, label="Password"):
    return {"value": value, "sensitive": sensitive, "label": label, "type": "str"}


@pytest.fixture
def secrets(tmp_path, monkeypatch):
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "pg").write_text("from-a-file\n", encoding="utf-8")
    (tmp_path / "elsewhere").write_text("not allowed", encoding="utf-8")
    monkeypatch.setenv("EI_TEST_PASSWORD", "from-the-env")
    monkeypatch.setenv("EI_OTHER", "never")
    return SecretsConfig(env=["EI_TEST_*"], folders=[str(folder)]), folder


def test_references_when_allowed_then_resolved_in_sensitive_fields_only(secrets):
    config, folder = secrets
    configuration = {"a": field("${env:EI_TEST_PASSWORD}"), "b": field(f"${{file:{folder}/pg}}"),
                     "c": field("${env:EI_TEST_PASSWORD}", sensitive=False), "d": field("plain")}

    resolved = resolve_references(configuration, config)

    assert [resolved[k]["value"] for k in "abcd"] == ["from-the-env", "from-a-file", "${env:EI_TEST_PASSWORD}",
                                                      "plain"]
    assert configuration["a"]["value"] == "${env:EI_TEST_PASSWORD}"  # the input is left as it was


@pytest.mark.parametrize("value, message", [
    ("${env:EI_OTHER}", "${env:EI_OTHER} is not allowed: config.yml secrets.env does not list EI_OTHER"),
    ("${env:EI_TEST_UNSET}", "${env:EI_TEST_UNSET}: the service's environment has no variable EI_TEST_UNSET"),
    ("${file:{tmp}/elsewhere}", "is not allowed: the file must be named by an absolute path below a folder"),
    ("${file:{tmp}/secrets/../elsewhere}", "is not allowed"),
    ("${file:secrets/pg}", "is not allowed"),
    ("${file:{tmp}/secrets/missing}", "cannot read it"),
])
def test_references_when_not_allowed_or_unreadable_then_field_and_reason_named(secrets, tmp_path, value, message):
    config, _ = secrets

    with pytest.raises(SecretReferenceError) as info:
        resolve_references({"password": field(value.replace("{tmp}", str(tmp_path)))}, config)

    assert str(info.value).startswith("Password: ") and message in str(info.value), str(info.value)
    assert "never" not in str(info.value) and "not allowed\n" not in str(info.value)


def test_references_when_symlink_in_folder_points_out_then_refused(secrets, tmp_path):
    config, folder = secrets
    os.symlink(tmp_path / "elsewhere", folder / "link")

    with pytest.raises(SecretReferenceError, match="is not allowed"):
        resolve_references({"password": field(f"${{file:{folder}/link}}")}, config)


def test_config_when_secrets_invalid_then_paths_named():
    with pytest.raises(ConfigError) as info:
        parse_config({"secrets": {"env": ["not a name"], "folders": "/run/secrets"}})

    assert [p.split(":", 1)[0] for p in info.value.problems] == ["secrets.env", "secrets.folders"]
    relative = parse_config({"secrets": {"folders": ["secrets"]}}, path="/etc/elastic-ingest/config.yml")
    assert relative.secrets.folders == ["/etc/elastic-ingest/secrets"]  # from the config file's folder


def test_cli_set_env_when_field_sensitive_then_reference_stored_and_only_if_allowed(tmp_path):
    from launcher.cli import _configuration_with

    config = parse_config({"sources": {"postgresql": "sources.postgresql:PostgreSQLDataSource"},
                           "secrets": {"env": ["PG_*"]}})
    from launcher.cli import _values

    stored = _configuration_with(config, "postgresql", {}, _values(("host=db",), ("password=PG_PASSWORD",)))
    assert stored["password"]["value"] == "${env:PG_PASSWORD}" and stored["host"]["value"] == "db"
    with pytest.raises(ConfigError, match=r"--set-env password: \$\{env:OTHER\} is not allowed"):
        _configuration_with(config, "postgresql", {}, _values((), ("password=OTHER",)))
    with pytest.raises(ConfigError, match=r"--set password: \$\{file:/etc/shadow\} is not allowed"):
        _configuration_with(config, "postgresql", {}, _values(("password=${file:/etc/shadow}",), ()))


# -- a real daemon, a real PostgreSQL ------------------------------------------------------
@pytest.mark.integration
def test_daemon_when_password_is_a_reference_then_sync_completes_and_no_secret_in_elasticsearch(es, tmp_path):
    import socket

    import psycopg

    from tests.helpers import require_server

    require_server("PostgreSQL", f"127.0.0.1:{PG_PORT}", lambda: socket.create_connection(("127.0.0.1", PG_PORT), 2))

    from launcher.index_store import IndexStore
    from tests.helpers import DaemonProcess, cli, write_config

    suffix = uuid.uuid4().hex[:8]
    table = f"t_secret_{suffix}"
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "pg").write_text(PG_PASSWORD + "\n", encoding="utf-8")
    by_env, by_file, refused = (f"sec-{kind}-{suffix}" for kind in ("env", "file", "refused"))
    indices = {cid: f"test-{cid}" for cid in (by_env, by_file, refused)}
    config = write_config(tmp_path / "config.yml", service={"connector_ids": list(indices)},
                          sources={"postgresql": "sources.postgresql:PostgreSQLDataSource"})
    raw = config.read_text() + f"secrets:\n  env: [EI_PG_*]\n  folders: [{folder}]\n"
    config.write_text(raw)
    env = {"EI_PG_PASSWORD": PG_PASSWORD, "EI_PG_OTHER": "x"}
    with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="ingest", password=PG_PASSWORD, dbname="ingest_test",
                         autocommit=True) as db:
        db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(20))")
        db.execute(f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two')")
    common = [f"{k}={v}" for k, v in PG.items()] + [f"tables={table}"]
    store = IndexStore(es)
    results = {}
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env=env)
    try:
        for cid, secret_args in ((by_env, ["--set-env", "password=EI_PG_PASSWORD"]),
                                 (by_file, ["--set", f"password=${{file:{folder}/pg}}"]),
                                 (refused, ["--set", "password=${env:HOME}"])):
            args = [arg for pair in common for arg in ("--set", pair)]
            created = cli("--action", "create-connector", "--connector-id", cid, "--service-type", "postgresql",
                          "--index-name", indices[cid], *args, *secret_args, config=config,
                          env={**env, "HOME": os.environ.get("HOME", "/root")})
            results[f"create {cid}"] = created
            if cid == refused:  # the CLI refuses it; written as another client would
                from launcher.protocol import new_connector
                from sources.postgresql import PostgreSQLDataSource

                configuration = {name: {**spec, "value": {**PG, "tables": table, "password": "${env:HOME}"}.get(name)}
                                 for name, spec in PostgreSQLDataSource.get_default_configuration().items()}
                store.create_connector(new_connector(service_type="postgresql", index_name=indices[cid],
                                                     configuration=configuration), cid)
            results[cid] = cli("--action", "sync", "--connector-id", cid, "--wait", "--timeout", "120", "--json",
                               config=config)
        documents = {cid: store.get_connector(cid).doc for cid in indices}
        es.indices.refresh(index=".elastic-connectors-sync-jobs")
        jobs = es.search(index=".elastic-connectors-sync-jobs", size=20,
                         query={"terms": {"connector.id": list(indices)}})["hits"]["hits"]
    finally:
        daemon.stop()
        for cid in indices:
            store.delete_connector(cid)
        es.indices.delete(index=",".join(indices.values()), ignore_unavailable=True)
        with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="ingest", password=PG_PASSWORD,
                             dbname="ingest_test", autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")
    for cid in (by_env, by_file):
        assert results[cid].returncode == 0, results[cid].stdout + results[cid].stderr + daemon.output()
        assert '"indexed_document_count": 2' in results[cid].stdout
    assert documents[by_env]["configuration"]["password"]["value"] == "${env:EI_PG_PASSWORD}"
    assert documents[by_file]["configuration"]["password"]["value"] == f"${{file:{folder}/pg}}"
    assert results[f"create {refused}"].returncode == 1
    assert "--set password: ${env:HOME} is not allowed" in results[f"create {refused}"].stderr
    assert results[refused].returncode == 1
    assert "SecretReferenceError: Password: ${env:HOME} is not allowed" in results[refused].stdout, results[refused].stdout
    assert "not allowed" in documents[refused]["error"]
    stored = json.dumps([documents, [hit["_source"] for hit in jobs]])
    assert PG_PASSWORD not in stored and PG_PASSWORD not in daemon.output()
