"""The directory source reads only below the folders the operator allows (config.yml allowed_roots).

Hostile inputs first, through the source itself (``..`` in patterns and folders, symlinks
out of a root, symlink loops, a file swapped for a symlink after it was listed); then the
issue's reproduction on a real daemon: a connector written straight into
``.elastic-connectors`` asking for ``/etc/passwd`` fails, and nothing is indexed.
"""

from __future__ import annotations

import os
import uuid

import pytest

from sources.directory import DirectoryDataSource
from sources.errors import ConfigError, SourceConfigError, SourceError
from sources.testing import ping, read_all, read_partitions


def source(directory, roots, pattern=None):
    configuration = {"directory": str(directory)} | ({"pattern": pattern} if pattern else {})
    return DirectoryDataSource(configuration, operator_settings={"allowed_roots": [str(r) for r in roots]})


@pytest.fixture
def tree(tmp_path):
    """``root/`` (allowed) with docs, and ``outside/secret.txt`` next to it (not allowed)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "docs" / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "docs" / "a.txt").write_text("alpha", encoding="utf-8")
    (root / "docs" / "sub" / "b.txt").write_text("beta", encoding="utf-8")
    (outside / "secret.txt").write_text("the secret", encoding="utf-8")
    return root, outside


def bodies(docs):
    return sorted(d.get("body") for d in docs)


def test_directory_roots_when_none_configured_then_refused_saying_how_to_allow(tree):
    root, _ = tree

    with pytest.raises(SourceConfigError) as info:
        ping(DirectoryDataSource({"directory": str(root / "docs")}))

    assert "allows no folders" in str(info.value) and "allowed_roots: [/srv/docs]" in str(info.value)


def test_directory_roots_when_folder_outside_then_refused_and_nothing_read(tree):
    root, outside = tree
    hostile = source(outside, [root])

    with pytest.raises(SourceConfigError, match="outside the folders this service may read"):
        ping(hostile)
    with pytest.raises(SourceConfigError, match="outside the folders"):
        hostile.get_partitions()
    with pytest.raises(SourceConfigError, match="outside the folders"):
        read_all(hostile)


@pytest.mark.parametrize("directory", ["{root}/docs/../../outside", "{root}/../outside", "{root}/docs/sub/../../.."])
def test_directory_roots_when_dotdot_in_directory_then_resolved_before_the_check(tree, directory):
    root, _ = tree

    with pytest.raises(SourceConfigError, match="resolved to"):
        ping(source(directory.format(root=root), [root]))


@pytest.mark.parametrize("pattern", ["../*", "../outside/*", "docs/../../outside/*", "**/../../*", "/etc/passwd"])
def test_directory_roots_when_pattern_escapes_then_refused(tree, pattern):
    root, _ = tree

    with pytest.raises(SourceConfigError, match="File pattern: must be relative"):
        ping(source(root / "docs", [root], pattern=pattern))


def test_directory_roots_when_symlinked_file_points_out_of_root_then_skipped(tree):
    root, outside = tree
    os.symlink(outside / "secret.txt", root / "docs" / "innocent.txt")

    docs = read_all(source(root / "docs", [root]))

    assert bodies(docs) == ["alpha", "beta"]


@pytest.mark.parametrize("pattern", ["**/*", "escape/*", "*/*"])
def test_directory_roots_when_symlinked_folder_points_out_of_root_then_nothing_read_through_it(tree, pattern):
    root, outside = tree
    os.symlink(outside, root / "docs" / "escape")

    docs = read_partitions(source(root / "docs", [root], pattern=pattern))

    assert "the secret" not in bodies(docs)


def test_directory_roots_when_connector_folder_is_a_symlink_out_of_root_then_refused(tree):
    root, outside = tree
    os.symlink(outside, root / "looks-inside")

    with pytest.raises(SourceConfigError, match="outside the folders"):
        ping(source(root / "looks-inside", [root]))


def test_directory_roots_when_symlink_loops_then_skipped_and_the_rest_read(tree):
    root, _ = tree
    os.symlink(root / "docs" / "loop-b", root / "docs" / "loop-a")
    os.symlink(root / "docs" / "loop-a", root / "docs" / "loop-b")
    os.symlink(root / "docs", root / "docs" / "sub" / "cycle")  # a folder cycle, inside the root

    docs = read_partitions(source(root / "docs", [root]))

    assert bodies(docs) == ["alpha", "beta"]


def test_directory_roots_when_root_is_a_symlink_then_its_target_is_allowed(tree, tmp_path):
    root, _ = tree
    os.symlink(root, tmp_path / "root-link")

    docs = read_all(source(root / "docs", [tmp_path / "root-link"]))

    assert bodies(docs) == ["alpha", "beta"]


def test_directory_roots_when_file_swapped_for_symlink_after_listing_then_not_read(tree):
    root, outside = tree
    hostile = source(root / "docs", [root])
    listed = [(doc, download) for doc, download in hostile.get_docs()]
    target = root / "docs" / "a.txt"
    target.unlink()
    os.symlink(outside / "secret.txt", target)

    download = next(download for doc, download in listed if doc["path"] == "a.txt")
    with pytest.raises(SourceError, match="now resolves outside the allowed folders"):
        download(doit=True)


def test_config_when_allowed_roots_relative_then_taken_from_the_config_files_folder():
    from launcher.config import parse_config

    config = parse_config({"sources": {"dir": {"class": "sources.directory:DirectoryDataSource",
                                               "allowed_roots": ["docs", "/srv/shared"]}}},
                          path="/etc/elastic-ingest/config.yml")

    assert config.source_settings["dir"]["allowed_roots"] == ["/etc/elastic-ingest/docs", "/srv/shared"]


@pytest.mark.parametrize("roots, problem", [
    ("/srv", "sources.dir.allowed_roots: "),
])
def test_config_when_allowed_roots_invalid_then_path_named(roots, problem):
    from launcher.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"sources": {"dir": {"class": "sources.directory:DirectoryDataSource", "allowed_roots": roots}}})

    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_config_when_setting_unknown_then_path_named():
    from launcher.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"sources": {"dir": {"class": "sources.directory:DirectoryDataSource", "allowed_root": ["/x"]}}})

    assert info.value.problems == ["sources.dir.allowed_root: unknown setting"]


# -- the reproduction, on a real daemon ------------------------------------------
@pytest.mark.integration
def test_daemon_when_connector_names_a_folder_outside_the_roots_then_job_fails_and_nothing_is_indexed(
        es, tmp_path):
    from launcher.index_store import IndexStore
    from launcher.protocol import new_connector
    from tests.helpers import DaemonProcess, cli, write_config

    suffix = uuid.uuid4().hex[:8]
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("fine", encoding="utf-8")
    evil_id, good_id = f"roots-evil-{suffix}", f"roots-good-{suffix}"
    evil_index, good_index = f"test-roots-evil-{suffix}", f"test-roots-good-{suffix}"
    config = write_config(tmp_path / "config.yml", service={"connector_ids": [evil_id, good_id]}, sources={
        "dir": {"class": "sources.directory:DirectoryDataSource", "allowed_roots": [str(allowed)]}})
    store = IndexStore(es)
    store.prepare()
    # Written straight into .elastic-connectors, as any client with write access could.
    for connector_id, index, folder, pattern in ((evil_id, evil_index, "/etc", "passwd"),
                                                  (good_id, good_index, str(allowed), "**/*")):
        doc = new_connector(service_type="dir", index_name=index, configuration={
            "directory": {"value": folder}, "pattern": {"value": pattern}})
        store.create_connector(doc, connector_id)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        evil = cli("--action", "sync", "--connector-id", evil_id, "--wait", "--timeout", "120", "--json",
                   config=config)
        good = cli("--action", "sync", "--connector-id", good_id, "--wait", "--timeout", "120", "--json",
                   config=config)
        connector = store.get_connector(evil_id)
        evil_index_made = es.indices.exists(index=evil_index)
    finally:
        daemon.stop()
        for connector_id in (evil_id, good_id):
            store.delete_connector(connector_id)
        es.indices.delete(index=f"{evil_index},{good_index}", ignore_unavailable=True)
    assert evil.returncode == 1, evil.stdout + evil.stderr
    assert "SourceConfigError: Directory: /etc is outside the folders this service may read" in evil.stdout, evil.stdout
    assert connector.get("status") == "error" and "outside the folders" in connector.get("error"), connector.doc
    assert "root:" not in evil.stdout + daemon.output() and not evil_index_made
    assert good.returncode == 0, good.stdout + good.stderr
    assert '"indexed_document_count": 1' in good.stdout
