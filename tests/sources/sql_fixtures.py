"""The integration suite both SQL sources pass, against the servers of ``scripts/servers/``.

``test_postgresql.py`` and ``test_mysql.py`` each subclass :class:`SqlSourceSuite` and say
how to connect; every test here then runs against both servers. Their change-stream tests
(continuous sync) subclass :class:`ChangeStreamSuite` the same way. Each test creates its own
tables (unique names) and drops them afterwards. When a server is not reachable its tests
are skipped, or fail when ``CI=true``.

The end-to-end test also needs the Elasticsearch of ``scripts/elasticsearch`` (fixtures
``es`` and ``index_name`` of ``tests/conftest.py``). The DDL and DML below is the SQL both
servers accept: ``INTEGER``, ``VARCHAR``,
``NUMERIC``, ``TIMESTAMP(6)`` and ``%s`` parameters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from sources.base import OP_INDEX
from sources.driver import SourceDriver, as_pair
from sources.errors import SourceConfigError, SourceUnavailable
from sources.testing import ping, read_all, read_partitions
from tests.helpers import index_docs, run_sync

HOST = "127.0.0.1"
USER = "ingest"
PASSWORD = "ingest-secret"
DATABASE = "ingest_test"
OLD = datetime(2020, 1, 1)
# id, name, amount, updated_at: the table most tests use.
SIMPLE_COLUMNS = "id INTEGER PRIMARY KEY, name VARCHAR(50), amount NUMERIC(10,2), updated_at TIMESTAMP(6) NULL"


def require_server(engine: str, port: int, script: str) -> None:
    """Skip (or fail when ``CI=true``) unless something listens on ``HOST:port``."""
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except OSError as exc:
        message = f"{engine} is not reachable at {HOST}:{port} ({exc}); run scripts/servers/{script} start"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def stream_config(port: int, table: str) -> dict[str, Any]:
    """A connector configuration streaming one table of the test database (continuous-sync tests)."""
    return {"host": HOST, "port": port, "username": USER, "password": PASSWORD, "database": DATABASE,
            "tables": [table]}


def call(source: Any, method: str, *args: Any) -> Any:
    """Run one (possibly async) method of ``source``, then close it."""
    driver = SourceDriver(source)
    try:
        return driver.call(getattr(source, method), *args)
    finally:
        driver.close()


def read_incrementally(source: Any, cursor: dict[str, Any] | None, filtering: Any = None) -> list[tuple]:
    driver = SourceDriver(source)
    try:
        return [as_pair(item) for item in driver.iterate(source.get_docs_incrementally(cursor, filtering))]
    finally:
        driver.close()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [d["_id"] for d in docs]
    assert len(ids) == len(set(ids)), "duplicate _id"
    return {d["_id"]: d for d in docs}


class Db:
    """The test user's autocommit connection, for setting up tables."""

    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)

    def insert(self, table: str, rows: list[tuple]) -> None:
        if rows:
            marks = ", ".join(["%s"] * len(rows[0]))
            with self.conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)

    def rows(self, sql: str) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())


