"""The first sync path, end to end: CLI -> BYOC indices -> daemon -> Beam pipeline -> index.

A real daemon process serves a directory connector; files are created, changed, added
and removed between syncs, and after each sync the index must match the folder exactly,
with the job's and connector's fields right.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timezone

import pytest

from tests.helpers import DaemonProcess, cli, index_docs, wait_for, write_config

pytestmark = pytest.mark.integration


def expected_docs(folder):
    docs = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            docs[hashlib.sha1(relative.encode()).hexdigest()] = {
                "path": relative,
                "body": path.read_text(encoding="utf-8"),
                "_timestamp": datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).isoformat(),
            }
    return docs


def assert_index_matches(es, index, folder):
    indexed = index_docs(es, index)
    expected = expected_docs(folder)
    assert set(indexed) == set(expected)
    for doc_id, want in expected.items():
        got = indexed[doc_id]
        assert got["id"] == doc_id
        assert got["path"] == want["path"] and got["body"] == want["body"]
        assert got["_timestamp"] == want["_timestamp"]
        assert got["file_name"] == os.path.basename(want["path"])


def sync(config, connector_id):
    result = cli("--json", "--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "180",
                 config=config, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def daemon(es, tmp_path):
    config = write_config(tmp_path / "config.yml")
    process = DaemonProcess(config, tmp_path / "daemon.log")
    yield config, process
    code = process.stop()
    assert code == 0, process.output()[-3000:]


def test_sync_when_files_change_between_syncs_then_index_matches_folder(es, tmp_path, daemon, index_name):
    config, process = daemon
    folder = tmp_path / "docs"
    (folder / "guides").mkdir(parents=True)
    for i in range(12):
        (folder / f"note-{i}.txt").write_text(f"note {i}", encoding="utf-8")
    (folder / "guides" / "start.md").write_text("# start", encoding="utf-8")
    connector_id = f"dir-{uuid.uuid4().hex[:8]}"
    created = cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
                  "--index-name", index_name, "--set", f"directory={folder}", config=config)
    assert created.returncode == 0, created.stderr

    first = sync(config, connector_id)
    assert first["status"] == "completed"
    assert first["indexed_document_count"] == 13 and first["deleted_document_count"] == 0
    assert first["total_document_count"] == 13
    assert first["started_at"] and first["completed_at"] and first["worker_hostname"]
    assert first["error"] is None
    assert_index_matches(es, index_name, folder)
    connector = es.get(index=".elastic-connectors", id=connector_id)["_source"]
    assert connector["last_sync_status"] == "completed" and connector["status"] == "connected"
    assert connector["last_indexed_document_count"] == 13 and connector["last_deleted_document_count"] == 0
    assert connector["last_synced"] and connector["last_seen"]
    assert connector["configuration"]["pattern"]["value"] in ("", None, "**/*")  # schema completed

    # change 2, add 3, remove 4
    for i in (0, 1):
        (folder / f"note-{i}.txt").write_text(f"note {i} changed", encoding="utf-8")
        os.utime(folder / f"note-{i}.txt", (2_000_000_000 + i, 2_000_000_000 + i))
    for i in range(3):
        (folder / "guides" / f"new-{i}.md").write_text(f"new {i}", encoding="utf-8")
    for i in (8, 9, 10, 11):
        (folder / f"note-{i}.txt").unlink()

    second = sync(config, connector_id)
    assert second["status"] == "completed"
    assert second["indexed_document_count"] == 5, "only changed and new files are sent"
    assert second["deleted_document_count"] == 4
    assert second["total_document_count"] == 12
    assert_index_matches(es, index_name, folder)

    third = sync(config, connector_id)
    assert third["indexed_document_count"] == 0 and third["deleted_document_count"] == 0
    assert_index_matches(es, index_name, folder)
    assert "Traceback" not in process.output()


def test_sync_when_sync_now_set_then_job_created_and_run(es, tmp_path, daemon, index_name):
    config, _ = daemon
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "one.txt").write_text("one", encoding="utf-8")
    connector_id = f"dir-{uuid.uuid4().hex[:8]}"
    cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
        "--index-name", index_name, "--set", f"directory={folder}", config=config, check=True)
    # The daemon writes the connector too (heartbeat, status): like Kibana, retry a conflicting update.
    es.update(index=".elastic-connectors", id=connector_id, doc={"sync_now": True}, refresh=True,
              retry_on_conflict=5)

    def completed_job():
        hits = es.search(index=".elastic-connectors-sync-jobs", query={"term": {"connector.id": connector_id}},
                         size=10)["hits"]["hits"]
        return [h for h in hits if h["_source"]["status"] == "completed"]

    jobs = wait_for(completed_job, timeout=120, what="the sync_now job to complete")
    assert len(jobs) == 1 and jobs[0]["_source"]["trigger_method"] == "on_demand"
    assert es.get(index=".elastic-connectors", id=connector_id)["_source"]["sync_now"] is False
    assert set(index_docs(es, index_name)) == set(expected_docs(folder))


def test_sync_when_connector_is_broken_then_error_on_it_and_others_still_served(es, tmp_path, daemon, index_name):
    config, process = daemon
    broken_id, missing_id, good_id = (f"c-{uuid.uuid4().hex[:8]}" for _ in range(3))
    es.index(index=".elastic-connectors", id=broken_id, refresh=True,
             document={"service_type": "dir", "index_name": 42, "configuration": "oops", "status": "configured"})
    folder_missing = tmp_path / "gone"
    cli("--action", "create-connector", "--connector-id", missing_id, "--service-type", "dir",
        "--index-name", index_name + "-x", "--set", f"directory={folder_missing}", config=config, check=True)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ok.txt").write_text("ok", encoding="utf-8")
    cli("--action", "create-connector", "--connector-id", good_id, "--service-type", "dir",
        "--index-name", index_name, "--set", f"directory={folder}", config=config, check=True)

    def error_of(connector_id):
        doc = es.get(index=".elastic-connectors", id=connector_id)["_source"]
        return doc.get("error") if doc.get("status") == "error" else None

    broken_error = wait_for(lambda: error_of(broken_id), timeout=60, what="an error on the broken connector")
    assert "index_name: expected a non-empty string, got 42" in broken_error
    assert "configuration: expected an object, got str" in broken_error
    missing_error = wait_for(lambda: error_of(missing_id), timeout=60, what="an error on the missing folder")
    assert "gone does not exist" in missing_error
    assert sync(config, good_id)["status"] == "completed"
    assert len(index_docs(es, index_name)) == 1
    es.delete(index=".elastic-connectors", id=broken_id, refresh=True)
    assert "Traceback" not in process.output()
