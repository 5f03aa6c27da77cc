"""Continuous sync (issue 20) of the ``mysql`` source through a real daemon, on Prism, from MariaDB.

The MariaDB sibling of tests/test_continuous_sync.py: one daemon serves this module's
connectors (a service type of its own); each test has its own tables and connector and ends
comparing the content index with the tables, row by row. The position is the binlog's
(sources/mysql/stream.py), kept in the connector's ``sync_cursor``.

Needs MariaDB from ``scripts/servers/mysql`` (MYSQL_PORT; row-based binlog, the test user
with REPLICATION SLAVE, BINLOG MONITOR, and RELOAD/BINLOG ADMIN to rotate and purge the
binlog) and the Prism binary from ``scripts/prism build``; locally the tests skip without
them, under CI=true they fail.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.indices import CONNECTORS_INDEX
from sources.mysql.stream import binlog_version
from tests.continuous_fixtures import StreamTables, Writer, kill_sync, stream_daemon_fixture
from tests.helpers import cli, index_docs, skip_or_fail, wait_for
from tests.sources.mysql_binlog import purge_binlog, require_binlog
from tests.sources.sql_fixtures import DATABASE, HOST, PASSWORD, USER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pymysql = pytest.importorskip("pymysql")
PORT = int(os.environ.get("MYSQL_PORT", "3307"))
SERVICE = f"mystream_{uuid.uuid4().hex[:6]}"


def connect() -> Any:
    return pymysql.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DATABASE, autocommit=True,
                           charset="utf8mb4", connect_timeout=3)


def run(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


@pytest.fixture(scope="module")
def db():
    try:
        conn = connect()
    except pymysql.Error as exc:
        skip_or_fail(f"MariaDB on 127.0.0.1:{PORT} not available (scripts/servers/mysql start): {exc}")
    require_binlog(conn)
    yield conn
    conn.close()


daemon = stream_daemon_fixture("continuous-mysql", {SERVICE: "sources.mysql:MySqlDataSource"}, after="db")


class Tables(StreamTables):
    """One test's tables and connector on MariaDB (see tests/continuous_fixtures.py)."""

    prefix = "mycs"

    def __init__(self, db: Any, es: Any, config: Path):
        super().__init__(es, config, service=SERVICE, port=PORT)
        self.db = db
        run(db, f"CREATE TABLE {self.items} (id INT PRIMARY KEY, name VARCHAR(64), amount DECIMAL(10,2), note TEXT)",
            f"CREATE TABLE {self.tags} (id INT PRIMARY KEY, label VARCHAR(64))")

    def fetch(self, sql: str) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    def execute(self, sql: str) -> None:
        run(self.db, sql)

    def source_position(self) -> int:
        file, offset = self.fetch("SHOW MASTER STATUS")[0][:2]
        return binlog_version(file, offset)

    def cursor_position(self, cursor: dict[str, Any]) -> int:
        return binlog_version(cursor["file"], cursor["pos"])

    def job_errors(self) -> list[tuple]:
        """Each job's status, start cursor and error: why a stream took a new snapshot (a purged
        binlog on this shared server, a cursor missing from the connector) when it should resume."""
        return [(j["status"], (j.get("connector") or {}).get("sync_cursor"), j.get("error")) for j in self.jobs()]

    def stored_cursor(self) -> dict[str, Any]:
        return self.es.get(index=CONNECTORS_INDEX, id=self.connector_id)["_source"].get("sync_cursor") or {}

    def drop(self) -> None:
        self.drop_connector()
        run(self.db, f"DROP TABLE IF EXISTS {self.items}, {self.tags}")


@pytest.fixture
def tables(db, es, daemon):
    made = Tables(db, es, daemon["config"])
    yield made
    made.drop()


