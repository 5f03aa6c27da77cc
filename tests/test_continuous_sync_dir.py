"""Continuous sync (issue 20) of the directory source through a real daemon, on Prism, on real folders.

One daemon serves this module's directory connectors (a service type of its own, so no
other test's daemon claims them). Each test has its own folder, connector and index, and
ends comparing the content index with the folder, file by file (path, size, text).

Needs the Prism binary from ``scripts/prism build``; locally the tests skip without it, under
CI=true they fail. inotify is the kernel's (Linux).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from launcher.indices import CONNECTORS_INDEX, ensure_indices
from sources.directory import file_id
from tests.continuous_fixtures import StreamedConnector, kill_sync, stream_daemon_fixture
from tests.elastic_documents import elastic_document, insert_job
from tests.helpers import DIR_SOURCE, cli, index_docs, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:6]
SERVICE = f"dirstream_{RUN}"


daemon = stream_daemon_fixture("continuous-dir", {SERVICE: DIR_SOURCE})


class Folder(StreamedConnector):
    """One test's folder, its connector and its index (documents compared as ``(path, size, text)``)."""

    what = "the folder"

    def __init__(self, root: Path, es: Any, config: Path):
        super().__init__(es, config, "test-csd")
        self.root = root
        self.excluded: str | None = None

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def create_connector(self, *, exclude_extension: str | None = None) -> None:
        """With ``exclude_extension``, a basic sync rule leaves such files out."""
        ensure_indices(self.es)
        self.excluded = exclude_extension
        rules = ["--rules", json.dumps([{"policy": "exclude", "field": "extension", "rule": "equals",
                                         "value": exclude_extension}])] if exclude_extension else []
        result = cli("--action", "create-connector", "--connector-id", self.connector_id, "--service-type", SERVICE,
                     "--index-name", self.index, "--set", f"directory={self.root}", "--set", "continuous_sync=true",
                     *rules, config=self.config)
        assert result.returncode == 0, result.stderr

    def expected(self) -> dict[str, tuple[str, int, str]]:
        out = {}
        for path in self.root.rglob("*"):
            if path.is_file() and not (self.excluded and path.suffix == self.excluded):
                relative = path.relative_to(self.root).as_posix()
                out[file_id(relative)] = (relative, path.stat().st_size, path.read_text(encoding="utf-8"))
        return out

    def indexed(self) -> dict[str, tuple[str, int, str]]:
        return {doc_id: (doc["path"], doc["size"], doc.get("body") or "")
                for doc_id, doc in index_docs(self.es, self.index).items()}

    def drop(self) -> None:
        self.es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=self.connector_id, refresh=True)
        self.es.options(ignore_status=404).indices.delete(index=self.index)


@pytest.fixture
def folder(tmp_path, es, daemon):
    made = Folder(tmp_path / "docs", es, daemon["config"])
    made.root.mkdir()
    yield made
    made.drop()


