"""PostgreSQL source against the server of ``scripts/servers/postgresql`` (PG_PORT, default 5433)."""

from __future__ import annotations

import os
from decimal import Decimal

import psycopg
import pytest
from sql_fixtures import DATABASE, HOST, PASSWORD, USER, SqlSourceSuite, by_id

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
