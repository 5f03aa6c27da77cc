"""MySQL source against the MariaDB server of ``scripts/servers/mysql`` (MYSQL_PORT, default 3307)."""

from __future__ import annotations

import os
from decimal import Decimal

import pymysql
import pytest
from mysql_binlog import purge_binlog, require_binlog
from sql_fixtures import DATABASE, HOST, PASSWORD, USER, ChangeStreamSuite, SqlSourceSuite, by_id, stream_config

from sources.mysql import MySqlDataSource
from sources.testing import read_all

pytestmark = pytest.mark.integration

PORT = int(os.environ.get("MYSQL_PORT", "3307"))


class TestMySql(SqlSourceSuite):
    source_class = MySqlDataSource
    engine = "MySQL"
    script = "mysql"
    port = PORT

    @classmethod
    def connect(cls):
        return pymysql.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, database=DATABASE, autocommit=True,
            charset="utf8mb4", init_command="SET time_zone = '+00:00'",
        )

    @staticmethod
    def quote(identifier):
        return f"`{identifier}`"

    def test_get_docs_when_many_types_then_values_are_faithful(self, db, new_table):
        table = new_table(
            "id INT PRIMARY KEY, label VARCHAR(50), price DECIMAL(12,4), ratio DOUBLE, flag TINYINT(1), "
            "big BIGINT UNSIGNED, day DATE, at_local DATETIME(6), at_ts TIMESTAMP(6) NULL, clock TIME, yr YEAR, "
            "raw VARBINARY(16), blobby BLOB, doc JSON, kind ENUM('a','b'), tags SET('x','y','z'), bits BIT(8)"
        )
        db.execute(
            f"INSERT INTO {table} VALUES (1, 'héllo', 1234.5678, 0.25, 1, 18446744073709551615, '2024-02-29', "
            "'2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5', '25:03:04', 2024, X'00FF10', X'0102', "
            "'{\"a\": [1, 2, {\"b\": null}], \"c\": \"x\"}', 'b', 'x,z', b'10100101'), (2" + ", NULL" * 16 + ")"
        )

        docs = by_id(read_all(self.source(tables=[table])))

        assert docs[f"{table}_1"] == {
            "_id": f"{table}_1", "table": table, "database": DATABASE,
            "id": 1, "label": "héllo", "price": Decimal("1234.5678"), "ratio": 0.25, "flag": 1,
            "big": 18446744073709551615, "day": "2024-02-29", "at_local": "2024-02-29T13:14:15.123456",
            "at_ts": "2024-02-29T13:14:15.500000", "clock": "25:03:04", "yr": 2024, "raw": b"\x00\xff\x10",
            "blobby": b"\x01\x02", "doc": {"a": [1, 2, {"b": None}], "c": "x"}, "kind": "b", "tags": "x,z",
            "bits": b"\xa5",
        }
        nulls = docs[f"{table}_2"]
        assert all(nulls[c] is None for c in ("label", "price", "doc", "raw", "at_ts")) and "_timestamp" not in nulls

    def test_get_docs_when_advanced_rule_selects_json_then_decoded(self, db, new_table):
        table = new_table("id INT PRIMARY KEY, doc JSON", [(1, '{"k": [1, "two"]}')])
        rule = [{"tables": [table], "query": f"SELECT id, doc FROM {table}"}]

        (doc,) = read_all(self.source(tables=[table]), filtering={"advanced_rules": rule})

        assert doc["doc"] == {"k": [1, "two"]}


