"""One connector per content index, on the real Elasticsearch.

The CLI refuses an index another connector uses (naming it) and an alias over several
indices; the daemon re-checks every job it claims, so connector documents written by
other clients (here: straight into ``.elastic-connectors``) cannot make one connector's
full sync delete another's documents.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers import DaemonProcess, cli, cli_in_process, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def names(es):
    """Unique connector ids and index names for one test; everything removed afterwards."""
    from launcher.index_store import IndexStore

    suffix = uuid.uuid4().hex[:8]
    made = {"suffix": suffix, "connectors": [], "indices": []}
    yield made
    store = IndexStore(es)
    for connector_id in made["connectors"]:
        store.delete_connector(connector_id)
    if made["indices"]:
        es.indices.delete(index=",".join(made["indices"]), ignore_unavailable=True)


def _create(config, connector_id, index, folder, *, expect_ok=True):
    code, out, err = cli_in_process("--action", "create-connector", "--connector-id", connector_id, "--service-type",
                                    "dir", "--index-name", index, "--set", f"directory={folder}", config=config)
    if expect_ok:
        assert code == 0, err
    return code, out, err


def test_cli_create_connector_when_index_is_another_connectors_then_refused_naming_it(es, tmp_path, names):
    config = write_config(tmp_path / "config.yml")
    first, second, index = f"own-a-{names['suffix']}", f"own-b-{names['suffix']}", f"test-own-{names['suffix']}"
    names["connectors"] += [first, second]
    _create(config, first, index, tmp_path)

    code, _, err = _create(config, second, index, tmp_path, expect_ok=False)

    assert code == 1
    assert err.strip().splitlines()[-1].startswith(f"IndexConflict: index {index!r} is already the index of "
                                                    f"connector {first!r}"), err


def test_cli_update_connector_when_index_is_another_connectors_then_refused_and_unchanged(es, tmp_path, names):
    from launcher.index_store import IndexStore

    config = write_config(tmp_path / "config.yml")
    first, second = f"own-a-{names['suffix']}", f"own-b-{names['suffix']}"
    names["connectors"] += [first, second]
    _create(config, first, f"test-own-a-{names['suffix']}", tmp_path)
    _create(config, second, f"test-own-b-{names['suffix']}", tmp_path)

    code, _, err = cli_in_process("--action", "update-connector", "--connector-id", second, "--index-name",
                                  f"test-own-a-{names['suffix']}", config=config)

    assert code == 1 and f"connector {first!r}" in err, err
    assert IndexStore(es).get_connector(second).index_name == f"test-own-b-{names['suffix']}"


def test_cli_create_connector_when_index_is_an_alias_over_two_indices_then_refused(es, tmp_path, names):
    config = write_config(tmp_path / "config.yml")
    one, two, alias = (f"test-own-{n}-{names['suffix']}" for n in ("one", "two", "alias"))
    names["indices"] += [one, two]
    es.indices.create(index=one)
    es.indices.create(index=two)
    es.indices.put_alias(index=f"{one},{two}", name=alias)

    code, _, err = _create(config, f"own-{names['suffix']}", alias, tmp_path, expect_ok=False)

    assert code == 1
    assert f"IndexConflict: index_name {alias!r} is an alias over 2 indices ({one}, {two})" in err, err


def test_cli_create_connector_when_alias_reaches_another_connectors_index_then_refused(es, tmp_path, names):
    config = write_config(tmp_path / "config.yml")
    index, alias = f"test-own-{names['suffix']}", f"test-own-alias-{names['suffix']}"
    first = f"own-a-{names['suffix']}"
    names["connectors"].append(first)
    names["indices"].append(index)
    es.indices.create(index=index, aliases={alias: {}})
    _create(config, first, index, tmp_path)

    code, _, err = _create(config, f"own-b-{names['suffix']}", alias, tmp_path, expect_ok=False)

    assert code == 1 and f"connector {first!r}" in err, err
    # ... and the other way round: a connector on the alias owns the index behind it.
    code, _, err = cli_in_process("--action", "update-connector", "--connector-id", first, "--index-name", alias,
                                  config=config)
    assert code == 0, err
    code, _, err = _create(config, f"own-c-{names['suffix']}", index, tmp_path, expect_ok=False)
    assert code == 1 and f"connector {first!r} (dir, index_name {alias!r})" in err, err


def test_daemon_when_another_client_gives_a_second_connector_the_same_index_then_its_job_fails_and_deletes_nothing(
        es, tmp_path, names):
    from launcher.index_store import IndexStore
    from launcher.protocol import new_connector

    suffix = names["suffix"]
    first, second, alias_id = f"own-a-{suffix}", f"own-b-{suffix}", f"own-alias-{suffix}"
    index, other, alias = f"test-own-{suffix}", f"test-own-other-{suffix}", f"test-own-both-{suffix}"
    names["connectors"] += [first, second, alias_id]
    names["indices"] += [index, other]
    config = write_config(tmp_path / "config.yml", service={"connector_ids": [first, second, alias_id]})
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    for folder, count in ((folder_a, 3), (folder_b, 2)):
        folder.mkdir()
        for number in range(count):
            (folder / f"{folder.name}-{number}.txt").write_text(f"{folder.name} {number}", encoding="utf-8")
    _create(config, first, index, folder_a)
    store = IndexStore(es)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        synced = cli("--action", "sync", "--connector-id", first, "--wait", "--timeout", "120", config=config)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        # Another client writes a second connector on the same index, and one on an alias over two indices.
        store.create_connector(new_connector(service_type="dir", index_name=index, configuration={
            "directory": {"value": str(folder_b)}}), second)
        es.indices.create(index=other, aliases={alias: {}})
        es.indices.put_alias(index=index, name=alias)
        store.create_connector(new_connector(service_type="dir", index_name=alias, configuration={
            "directory": {"value": str(folder_b)}}), alias_id)

        shared = cli("--action", "sync", "--connector-id", second, "--wait", "--timeout", "120", "--json",
                     config=config)
        spanning = cli("--action", "sync", "--connector-id", alias_id, "--wait", "--timeout", "120", "--json",
                       config=config)
    finally:
        daemon.stop()
    es.indices.refresh(index=index)
    assert shared.returncode == 1
    job = json.loads(shared.stdout[shared.stdout.index("{"):])
    assert job["error"].startswith(f"IndexConflict: index {index!r} is already the index of connector "), job["error"]
    assert f"{first!r} (dir)" in job["error"] and f"{alias_id!r} (dir, index_name {alias!r})" in job["error"]
    assert job["deleted_document_count"] == 0 and job["indexed_document_count"] == 0
    assert spanning.returncode == 1 and f"IndexConflict: index_name {alias!r} is an alias over 2 indices" in (
        spanning.stdout), spanning.stdout
    assert sorted(hit["_source"]["path"] for hit in es.search(index=index, size=10)["hits"]["hits"]) == [
        "a-0.txt", "a-1.txt", "a-2.txt"]  # the first connector's documents, untouched
    assert store.get_connector(second).get("status") == "error"
