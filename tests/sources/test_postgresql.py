"""PostgreSQL source against the server of ``scripts/servers/postgresql`` (PG_PORT, default 5433)."""

from __future__ import annotations

import os
from decimal import Decimal

import psycopg
import pytest
from sql_fixtures import DATABASE, HOST, PASSWORD, USER, ChangeStreamSuite, SqlSourceSuite, by_id, stream_config

from sources.errors import SourceError
from sources.postgresql import PostgreSQLDataSource
from sources.testing import read_all

pytestmark = pytest.mark.integration

PORT = int(os.environ.get("PG_PORT", "5433"))


class TestPostgreSQL(SqlSourceSuite):
    source_class = PostgreSQLDataSource
    engine = "PostgreSQL"
    script = "postgresql"
    port = PORT

    @classmethod
    def connect(cls):
        return psycopg.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DATABASE, autocommit=True,
            options="-c TimeZone=UTC",
        )

    @staticmethod
    def quote(identifier):
        return f'"{identifier}"'

    def test_get_docs_when_many_types_then_values_are_faithful(self, db, new_table):
        table = new_table(
            "id SMALLINT PRIMARY KEY, label TEXT, price NUMERIC(12,4), ratio DOUBLE PRECISION, flag BOOLEAN, "
            "day DATE, at_local TIMESTAMP, at_zone TIMESTAMPTZ, clock TIME, span INTERVAL, raw BYTEA, "
            "doc JSONB, doc_text JSON, nums INTEGER[], words TEXT[], uid UUID, ip INET"
        )
        db.execute(
            f"INSERT INTO {table} VALUES (1, 'héllo', 1234.5678, 0.25, true, '2024-02-29', "
            "'2024-02-29 13:14:15.123456', '2024-02-29 13:14:15+02', '13:14:15', '1 day 02:03:04', "
            "'\\x00ff10', '{\"a\": [1, 2, {\"b\": null}], \"c\": \"x\"}', '{\"k\": 1.5}', '{1,2,3}', "
            "'{\"a\",\"b c\"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1'), (2" + ", NULL" * 16 + ")"
        )

        docs = by_id(read_all(self.source(tables=[table])))

        assert docs[f"{table}_1"] == {
            "_id": f"{table}_1", "table": table, "schema": "public", "database": DATABASE,
            "id": 1, "label": "héllo", "price": Decimal("1234.5678"), "ratio": 0.25, "flag": True,
            "day": "2024-02-29", "at_local": "2024-02-29T13:14:15.123456", "at_zone": "2024-02-29T11:14:15+00:00",
            "clock": "13:14:15", "span": "26:03:04", "raw": b"\x00\xff\x10",
            "doc": {"a": [1, 2, {"b": None}], "c": "x"}, "doc_text": {"k": 1.5}, "nums": [1, 2, 3],
            "words": ["a", "b c"], "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "ip": "192.168.0.1",
        }
        nulls = docs[f"{table}_2"]
        assert all(nulls[c] is None for c in ("label", "price", "doc", "nums", "raw", "at_zone"))
        assert "_timestamp" not in nulls

    def test_get_docs_when_other_schema_then_reads_it(self, db):
        schema = "s_" + os.urandom(5).hex()
        db.execute(f"CREATE SCHEMA {schema}")
        try:
            db.execute(f"CREATE TABLE {schema}.items (id INTEGER PRIMARY KEY, name TEXT)")
            db.insert(f"{schema}.items", [(1, "one"), (2, "two")])

            docs = read_all(self.source(schema=schema, tables="*"))

            assert sorted(d["_id"] for d in docs) == ["items_1", "items_2"]
            assert {d["schema"] for d in docs} == {schema}
        finally:
            db.execute(f"DROP SCHEMA {schema} CASCADE")

    def test_get_docs_when_advanced_rule_locks_rows_then_refused_as_read_only(self, db, new_table):
        table = new_table(rows=self.simple_rows([1]))
        rule = [{"tables": [table], "query": f"SELECT * FROM {table} FOR UPDATE"}]

        with pytest.raises(SourceError, match="read-only transaction"):
            read_all(self.source(tables=[table]), filtering={"advanced_rules": rule})

    @pytest.mark.slow  # two real syncs through the daemon and the Beam pipeline: ~10 s each
    def test_daemon_when_elastic_shaped_incremental_job_without_cursor_then_only_changes_indexed(
            self, db, new_table, es, tmp_path):
        """Elastic's service creates incremental jobs without ``connector.sync_cursor`` and keeps
        the cursor in the connector document: the job must start from there, not from scratch."""
        import uuid

        from launcher.config import load_config
        from launcher.configuration import complete_configuration
        from launcher.daemon import Daemon
        from launcher.indices import CONNECTORS_INDEX, ensure_indices
        from tests.elastic_documents import elastic_document, insert_connector, insert_job, poll_until_job_final
        from tests.helpers import SOURCES, write_config

        table = new_table(rows=self.simple_rows(range(1, 4)))
        ensure_indices(es)
        connector_id = f"pg-elastic-{uuid.uuid4().hex[:8]}"
        index = f"test-{connector_id}"
        connector = elastic_document("connector-created-by-elastic-cli.json")
        connector["service_type"] = "postgresql"
        connector["configuration"], _ = complete_configuration({}, PostgreSQLDataSource.get_default_configuration())
        for key, value in {"host": HOST, "port": PORT, "username": USER, "password": PASSWORD, "database": DATABASE,
                           "tables": [table], "timestamp_column": "updated_at"}.items():
            connector["configuration"][key]["value"] = value
        insert_connector(es, connector_id, connector, index_name=index)
        job = elastic_document("full-job-created-by-elastic-cli.json")
        job["connector"]["service_type"] = "postgresql"
        job["connector"]["configuration"] = connector["configuration"]
        config = load_config(write_config(tmp_path / "config.yml", service={"connector_ids": [connector_id]},
                                          sources=dict(SOURCES)))
        daemon = Daemon(config, es)
        try:
            full = poll_until_job_final(daemon, es, insert_job(es, job, connector_id=connector_id, index_name=index))
            assert full["status"] == "completed" and full["indexed_document_count"] == 3, full.get("error")
            cursor = es.get(index=CONNECTORS_INDEX, id=connector_id)["_source"]["sync_cursor"]
            assert cursor and cursor["timestamp"]

            db.execute(f"UPDATE {table} SET name = 'changed', updated_at = {self.NOW} WHERE id = 2")
            assert "sync_cursor" not in job["connector"]
            incremental = poll_until_job_final(daemon, es, insert_job(
                es, job, connector_id=connector_id, index_name=index, job_type="incremental"))

            assert incremental["status"] == "completed", incremental.get("error")
            assert incremental["indexed_document_count"] == 1
            assert incremental["connector"]["sync_cursor"] == cursor  # recorded by the claim, as Elastic's does
            assert es.get(index=index, id=f"{table}_2")["_source"]["name"] == "changed"
        finally:
            daemon.shutdown()
            es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
            es.indices.delete(index=index, ignore_unavailable=True)