@pytest.mark.integration
class SqlSourceSuite:
    """Tests every SQL source passes. Subclasses set the class attributes and ``connect``."""

    source_class: ClassVar[type]
    engine: ClassVar[str]
    script: ClassVar[str]
    port: ClassVar[int]
    #: SQL that stores the current time (UTC session) in a TIMESTAMP(6) column.
    NOW: ClassVar[str] = "CURRENT_TIMESTAMP(6)"

    @classmethod
    def connect(cls) -> Any:
        """An autocommit connection as the test user, its session in UTC."""
        raise NotImplementedError

    @staticmethod
    def quote(identifier: str) -> str:
        raise NotImplementedError

    # -- fixtures ------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def db(cls) -> Iterator[Db]:
        require_server(cls.engine, cls.port, cls.script)
        conn = cls.connect()
        yield Db(conn)
        conn.close()

    @pytest.fixture
    def new_table(self, db: Db) -> Iterator[Callable[..., str]]:
        """``new_table(columns, rows)`` creates a uniquely named table; all are dropped after the test."""
        created: list[str] = []

        def make(columns: str = SIMPLE_COLUMNS, rows: list[tuple] | None = None) -> str:
            name = f"t_{uuid.uuid4().hex[:12]}"
            created.append(name)
            db.execute(f"CREATE TABLE {name} ({columns})")
            db.insert(name, rows or [])
            return name

        yield make
        for name in created:
            with contextlib.suppress(Exception):
                db.execute(f"DROP TABLE IF EXISTS {name}")

    def source(self, **overrides: Any) -> Any:
        config = {"host": HOST, "port": self.port, "username": USER, "password": PASSWORD, "database": DATABASE}
        return self.source_class({**config, **overrides})

    @staticmethod
    def simple_rows(ids: Any) -> list[tuple]:
        return [(i, f"row {i}", Decimal(i * 25) / 100, OLD) for i in ids]

    @staticmethod
    def table_as_docs(db: Db, table: str) -> dict[str, tuple]:
        """What the index must hold for a SIMPLE table: ``_id -> (name, amount)``."""
        return {f"{table}_{i}": (name, amount) for i, name, amount in db.rows(f"SELECT id, name, amount FROM {table}")}

    @staticmethod
    def docs_as_table(docs: list[dict[str, Any]]) -> dict[str, tuple]:
        return {d["_id"]: (d["name"], d["amount"]) for d in by_id(docs).values()}

    # -- reading -------------------------------------------------------------------
    def test_get_docs_when_rows_changed_and_deleted_then_docs_equal_table(self, db, new_table):
        table = new_table(rows=self.simple_rows(range(1, 21)))
        first = read_all(self.source(tables=[table]))
        assert self.docs_as_table(first) == self.table_as_docs(db, table)
        assert {d["table"] for d in first} == {table} and {d["database"] for d in first} == {DATABASE}

        db.execute(f"UPDATE {table} SET name = 'changed', amount = amount + 1 WHERE id IN (2, 3, 4)")
        db.execute(f"DELETE FROM {table} WHERE id IN (5, 6, 7, 8)")
        db.insert(table, self.simple_rows([100, 101]))
        second = self.docs_as_table(read_all(self.source(tables=[table])))

        assert second == self.table_as_docs(db, table)
        assert len(second) == 18 and second[f"{table}_2"][0] == "changed"

    @pytest.mark.parametrize("rows", [21, 22])  # an exact multiple of the page, and one more
    def test_get_docs_when_more_rows_than_fetch_size_then_every_row_once(self, db, new_table, rows):
        table = new_table(rows=self.simple_rows(range(rows)))

        docs = read_all(self.source(tables=table, fetch_size=7))

        assert self.docs_as_table(docs) == self.table_as_docs(db, table)

    def test_get_docs_when_composite_or_no_primary_key_then_ids_are_stable(self, new_table):
        composite = new_table(
            "a INTEGER, b VARCHAR(10), v INTEGER, PRIMARY KEY (a, b)", [(1, "x", 10), (1, "y", 11), (2, "x", 12)]
        )
        keyless = new_table("v INTEGER, w VARCHAR(10)", [(1, "one"), (2, "two")])

        first = by_id(read_all(self.source(tables=f"{composite}, {keyless}")))
        again = by_id(read_all(self.source(tables=[composite, keyless])))

        assert {f"{composite}_1_x", f"{composite}_1_y", f"{composite}_2_x"} < set(first)
        assert len([i for i in first if i.startswith(f"{keyless}_")]) == 2
        assert first == again

    def test_get_docs_when_column_names_are_reserved_then_prefixed(self, new_table):
        q = self.quote
        columns = f"id INTEGER PRIMARY KEY, {q('table')} VARCHAR(10), {q('_source')} VARCHAR(10)"
        table = new_table(columns, [(1, "t", "s")])

        (doc,) = read_all(self.source(tables=[table]))

        assert doc["table"] == table and doc["column_table"] == "t" and doc["column__source"] == "s"

    def test_get_partitions_when_integer_key_then_partitioned_read_equals_single_read(self, new_table):
        ids = [i * 3 for i in range(1, 101)] + [10_000, 10_001]  # gaps and a far outlier
        big = new_table(rows=self.simple_rows(ids))
        keyless = new_table("v INTEGER, w VARCHAR(10)", [(1, "one"), (2, "two")])
        config = {"tables": [big, keyless], "partition_size": 15, "fetch_size": 10}

        partitions = self.source(**config).get_partitions()
        partitioned = by_id(read_partitions(self.source(**config)))
        single = by_id(read_all(self.source(**config)))

        assert len([p for p in partitions if p.params["table"] == big]) > 3
        assert [p.key for p in partitions if p.params["table"] == keyless] == [keyless]
        assert partitioned == single and len(single) == len(ids) + 2

    def test_get_partitions_when_max_partitions_then_capped(self, new_table):
        table = new_table(rows=self.simple_rows(range(1, 101)))

        partitions = self.source(tables=[table], partition_size=1, max_partitions=4).get_partitions()

        assert len(partitions) == 4

    # -- advanced rules ------------------------------------------------------------
    def test_get_docs_when_advanced_rules_then_reads_the_queries(self, db, new_table):
        table = new_table(rows=self.simple_rows(range(1, 31)))
        other = new_table(rows=self.simple_rows(range(1, 4)))
        rules = [
            {"tables": [table], "query": f"SELECT id, name FROM {table} WHERE amount > 5;"},
            {"tables": [other], "query": f"SELECT * FROM {other} WHERE name LIKE 'row %'"},
        ]
        source = self.source(tables=[table, other])

        assert source.validate_advanced_rules(rules) == []
        docs = by_id(read_all(source, filtering={"advanced_rules": rules}))
        partitioned = by_id(read_partitions(self.source(tables=[table, other]), filtering={"advanced_rules": rules}))

        expected = {f"{table}_{i}" for i in range(21, 31)} | {f"{other}_{i}" for i in range(1, 4)}
        assert set(docs) == expected
        assert docs[f"{table}_21"]["name"] == "row 21" and "amount" not in docs[f"{table}_21"]
        assert partitioned == docs

    def test_validate_advanced_rules_when_invalid_then_says_what_to_fix(self, new_table):
        table = new_table()
        source = self.source(tables=[table])

        shape = source.validate_advanced_rules([{"tables": table, "query": ""}, "SELECT 1"])
        catalog = source.validate_advanced_rules([{"tables": ["no_such_table"], "query": "SELECT 1"}])
        syntax = source.validate_advanced_rules([{"tables": [table], "query": f"SELEC * FROM {table}"}])

        assert any("`tables` must be a non-empty list" in p for p in shape)
        assert any("`query` must be a non-empty" in p for p in shape) and any("rule 2" in p for p in shape)
        assert len(catalog) == 1 and "table `no_such_table` does not exist" in catalog[0] and table in catalog[0]
        assert len(syntax) == 1 and "rule 1" in syntax[0] and "syntax" in syntax[0].lower()

    # -- timestamps and incremental syncs ------------------------------------------
    def test_get_docs_incrementally_when_rows_changed_then_yields_only_changes(self, db, new_table):
        table = new_table(rows=self.simple_rows(range(1, 11)))
        planner = self.source(tables=[table], timestamp_column="updated_at")
        planner.get_partitions()
        cursor = planner.sync_cursor()
        full = by_id(read_all(self.source(tables=[table], timestamp_column="updated_at")))
        assert {d["_timestamp"] for d in full.values()} == {"2020-01-01T00:00:00+00:00"}

        db.execute(f"UPDATE {table} SET name = 'changed', updated_at = {self.NOW} WHERE id IN (3, 4)")
        db.execute(f"INSERT INTO {table} VALUES (11, 'new', 1.00, {self.NOW})")
        db.execute(f"DELETE FROM {table} WHERE id = 5")
        source = self.source(tables=[table], timestamp_column="updated_at")
        changes = read_incrementally(source, cursor)

        assert {(doc["_id"], op) for doc, _, op in changes} == {(f"{table}_{i}", OP_INDEX) for i in (3, 4, 11)}
        assert all(doc["_timestamp"] > "2020" and doc["name"] in ("changed", "new") for doc, _, _ in changes)
        new_cursor = source.sync_cursor()
        assert datetime.fromisoformat(new_cursor["timestamp"]) > datetime.fromisoformat(cursor["timestamp"])
        assert datetime.fromisoformat(new_cursor["timestamp"]).tzinfo == timezone.utc

    def test_get_docs_incrementally_when_no_cursor_then_reads_everything(self, new_table):
        table = new_table(rows=self.simple_rows(range(1, 6)))

        changes = read_incrementally(self.source(tables=[table], timestamp_column="updated_at"), None)

        assert len(changes) == 5

    # -- end to end ----------------------------------------------------------------
    @pytest.mark.slow  # two real syncs through the Beam pipeline into Elasticsearch: ~10 s each
    def test_sync_when_rows_changed_and_deleted_then_index_equals_table(self, db, new_table, es, index_name):
        table = new_table(rows=self.simple_rows(range(1, 41)))
        configuration = {
            "host": HOST, "port": self.port, "username": USER, "password": PASSWORD, "database": DATABASE,
            "tables": [table], "partition_size": 10, "fetch_size": 7,
        }

        def index_as_table() -> dict[str, tuple]:
            docs = index_docs(es, index_name)
            return {i: (d["name"], Decimal(str(d["amount"]))) for i, d in docs.items()}

        def sync() -> None:
            service_type = self.source_class.service_type
            outcome = run_sync(index=index_name, configuration=configuration, service_type=service_type)
            assert outcome["status"] == "completed", outcome.get("error")

        def assert_index_equals_table() -> dict[str, tuple]:
            indexed, expected = index_as_table(), self.table_as_docs(db, table)
            assert indexed == expected, {
                "missing": sorted(set(expected) - set(indexed)),
                "extra": sorted(set(indexed) - set(expected)),
                "different": sorted(k for k in set(indexed) & set(expected) if indexed[k] != expected[k]),
            }
            return indexed

        sync()
        assert_index_equals_table()

        db.execute(f"UPDATE {table} SET name = 'changed', amount = amount + 1 WHERE id IN (1, 11, 21)")
        db.execute(f"DELETE FROM {table} WHERE id IN (2, 12, 40)")
        db.insert(table, self.simple_rows([41, 500]))
        sync()

        indexed = assert_index_equals_table()
        assert indexed[f"{table}_11"][0] == "changed" and len(indexed) == 39

    def test_sync_when_no_timestamp_column_then_unchanged_rows_cost_no_write_and_changes_still_apply(
            self, db, new_table, es, index_name):
        table = new_table("id INTEGER PRIMARY KEY, name VARCHAR(50), amount NUMERIC(10,2)",
                          [(i, f"row {i}", Decimal(i) / 4) for i in range(1, 31)])
        configuration = {"host": HOST, "port": self.port, "username": USER, "password": PASSWORD,
                         "database": DATABASE, "tables": [table]}  # no timestamp_column: documents lack _timestamp

        def sync() -> dict[str, Any]:
            outcome = run_sync(index=index_name, configuration=configuration,
                               service_type=self.source_class.service_type, digest_cache=False)
            assert outcome["status"] == "completed", outcome.get("error")
            return outcome

        first = sync()
        assert first["indexed_document_count"] == 30
        again = sync()
        assert (again["indexed_document_count"], again["unchanged_document_count"]) == (0, 30)
        assert "reindex_reason" not in again

        db.execute(f"UPDATE {table} SET amount = amount + 1 WHERE id = 7")
        db.execute(f"DELETE FROM {table} WHERE id = 9")
        changed = sync()

        assert (changed["indexed_document_count"], changed["deleted_document_count"]) == (1, 1)
        indexed = index_docs(es, index_name, digests=True)
        assert set(indexed) == set(self.table_as_docs(db, table))
        assert Decimal(str(indexed[f"{table}_7"]["amount"])) == Decimal("2.75")
        assert all(len(d["_content_digest"]) == 16 and "_timestamp" not in d for d in indexed.values())

    def test_sync_when_table_has_an_id_column_then_documents_keep_it_and_id_columns_choose_the_ids(
            self, new_table, es, index_name):
        table = new_table("id INTEGER PRIMARY KEY, code VARCHAR(10), name VARCHAR(50)",
                          [(7, "A-1", "seven"), (8, "B-2", "eight")])
        configuration = {"host": HOST, "port": self.port, "username": USER, "password": PASSWORD,
                         "database": DATABASE, "tables": [table]}
        service_type = self.source_class.service_type

        outcome = run_sync(index=index_name, configuration=configuration, service_type=service_type)
        assert outcome["status"] == "completed", outcome.get("error")
        by_primary_key = index_docs(es, index_name)
        outcome = run_sync(index=index_name, configuration={**configuration, "id_columns": "code"},
                           service_type=service_type)
        assert outcome["status"] == "completed", outcome.get("error")
        by_code = index_docs(es, index_name)

        assert by_primary_key == {
            f"{table}_7": {**by_primary_key[f"{table}_7"], "id": 7, "code": "A-1", "name": "seven"},
            f"{table}_8": {**by_primary_key[f"{table}_8"], "id": 8, "code": "B-2", "name": "eight"}}
        assert {i: (d["id"], d["name"]) for i, d in by_code.items()} == {
            f"{table}_A-1": (7, "seven"), f"{table}_B-2": (8, "eight")}  # the full sync removed the old ids

    # -- errors --------------------------------------------------------------------
    def test_ping_when_password_wrong_then_auth_error_without_password(self, db, caplog):
        secret = "Wr0ng-S3cret-value"
        source = self.source(password=secret)
        caplog.set_level(logging.DEBUG)

        with pytest.raises(SourceConfigError, match=f"authentication failed for user {USER}") as raised:
            ping(source)

        shown = [str(raised.value), str(raised.value.__cause__), repr(source.settings), repr(source.configuration)]
        assert not any(secret in text for text in shown + [caplog.text])

    def test_ping_when_server_unreachable_then_source_unavailable(self, db):
        port = unused_port()

        with pytest.raises(SourceUnavailable, match=f"cannot reach {self.engine} at {HOST}:{port}"):
            ping(self.source(port=port))

    def test_validate_config_when_database_missing_then_names_it(self, db):
        with pytest.raises(SourceConfigError, match=f"database `nope` does not exist on {HOST}:{self.port}") as raised:
            call(self.source(database="nope"), "validate_config")
        assert DATABASE in str(raised.value)  # the databases the user can pick from

    def test_validate_config_when_table_missing_then_lists_tables(self, new_table):
        table = new_table()

        with pytest.raises(SourceConfigError, match="table `no_such_table` does not exist") as raised:
            call(self.source(tables=[table, "no_such_table"]), "validate_config")
        assert table in str(raised.value).split("tables are:")[1]

    def test_validate_config_when_fields_invalid_then_lists_every_problem(self):
        with pytest.raises(SourceConfigError) as raised:
            call(self.source(host="", port="many", fetch_size=0), "validate_config")
        assert all(field in str(raised.value) for field in ("host: required", "port:", "fetch_size:"))


