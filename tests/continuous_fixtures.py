"""What the continuous-sync tests share: one connector's jobs, its index compared with its
source, and for the SQL sources (tests/test_continuous_sync.py for PostgreSQL,
tests/test_continuous_sync_mysql.py for MariaDB; both take the same SQL here: ``%s``
parameters, ``INT``/``NUMERIC``/``TEXT``) one test's tables and a writer thread.

A test's helper subclasses :class:`StreamedConnector` with ``es``, ``connector_id`` and
``index`` set, and says what the source holds (:meth:`StreamedConnector.expected`) and what the
index holds (:meth:`StreamedConnector.indexed`), both as ``{document id: comparable value}``.

Example usage::

    class Folder(StreamedConnector):
        def expected(self): ...   # {id: (path, size, text)} of the files
        def indexed(self): ...    # the same, from the index

    folder.assert_equal()         # waits until equal; else says what is missing, extra or different

A test module's daemon is one line, ``daemon = stream_daemon_fixture("continuous-x", {SERVICE: FQN})``;
the steps the tests of cancel, kill -9 and SIGTERM share are methods of :class:`StreamedConnector`
(:meth:`~StreamedConnector.cancel`, :meth:`~StreamedConnector.request_sync`, :func:`kill_sync` then
:meth:`~StreamedConnector.restarted_after_kill`, :meth:`~StreamedConnector.stop_daemon` then
:meth:`~StreamedConnector.start_daemon_again`).
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.indices import CONNECTORS_INDEX, ensure_indices
from pipelines.options import default_prism_location
from tests.helpers import DaemonProcess, child_pids, cli, index_docs, skip_or_fail, wait_for, write_config
from tests.sources.sql_fixtures import DATABASE, HOST, PASSWORD, USER

__all__ = ["StreamTables", "StreamedConnector", "SYNC_JOBS", "Writer", "kill_sync", "stream_daemon",
           "stream_daemon_fixture"]

SYNC_JOBS = ".elastic-connectors-sync-jobs"


def stream_daemon(folder: Path, sources: dict[str, Any], service: dict[str, Any] | None = None) -> dict[str, Any]:
    """A daemon for continuous syncs (fast polls, 1 s progress, its /metrics on a free port; ``service``:
    other settings), as a holder: ``process`` (:class:`~tests.helpers.DaemonProcess`: stop it), ``config``,
    ``folder``, ``metrics`` (the URL). Skipped (failed under CI=true) without the Prism binary."""
    if not default_prism_location().is_file():
        skip_or_fail(f"no Prism binary at {default_prism_location()} (scripts/prism build)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = write_config(folder / "config.yml", sources=sources,
                          service={"idling": 0.5, "heartbeat": 2, "job_progress_interval": 1,
                                   "cancel_check_interval": 0.5, "metrics_address": f"127.0.0.1:{metrics_port}",
                                   **(service or {})})
    process = DaemonProcess(config, folder / "daemon.log")
    return {"process": process, "config": config, "folder": folder, "metrics": f"http://127.0.0.1:{metrics_port}"}


def stream_daemon_fixture(name: str, sources: dict[str, Any], *, after: str | None = None,
                          service: dict[str, Any] | None = None) -> Any:
    """A module's ``daemon`` fixture: :func:`stream_daemon` (with ``service``) in a folder ``name`` of
    the session's temp dir, stopped when the module is done (whichever process ``daemon["process"]``
    is then). ``after``: a fixture set up first (the source's server, which skips the module when missing)."""

    @pytest.fixture(scope="module")
    def daemon(tmp_path_factory: Any, request: Any) -> Iterator[dict[str, Any]]:
        if after:
            request.getfixturevalue(after)
        holder = stream_daemon(tmp_path_factory.mktemp(name), sources, service)
        yield holder
        holder["process"].stop()

    return daemon


def kill_sync(daemon: dict[str, Any]) -> None:
    """kill -9 of the daemon's sync process(es), as a crash or an OOM kill would."""
    pids = wait_for(lambda: child_pids(daemon["process"].process.pid), timeout=30, what="the sync process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


class StreamedConnector:
    """A continuous-sync test's connector: its jobs, and its index compared with the source."""

    what = "the source"

    def __init__(self, es: Any, config: Path, prefix: str):
        """``prefix``-<6 hex digits> names the connector and its index; ``config``: the daemon's."""
        self.es, self.config = es, config
        self.suffix = uuid.uuid4().hex[:6]
        self.connector_id = self.index = f"{prefix}-{self.suffix}"

    def expected(self) -> dict[str, Any]:
        """``{document id: value}`` of what the source holds now."""
        raise NotImplementedError

    def indexed(self) -> dict[str, Any]:
        """``{document id: value}`` of what the index holds now (same values as :meth:`expected`)."""
        raise NotImplementedError

    def equal(self) -> bool:
        try:
            return self.indexed() == self.expected()
        except Exception:  # noqa: BLE001 - no index yet
            return False

    def assert_equal(self, timeout: float = 60) -> None:
        """Wait until the index equals the source; else fail saying how they differ."""
        try:
            wait_for(self.equal, timeout=timeout, what=f"the index equal to {self.what}")
        except AssertionError:
            want, docs = self.expected(), self.indexed()
            missing = sorted(set(want) - set(docs))[:5]
            extra = sorted(set(docs) - set(want))[:5]
            wrong = [(k, want[k], docs[k]) for k in want if k in docs and docs[k] != want[k]][:5]
            jobs = [(j["status"], (j.get("metadata") or {}).get("stream"), j.get("error")) for j in self.jobs()]
            raise AssertionError(f"index differs from {self.what}: missing {missing}, extra {extra}, different "
                                 f"{wrong}; jobs {jobs}") from None

    def jobs(self) -> list[dict[str, Any]]:
        """The connector's jobs, oldest first."""
        self.es.indices.refresh(index=SYNC_JOBS)
        hits = self.es.search(index=SYNC_JOBS, size=50, sort=[{"created_at": "asc"}],
                              query={"term": {"connector.id": self.connector_id}})["hits"]["hits"]
        return [{"id": h["_id"], **h["_source"]} for h in hits]

    def running(self) -> dict[str, Any] | None:
        """The connector's job in progress, if any."""
        found = [j for j in self.jobs() if j["status"] == "in_progress"]
        return found[0] if found else None

    def wait_job(self, job_id: str, status: str, *, timeout: float, what: str) -> dict[str, Any]:
        """The job ``job_id`` once its status is ``status`` (fails after ``timeout`` seconds)."""
        return wait_for(lambda: [j for j in self.jobs() if j["id"] == job_id and j["status"] == status],
                        timeout=timeout, what=what)[0]

    def command(self, *args: str) -> None:
        """``elastic-ingest ARGS`` with the daemon's configuration; it must succeed."""
        result = cli(*args, config=self.config)
        assert result.returncode == 0, result.stderr

    def cancel(self, job: dict[str, Any]) -> None:
        """``--action cancel`` of ``job``: the job ends canceled."""
        self.command("--action", "cancel", "--job-id", job["id"])
        self.wait_job(job["id"], "canceled", timeout=30, what="the job canceled")

    def request_sync(self) -> dict[str, Any]:
        """``--action sync`` after a canceled first job: the sync runs, then the stream starts again
        (a continuous job after those two); the index equals the source. Returns the new job."""
        self.command("--action", "sync", "--connector-id", self.connector_id)
        job = wait_for(lambda: [j for j in self.jobs()[2:] if j["status"] == "in_progress"
                                and (j.get("metadata") or {}).get("continuous")], timeout=120,
                       what="a new continuous job after the requested sync")[0]
        self.assert_equal()
        return job

    def restarted_after_kill(self, killed: dict[str, Any], *earlier: dict[str, Any]) -> dict[str, Any]:
        """After :func:`kill_sync`: the ``killed`` job ends ``error``, a new one (neither ``killed`` nor
        ``earlier``) runs and the index equals the source. Returns the new job."""
        self.wait_job(killed["id"], "error", timeout=60, what="the killed job ended")
        old = {job["id"] for job in (killed, *earlier)}
        job = wait_for(lambda: [j for j in self.jobs() if j["status"] == "in_progress" and j["id"] not in old],
                       timeout=90, what="the stream started again")[0]
        self.assert_equal()
        return job

    def stop_daemon(self, daemon: dict[str, Any], job: dict[str, Any]) -> None:
        """SIGTERM to the daemon: it exits 0 and leaves ``job`` suspended."""
        assert daemon["process"].stop() == 0
        assert [j["status"] for j in self.jobs() if j["id"] == job["id"]] == ["suspended"]

    def start_daemon_again(self, daemon: dict[str, Any], job: dict[str, Any]) -> None:
        """A new daemon (``daemon["process"]``): it resumes the suspended ``job``; the index equals the source."""
        daemon["process"] = DaemonProcess(daemon["config"], daemon["folder"] / "daemon-2.log")
        self.wait_job(job["id"], "in_progress", timeout=90, what="the suspended job resumed")
        self.assert_equal()


class StreamTables(StreamedConnector, abc.ABC):
    """One test's tables (``items``: the busy one; ``tags``: the one truncated) and its connector."""

    prefix = "cs"
    what = "the tables"

    def __init__(self, es: Any, config: Path, *, service: str, port: int):
        super().__init__(es, config, f"test-{self.prefix}")
        self.service, self.port = service, port
        self.items, self.tags = f"{self.prefix}_items_{self.suffix}", f"{self.prefix}_tags_{self.suffix}"

    @abc.abstractmethod
    def fetch(self, sql: str) -> list[tuple]:
        """Every row of a query on the test's database."""

    @abc.abstractmethod
    def execute(self, sql: str) -> None:
        """One statement on the test's database (autocommit)."""

    def create_connector(self) -> None:
        ensure_indices(self.es)
        result = cli("--action", "create-connector", "--connector-id", self.connector_id, "--service-type",
                     self.service, "--index-name", self.index, "--set", f"host={HOST}", "--set", f"port={self.port}",
                     "--set", f"username={USER}", "--set", f"password={PASSWORD}", "--set", f"database={DATABASE}",
                     "--set", f"tables={self.items},{self.tags}", "--set", "continuous_sync=true",
                     config=self.config)
        assert result.returncode == 0, result.stderr

    def expected(self) -> dict[str, dict[str, Any]]:
        out = {}
        for row in self.fetch(f"SELECT id, name, amount, note FROM {self.items}"):
            out[f"{self.items}_{row[0]}"] = {"id": row[0], "name": row[1],
                                             "amount": None if row[2] is None else float(row[2]), "note": row[3]}
        for row in self.fetch(f"SELECT id, label FROM {self.tags}"):
            out[f"{self.tags}_{row[0]}"] = {"id": row[0], "label": row[1]}
        return out

    def indexed(self) -> dict[str, dict[str, Any]]:
        docs = index_docs(self.es, self.index)
        out = {}
        for doc_id, doc in docs.items():
            if doc.get("table") == self.items:
                out[doc_id] = {"id": doc["id"], "name": doc["name"],
                               "amount": None if doc["amount"] is None else float(doc["amount"]), "note": doc["note"]}
            else:
                out[doc_id] = {"id": doc["id"], "label": doc["label"]}
        return out

    def source_position(self) -> int:
        """Where the source stands now, as the stream counts positions (PostgreSQL: its WAL's
        end; MariaDB: its binlog's)."""
        raise NotImplementedError

    def cursor_position(self, cursor: dict[str, Any]) -> int:
        """The position a stream's cursor (its job's ``metadata.stream.cursor``) says Elasticsearch
        acknowledged everything up to."""
        raise NotImplementedError

    def caught_up(self, *, stalled_after: float = 60) -> dict[str, Any]:
        """Wait until the running stream's snapshot and every change the source holds now are in
        Elasticsearch: its job reports an acknowledged position at or past the source's present
        one (the reader acknowledges a position only once Elasticsearch acknowledged every write
        up to it). However loaded the machine, this fails only when the stream's state (position,
        changes applied, pending) stopped moving for ``stalled_after`` seconds. Returns the job."""
        target = self.source_position()
        seen: Any = None
        moved = time.monotonic()
        while True:
            job = self.running()
            state = (job or {}).get("metadata", {}).get("stream") or {}
            cursor = state.get("cursor")
            if job and cursor and state.get("snapshot") == "done" and self.cursor_position(cursor) >= target:
                return job
            now = (job or {}).get("id"), cursor, state.get("changes_applied"), state.get("pending_changes")
            if now != seen:
                seen, moved = now, time.monotonic()
            elif time.monotonic() - moved > stalled_after:
                raise AssertionError(f"the stream stopped short of the source's position {target} for "
                                     f"{stalled_after:g}s: job {now[0]}, state {state}")
            time.sleep(0.25)

    def streaming(self) -> dict[str, Any] | None:
        """The running job once its snapshot is in Elasticsearch (its position reported)."""
        current = self.running()
        stream = (current or {}).get("metadata", {}).get("stream") or {}
        return current if stream.get("cursor") and stream.get("snapshot") == "done" else None

    def turn_off(self, job: dict[str, Any]) -> None:
        """``continuous_sync=false``: the continuous ``job`` completes, saying why."""
        self.command("--action", "update-connector", "--connector-id", self.connector_id, "--set",
                     "continuous_sync=false")
        ended = self.wait_job(job["id"], "completed", timeout=60, what="the continuous job completed")
        assert ended["metadata"]["stream_ended"].startswith("continuous_sync was turned off")

    def assert_not_followed(self) -> None:
        """After :meth:`turn_off`: a row inserted is not indexed, and no job is pending or running."""
        self.execute(f"INSERT INTO {self.items} VALUES (2000000, 'after off', 1, NULL)")
        time.sleep(3)
        assert f"{self.items}_2000000" not in index_docs(self.es, self.index)
        assert not [j for j in self.jobs() if j["status"] in ("pending", "in_progress")]

    def drop_connector(self) -> None:
        self.es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=self.connector_id, refresh=True)
        self.es.options(ignore_status=404).indices.delete(index=self.index)


class Writer(threading.Thread):
    """Inserts, updates and deletes on ``items`` until stopped, through ``session()``: a context
    manager giving something with ``execute(sql, params)`` on a connection of its own."""

    def __init__(self, tables: StreamTables, start: int, session: Callable[[], contextlib.AbstractContextManager]):
        super().__init__(daemon=True)
        self.tables, self.next_id, self.session = tables, start, session
        self.stop_event = threading.Event()
        self.writes = 0

    def run(self) -> None:
        items = self.tables.items
        with self.session() as db:
            while not self.stop_event.is_set():
                n = self.next_id
                db.execute(f"INSERT INTO {items} VALUES (%s, %s, %s, %s)", (n, f"new {n}", n / 4, None))
                db.execute(f"UPDATE {items} SET name = %s, amount = amount + 1 WHERE id = %s", (f"upd {n}", n - 3))
                db.execute(f"DELETE FROM {items} WHERE id = %s", (n - 7,))
                self.next_id += 1
                self.writes += 3
                time.sleep(0.01)

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