class Writer(threading.Thread):
    """Creates, rewrites and deletes files in the folder until stopped."""

    def __init__(self, folder: Folder):
        super().__init__(daemon=True)
        self.folder = folder
        self.stop_event = threading.Event()
        self.writes = 0

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            self.folder.write(f"live/new-{n}.txt", f"written live {n}")
            self.folder.write(f"a/file-{n % 50}.txt", f"rewritten {n}")
            if n >= 5:
                (self.folder.root / f"live/new-{n - 5}.txt").unlink(missing_ok=True)
            n += 1
            self.writes += 3
            time.sleep(0.01)

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def test_continuous_sync_dir_when_files_change_then_index_follows_and_a_full_sync_finds_nothing_to_do(
        es, daemon, folder):
    for i in range(300):
        folder.write(f"{'ab'[i % 2]}/file-{i}.txt", f"file {i}")
    folder.write("a/excluded.log", "a basic sync rule leaves .log files out")
    writer = Writer(folder)
    writer.start()  # writes go on while the first rescan indexes the folder: nothing may be lost
    folder.create_connector(exclude_extension=".log")
    job = wait_for(folder.running, timeout=90, what="the continuous job in_progress")
    assert job["job_type"] == "incremental" and job["metadata"]["continuous"] is True
    wait_for(lambda: es.indices.exists(index=folder.index) and len(folder.indexed()) >= 300, timeout=90,
             what="the first rescan indexed")
    time.sleep(1)
    writer.halt()
    assert writer.writes > 0
    folder.assert_equal()

    # One operation of each kind.
    before = es.get(index=folder.index, id=file_id("a/file-100.txt"))
    folder.write("a/file-100.txt", "modified")
    os.rename(folder.root / "a/file-102.txt", folder.root / "b/renamed.txt")
    (folder.root / "a/file-104.txt").unlink()
    folder.write("a/.file-106.txt.swp", "saved by an editor")  # the editor's pattern: temporary file, rename
    os.replace(folder.root / "a/.file-106.txt.swp", folder.root / "a/file-106.txt")
    (folder.root / "new/deeper").mkdir(parents=True)  # a new folder, files written at once
    folder.write("new/deeper/n.txt", "in a new folder")
    os.rename(folder.root / "live", folder.root / "moved-live")  # a folder moved
    os.rename(folder.root / "a/file-108.txt", folder.root / "a/file-108.log")  # now excluded by the rule
    folder.assert_equal()
    assert file_id("a/excluded.log") not in index_docs(es, folder.index)
    after = es.get(index=folder.index, id=file_id("a/file-100.txt"))
    assert after["_source"]["body"] == "modified" and after["_version"] > before["_version"] > 1

    # A replayed older change cannot win.
    stale = es.options(ignore_status=409).index(index=folder.index, id=file_id("a/file-100.txt"),
                                                version=before["_version"], version_type="external",
                                                document={"path": "a/file-100.txt", "body": "stale"})
    assert stale.meta.status == 409
    assert es.get(index=folder.index, id=file_id("a/file-100.txt"))["_source"]["body"] == "modified"

    # The job reports the stream: counters, position, nothing pending.
    def settled():
        current = folder.running()
        stream = (current or {}).get("metadata", {}).get("stream") or {}
        return current if stream.get("cursor") and stream.get("pending_changes") == 0 else None

    job = wait_for(settled, timeout=30, what="the stream's state in the job")
    assert job["indexed_document_count"] >= 300 and job["deleted_document_count"] > 0
    assert job["metadata"]["stream"]["cursor"]["position"] > 0
    assert job["metadata"]["stream"]["cursor"]["folder"] == str(folder.root)
    shown = cli("--action", "jobs", "--connector-id", folder.connector_id, config=daemon["config"])
    assert shown.returncode == 0 and "incremental (continuous, lag " in shown.stdout, shown.stdout + shown.stderr
    metrics = urllib.request.urlopen(daemon["metrics"] + "/metrics", timeout=10).read().decode()
    assert f'elastic_ingest_stream_lag_seconds{{connector="{folder.connector_id}"}}' in metrics

    # A full sync requested meanwhile: it finds every document as the stream wrote it (the excluded
    # files stay out), and the stream resumes after it, the basic rule still applied: its rescan
    # finds the excluded files in the folder and not in the index, and leaves them out.
    folder.command("--action", "sync", "--connector-id", folder.connector_id)
    full = wait_for(lambda: [j for j in folder.jobs() if j["job_type"] == "full" and j["status"] == "completed"],
                    timeout=120, what="the requested full sync completed")[0]
    assert full["indexed_document_count"] == 0 and full["deleted_document_count"] == 0, full
    wait_for(lambda: [j for j in folder.jobs() if j["status"] == "in_progress" and j["id"] != job["id"]],
             timeout=120, what="the stream after the full sync")
    folder.write("after-full.txt", "after the full sync")
    folder.write("a/after-full.log", "excluded, written while the restarted stream runs")
    folder.assert_equal()
    docs = index_docs(es, folder.index)
    assert not {file_id(p) for p in ("a/excluded.log", "a/file-108.log", "a/after-full.log")} & set(docs)

    # Turned off: the job ends, later changes are not applied.
    folder.command("--action", "update-connector", "--connector-id", folder.connector_id, "--set",
                   "continuous_sync=false")
    wait_for(lambda: not folder.running(), timeout=60, what="the continuous job ended")
    ended = [j for j in folder.jobs() if (j.get("metadata") or {}).get("stream_ended")]
    assert ended and ended[-1]["metadata"]["stream_ended"].startswith("continuous_sync was turned off")
    stored = es.get(index=CONNECTORS_INDEX, id=folder.connector_id)["_source"]["sync_cursor"]
    assert stored["folder"] == str(folder.root) and stored["position"] >= job["metadata"]["stream"]["cursor"]["position"]
    folder.write("after-off.txt", "not synced")
    time.sleep(3)
    assert file_id("after-off.txt") not in index_docs(es, folder.index)
    assert not [j for j in folder.jobs() if j["status"] in ("pending", "in_progress")]


