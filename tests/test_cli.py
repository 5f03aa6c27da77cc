"""The CLI as a user runs it: help, list, and user mistakes without tracebacks."""

from __future__ import annotations

from tests.helpers import cli, write_config


def test_cli_when_help_then_every_action_described_once():
    from launcher.cli import ACTIONS

    result = cli("--help")
    assert result.returncode == 0
    for action, text in ACTIONS.items():
        assert result.stdout.count(f"{action}: ") >= 1
    assert "--config-file" in result.stdout and "--debug" in result.stdout


def test_cli_when_list_then_sources_with_display_names(tmp_path):
    config = write_config(tmp_path / "c.yml", sources={"dir": "sources.directory:DirectoryDataSource"})
    result = cli("--action", "list", config=config)
    assert result.returncode == 0, result.stderr
    assert "dir" in result.stdout and "sources.directory:DirectoryDataSource" in result.stdout
    assert "Directory" in result.stdout


def test_cli_when_list_with_broken_fqn_then_error_listed_and_exit_nonzero(tmp_path):
    config = write_config(tmp_path / "c.yml", sources={
        "dir": "sources.directory:DirectoryDataSource",
        "nomodule": "no_such_package.mod:Source",
        "noclass": "sources.directory:NoSuchClass",
    })
    result = cli("--action", "list", config=config)
    assert result.returncode == 1
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "Directory" in lines["dir"]
    assert "SourceLoadError" in lines["nomodule"] and "no_such_package.mod" in lines["nomodule"]
    assert "has no class 'NoSuchClass'" in lines["noclass"]
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_when_list_then_elasticsearch_not_contacted(tmp_path):
    config = write_config(tmp_path / "c.yml", es_url="http://127.0.0.1:1",
                          sources={"dir": "sources.directory:DirectoryDataSource"})
    assert cli("--action", "list", config=config).returncode == 0


def test_cli_when_config_invalid_then_problems_without_traceback(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("elasticsearch:\n  host: 42\nservice:\n  idling: soon\n", encoding="utf-8")
    result = cli("--action", "list", config=bad)
    assert result.returncode == 1
    assert "ConfigError" in result.stderr
    assert "elasticsearch.host: expected a URL like http://host:9200, got 42" in result.stderr
    assert "service.idling" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_when_config_missing_then_path_named(tmp_path):
    result = cli("--action", "list", config=tmp_path / "missing.yml")
    assert result.returncode == 1
    assert "config file not found" in result.stderr and "missing.yml" in result.stderr


def test_cli_when_elasticsearch_unreachable_then_clear_error(tmp_path):
    config = write_config(tmp_path / "c.yml", es_url="http://127.0.0.1:1")
    result = cli("--action", "connectors", config=config)
    assert result.returncode == 1
    assert "ElasticsearchUnavailable: cannot reach Elasticsearch at http://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_when_debug_then_traceback_shown(tmp_path):
    config = write_config(tmp_path / "c.yml", es_url="http://127.0.0.1:1")
    result = cli("--debug", "--action", "connectors", config=config)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_cli_when_create_connector_with_unknown_service_type_then_known_types_listed(es, tmp_path):
    config = write_config(tmp_path / "c.yml")
    result = cli("--action", "create-connector", "--service-type", "nope", "--index-name", "x", config=config)
    assert result.returncode == 1
    assert "unknown service type 'nope'" in result.stderr and "dir" in result.stderr


def test_cli_when_create_connector_with_unknown_field_then_fields_listed(es, tmp_path):
    config = write_config(tmp_path / "c.yml")
    result = cli("--action", "create-connector", "--service-type", "dir", "--index-name", "x",
                 "--set", "folder=/tmp", config=config)
    assert result.returncode == 1
    assert "folder: not a field of dir; fields are: continuous_sync, directory, pattern" in result.stderr


def test_cli_when_set_env_then_value_read_from_environment_not_arguments(es, tmp_path):
    import uuid

    config = write_config(tmp_path / "c.yml")
    connector_id = f"env-{uuid.uuid4().hex[:8]}"
    folder = str(tmp_path)
    result = cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
                 "--index-name", "x-env", "--set-env", "directory=TEST_DIR_FROM_ENV", config=config,
                 env={"TEST_DIR_FROM_ENV": folder})
    assert result.returncode == 0, result.stderr
    try:
        doc = es.get(index=".elastic-connectors", id=connector_id)["_source"]
        assert doc["configuration"]["directory"]["value"] == folder
        missing = cli("--action", "update-connector", "--connector-id", connector_id, "--set-env",
                      "directory=NOT_SET_ANYWHERE", config=config)
        assert missing.returncode == 1
        assert "--set-env directory: environment variable NOT_SET_ANYWHERE is not set" in missing.stderr
    finally:
        es.delete(index=".elastic-connectors", id=connector_id, refresh=True)


def test_cli_when_list_with_service_type_then_every_field_described(tmp_path):
    import json

    from sources.postgresql import PostgreSQLDataSource

    config = write_config(tmp_path / "c.yml", es_url="http://127.0.0.1:1")  # no Elasticsearch needed
    table = cli("--action", "list", "--service-type", "postgresql", config=config)
    as_json = cli("--action", "list", "--service-type", "postgresql", "--json", config=config)

    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    described = json.loads(as_json.stdout)
    assert described["name"] == "PostgreSQL" and described["features"]["incremental_sync"] is True
    fields = {f["name"]: f for f in described["fields"]}
    assert list(fields) == sorted(fields, key=lambda n: PostgreSQLDataSource.get_default_configuration()[n]["order"])
    assert fields["host"]["must_be_given"] is True and fields["host"]["label"] == "Host"
    assert fields["port"] == {**fields["port"], "type": "int", "default": 5432, "must_be_given": False}
    assert fields["password"]["sensitive"] is True
    assert fields["ssl_ca"]["depends_on"] == {"ssl_enabled": True}
    assert all(f["description"] for f in fields.values()), [n for n, f in fields.items() if not f["description"]]
    for name, field in fields.items():
        assert name in table.stdout and field["label"] in table.stdout
    assert "sensitive" in table.stdout and "(used if ssl_enabled=true)" in table.stdout  # ssl_ca is optional

    unknown = cli("--action", "list", "--service-type", "nope", config=config)
    assert unknown.returncode == 1 and "unknown service type 'nope'; known: azure_blob_storage, dir, " in unknown.stderr


def test_cli_when_create_connector_misses_required_fields_then_refused_naming_them(tmp_path):
    config = write_config(tmp_path / "c.yml", es_url="http://127.0.0.1:1")  # refused before Elasticsearch

    result = cli("--action", "create-connector", "--service-type", "postgresql", "--index-name", "search-pg",
                 "--set", "host=db.example.com", config=config)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("ConfigError: connector not created: postgresql needs a value for username, database "
                               "(--set FIELD=VALUE"), result.stderr
    assert "--draft" in lines[0]
    assert [line.split(" (")[0].strip() for line in lines[1:]] == ["- username", "- database"]
    assert "Traceback" not in result.stderr