@contextlib.contextmanager
def session() -> Iterator[Any]:
    """A cursor on a connection of its own (for the writer thread)."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def _insert_rows(db: Any, table: str, ids: range, name: str) -> None:
    with db.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s)", [(i, f"{name} {i}", i * 1.5, "x" * 10)
                                                                          for i in ids])


def test_continuous_sync_when_rows_change_then_index_follows_and_toggle_off_stops(db, es, daemon, tables):
    items, tags = tables.items, tables.tags
    _insert_rows(db, items, range(1, 3001), "row")
    with db.cursor() as cur:
        cur.executemany(f"INSERT INTO {tags} VALUES (%s, %s)", [(i, f"tag {i}") for i in range(1, 51)])
    writer = Writer(tables, 5000, session)
    writer.start()  # writes go on while the snapshot is taken: the handoff must lose nothing
    tables.create_connector()
    job = wait_for(tables.running, timeout=90, what="the continuous job in_progress")
    assert job["job_type"] == "incremental" and job["metadata"]["continuous"] is True
    wait_for(tables.streaming, timeout=90, what="the snapshot done, in the job's metadata")
    time.sleep(1)  # and changes streamed after it
    writer.halt()
    assert writer.writes > 0
    conn = connect()
    try:
        conn.begin()  # inserted then deleted in one transaction: absent
        run(conn, f"INSERT INTO {items} VALUES (999999, 'ghost', 1, NULL)", f"DELETE FROM {items} WHERE id = 999999")
        conn.commit()
        run(conn, f"TRUNCATE TABLE {tags}", f"INSERT INTO {tags} VALUES (7, 'after the truncate')",
            f"UPDATE {items} SET id = 1000000 WHERE id = 11",  # the key changed
            "FLUSH BINARY LOGS",  # a new binlog file: versions keep growing
            f"UPDATE {items} SET note = 'next file' WHERE id = 12")
    finally:
        conn.close()
    tables.caught_up()  # the snapshot and every change so far acknowledged by Elasticsearch
    tables.assert_equal()
    docs = tables.indexed()
    assert f"{items}_999999" not in docs and f"{tags}_1" not in docs and f"{items}_11" not in docs

    # Versions come from the binlog position: a changed document carries a higher one than the
    # snapshot's, and the snapshot's copy sent again (a replay) does not win.
    snapshot_doc = es.get(index=tables.index, id=f"{items}_2000")
    changed = es.get(index=tables.index, id=f"{items}_12")
    assert changed["_version"] > snapshot_doc["_version"] > 2**32
    replay = es.options(ignore_status=409).index(index=tables.index, id=f"{items}_12", version=snapshot_doc["_version"],
                                                 version_type="external", document={"name": "stale"})
    assert replay.meta.status == 409
    assert es.get(index=tables.index, id=f"{items}_12")["_source"]["note"] == "next file"

    # The acknowledged position is the connector's sync_cursor (what the next run resumes from).
    def settled():
        current = tables.streaming()
        return current if current and current["metadata"]["stream"]["pending_changes"] == 0 else None

    job = wait_for(settled, timeout=30, what="the stream's state in the job, nothing pending")
    assert job["indexed_document_count"] >= 3050 and job["deleted_document_count"] > 0 and job["last_seen"]
    cursor = wait_for(lambda: (c := tables.stored_cursor()) and c.get("file", "").endswith(
        f"{(changed['_version'] >> 32):06d}") and c, timeout=30, what="the position in the connector's sync_cursor")
    assert (cursor["pos"] + (int(cursor["file"].rsplit(".", 1)[1]) << 32)) >= changed["_version"]
    shown = cli("--action", "jobs", "--connector-id", tables.connector_id, config=daemon["config"])
    assert shown.returncode == 0 and "incremental (continuous, lag " in shown.stdout, shown.stdout + shown.stderr

    # Turned off: the job ends and later changes are not applied.
    tables.turn_off(job)
    tables.assert_not_followed()


def test_continuous_sync_when_canceled_killed_suspended_or_binlog_purged_then_resumes_or_snapshots_again(
        db, es, daemon, tables):
    items = tables.items
    _insert_rows(db, items, range(1, 501), "row")
    tables.create_connector()
    first = wait_for(tables.streaming, timeout=90, what="the continuous job streaming")
    tables.assert_equal()
    untouched = es.get(index=tables.index, id=f"{items}_400")["_version"]

    # Cancel: the job ends canceled, and no other starts while the configuration stays the same.
    tables.cancel(first)
    run(db, f"UPDATE {items} SET name = 'while canceled' WHERE id = 1")
    time.sleep(4)  # eight polls
    assert [j["status"] for j in tables.jobs()] == ["canceled"]

    # The configuration changes: a new stream resumes from the stored binlog position (no new snapshot).
    tables.command("--action", "update-connector", "--connector-id", tables.connector_id, "--set", "fetch_size=300")
    second = wait_for(lambda: [j for j in tables.jobs() if j["status"] == "in_progress" and j["id"] != first["id"]],
                      timeout=90, what="a new continuous job")[0]
    tables.assert_equal()
    assert es.get(index=tables.index, id=f"{items}_400")["_version"] == untouched, tables.job_errors()  # no snapshot

    # kill -9 of the sync process, with writes while it is down: a new job resumes from the sync_cursor.
    kill_sync(daemon)
    _insert_rows(db, items, range(600, 701), "while down")
    run(db, f"DELETE FROM {items} WHERE id BETWEEN 100 AND 150")
    third = tables.restarted_after_kill(second, first)
    assert es.get(index=tables.index, id=f"{items}_400")["_version"] == untouched, tables.job_errors()

    # SIGTERM: the job is suspended, writes go on meanwhile, the next daemon resumes the same job
    # from the connector's sync_cursor (not the cursor the job was first claimed with).
    tables.stop_daemon(daemon, third)
    run(db, f"UPDATE {items} SET name = 'while stopped' WHERE id BETWEEN 300 AND 320")
    tables.start_daemon_again(daemon, third)
    assert es.get(index=tables.index, id=f"{items}_400")["_version"] == untouched, tables.job_errors()

    # The binlog the stored position points into is purged while no stream runs: one clear
    # error, then a new snapshot that also removes what vanished meanwhile.
    tables.cancel(third)
    stored = tables.stored_cursor()
    assert stored.get("file"), stored
    run(db, f"DELETE FROM {items} WHERE id BETWEEN 200 AND 260", f"UPDATE {items} SET name = 'while lost' WHERE id = 5")
    purge_binlog(db, stored["file"])
    tables.command("--action", "update-connector", "--connector-id", tables.connector_id, "--set", "fetch_size=400")
    failed = wait_for(lambda: [j for j in tables.jobs() if j["status"] == "error" and "StreamPositionLost" in
                               str(j.get("error"))], timeout=90, what="the lost position reported")[0]
    assert f"binlog position {stored['file']}:{stored['pos']} is no longer" in failed["error"]
    assert "new snapshot" in failed["error"] and PASSWORD not in failed["error"]
    wait_for(lambda: [j for j in tables.jobs() if j["status"] == "in_progress" and j["created_at"] >
                      failed["created_at"]], timeout=120, what="a new stream after the lost position")
    tables.assert_equal()
    docs = index_docs(es, tables.index)
    assert f"{items}_230" not in docs and docs[f"{items}_5"]["name"] == "while lost"
    assert es.get(index=tables.index, id=f"{items}_400")["_version"] > untouched  # a new snapshot wrote it again


def test_full_sync_of_a_streaming_connector_with_timestamp_column_then_stream_keeps_its_binlog_position(
        db, es, daemon, tables):
    # A full sync of a connector with ``timestamp_column`` ends with a timestamp cursor. Stored as
    # the connector's ``sync_cursor``, it replaced the stream's binlog position, and the stream
    # after the sync took a whole new snapshot instead of resuming where it stood.
    items = tables.items
    _insert_rows(db, items, range(1, 301), "row")
    run(db, f"ALTER TABLE {items} ADD COLUMN updated_at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6) "
            "ON UPDATE CURRENT_TIMESTAMP(6)")
    tables.create_connector()
    wait_for(tables.streaming, timeout=90, what="the continuous job streaming")
    tables.command("--action", "update-connector", "--connector-id", tables.connector_id,
                   "--set", "timestamp_column=updated_at")
    restarted = wait_for(lambda: [j for j in tables.jobs() if j["status"] == "in_progress"
                                  and (j.get("connector") or {}).get("configuration", {}).get(
                                      "timestamp_column", {}).get("value") == "updated_at"],
                         timeout=90, what="the stream with the new configuration")[0]
    tables.caught_up()
    tables.cancel(restarted)
    stream_cursor = tables.stored_cursor()
    assert stream_cursor.get("file"), stream_cursor

    run(db, f"UPDATE {items} SET name = 'before the sync' WHERE id = 3")
    tables.command("--action", "sync", "--connector-id", tables.connector_id)
    full = wait_for(lambda: [j for j in tables.jobs() if j["job_type"] == "full" and j["status"] == "completed"],
                    timeout=120, what="the requested full sync completed")[0]
    after_full = es.get(index=tables.index, id=f"{items}_200")["_version"]
    wait_for(lambda: [j for j in tables.jobs() if j["status"] == "in_progress" and j["created_at"] > full["created_at"]
                      and (j.get("metadata") or {}).get("continuous")], timeout=120, what="the stream again")
    assert tables.stored_cursor().get("file"), tables.stored_cursor()  # a binlog position, not a timestamp
    run(db, f"UPDATE {items} SET name = 'after the sync' WHERE id = 4")
    tables.caught_up()
    tables.assert_equal()
    assert es.get(index=tables.index, id=f"{items}_200")["_version"] == after_full, tables.job_errors()  # resumed
