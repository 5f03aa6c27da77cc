"""MySQL source against the MariaDB server of ``scripts/servers/mysql`` (MYSQL_PORT, default 3307)."""

from __future__ import annotations

import os
from decimal import Decimal

import pymysql
import pytest
from sql_fixtures import DATABASE, HOST, PASSWORD, USER, SqlSourceSuite, by_id

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
