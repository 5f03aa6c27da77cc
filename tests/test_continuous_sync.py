"""Continuous sync (issue 20) through a real daemon, on Prism, from the project's PostgreSQL.

One daemon serves this module's PostgreSQL connectors (a service type of its own, so no
other test's daemon claims them). Each test has its own tables and connector; every test
ends comparing the content index with the tables, row by row.

Needs PostgreSQL from ``scripts/servers/postgresql`` (wal_level=logical, the test role with
REPLICATION) and the Prism binary from ``scripts/prism build``; locally the tests skip
without them, under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import urllib.request
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sources.postgresql.stream import parse_lsn
from tests.continuous_fixtures import StreamTables, Writer, kill_sync, stream_daemon_fixture
from tests.helpers import ES_URL, cli, index_docs, skip_or_fail, wait_for
from tests.sources.sql_fixtures import DATABASE, HOST, PASSWORD, USER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

psycopg = pytest.importorskip("psycopg")
PORT = int(os.environ.get("PG_PORT", "5433"))
RUN = uuid.uuid4().hex[:6]
SERVICE = f"pgstream_{RUN}"
SERVICE_FQN = "sources.postgresql:PostgreSQLDataSource"
DSN = f"host={HOST} port={PORT} user={USER} password={PASSWORD} dbname={DATABASE}"


@pytest.fixture(scope="module")
def pg():
    try:
        conn = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        skip_or_fail(f"PostgreSQL on 127.0.0.1:{PORT} not available (scripts/servers/postgresql start): {exc}")
    level = conn.execute("show wal_level").fetchone()[0]
    if level != "logical":
        skip_or_fail(f"PostgreSQL runs with wal_level={level}; scripts/servers/postgresql start sets logical")
    yield conn
    conn.close()


daemon = stream_daemon_fixture("continuous", {SERVICE: SERVICE_FQN},
                               after="pg")


class Tables(StreamTables):
    """One test's tables and connector on PostgreSQL (see tests/continuous_fixtures.py)."""

    def __init__(self, pg: Any, es: Any, config: Path):
        super().__init__(es, config, service=SERVICE, port=PORT)
        self.pg = pg
        pg.execute(f"CREATE TABLE {self.items} (id INT PRIMARY KEY, name TEXT, amount NUMERIC(10,2), note TEXT)")
        pg.execute(f"CREATE TABLE {self.tags} (id INT PRIMARY KEY, label TEXT)")

    def fetch(self, sql: str) -> list[tuple]:
        return list(self.pg.execute(sql))

    def source_position(self) -> int:
        return parse_lsn(self.pg.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])

    def cursor_position(self, cursor: dict[str, Any]) -> int:
        return parse_lsn(cursor["lsn"])

    def execute(self, sql: str) -> None:
        self.pg.execute(sql)

    def slot(self) -> tuple | None:
        return self.pg.execute("SELECT slot_name, active FROM pg_replication_slots WHERE slot_name = %s",
                               (f"elastic_ingest_{self.connector_id.replace('-', '_')}",)).fetchone()

    def publication(self) -> tuple | None:
        return self.pg.execute("SELECT pubname FROM pg_publication WHERE pubname = %s",
                               (f"elastic_ingest_{self.connector_id.replace('-', '_')}",)).fetchone()

    def drop(self) -> None:
        self.drop_connector()
        name = f"elastic_ingest_{self.connector_id.replace('-', '_')}"
        for _ in range(50):
            row = self.pg.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
            if row is None:
                break
            if row[0] is None:
                self.pg.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                break
            self.pg.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.2)
        self.pg.execute(f'DROP PUBLICATION IF EXISTS "{name}"')
        self.pg.execute(f"DROP TABLE IF EXISTS {self.items}, {self.tags}")


@pytest.fixture
def tables(pg, es, daemon):
    made = Tables(pg, es, daemon["config"])
    yield made
    made.drop()


def session() -> Any:
    """A connection of its own (for the writer thread)."""
    return psycopg.connect(DSN, autocommit=True)


