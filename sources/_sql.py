"""What the PostgreSQL and MySQL sources share: settings, catalog, partition plan, row -> doc.

:class:`SqlDataSource` implements the whole source contract over a DB-API connection;
``sources.postgresql`` and ``sources.mysql`` only say how to connect, how to quote, how to
stream a result with bounded memory and how to read their driver's errors.

Documents
    One document per row. ``_id`` is ``<table>_<primary key values joined by "_">``, so
    the same row keeps its id across syncs; a table without a primary key (or a view) gets
    ``<table>_<sha1 of the row>`` instead: an edited row then becomes a new document and the
    old one is deleted by the full sync. ``id_columns`` names other columns to build ids
    from (for the tables and views that have them all). Every column becomes a field under
    its own name (an ``id`` column too: the document id never overwrites it), plus ``table``
    and ``database`` (and ``schema`` for PostgreSQL). A column named like one of those, or
    starting with ``_`` (Elasticsearch reserves such names), is stored as
    ``column_<name>``. Values: dates and times -> ISO 8601 strings (timezone-aware ones
    in UTC), durations -> ``[-]H:MM:SS[.ffffff]``, Decimal stays Decimal, bytes stay bytes
    (the pipeline makes both JSON-safe), NULL -> None, arrays -> lists, JSON -> dicts and
    lists, anything else (UUID, inet, ranges...) -> ``str``.

Timestamps and incremental syncs
    With ``timestamp_column`` set, a table that has that column gives its documents a
    ``_timestamp`` (UTC ISO 8601), so full syncs compare rows by it (without it, by each
    row's content: see transforms/digests.py), and incremental
    syncs read only rows whose column is at or after the previous sync's start (minus a
    few seconds of overlap, for clocks rounded to the second and transactions that commit
    late). Tables without the column are read whole. The column must be kept up to date by
    whoever writes the table (a trigger or the application); a change that does not touch
    it is missed by every sync, full ones included. Deleted rows cannot be seen
    incrementally: only a full sync removes their documents. Every session runs in UTC, so
    naive ``timestamp``/``DATETIME`` columns are read as UTC.

Partitions
    A table whose primary key is one integer column is split into key ranges of about
    ``partition_size`` rows (at most ``max_partitions`` per table; the first and last
    ranges are open-ended so rows inserted during the sync are not lost); any other table
    is one partition.

Advanced sync rules
    A list of ``{"tables": [...], "query": "SELECT ..."}``; when present the queries are
    read instead of the tables. ``_id`` is ``<tables joined by "_">_<key>``, the key being
    the listed tables' primary-key columns found in the result (by name), or a hash of
    the row when there are none. Rules are spread over the partitions, each read once.
    Queries run in read-only sessions.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import ssl
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

from sources.base import OP_INDEX, BaseDataSource, Doc, Endpoint, Filter, Partition
from sources._tls import CaFile
from sources.cursors import CURSOR_OVERLAP, cursor_timestamp, timestamp_cursor
from sources.config_values import read_flag, read_int, read_names, read_text
from sources.errors import SourceConfigError, SourceError, SourceUnavailable
from sources.streaming import with_continuous_sync_field

__all__ = ["SqlDataSource", "SqlSettings", "TableInfo", "sql_configuration"]

CONNECT_TIMEOUT = 10  # seconds
# Incremental reads start this long before the previous sync's start (see module docstring).
_ALL_TABLES = "*"
_META_FIELDS = ("table", "schema", "database")


def sql_configuration(*, default_port: int, schema: bool) -> dict[str, dict[str, Any]]:
    """The configuration schema of a SQL source (``schema``: add PostgreSQL's schema field)."""
    fields: dict[str, dict[str, Any]] = {
        "host": {"label": "Host", "order": 1, "type": "str", "tooltip": "Server host name or IP address."},
        "port": {"label": "Port", "order": 2, "type": "int", "display": "numeric", "default_value": default_port,
                 "tooltip": "The server's TCP port."},
        "username": {"label": "Username", "order": 3, "type": "str",
                     "tooltip": "The user to log in as; it only needs to read (SELECT) the tables."},
        "password": {"label": "Password", "order": 4, "type": "str", "sensitive": True, "required": False,
                     "tooltip": "The user's password."},
        "database": {"label": "Database", "order": 5, "type": "str", "tooltip": "The database to read."},
        "tables": {
            "label": "Comma-separated list of tables",
            "order": 7,
            "type": "list",
            "display": "textarea",
            "default_value": [_ALL_TABLES],
            "tooltip": "Tables to sync; `*` syncs every table (views only when named).",
        },
        "fetch_size": {
            "label": "Rows fetched per round trip",
            "order": 8,
            "type": "int",
            "display": "numeric",
            "default_value": 500,
            "required": False,
            "ui_restrictions": ["advanced"],
            "tooltip": "Rows read per round trip to the server (memory stays bounded by this).",
            "validations": [{"type": "greater_than", "constraint": 0}],
        },
        "partition_size": {
            "label": "Rows per partition",
            "order": 9,
            "type": "int",
            "display": "numeric",
            "default_value": 50_000,
            "required": False,
            "ui_restrictions": ["advanced"],
            "tooltip": "A table with a single integer primary key is read in parallel key ranges of this many rows.",
            "validations": [{"type": "greater_than", "constraint": 0}],
        },
        "max_partitions": {
            "label": "Maximum partitions per table",
            "order": 10,
            "type": "int",
            "display": "numeric",
            "default_value": 64,
            "required": False,
            "ui_restrictions": ["advanced"],
            "tooltip": "At most this many key ranges per table, however big it is.",
            "validations": [{"type": "greater_than", "constraint": 0}],
        },
        "timestamp_column": {
            "label": "Last-modified column",
            "order": 11,
            "type": "str",
            "required": False,
            "tooltip": (
                "A column holding each row's last modification time (e.g. updated_at), kept up to date by a "
                "trigger or the application. Enables incremental syncs, and full syncs compare rows by it "
                "(without it, by each row's content). Deletions are only seen by full syncs."
            ),
        },
        "id_columns": {
            "label": "Document id columns",
            "order": 14,
            "type": "list",
            "required": False,
            "ui_restrictions": ["advanced"],
            "tooltip": (
                "Columns whose values, together unique, make each document's id, for every table (or rule query) "
                "that has them all; the others use their primary key. Empty: the primary key; a table or view "
                "without one uses a hash of the row, so an edited row becomes a new document."
            ),
        },
        "ssl_enabled": {
            "label": "Enable SSL",
            "order": 12,
            "type": "bool",
            "display": "toggle",
            "default_value": False,
            "required": False,
            "tooltip": "Connect with TLS.",
        },
        "ssl_ca": {
            "label": "SSL certificate authority",
            "order": 13,
            "type": "str",
            "display": "textarea",
            "required": False,
            "depends_on": [{"field": "ssl_enabled", "value": True}],
            "tooltip": (
                "PEM text or path of the CA that signed the server's certificate; the certificate and host "
                "name are then verified. Empty: the connection is encrypted but the server is not verified."
            ),
        },
    }
    if schema:
        fields["schema"] = {"label": "Schema", "order": 6, "type": "str", "default_value": "public",
                            "tooltip": "The schema whose tables are read."}
    return fields


@dataclasses.dataclass(frozen=True)
class SqlSettings:
    """The configuration, typed and checked. ``password`` never appears in ``repr``."""

    host: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    database: str
    schema: str | None
    tables: tuple[str, ...]
    fetch_size: int
    partition_size: int
    max_partitions: int
    timestamp_column: str | None
    id_columns: tuple[str, ...]
    ssl_enabled: bool
    ssl_ca: str | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_configuration(cls, config: Mapping[str, Any], *, engine: str, has_schema: bool) -> SqlSettings:
        """Parse every field, collect every problem, raise :class:`SourceConfigError` once."""
        problems: list[str] = []

        def text(name: str, *, required: bool = True) -> str:
            return read_text(config, name, problems, required=required)

        def integer(name: str, default: int) -> int:
            return read_int(config, name, problems, default=default)

        tables = read_names(config, "tables") or (_ALL_TABLES,)
        password = config.get("password")
        ssl_enabled = read_flag(config, "ssl_enabled")
        settings = cls(
            host=text("host"),
            port=integer("port", 0),
            username=text("username"),
            password="" if password is None else str(password),
            database=text("database"),
            schema=text("schema") if has_schema else None,
            tables=tables,
            fetch_size=integer("fetch_size", 500),
            partition_size=integer("partition_size", 50_000),
            max_partitions=integer("max_partitions", 64),
            timestamp_column=text("timestamp_column", required=False) or None,
            id_columns=read_names(config, "id_columns"),
            ssl_enabled=bool(ssl_enabled),
            ssl_ca=text("ssl_ca", required=False) or None,
        )
        if problems:
            raise SourceConfigError(f"invalid {engine} configuration: " + "; ".join(problems))
        return settings


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """What the catalog says about one table or view."""

    name: str
    columns: dict[str, str]  # column -> lower-case data type, in table order
    primary_key: tuple[str, ...] = ()
    json_columns: frozenset[str] = frozenset()  # columns the driver returns as JSON text
    is_view: bool = False


class SqlDataSource(BaseDataSource):
    """A relational database read table by table, or through advanced-rule queries.

    Subclasses set the class attributes and implement the ``_connect``/``_stream`` hooks;
    see the module docstring for what the documents look like.
    """

    incremental_sync_enabled = True
    advanced_rules_enabled = True
    document_neutral_fields = frozenset({"fetch_size", "partition_size", "max_partitions"})

    #: Display name of the server in messages, e.g. "PostgreSQL".
    engine: ClassVar[str]
    default_port: ClassVar[int] = 0
    #: Whether tables live in a configurable schema (PostgreSQL) or in the database (MySQL).
    has_schema: ClassVar[bool] = False
    #: Base class of the driver's exceptions.
    _DRIVER_ERROR: ClassVar[type[Exception]] = Exception
    #: Integer types whose single-column primary keys allow key-range partitions.
    _INTEGER_TYPES: ClassVar[frozenset[str]] = frozenset()
    #: One row, one column: the server's current time (tz-aware or naive UTC).
    _NOW_SQL: ClassVar[str] = ""
    #: Parameters (namespace, table) -> one row, one column: the estimated row count.
    _ESTIMATED_ROWS_SQL: ClassVar[str] = ""
    #: Run on a connection to the default database: the names of the databases.
    _LIST_DATABASES_SQL: ClassVar[str] = ""
    #: ``"module:Class"`` of the dialect's :class:`~sources.streaming.ChangeStream`, built as
    #: ``Class(source, stream_id, cursor)``; imported on first use, so only continuous syncs load
    #: the replication client. Empty: no continuous sync.
    _CHANGE_STREAM: ClassVar[str] = ""
    #: Parameter (namespace) -> rows (table, column) of every primary key, in key order.
    _PRIMARY_KEYS_SQL: ClassVar[str] = (
        "SELECT kcu.table_name, kcu.column_name "
        "FROM information_schema.table_constraints tc "
        "JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name "
        "AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name "
        "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = %s "
        "ORDER BY kcu.table_name, kcu.ordinal_position"
    )

    def __init__(self, configuration: Any = None, *, operator_settings: Any = None):
        super().__init__(configuration, operator_settings=operator_settings)
        self._settings: SqlSettings | None = None
        self._conn: Any = None
        self._tables: dict[str, TableInfo] | None = None
        self._ca = CaFile()

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        fields = sql_configuration(default_port=cls.default_port, schema=cls.has_schema)
        return with_continuous_sync_field(fields, order=15) if cls.continuous_sync_enabled else fields

    # -- continuous sync (a dialect with ``continuous_sync_enabled`` names its _CHANGE_STREAM) ----
    def open_change_stream(self, cursor: dict[str, Any] | None, filtering: Filter | None = None, *,
                           stream_id: str = "default") -> Any:
        """The connector's change stream (see the dialect's ``stream`` module), from ``cursor``."""
        if _advanced_rules(filtering):
            raise SourceConfigError("continuous_sync: advanced sync rules (queries) cannot be followed by change "
                                    "capture; remove them or turn continuous_sync off")
        if not self._CHANGE_STREAM:
            raise NotImplementedError(f"{type(self).__name__} does not support continuous syncs")
        module, _, name = self._CHANGE_STREAM.partition(":")
        return getattr(importlib.import_module(module), name)(self, stream_id, cursor)

    def _keyed_tables(self, why: str) -> list[TableInfo]:
        """The selected tables, refused when one has no primary key (``why`` the stream needs one)."""
        tables = self._selected_tables()
        missing = sorted(t.name for t in tables if not t.primary_key)
        if missing:
            raise SourceConfigError(
                f"continuous_sync: table(s) {', '.join(missing)} have no primary key; {why}. Add a primary key or "
                "leave these tables out of `tables`")
        return tables

    # -- dialect hooks ---------------------------------------------------------------
    @abc.abstractmethod
    def _connect(self, settings: SqlSettings, database: str | None) -> Any:
        """A new autocommit, read-only, UTC connection (``database=None``: the default one)."""

    @abc.abstractmethod
    def _stream(self, sql: str, params: Sequence[Any] | None) -> contextlib.AbstractContextManager[Any]:
        """A context manager giving an executed cursor that fetches from the server in pages."""

    @abc.abstractmethod
    def _connect_error_kind(self, exc: Exception) -> str:
        """Classify a failed connect: ``unreachable``, ``auth``, ``database`` (it does not exist),
        ``database_access`` (it does not exist or the user may not use it) or ``other``."""

    @abc.abstractmethod
    def _is_disconnect(self, exc: Exception) -> bool:
        """Whether a query failed because the connection was lost (worth a retry)."""

    @staticmethod
    @abc.abstractmethod
    def _quote(identifier: str) -> str:
        """``identifier`` quoted for SQL."""

    def _json_columns(self, namespace: str, columns: Mapping[str, Mapping[str, str]]) -> dict[str, set[str]]:
        """Table -> columns the driver returns as JSON text (decoded into dicts and lists)."""
        return {}

    def _json_result_columns(self, description: Sequence[Any]) -> set[str]:
        """Result columns the driver returns as JSON text, known from the result's metadata."""
        return set()

    # -- settings and connection -----------------------------------------------------
    def network_endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.settings.host, self.settings.port)]

    @property
    def settings(self) -> SqlSettings:
        if self._settings is None:
            self._settings = SqlSettings.from_configuration(
                self.configuration, engine=self.engine, has_schema=self.has_schema
            )
        return self._settings

    @property
    def _namespace(self) -> str:
        """Where the tables are: the schema (PostgreSQL) or the database (MySQL)."""
        return self.settings.schema or self.settings.database

    def _ca_file(self) -> str | None:
        """Path of the configured CA (PEM text is written to a private temporary file)."""
        return self._ca.path(self.settings.ssl_ca)

    def _ssl_context(self) -> ssl.SSLContext:
        """Verify the server against ``ssl_ca`` when given; otherwise encrypt only."""
        ca = self._ca_file()
        context = ssl.create_default_context(cafile=ca)
        if ca is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _scrub(self, message: str) -> str:
        password = self._settings.password if self._settings else ""
        return message.replace(password, "****") if password else message

    def _connection(self) -> Any:
        if self._conn is None:
            settings = self.settings
            try:
                self._conn = self._connect(settings, settings.database)
            except self._DRIVER_ERROR as exc:
                raise self._connect_error(exc) from exc
        return self._conn

    def _reason(self, exc: Exception) -> str:
        """The driver's message on one line, without the password (nor PyMySQL's error code)."""
        args = exc.args
        text = args[1] if len(args) == 2 and isinstance(args[0], int) else str(exc)
        return self._scrub(" ".join(str(text).split()))

    def _connect_error(self, exc: Exception) -> SourceError:
        s = self.settings
        reason = self._reason(exc)
        kind = self._connect_error_kind(exc)
        if kind == "unreachable":
            return SourceUnavailable(f"cannot reach {self.engine} at {s.address}: {reason}")
        if kind == "auth":
            return SourceConfigError(
                f"authentication failed for user {s.username} on {self.engine} at {s.address}: "
                "check the username and password"
            )
        if kind in ("database", "database_access"):
            message = f"database `{s.database}` does not exist on {s.address}"
            if kind == "database_access":
                message += f" or user {s.username} may not use it"
            names = self._database_names()
            if names is not None:
                message += f"; databases are: {', '.join(names) or '(none)'}"
            return SourceConfigError(message)
        return SourceError(f"{self.engine} at {s.address} refused the connection: {reason}")

    def _database_names(self) -> list[str] | None:
        """The databases the user can see, for error messages (None when unknown)."""
        try:
            conn = self._connect(self.settings, None)
        except self._DRIVER_ERROR:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute(self._LIST_DATABASES_SQL)
                return sorted(str(row[0]) for row in cur.fetchall())
        except self._DRIVER_ERROR:
            return None
        finally:
            conn.close()

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate driver errors raised while ``action`` into :mod:`sources.errors`."""
        try:
            yield
        except self._DRIVER_ERROR as exc:
            reason = self._reason(exc)
            if self._is_disconnect(exc):
                self._discard_connection()
                raise SourceUnavailable(
                    f"lost the connection to {self.engine} at {self.settings.address} while {action}: {reason}"
                ) from exc
            raise SourceError(f"{self.engine} failed while {action}: {reason}") from exc

    def _query(self, sql: str, params: Sequence[Any] | None = None, *, action: str = "reading the catalog") -> list:
        """All rows of a small query."""
        with self._errors(action), self._connection().cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def _server_now(self) -> datetime:
        value = self._query(self._NOW_SQL, action="reading the server time")[0][0]
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)

    # -- catalog ---------------------------------------------------------------------
    def _catalog(self) -> dict[str, TableInfo]:
        """Every table and view of the namespace, read once per instance."""
        if self._tables is None:
            ns = self._namespace
            kinds = dict(
                self._query(
                    "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = %s", (ns,)
                )
            )
            columns: dict[str, dict[str, str]] = {name: {} for name in kinds}
            for table, column, data_type in self._query(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s ORDER BY table_name, ordinal_position",
                (ns,),
            ):
                columns.setdefault(table, {})[column] = str(data_type).lower()
            keys: dict[str, list[str]] = {}
            for table, column in self._query(self._PRIMARY_KEYS_SQL, (ns,)):
                keys.setdefault(table, []).append(column)
            json_columns = self._json_columns(ns, columns)
            self._tables = {
                name: TableInfo(
                    name=name,
                    columns=columns.get(name, {}),
                    primary_key=tuple(keys.get(name, ())),
                    json_columns=frozenset(json_columns.get(name, ())),
                    is_view=str(kinds[name]).upper() == "VIEW",
                )
                for name in sorted(kinds)
            }
        return self._tables

    def _where(self) -> str:
        s = self.settings
        return f"{self.engine} at {s.address}, database `{s.database}`" + (
            f", schema `{s.schema}`" if s.schema else ""
        )

    def _missing_tables_error(self, missing: Sequence[str], catalog: Mapping[str, TableInfo]) -> SourceConfigError:
        noun = "table" if len(missing) == 1 else "tables"
        names = ", ".join(f"`{t}`" for t in missing)
        verb = "does" if len(missing) == 1 else "do"
        return SourceConfigError(
            f"{noun} {names} {verb} not exist in {self._where()}; tables are: {', '.join(catalog) or '(none)'}"
        )

    def _selected_tables(self) -> list[TableInfo]:
        catalog = self._catalog()
        wanted = self.settings.tables
        if _ALL_TABLES in wanted:
            return [t for t in catalog.values() if not t.is_view]
        missing = [t for t in wanted if t not in catalog]
        if missing:
            raise self._missing_tables_error(missing, catalog)
        return [catalog[t] for t in dict.fromkeys(wanted)]

    def _qualified(self, table: str) -> str:
        return f"{self._quote(self._namespace)}.{self._quote(table)}"

    # -- lifecycle -------------------------------------------------------------------
    async def ping(self) -> None:
        self._query("SELECT 1", action="pinging the server")

    async def validate_config(self) -> None:
        tables = self._selected_tables()
        column = self.settings.timestamp_column
        if column and tables and not any(column in t.columns for t in tables):
            raise SourceConfigError(
                f"timestamp_column: no synced table has a column `{column}` in {self._where()}; "
                "clear the setting or name an existing column"
            )

    async def close(self) -> None:
        self._discard_connection()
        self._ca.remove()

    # -- reading ---------------------------------------------------------------------
    def _start_cursor(self) -> dict[str, Any] | None:
        """Where the next incremental sync starts: now, on the server's clock (None: no timestamps)."""
        return timestamp_cursor(self._server_now()) if self.settings.timestamp_column else None

    def get_partitions(self) -> list[Partition]:
        self._sync_cursor = self._start_cursor()
        tables = self._selected_tables()
        plan = [p for table in tables for p in self._plan_table(table)] or [Partition("none")]
        self._logger.info("planned %d partitions over %d tables", len(plan), len(tables))
        return [Partition(p.key, {**p.params, "index": i, "of": len(plan)}) for i, p in enumerate(plan)]

    def _plan_table(self, table: TableInfo) -> list[Partition]:
        s = self.settings
        whole = [Partition(table.name, {"table": table.name})]
        if len(table.primary_key) != 1 or table.columns.get(table.primary_key[0]) not in self._INTEGER_TYPES:
            return whole
        column = table.primary_key[0]
        low, high = self._query(
            f"SELECT min({self._quote(column)}), max({self._quote(column)}) FROM {self._qualified(table.name)}",
            action=f"planning partitions of `{table.name}`",
        )[0]
        if low is None:
            return whole
        span = int(high) - int(low) + 1
        estimate = self._query(self._ESTIMATED_ROWS_SQL, (self._namespace, table.name))
        estimate = int(estimate[0][0] or 0) if estimate else 0
        rows = min(span, estimate) if estimate > 0 else span
        count = max(1, min(s.max_partitions, math.ceil(rows / s.partition_size)))
        if count == 1:
            return whole
        bounds = [int(low) + span * i // count for i in range(1, count)]
        return [
            Partition(
                f"{table.name}[{'' if lo is None else lo}:{'' if hi is None else hi}]",
                {"table": table.name, "column": column, "low": lo, "high": hi},
            )
            for lo, hi in zip([None, *bounds], [*bounds, None], strict=True)
        ]

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None) -> Iterator[Any]:
        rules = _advanced_rules(filtering)
        if partition is None and self._sync_cursor is None:
            self._sync_cursor = self._start_cursor()
        if rules:
            for number, rule in enumerate(rules):
                if partition is None or number % partition.params.get("of", 1) == partition.params.get("index", 0):
                    yield from ((doc, None) for doc in self._read_rule(rule))
            return
        if partition is None or not partition.params:  # no plan: the whole source
            for table in self._selected_tables():
                yield from ((doc, None) for doc in self._read_table(table))
            return
        name = partition.params.get("table")
        if name is None:
            return
        table = self._catalog().get(name) or TableInfo(name, {})
        yield from ((doc, None) for doc in self._read_table(table, partition.params))

    def get_docs_incrementally(
        self, sync_cursor: dict[str, Any] | None, filtering: Filter | None = None
    ) -> Iterator[Any]:
        """Rows changed since the cursor as ``(doc, None, "index")``; deletions are not seen.

        Without ``timestamp_column`` (or a usable cursor), or for a table lacking the column,
        every row is sent again. Advanced-rule queries are always read whole.
        """
        since = cursor_timestamp(sync_cursor) if self.settings.timestamp_column else None
        self._sync_cursor = self._start_cursor()
        if since is None:
            self._logger.warning("incremental sync without timestamp_column or cursor: reading every row again")
        rules = _advanced_rules(filtering)
        if rules:
            for rule in rules:
                yield from ((doc, None, OP_INDEX) for doc in self._read_rule(rule))
            return
        column = self.settings.timestamp_column
        for table in self._selected_tables():
            if since is not None and column not in table.columns:
                self._logger.info("table %s has no column %s: reading it whole", table.name, column)
            yield from ((doc, None, OP_INDEX) for doc in self._read_table(table, since=since))

    def _meta(self, table: str | list[str]) -> dict[str, Any]:
        meta: dict[str, Any] = {"table": table, "database": self.settings.database}
        if self.has_schema:
            meta["schema"] = self.settings.schema
        return meta

    def _read_table(
        self, table: TableInfo, bounds: Mapping[str, Any] | None = None, since: datetime | None = None
    ) -> Iterator[Doc]:
        conditions, params = [], []
        if bounds and bounds.get("column"):
            column = self._quote(bounds["column"])
            if bounds.get("low") is not None:
                conditions.append(f"{column} >= %s")
                params.append(bounds["low"])
            if bounds.get("high") is not None:
                conditions.append(f"{column} < %s")
                params.append(bounds["high"])
        ts_column = self.settings.timestamp_column
        if since is not None and ts_column in table.columns:
            conditions.append(f"{self._quote(ts_column)} >= %s")
            params.append((since - CURSOR_OVERLAP).replace(tzinfo=None))
        sql = f"SELECT * FROM {self._qualified(table.name)}"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        yield from self._read(
            sql,
            params,
            action=f"reading table `{table.name}`",
            id_prefix=table.name,
            key_columns=table.primary_key,
            json_columns=table.json_columns,
            meta=self._meta(table.name),
        )

    def _read_rule(self, rule: Mapping[str, Any]) -> Iterator[Doc]:
        catalog = self._catalog()
        tables = list(rule["tables"])
        missing = [t for t in tables if t not in catalog]
        if missing:
            raise self._missing_tables_error(missing, catalog)
        infos = [catalog[t] for t in tables]
        yield from self._read(
            _rule_query(rule),
            None,
            action=f"running the advanced rule query for {', '.join(tables)}",
            id_prefix="_".join(tables),
            key_columns=tuple(dict.fromkeys(c for t in infos for c in t.primary_key)),
            json_columns=frozenset().union(*(t.json_columns for t in infos)),
            meta=self._meta(tables[0] if len(tables) == 1 else tables),
        )

    def _read(
        self,
        sql: str,
        params: Sequence[Any] | None,
        *,
        action: str,
        id_prefix: str,
        key_columns: Sequence[str],
        json_columns: frozenset[str],
        meta: Mapping[str, Any],
    ) -> Iterator[Doc]:
        """Stream one query's rows as documents, ``fetch_size`` rows per round trip."""
        fetch_size = self.settings.fetch_size
        with self._errors(action), self._stream(sql, params) as cursor:
            columns = [d[0] for d in cursor.description]
            chosen = self.settings.id_columns
            if chosen and all(c in columns for c in chosen):
                key_columns = chosen
            mapper = _RowMapper(
                columns,
                id_prefix=id_prefix,
                key_columns=[c for c in key_columns if c in columns],
                json_columns=json_columns | self._json_result_columns(cursor.description),
                timestamp_column=self.settings.timestamp_column,
                meta=meta,
            )
            while rows := cursor.fetchmany(fetch_size):
                for row in rows:
                    yield mapper(row)

    # -- advanced rules --------------------------------------------------------------
    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        """Problems with a ``[{"tables": [...], "query": "..."}]`` snippet (empty: valid).

        Checks the shape, that the tables exist and that each query compiles (``EXPLAIN``).
        """
        rules = _snippet_value(advanced_rules)
        if not isinstance(rules, list):
            return ['advanced rules must be a list like [{"tables": ["orders"], "query": "SELECT ..."}]']
        problems = []
        for number, rule in enumerate(rules, 1):
            if not isinstance(rule, Mapping):
                problems.append(f"rule {number}: expected an object with `tables` and `query`")
                continue
            unknown = sorted(set(rule) - {"tables", "query"})
            if unknown:
                problems.append(f"rule {number}: unknown keys {', '.join(unknown)}; allowed: tables, query")
            tables = rule.get("tables")
            if not (isinstance(tables, list) and tables and all(isinstance(t, str) and t for t in tables)):
                problems.append(f"rule {number}: `tables` must be a non-empty list of table names")
            if not (isinstance(rule.get("query"), str) and rule["query"].strip()):
                problems.append(f"rule {number}: `query` must be a non-empty SQL query")
        if problems:
            return problems
        try:
            catalog = self._catalog()
        except SourceError as exc:
            return [f"cannot check the rules' tables and queries: {exc}"]
        for number, rule in enumerate(rules, 1):
            missing = [t for t in rule["tables"] if t not in catalog]
            if missing:
                problems.append(f"rule {number}: {self._missing_tables_error(missing, catalog)}")
                continue
            try:
                self._query(f"EXPLAIN {_rule_query(rule)}", action=f"checking rule {number}'s query")
            except SourceError as exc:
                problems.append(f"rule {number}: {exc}")
        return problems


