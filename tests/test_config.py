"""config.yml loading: every kind of mistake is reported with its path, all at once."""

from __future__ import annotations

import pytest

from launcher.config import default_config_path, load_config, parse_config
from sources.errors import ConfigError


def problems_of(raw):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, path="cfg.yml")
    return info.value.problems


def test_shipped_config_when_loaded_then_valid_with_defaults():
    config = load_config(default_config_path())
    assert config.sources["dir"] == "sources.directory:DirectoryDataSource"
    assert config.pipeline.runner == "FnApiRunner"
    assert config.service.max_concurrent_syncs >= 1


def test_config_when_host_is_not_a_url_then_path_and_value_named():
    assert problems_of({"elasticsearch": {"host": 42}}) == [
        "elasticsearch.host: expected a URL like http://host:9200, got 42"
    ]


def test_config_when_unknown_keys_then_each_reported():
    found = problems_of({"elasticsearch": {"hots": "x"}, "servce": {}, "pipeline": {"bulk": {"max_doc": 1}}})
    assert "elasticsearch.hots: unknown key" in found
    assert "servce: unknown key" in found
    assert "pipeline.bulk.max_doc: unknown key" in found


def test_config_when_several_mistakes_then_all_reported_at_once():
    found = problems_of({"service": {"idling": "soon", "max_concurrent_syncs": 0},
                         "pipeline": {"runner": "SparkRunner"}, "sources": {"x": "not a fqn"}})
    assert any(p.startswith("service.idling:") and "'soon'" in p for p in found)
    assert any(p.startswith("service.max_concurrent_syncs:") for p in found)
    assert any(p.startswith("pipeline.runner:") and "SparkRunner" in p for p in found)
    assert any(p.startswith("sources:") and "package.module:ClassName" in p for p in found)


def test_config_when_password_has_wrong_type_then_value_not_echoed():
    found = problems_of({"elasticsearch": {"username": "u", "password": {"nested": "hunter2"}}})
    assert found and all("hunter2" not in p for p in found)


def test_config_when_env_var_used_then_substituted(monkeypatch):
    monkeypatch.setenv("TEST_ES_URL", "http://es.example:9200")
    monkeypatch.setenv("TEST_IDLING", "7")
    config = parse_config({"elasticsearch": {"host": "${TEST_ES_URL}"}, "service": {"idling": "${TEST_IDLING}"}})
    assert config.elasticsearch.host == "http://es.example:9200"
    assert config.service.idling == 7


def test_config_when_env_var_missing_then_named_unless_default(monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    assert problems_of({"elasticsearch": {"host": "${NOPE_NOT_SET}"}})[0] == (
        "elasticsearch.host: environment variable NOPE_NOT_SET is not set"
    )
    config = parse_config({"elasticsearch": {"host": "${NOPE_NOT_SET:-http://fallback:9200}"}})
    assert config.elasticsearch.host == "http://fallback:9200"


def test_config_when_file_missing_then_path_named(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match="config file not found: .*nope.yml"):
        load_config(missing)


def test_config_when_yaml_broken_then_line_named(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("elasticsearch:\n  host: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(bad)


def test_config_when_top_level_is_a_list_then_clear_error():
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        parse_config([1, 2], path="cfg.yml")


def test_config_when_both_auth_methods_then_error():
    found = problems_of({"elasticsearch": {"username": "u", "password": "p", "api_key": "k"}})
    assert any("either username/password or api_key" in p for p in found)
    assert all("'p'" not in p and "'k'" not in p for p in found)


def test_config_when_per_connector_runner_then_overrides_global():
    config = parse_config({"connectors": {"big": {"runner": "FlinkRunner"}}})
    assert config.pipeline_for("big").runner == "FlinkRunner"
    assert config.pipeline_for("other").runner == "FnApiRunner"


def test_config_when_paths_are_relative_then_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    from pathlib import Path

    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("not checked here", encoding="utf-8")
    monkeypatch.chdir("/")  # as under systemd
    config_file = tmp_path / "config.yml"
    config_file.write_text(
        "elasticsearch: {ca_certs: certs/ca.crt}\n"
        "pipeline: {dead_letters: ./dead_letters, work_dir: work, digest_cache_dir: ~/cache,\n"
        "           dataflow: {temp_location: gs://bucket/tmp}}\n", encoding="utf-8")

    config = load_config(config_file)

    assert config.elasticsearch.ca_certs == str(tmp_path / "certs" / "ca.crt")
    assert config.pipeline.dead_letters == str(tmp_path / "dead_letters")
    assert config.pipeline.work_dir == str(tmp_path / "work")
    assert config.pipeline.digest_cache_dir == str(Path.home() / "cache")
    assert config.pipeline.dataflow.temp_location == "gs://bucket/tmp"
    assert parse_config({"pipeline": {"dead_letters": "gs://b/dl"}}, path=str(config_file)).pipeline.dead_letters \
        == "gs://b/dl"


def test_readme_config_block_when_compared_with_the_models_then_every_default_is_the_real_one():
    import re

    import yaml

    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- config defaults -->\n```yaml\n(.*?)```", readme, re.S).group(1)
    shown = yaml.safe_load(block)
    defaults = parse_config({}).model_dump(exclude={"path"})
    for section in ("prism", "portable", "flink", "dataflow"):  # documented in docs/runners.md
        defaults["pipeline"].pop(section)
    # Every setting, with its real default (a section added to the models must be shown too;
    # an empty mapping the loader fills itself, such as operator settings, need not).
    defaults = {key: value for key, value in defaults.items() if key in shown or value != {}}
    assert shown == defaults


def test_cli_when_a_local_config_yml_is_not_the_one_read_then_every_action_names_both(tmp_path):
    """Without -c the packaged config.yml is read (as Elastic's service does), never silently."""
    from tests.helpers import cli

    listed = cli("--action", "list", cwd=tmp_path)  # no ./config.yml here: nothing to say
    assert listed.returncode == 0 and "note: no -c given" not in listed.stderr, listed.stderr
    (tmp_path / "config.yml").write_text("sources: {}\n", encoding="utf-8")
    listed = cli("--action", "list", cwd=tmp_path)
    assert listed.returncode == 0
    assert (f"note: no -c given, so this reads the packaged {default_config_path()}, not "
            f"{(tmp_path / 'config.yml').resolve()} in this folder (use -c config.yml to read that one)"
            in listed.stderr), listed.stderr
    assert "dir " in listed.stdout  # the packaged file's sources, not the local empty list
    chosen = cli("--action", "list", "-c", "config.yml", cwd=tmp_path)
    assert chosen.returncode == 0 and "note:" not in chosen.stderr and "dir " not in chosen.stdout
    helped = cli("--help", cwd=tmp_path)
    assert "never ./config.yml" in " ".join(helped.stdout.split())


def test_daemon_when_started_then_logs_the_configuration_file_it_loaded(es, tmp_path):
    from tests.helpers import DaemonProcess, wait_for, write_config

    config = write_config(tmp_path / "config.yml", service={"connector_ids": ["none-such"]})
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: "configuration: " in daemon.output(), timeout=60, what="the configuration line")
    finally:
        daemon.stop()
    assert f"configuration: {config.resolve()}" in daemon.output()