def test_continuous_sync_when_rows_change_then_index_follows_and_toggle_off_drops_the_slot(pg, es, daemon, tables):
    items, tags = tables.items, tables.tags
    pg.execute(f"INSERT INTO {items} SELECT i, 'row ' || i, i * 1.5, repeat('x', 10) FROM generate_series(1, 3000) i")
    pg.execute(f"INSERT INTO {tags} SELECT i, 'tag ' || i FROM generate_series(1, 50) i")
    writer = Writer(tables, 5000, session)
    writer.start()  # writes go on while the snapshot is taken: the handoff must lose nothing
    tables.create_connector()
    job = wait_for(tables.running, timeout=90, what="the continuous job in_progress")
    assert job["job_type"] == "incremental" and job["metadata"]["continuous"] is True

    def reported():
        current = tables.running()
        stream = (current or {}).get("metadata", {}).get("stream") or {}
        return current if stream.get("cursor") and stream.get("snapshot") == "done" else None

    wait_for(reported, timeout=90, what="the snapshot done, in the job's metadata")
    time.sleep(1)  # and changes streamed after it
    writer.halt()
    assert writer.writes > 0
    with psycopg.connect(DSN, autocommit=True) as conn:
        with conn.transaction():  # inserted then deleted in one transaction: absent
            conn.execute(f"INSERT INTO {items} VALUES (999999, 'ghost', 1, NULL)")
            conn.execute(f"DELETE FROM {items} WHERE id = 999999")
        conn.execute(f"TRUNCATE {tags}")
        conn.execute(f"INSERT INTO {tags} VALUES (7, 'after the truncate')")
        conn.execute(f"UPDATE {items} SET note = repeat('toast ', 20000) WHERE id = 10")  # a TOASTed value
        conn.execute(f"UPDATE {items} SET name = 'toast kept' WHERE id = 10")  # ... left out of this update
        conn.execute(f"UPDATE {items} SET id = 1000000 WHERE id = 11")  # the key changed
    # Every row of the snapshot and every change made so far acknowledged by Elasticsearch (the
    # job's position at the source's), however slowly a loaded machine writes them: then the
    # index must equal the tables.
    tables.caught_up()
    tables.assert_equal()
    assert f"{items}_999999" not in tables.indexed() and f"{tags}_1" not in tables.indexed()
    assert index_docs(es, tables.index)[f"{items}_10"]["note"].startswith("toast ")

    # Versions come from the source position: a document changed by the stream carries a higher
    # one than the snapshot's, and the snapshot's copy sent again (a replay) does not win.
    pg.execute(f"UPDATE {items} SET name = 'versioned' WHERE id = 12")
    wait_for(lambda: es.get(index=tables.index, id=f"{items}_12")["_source"]["name"] == "versioned", timeout=30,
             what="the update indexed")
    snapshot_doc = es.get(index=tables.index, id=f"{items}_2000")
    changed = es.get(index=tables.index, id=f"{items}_12")
    assert changed["_version"] > snapshot_doc["_version"] > 1
    replay = es.options(ignore_status=409).index(index=tables.index, id=f"{items}_12", version=snapshot_doc["_version"],
                                                 version_type="external", document={"name": "stale"})
    assert replay.meta.status == 409
    assert es.get(index=tables.index, id=f"{items}_12")["_source"]["name"] == "versioned"

    # Live counters, heartbeat, position and lag in the job.
    def settled():  # everything read was acknowledged by Elasticsearch, as the job reports it
        current = reported()
        return current if current and current["metadata"]["stream"]["pending_changes"] == 0 else None

    job = wait_for(settled, timeout=30, what="the stream's state in the job, nothing pending")
    assert job["indexed_document_count"] >= 3050 and job["deleted_document_count"] > 0 and job["last_seen"]
    # Its total is what the index holds, as it goes (a bounded job's is written at its end; not 0).
    es.indices.refresh(index=tables.index)
    held = es.count(index=tables.index)["count"]
    wait_for(lambda: (reported() or {}).get("total_document_count") == held, timeout=30,
             what=f"the job's total_document_count equal to the index's {held}")
    stream = job["metadata"]["stream"]
    assert stream["snapshot"] == "done" and stream["lag_seconds"] is not None and stream["cursor"]["lsn"]
    assert tables.slot() is not None and tables.publication() is not None
    shown = cli("--action", "jobs", "--connector-id", tables.connector_id, config=daemon["config"])
    assert shown.returncode == 0 and "incremental (continuous, lag " in shown.stdout, shown.stdout + shown.stderr
    metrics = urllib.request.urlopen(daemon["metrics"] + "/metrics", timeout=10).read().decode()
    assert f'elastic_ingest_stream_lag_seconds{{connector="{tables.connector_id}"}}' in metrics
    assert "elastic_ingest_streaming_connectors 1.0" in metrics
    # The daemon reads the stream's state without importing Beam (~140 MB of its memory when it did):
    # none of Beam's compiled modules is mapped in its process.
    maps = Path(f"/proc/{daemon['process'].process.pid}/maps").read_text()
    assert "apache_beam" not in maps, "the daemon imported Beam"

    # Turned off: the job ends, the slot and the publication are dropped, later changes are not applied.
    tables.turn_off(job)
    wait_for(lambda: tables.slot() is None and tables.publication() is None, timeout=30, what="slot dropped")
    tables.assert_not_followed()