# -- continuous sync (sources/postgresql/stream.py) -------------------------------------------
class TestPostgreSQLChangeStream(ChangeStreamSuite):
    """The streaming contract on the real server (wal_level=logical, scripts/servers/postgresql)."""

    source_class = PostgreSQLDataSource
    port = PORT

    @pytest.fixture
    def table(self):
        name = "cs_" + os.urandom(5).hex()
        conn = TestPostgreSQL.connect()
        if conn.execute("show wal_level").fetchone()[0] != "logical":
            pytest.fail("PostgreSQL runs without wal_level=logical: scripts/servers/postgresql start sets it")
        conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, label TEXT, price NUMERIC(12,4), "
                     "at_zone TIMESTAMPTZ, doc JSONB, words TEXT[], raw BYTEA)")
        yield conn, name
        self.stream_source(name).release_change_stream(None, stream_id=name)
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.close()

    @staticmethod
    def run(conn, *statements: str) -> None:
        for statement in statements:
            conn.execute(statement)

    def test_change_stream_when_contract_checked_then_ordered_changes_after_the_snapshot(self, table):
        from sources.testing import check_change_stream

        conn, name = table
        conn.execute(f"INSERT INTO {name} (id, label) SELECT i, 'row ' || i FROM generate_series(1, 20) i")

        def make_changes() -> int:
            conn.execute(f"INSERT INTO {name} (id, label) VALUES (100, 'new')")
            conn.execute(f"UPDATE {name} SET label = 'changed' WHERE id = 1")
            conn.execute(f"DELETE FROM {name} WHERE id = 2")
            # (No TRUNCATE here: it is not MVCC-safe, an open snapshot would see the table empty;
            # the stream's truncate then removes those documents anyway. The daemon test has one.)
            return 3

        snapshot, changes = check_change_stream(PostgreSQLDataSource, stream_config(PORT, name), make_changes,
                                                stream_id=name)

        assert sorted(d["_id"] for d in snapshot) == sorted(f"{name}_{i}" for i in range(1, 21))  # not 100
        assert [(c.op, c.doc.get("_id") or c.doc) for c in changes] == [
            ("index", f"{name}_100"), ("index", f"{name}_1"), ("delete", f"{name}_2")]
        assert changes[1].doc["label"] == "changed" and all(c.committed_at for c in changes)

    def test_change_stream_when_row_streamed_then_values_as_the_snapshot_reads_them(self, table):
        conn, name = table
        values = ("héllo", "1234.5678", "2024-02-29 13:14:15+02", '{"a": [1, {"b": null}]}', '{"a","b c"}',
                  "\\x00ff10")
        conn.execute(f"INSERT INTO {name} VALUES (1, %s, %s, %s, %s, %s, %s)", values)
        (snapshot,), changes = self.snapshot_and_changes(
            name, lambda: conn.execute(f"INSERT INTO {name} VALUES (2, %s, %s, %s, %s, %s, %s)", values), 1)
        streamed = changes[0].doc
        assert {**streamed, "id": 1, "_id": snapshot["_id"]} == snapshot
        assert snapshot["price"] == Decimal("1234.5678") and snapshot["at_zone"] == "2024-02-29T11:14:15+00:00"
        assert snapshot["doc"] == {"a": [1, {"b": None}]} and snapshot["words"] == ["a", "b c"]

    def test_change_stream_when_slot_lost_then_one_clear_error_and_the_next_stream_snapshots(self, table):
        from sources.errors import StreamPositionLost

        conn, name = table
        source, _ = self.acknowledged_stream(conn, name)
        slot = f"elastic_ingest_{name}"
        for _ in range(50):
            if conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0]:
                continue
            break
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))

        with pytest.raises(StreamPositionLost, match=f"replication slot {slot} .* no longer exists.*new snapshot"):
            source.open_change_stream({"slot": slot}, stream_id=name)
        self.assert_snapshots_again(source, {"slot": slot}, name)