def test_continuous_sync_dir_when_canceled_killed_or_stopped_then_a_rescan_finds_what_changed_meanwhile(
        es, daemon, folder):
    for i in range(100):
        folder.write(f"f/file-{i}.txt", f"file {i}")
    folder.create_connector()
    first = wait_for(folder.running, timeout=90, what="the continuous job in_progress")
    folder.assert_equal()

    # Cancel: the job ends canceled, changes are not applied, no other job starts.
    folder.cancel(first)
    folder.write("f/file-1.txt", "while canceled")
    time.sleep(4)  # eight polls
    assert [j["status"] for j in folder.jobs()] == ["canceled"]
    assert index_docs(es, folder.index)[file_id("f/file-1.txt")]["body"] == "file 1"

    # A sync requested: it runs, then the stream starts again.
    second = folder.request_sync()

    # kill -9 of the sync process, with changes while it is down: the next job's rescan finds them.
    kill_sync(daemon)
    for i in range(200, 230):
        folder.write(f"g/down-{i}.txt", f"while down {i}")
    for i in range(10, 20):
        (folder.root / f"f/file-{i}.txt").unlink()
    folder.write("f/file-2.txt", "changed while down")
    third = folder.restarted_after_kill(second)

    # SIGTERM: the job is suspended, changes are made meanwhile, the next daemon resumes the same job.
    folder.stop_daemon(daemon, third)
    for i in range(40, 60):
        folder.write(f"f/file-{i}.txt", f"while stopped {i}")
    os.rename(folder.root / "g", folder.root / "g-renamed")
    (folder.root / "f/file-3.txt").unlink()
    folder.start_daemon_again(daemon, third)
    docs = index_docs(es, folder.index)
    assert docs[file_id("f/file-40.txt")]["body"] == "while stopped 40" and file_id("f/file-3.txt") not in docs
    assert sum(1 for doc in docs.values() if doc["path"].startswith("g-renamed/")) == 30


def test_continuous_sync_dir_when_elastic_cli_requests_an_incremental_sync_then_refused_at_once_and_the_stream_goes_on(
        es, daemon, folder):
    """Elastic's CLI (``connectors job start -t incremental``) writes an incremental job for any
    connector; a folder has no incremental syncs. The job ends ``error`` saying so, without
    stopping the running stream (it stopped the stream first, then failed in the sync process)."""
    for i in range(20):
        folder.write(f"a/file-{i}.txt", f"file {i}")
    folder.create_connector()
    stream = wait_for(folder.running, timeout=90, what="the continuous job in_progress")
    folder.assert_equal()

    doc = elastic_document("full-job-created-by-elastic-cli.json", directory=str(folder.root))
    doc["connector"]["service_type"] = SERVICE  # the connector's, as Elastic's CLI copies it
    requested = insert_job(es, doc, connector_id=folder.connector_id, index_name=folder.index,
                           job_type="incremental")
    refused = folder.wait_job(requested, "error", timeout=30, what="the incremental job refused")
    assert "does not support incremental syncs" in refused["error"] and refused.get("started_at") is None, refused

    # The stream never stopped: the same job runs, holding the connector's lock, and follows the folder.
    time.sleep(2)  # four of its supervisor's checks
    assert [j["id"] for j in folder.jobs() if j["status"] == "in_progress"] == [stream["id"]]
    assert not [j for j in folder.jobs() if (j.get("metadata") or {}).get("stream_ended")]
    assert es.get(index=CONNECTORS_INDEX, id=folder.connector_id)["_source"]["last_sync_status"] == "in_progress"
    folder.write("b/after.txt", "written after the refused job")
    folder.assert_equal()