def test_stream_reader_when_a_snapshot_chunk_is_written_before_the_next_is_read_then_a_restart_reads_it_again(
        pg, es, tmp_path):
    """The source hears the snapshot is in Elasticsearch only once all of it is (and its sweep).

    The snapshot is read a chunk at a time, every document at one position; Prism may run the
    writer on a chunk before the reader's next call. Before the fix, the ledger then found that
    position confirmable, the reader acknowledged it, and PostgreSQL recorded the snapshot as
    complete: a stream stopped (kill -9, a stream opened again) before the next chunks were
    written resumed from the slot and never indexed them. Driven here call by call, the
    writer's part played by the test (real PostgreSQL, the real reader)."""
    from apache_beam.io.restriction_trackers import OffsetRange
    from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker

    from tests.helpers import ES_URL
    from transforms.es_client import ElasticsearchConnection
    from transforms.read_from_source import SourceSpec
    from transforms.read_stream import _END, _SNAPSHOT_CHUNK, SWEEP, _OneStreamTracker, _ReadStreamFn, close_streams
    from transforms.stream_ledger import ledger

    tables = Tables(pg, es, tmp_path / "unused.yml")
    rows = 2 * _SNAPSHOT_CHUNK + 500
    pg.execute(f"INSERT INTO {tables.items} SELECT i, 'row ' || i, i, NULL FROM generate_series(1, {rows}) i")
    spec = SourceSpec(SERVICE_FQN, {"host": HOST, "port": PORT, "username": USER, "password": PASSWORD,
                                    "database": DATABASE, "tables": [tables.items]})

    def reader(job_id: str) -> Any:
        fn = _ReadStreamFn(spec, ElasticsearchConnection(hosts=(ES_URL,)), job_id, tables.connector_id, None, 0.2,
                           tables.index)
        fn.setup()
        return fn

    def call(fn: Any) -> list[tuple]:
        tracker = RestrictionTrackerView(ThreadsafeRestrictionTracker(_OneStreamTracker(OffsetRange(0, _END))))
        return list(fn.process(None, tracker=tracker, _watermark=None))

    def reopened_snapshot() -> int:
        """Documents of the snapshot a stream opened now takes (0: it resumes from the slot)."""
        stream = spec.build().open_change_stream(None, stream_id=tables.connector_id)
        try:
            return sum(1 for _ in stream.snapshot()) if stream.snapshot_position else 0
        finally:
            stream.close()

    try:
        fn = reader(f"handoff-{tables.suffix}-1")
        first = call(fn)
        position = first[0][2]
        assert len(first) == _SNAPSHOT_CHUNK and {item[2] for item in first} == {position}
        ledger(fn.job_id).done({position: len(first)})  # the writer wrote the first chunk ...
        assert len(call(fn)) == _SNAPSHOT_CHUNK  # ... before the reader read the second (which it acknowledges after)
        close_streams()  # the sync process stops: nothing more is written
        fn.teardown()
        assert reopened_snapshot() == rows, "the snapshot was recorded as done with most of it never written"

        # Every chunk and the sweep written: the snapshot is done, the next stream resumes from the slot.
        fn = reader(f"handoff-{tables.suffix}-2")
        emitted = [item for _ in range(3) for item in call(fn)]
        assert len(emitted) == rows + 1 and emitted[-1][0] == SWEEP
        ledger(fn.job_id).done({emitted[-1][2]: len(emitted)})
        call(fn)  # acknowledges what the ledger allows
        close_streams()
        fn.teardown()
        assert reopened_snapshot() == 0
    finally:
        close_streams()
        tables.drop()