def read_changes(stream: Any, count: int, timeout: float = 20) -> list:
    """At least ``count`` changes of ``stream`` (fewer when ``timeout`` seconds pass first)."""
    changes: list = []
    deadline = time.monotonic() + timeout
    while len(changes) < count and time.monotonic() < deadline:
        changes.extend(stream.changes(0.5))
    return changes


@pytest.mark.integration
class ChangeStreamSuite:
    """Change-stream tests every SQL source passes. Subclasses set ``source_class`` and ``port``, and
    define ``run`` and a ``table`` fixture giving ``(connection, name)`` of a new table with at
    least the columns ``id`` (its primary key) and ``label``."""

    source_class: ClassVar[type]
    port: ClassVar[int]

    @staticmethod
    def run(conn: Any, *statements: str) -> None:
        """Execute ``statements`` on ``conn`` (autocommit)."""
        raise NotImplementedError

    def stream_source(self, table: str) -> Any:
        return self.source_class(stream_config(self.port, table))

    def snapshot_and_changes(self, name: str, make_changes: Callable[[], Any], count: int) -> tuple[list, list]:
        """A new stream of table ``name``: its snapshot, then at least ``count`` changes that
        ``make_changes()`` made after it (fewer after 20 s); the stream is closed."""
        stream = self.stream_source(name).open_change_stream(None, stream_id=name)
        try:
            snapshot = list(stream.snapshot())
            make_changes()
            return snapshot, read_changes(stream, count)
        finally:
            stream.close()

    def acknowledged_stream(self, conn: Any, name: str) -> tuple[Any, dict[str, Any]]:
        """Row 1 in table ``name``, then a stream whose snapshot Elasticsearch acknowledged, closed:
        the source and the stream's last cursor."""
        self.run(conn, f"INSERT INTO {name} (id, label) VALUES (1, 'one')")
        source = self.stream_source(name)
        stream = source.open_change_stream(None, stream_id=name)
        try:
            list(stream.snapshot())
            stream.changes(0.2)
            stream.acknowledge(stream.snapshot_position)  # the snapshot is in Elasticsearch
            return source, stream.cursor()
        finally:
            stream.close()

    @staticmethod
    def assert_snapshots_again(source: Any, cursor: dict[str, Any], name: str) -> None:
        """A stream opened at ``cursor`` (after its position was lost) takes a new snapshot: row 1."""
        again = source.open_change_stream(cursor, stream_id=name)
        try:
            assert again.snapshot_position > 0 and [d["_id"] for d in again.snapshot()] == [f"{name}_1"]
        finally:
            again.close()

    def test_change_stream_when_table_has_no_primary_key_then_refused_naming_it(self, table):
        conn, name = table
        self.run(conn, f"CREATE TABLE {name}_nokey (v TEXT)")
        try:
            with pytest.raises(SourceConfigError, match=f"table\\(s\\) {name}_nokey have no primary key"):
                self.stream_source(f"{name}_nokey").open_change_stream(None, stream_id=name)
        finally:
            self.run(conn, f"DROP TABLE {name}_nokey")