# -- continuous sync (sources/mysql/stream.py) ------------------------------------------------
class TestMySqlChangeStream(ChangeStreamSuite):
    """The streaming contract on the real server (row-based binlog, scripts/servers/mysql)."""

    source_class = MySqlDataSource
    port = PORT

    @pytest.fixture
    def table(self):
        from sql_fixtures import require_server

        require_server("MySQL", PORT, "mysql")
        name = "cs_" + os.urandom(5).hex()
        conn = TestMySql.connect()
        require_binlog(conn)
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, label VARCHAR(50), price DECIMAL(12,4), "
                        "at_ts TIMESTAMP(6) NULL, clock TIME, doc JSON, tags SET('x','y','z'), bits BIT(8), "
                        "raw VARBINARY(16), big BIGINT UNSIGNED)")
        yield conn, name
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        conn.close()

    @staticmethod
    def run(conn, *statements: str) -> None:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def test_change_stream_when_contract_checked_then_ordered_changes_after_the_snapshot(self, table):
        from sources.testing import check_change_stream

        conn, name = table
        self.run(conn, *(f"INSERT INTO {name} (id, label) VALUES ({i}, 'row {i}')" for i in range(1, 21)))

        def make_changes() -> int:  # while the snapshot is open: none of these is in it
            self.run(conn, f"INSERT INTO {name} (id, label) VALUES (100, 'new')",
                     f"UPDATE {name} SET label = 'changed' WHERE id = 1", f"DELETE FROM {name} WHERE id = 2")
            return 3

        snapshot, changes = check_change_stream(MySqlDataSource, stream_config(PORT, name), make_changes,
                                                stream_id=name)

        assert sorted(d["_id"] for d in snapshot) == sorted(f"{name}_{i}" for i in range(1, 21))  # not 100
        assert [(c.op, c.doc["_id"]) for c in changes] == [
            ("index", f"{name}_100"), ("index", f"{name}_1"), ("delete", f"{name}_2")]
        assert changes[1].doc["label"] == "changed" and all(c.committed_at for c in changes)
        assert changes[0].position < changes[1].position < changes[2].position

    def test_change_stream_when_row_streamed_then_values_as_the_snapshot_reads_them(self, table):
        conn, name = table
        values = ("'héllo', 1234.5678, '2024-02-29 13:14:15.5', '25:03:04', '{\"a\": [1, {\"b\": null}]}', 'x,z', "
                  "b'10100101', X'00FF10', 18446744073709551615")
        self.run(conn, "SET time_zone = '+00:00'", f"INSERT INTO {name} VALUES (1, {values})")
        (snapshot,), changes = self.snapshot_and_changes(
            name, lambda: self.run(conn, "SET time_zone = '+00:00'", f"INSERT INTO {name} VALUES (2, {values})"), 1)
        streamed = changes[0].doc
        assert {**streamed, "id": 1, "_id": snapshot["_id"]} == snapshot
        assert snapshot["price"] == Decimal("1234.5678") and snapshot["at_ts"] == "2024-02-29T13:14:15.500000"
        assert snapshot["doc"] == {"a": [1, {"b": None}]} and snapshot["tags"] == "x,z"
        assert snapshot["bits"] == b"\xa5" and snapshot["clock"] == "25:03:04" and snapshot["big"] == 2**64 - 1

    def test_change_stream_when_transaction_and_truncate_then_one_change_per_row_and_table_emptied(self, table):
        from sources.streaming import OP_TRUNCATE

        conn, name = table
        self.run(conn, f"INSERT INTO {name} (id, label) VALUES (1, 'one'), (2, 'two')")

        def make_changes() -> None:
            conn.begin()
            self.run(conn, f"INSERT INTO {name} (id, label) VALUES (3, 'ghost')", f"DELETE FROM {name} WHERE id = 3",
                     f"UPDATE {name} SET id = 20 WHERE id = 2")
            conn.commit()
            self.run(conn, f"TRUNCATE TABLE {name}", f"INSERT INTO {name} (id, label) VALUES (7, 'after')",
                     "FLUSH BINARY LOGS", f"INSERT INTO {name} (id, label) VALUES (8, 'next binlog file')")

        _, changes = self.snapshot_and_changes(name, make_changes, 6)
        assert [(c.op, c.doc.get("_id") or c.doc) for c in changes] == [
            ("delete", f"{name}_3"), ("delete", f"{name}_2"), ("index", f"{name}_20"),
            (OP_TRUNCATE, {"table": name}), ("index", f"{name}_7"), ("index", f"{name}_8")]
        assert len({c.position for c in changes[:3]}) == 1  # one transaction, one position
        assert changes[5].position >> 32 == (changes[4].position >> 32) + 1  # the next binlog file sorts after

    def test_change_stream_when_column_added_while_streaming_then_rows_carry_it(self, table):
        conn, name = table
        self.run(conn, f"INSERT INTO {name} (id, label) VALUES (1, 'one')")
        _, changes = self.snapshot_and_changes(name, lambda: self.run(
            conn, f"ALTER TABLE {name} ADD COLUMN extra INT DEFAULT 7",
            f"INSERT INTO {name} (id, label, extra) VALUES (2, 'two', 9)",
            f"UPDATE {name} SET label = 'uno' WHERE id = 1"), 2)
        assert [(c.doc["_id"], c.doc["label"], c.doc["extra"]) for c in changes] == [
            (f"{name}_2", "two", 9), (f"{name}_1", "uno", 7)]

    def test_change_stream_when_binlog_purged_then_one_clear_error_and_the_next_stream_snapshots(self, table):
        from sources.errors import StreamPositionLost

        conn, name = table
        source, cursor = self.acknowledged_stream(conn, name)
        assert cursor["file"] and cursor["pos"] > 4 and cursor["server_id"] > 0 and cursor["gtid"].startswith("0-1-")
        purge_binlog(conn, cursor["file"])

        with pytest.raises(StreamPositionLost, match=f"binlog position {cursor['file']}:{cursor['pos']} is no longer "
                                                     ".*purged.*new snapshot"):
            source.open_change_stream(cursor, stream_id=name)
        self.assert_snapshots_again(source, {}, name)  # the service cleared the cursor