def test_continuous_sync_when_canceled_killed_or_suspended_then_resumes_from_the_acknowledged_position(
        pg, es, daemon, tables):
    items = tables.items
    pg.execute(f"INSERT INTO {items} SELECT i, 'row ' || i, i, NULL FROM generate_series(1, 500) i")
    tables.create_connector()
    first = wait_for(tables.running, timeout=90, what="the continuous job in_progress")
    tables.assert_equal()

    # Cancel: the job ends canceled, and no other starts while the configuration stays the same.
    tables.cancel(first)
    pg.execute(f"UPDATE {items} SET name = 'while canceled' WHERE id = 1")
    time.sleep(4)  # eight polls
    assert [j["status"] for j in tables.jobs()] == ["canceled"]

    # A sync requested: it runs, then the stream starts again from the slot's position.
    second = tables.request_sync()

    # kill -9 of the sync process, with writes while it is down: a new job resumes from the slot.
    kill_sync(daemon)
    pg.execute(f"INSERT INTO {items} SELECT i, 'while down ' || i, i, NULL FROM generate_series(600, 700) i")
    pg.execute(f"DELETE FROM {items} WHERE id BETWEEN 100 AND 150")
    third = tables.restarted_after_kill(second)

    # SIGTERM: the job is suspended, writes go on meanwhile, the next daemon resumes the same job.
    before = tables.caught_up()["metadata"]["stream"]["changes_applied"]
    tables.stop_daemon(daemon, third)
    pg.execute(f"UPDATE {items} SET name = 'while stopped' WHERE id BETWEEN 200 AND 260")
    tables.start_daemon_again(daemon, third)
    docs = index_docs(es, tables.index)
    assert docs[f"{items}_200"]["name"] == "while stopped" and f"{items}_120" not in docs
    assert json.dumps(docs).count("while down") == 101
    # The resumed job's counts go on from its first run's (each run's reader starts at 0).
    resumed = wait_for(lambda: (j := tables.caught_up()) and j["id"] == third["id"] and
                       j["metadata"]["stream"]["changes_applied"] >= before + 61 and j, timeout=60,
                       what="the resumed job's count past its first run's")
    assert resumed["indexed_document_count"] >= third["indexed_document_count"]


def test_continuous_sync_when_connector_deleted_then_slot_and_publication_are_dropped(pg, es, daemon, tables):
    pg.execute(f"INSERT INTO {tables.items} SELECT i, 'row ' || i, i, NULL FROM generate_series(1, 50) i")
    tables.create_connector()
    job = wait_for(tables.streaming, timeout=90, what="the continuous job streaming")
    assert tables.slot() is not None and tables.publication() is not None

    # Deleted while it streams: the service stops the job, then drops the slot and the publication
    # (a slot left behind keeps the server's WAL forever).
    shown = cli("--action", "delete-connector", "--connector-id", tables.connector_id, config=daemon["config"])
    assert shown.returncode == 0, shown.stderr
    ended = tables.wait_job(job["id"], "completed", timeout=60, what="the continuous job ended")
    wait_for(lambda: tables.slot() is None and tables.publication() is None, timeout=30,
             what="the slot and the publication dropped")
    assert ended["metadata"]["stream_ended"] == "the connector was deleted" and ended["error"] is None
    assert ended["metadata"]["stream_released"] is True and ended["indexed_document_count"] >= 50
    assert f"job {job['id']}) stops it and releases" in shown.stdout, shown.stdout

    # Deleted while its stream is canceled (the slot stays meanwhile): the CLI drops them itself.
    tables.create_connector()
    second = wait_for(lambda: (j := tables.streaming()) and j["id"] != job["id"] and j, timeout=90,
                      what="a new stream")
    tables.cancel(second)
    assert tables.slot() is not None
    shown = cli("--action", "delete-connector", "--connector-id", tables.connector_id, config=daemon["config"])
    assert shown.returncode == 0 and "continuous sync was released" in shown.stdout, shown.stdout + shown.stderr
    assert tables.slot() is None and tables.publication() is None
