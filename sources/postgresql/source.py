"""The PostgreSQL source: :mod:`sources._sql` plus how to talk to PostgreSQL with psycopg 3.

Reads stream through server-side cursors (``DECLARE``/``FETCH`` in pages of ``fetch_size``
rows), so memory stays bounded whatever the table size. Sessions run with
``TimeZone=UTC`` and ``default_transaction_read_only=on``, so advanced-rule queries cannot
write.

Example usage::

    from sources.postgresql import PostgreSQLDataSource
    from sources.testing import read_all

    source = PostgreSQLDataSource({
        "host": "127.0.0.1", "port": 5433, "username": "ingest", "password": "ingest-secret",
        "database": "ingest_test", "tables": ["orders"], "timestamp_column": "updated_at",
    })
    docs = read_all(source)   # [{"_id": "orders_1", "table": "orders", ...}, ...]
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from sources._sql import CONNECT_TIMEOUT, SqlDataSource, SqlSettings

__all__ = ["PostgreSQLDataSource"]

_cursor_names = itertools.count()


class PostgreSQLDataSource(SqlDataSource):
    """Rows of the configured tables of one PostgreSQL schema, one document per row."""

    name = "PostgreSQL"
    service_type = "postgresql"
    engine = "PostgreSQL"
    default_port = 5432
    has_schema = True
    continuous_sync_enabled = True
    # The logical-replication stream (slot and publication named after ``stream_id``).
    _CHANGE_STREAM = "sources.postgresql.stream:PgChangeStream"
    _DRIVER_ERROR = psycopg.Error
    _INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
    _NOW_SQL = "SELECT now()"
    _ESTIMATED_ROWS_SQL = (
        "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s"
    )
    _LIST_DATABASES_SQL = (
        "SELECT datname FROM pg_database "
        "WHERE datallowconn AND NOT datistemplate AND has_database_privilege(datname, 'CONNECT')"
    )

    def release_change_stream(self, cursor: dict[str, Any] | None, *, stream_id: str = "default") -> None:
        """Drop the connector's replication slot and publication (WAL is no longer kept for it)."""
        from sources.postgresql.stream import drop_stream

        drop_stream(self, stream_id)

    def _connect(self, settings: SqlSettings, database: str | None) -> psycopg.Connection:
        ssl: dict[str, Any] = {}
        if settings.ssl_enabled:
            ca = self._ca_file()
            ssl = {"sslmode": "verify-full", "sslrootcert": ca} if ca else {"sslmode": "require"}
        return psycopg.connect(
            host=settings.host,
            port=settings.port,
            user=settings.username,
            password=settings.password,
            dbname=database or "postgres",
            connect_timeout=CONNECT_TIMEOUT,
            application_name="elastic-ingest",
            options="-c TimeZone=UTC -c default_transaction_read_only=on",
            autocommit=True,
            **ssl,
        )

    @contextlib.contextmanager
    def _stream(self, sql: str, params: Sequence[Any] | None) -> Iterator[psycopg.ServerCursor]:
        conn = self._connection()
        # A server-side cursor lives in a transaction; leaving it (even on error) ends both.
        with conn.transaction(), conn.cursor(name=f"elastic_ingest_{next(_cursor_names)}") as cursor:
            cursor.execute(sql, params)
            yield cursor

    def _connect_error_kind(self, exc: Exception) -> str:
        message = str(exc)
        if "authentication failed" in message or "no password supplied" in message or (
            "role " in message and "does not exist" in message
        ):
            return "auth"
        if "database " in message and "does not exist" in message:
            return "database"
        if "FATAL" in message or "SSL" in message or "certificate" in message:
            return "other"
        return "unreachable"  # refused, timed out, unknown host, network down

    def _is_disconnect(self, exc: Exception) -> bool:
        conn = self._conn
        return isinstance(exc, psycopg.OperationalError) and (conn is None or conn.closed or conn.broken)

    @staticmethod
    def _quote(identifier: str) -> str:
        return '"' + identifier.replace('"', '""') + '"'