class _RowMapper:
    """Turns the rows of one result set into documents (see the module docstring)."""

    def __init__(
        self,
        columns: Sequence[str],
        *,
        id_prefix: str,
        key_columns: Sequence[str],
        json_columns: frozenset[str],
        timestamp_column: str | None,
        meta: Mapping[str, Any],
    ):
        self._fields = [f"column_{c}" if c.startswith("_") or c in _META_FIELDS else c for c in columns]
        self._prefix = id_prefix
        self._keys = [columns.index(c) for c in key_columns]
        self._json = {i for i, c in enumerate(columns) if c in json_columns}
        self._ts = columns.index(timestamp_column) if timestamp_column in columns else None
        self._meta = dict(meta)

    def __call__(self, row: Sequence[Any]) -> Doc:
        values = [_json_value(v) if i in self._json else _field_value(v) for i, v in enumerate(row)]
        doc: Doc = dict(zip(self._fields, values, strict=True))
        doc.update(self._meta)
        if self._keys:
            key = "_".join(_key_part(row[i]) for i in self._keys)
        else:
            key = hashlib.sha1(repr(values).encode("utf-8")).hexdigest()
        doc["_id"] = f"{self._prefix}_{key}"
        if self._ts is not None and isinstance(row[self._ts], (datetime, date)):
            doc["_timestamp"] = _utc_iso(row[self._ts])
        return doc


