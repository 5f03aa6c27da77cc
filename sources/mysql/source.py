"""The MySQL/MariaDB source: :mod:`sources._sql` plus how to talk to MySQL with PyMySQL.

Reads stream through unbuffered cursors (``SSCursor``, ``fetch_size`` rows per call), so
memory stays bounded whatever the table size. Sessions run with ``time_zone = '+00:00'``
and ``TRANSACTION READ ONLY``, so advanced-rule queries cannot write. JSON columns come
back from the server as text and are decoded: on MySQL they are typed ``json``; on
MariaDB, where JSON is ``LONGTEXT`` with a ``json_valid()`` check, they are found through
their check constraints.

Example usage::

    from sources.mysql import MySqlDataSource
    from sources.testing import read_all

    source = MySqlDataSource({
        "host": "127.0.0.1", "port": 3307, "username": "ingest", "password": "ingest-secret",
        "database": "ingest_test", "tables": "*",
    })
    docs = read_all(source)   # [{"_id": "orders_1", "table": "orders", ...}, ...]
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.constants import FIELD_TYPE

from sources._sql import CONNECT_TIMEOUT, SqlDataSource, SqlSettings

__all__ = ["MySqlDataSource"]

_JSON_CHECK = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)", re.IGNORECASE)
# Client error codes: can't connect (2002 socket, 2003 TCP), unknown host, server gone, lost.
_UNREACHABLE = frozenset({2002, 2003, 2005, 2006, 2013})
_DISCONNECTED = frozenset({2006, 2013, 2014, 2055})


class MySqlDataSource(SqlDataSource):
    """Rows of the configured tables of one MySQL or MariaDB database, one document per row."""

    name = "MySQL"
    service_type = "mysql"
    engine = "MySQL"
    default_port = 3306
    continuous_sync_enabled = True
    # The binlog stream, from ``cursor`` (``{"file", "pos", ...}``) or a new snapshot. Nothing to
    # release when continuous sync is turned off: the server keeps no state for a binlog reader
    # (its files expire with ``expire_logs_days`` whoever reads them); the position is the
    # connector's ``sync_cursor``.
    _CHANGE_STREAM = "sources.mysql.stream:MySqlChangeStream"
    _DRIVER_ERROR = pymysql.Error
    _INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})
    _NOW_SQL = "SELECT UTC_TIMESTAMP(6)"
    _ESTIMATED_ROWS_SQL = "SELECT table_rows FROM information_schema.tables WHERE table_schema = %s AND table_name = %s"
    _LIST_DATABASES_SQL = (
        "SELECT schema_name FROM information_schema.schemata "
        "WHERE schema_name NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys')"
    )
    # A primary key is always named PRIMARY. (MariaDB shows TABLE_CONSTRAINTS to a user with only
    # SELECT on the tables as empty: joining it would lose every key, and ids become row hashes.)
    _PRIMARY_KEYS_SQL = (
        "SELECT table_name, column_name FROM information_schema.key_column_usage "
        "WHERE table_schema = %s AND constraint_name = 'PRIMARY' ORDER BY table_name, ordinal_position"
    )

    def _connect(self, settings: SqlSettings, database: str | None) -> pymysql.Connection:
        conn = pymysql.connect(
            host=settings.host,
            port=settings.port,
            user=settings.username,
            password=settings.password,
            database=database,
            connect_timeout=CONNECT_TIMEOUT,
            charset="utf8mb4",
            autocommit=True,
            ssl=self._ssl_context() if settings.ssl_enabled else None,
            init_command="SET time_zone = '+00:00'",
        )
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
        return conn

    @contextlib.contextmanager
    def _stream(self, sql: str, params: Sequence[Any] | None) -> Iterator[pymysql.cursors.SSCursor]:
        cursor = self._connection().cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(sql, params)
            yield cursor
        except BaseException:
            # Closing an unbuffered cursor reads the rest of the result: drop the connection instead.
            self._discard_connection()
            raise
        cursor.close()

    def _json_columns(self, namespace: str, columns: Mapping[str, Mapping[str, str]]) -> dict[str, set[str]]:
        found = {table: {c for c, kind in cols.items() if kind == "json"} for table, cols in columns.items()}
        if "mariadb" in self._connection().get_server_info().lower():
            for table, clause in self._query(
                "SELECT table_name, check_clause FROM information_schema.check_constraints "
                "WHERE constraint_schema = %s",
                (namespace,),
            ):
                match = _JSON_CHECK.fullmatch(str(clause).strip())
                if match:
                    found.setdefault(table, set()).add(match.group(1).replace("``", "`"))
        return found

    def _json_result_columns(self, description: Sequence[Any]) -> set[str]:
        return {column[0] for column in description if column[1] == FIELD_TYPE.JSON}

    def _connect_error_kind(self, exc: Exception) -> str:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code == 1045:
            return "auth"
        if code == 1049:  # unknown database
            return "database"
        if code == 1044:  # access denied to the database: MySQL does not say whether it exists
            return "database_access"
        if code in _UNREACHABLE:
            return "unreachable"
        return "other"

    def _is_disconnect(self, exc: Exception) -> bool:
        return isinstance(exc, pymysql.OperationalError) and bool(exc.args) and exc.args[0] in _DISCONNECTED

    @staticmethod
    def _quote(identifier: str) -> str:
        return "`" + identifier.replace("`", "``") + "`"