def _field_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, Decimal)):
        return value
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [_field_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_field_value(v) for v in value), key=repr)
    if isinstance(value, Mapping):
        return {str(k): _field_value(v) for k, v in value.items()}
    return str(value)


def _json_value(value: Any) -> Any:
    """A JSON column the driver returned as text."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return _field_value(value)


def _duration(value: timedelta) -> str:
    """``[-]H:MM:SS[.ffffff]`` with hours beyond 24, as MySQL prints TIME values."""
    sign = "-" if value < timedelta(0) else ""
    micros = abs(value) // timedelta(microseconds=1)
    seconds, micros = divmod(micros, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}:{minutes:02d}:{seconds:02d}" + (f".{micros:06d}" if micros else "")


def _utc_iso(value: date) -> str:
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    value = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _key_part(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


def _snippet_value(snippet: Any) -> Any:
    """The rules list, whether given bare or as an advanced snippet object ``{"value": [...]}``."""
    if isinstance(snippet, Mapping) and "value" in snippet:
        return snippet["value"]
    return snippet


def _advanced_rules(filtering: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not filtering:
        return []
    rules = _snippet_value(Filter(filtering).get_advanced_rules())
    return list(rules) if isinstance(rules, list) else []


def _rule_query(rule: Mapping[str, Any]) -> str:
    """The rule's query without trailing semicolons (it is wrapped in DECLARE or EXPLAIN)."""
    return str(rule["query"]).strip().rstrip(";").strip()

