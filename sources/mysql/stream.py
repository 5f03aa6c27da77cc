"""MySQL/MariaDB change capture: the row-based binlog, read with mysql-replication.

The server must write a row-based binlog with whole rows (``log_bin``, ``binlog_format=ROW``,
``binlog_row_image=FULL``; ``binlog_row_metadata=FULL`` gives column names without asking
the catalog) and the user needs ``REPLICATION SLAVE`` and ``BINLOG MONITOR`` (MariaDB 10.5+;
``REPLICATION CLIENT`` before). Nothing is kept on the server for a stream: the position
lives in the connector's ``sync_cursor`` (:meth:`MySqlChangeStream.cursor`), and the server
keeps its binlog files for ``expire_logs_days`` / ``binlog_expire_logs_seconds`` whatever
reads them.

First run (no usable cursor): ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` on the source's
read-only session, then ``SHOW STATUS LIKE 'binlog_snapshot_%'``: MariaDB gives the binlog
file and position of that very snapshot. The tables are read in that transaction (the same
documents a batch sync makes), then the binlog is read from exactly that position: nothing
lost or applied twice at the handoff, whatever is written meanwhile.

Positions and versions: a binlog position is a file (``<base>.<sequence number>``) and a byte
offset below 2^32 (``max_binlog_size`` is at most 1 GiB), so ``sequence * 2^32 + offset`` grows
with the commit order across files on one server. A change's position is the end of its
transaction's commit event (every change of a transaction shares it); it is the documents'
external version. MariaDB GTIDs are recorded in the cursor (``gtid``) for operators but are
not the version: their sequence numbers are ordered per replication domain only, and a
server with several domains interleaves them.

Changes: one per row and transaction (the last one wins: a row inserted then deleted in one
transaction is one delete); an update that changes the primary key deletes the old
document; ``TRUNCATE`` removes the table's documents. Tables need a primary key (the
document id of a deleted row is made from it).

A stored position the server cannot serve any more (its binlog file purged, another server,
binlog numbering restarted by ``RESET MASTER``) raises :class:`StreamPositionLost`; the
service then clears the cursor and the next run takes a new snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import MariadbGtidEvent, QueryEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent
from pymysqlreplication.constants import FIELD_TYPE

from sources._sql import TableInfo, _RowMapper
from sources.errors import SourceConfigError, SourceError, SourceUnavailable, StreamPositionLost
from sources.streaming import Change, ChangeStream, TransactionChanges

__all__ = ["MySqlChangeStream", "binlog_version", "binlog_position"]

_LOGGER = logging.getLogger(__name__)
_OFFSET_BITS = 32
_QUEUE_SIZE = 200  # transactions read ahead of the pipeline at most
_MAX_CHANGES = 2000  # changes returned by one changes() call at most (whole transactions)
_TRUNCATE = re.compile(r"^\s*TRUNCATE\s+(?:TABLE\s+)?(?:`((?:[^`]|``)+)`|(\w+))(?:\s*\.\s*(?:`((?:[^`]|``)+)`|(\w+)))?",
                       re.IGNORECASE)
# Server errors: the binlog file or position asked for is not there (1236), access denied (1227, 1045).
_BINLOG_GONE = 1236
_DENIED = frozenset({1227, 1045, 1142})


def binlog_version(file: str, offset: int) -> int:
    """The version of binlog position (``file``, ``offset``): file sequence number * 2^32 + offset."""
    return (_file_sequence(file) << _OFFSET_BITS) + int(offset)


def binlog_position(version: int, like_file: str) -> tuple[str, int]:
    """The (file, offset) of ``version``, the file named like ``like_file`` (same base and padding)."""
    base, digits = like_file.rsplit(".", 1)
    return f"{base}.{version >> _OFFSET_BITS:0{len(digits)}d}", version & ((1 << _OFFSET_BITS) - 1)


def _file_sequence(file: str) -> int:
    try:
        return int(str(file).rsplit(".", 1)[1])
    except (IndexError, ValueError):
        raise SourceError(f"unexpected binlog file name {file!r}: expected <base>.<number>") from None


class MySqlChangeStream(ChangeStream):
    """A connector's MySQL/MariaDB changes (see the module docstring)."""

    def __init__(self, source: Any, stream_id: str, cursor: dict[str, Any] | None):
        self.source = source
        self.stream_id = stream_id
        self.database = source.settings.database
        self.tables = {t.name: t for t in source._keyed_tables("a deleted row's document is found by its key")}
        self._mappers: dict[str, tuple[list[str], _RowMapper]] = {}
        self._server_id = 0
        self._file = ""  # a binlog file name of this server (for its base and padding)
        self._start_at: tuple[str, int] = ("", 0)
        self._snapshot_rows: Iterator[dict[str, Any]] | None = None
        self._acked = 0  # the version Elasticsearch acknowledged (0: the snapshot is not in yet)
        self._emitted = 0  # the last version handed out
        self._gtids: deque[tuple[int, str]] = deque()  # (version, GTID) of transactions handed out, not acked
        self._gtid = ""  # GTID of the acknowledged position
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._reader: BinLogStreamReader | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._open(cursor)

    # -- setup ---------------------------------------------------------------------------
    def _open(self, cursor: dict[str, Any] | None) -> None:
        variables = dict(self.source._query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
            "('log_bin', 'binlog_format', 'binlog_row_image', 'server_id')", action="reading the binlog settings"))
        wanted = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL"}
        wrong = [f"{name}={variables.get(name, 'unset')}" for name, value in wanted.items()
                 if str(variables.get(name, "")).upper() != value]
        if wrong:
            raise SourceConfigError(
                f"continuous_sync needs a row-based binlog with whole rows on {self.source.engine} at "
                f"{self.source.settings.address}: the server has {', '.join(wrong)}; set log_bin, binlog_format=ROW "
                "and binlog_row_image=FULL (docs/sources/mysql.md)")
        self._server_id = int(variables.get("server_id") or 0)
        logs = self._binary_logs()
        self._file = logs[-1] if logs else ""
        position = self._stored_position(cursor, logs)
        if position is not None:
            self._start_at = position
            self._acked = binlog_version(*position)
            self._gtid = str((cursor or {}).get("gtid") or "")
            return
        self._take_snapshot()

    def _binary_logs(self) -> list[str]:
        try:
            rows = self.source._query("SHOW BINARY LOGS", action="listing the binlog files")
        except SourceError as exc:
            if "privilege" in str(exc) or "denied" in str(exc):
                raise SourceConfigError(
                    f"user {self.source.settings.username} may not list the binlog on {self.source.settings.address}: "
                    f"{exc}; grant it BINLOG MONITOR (REPLICATION CLIENT before MariaDB 10.5) and REPLICATION SLAVE "
                    "(docs/sources/mysql.md)") from exc
            raise
        return [str(row[0]) for row in rows]

    def _stored_position(self, cursor: dict[str, Any] | None, logs: list[str]) -> tuple[str, int] | None:
        """The cursor's position when the server can still serve it; None: there is none (snapshot)."""
        if not cursor or not cursor.get("file"):
            return None
        file, offset, server = cursor.get("file"), cursor.get("pos"), cursor.get("server_id")
        where = f"{self.source.engine} at {self.source.settings.address}"
        if not isinstance(file, str) or not isinstance(offset, int) or offset < 4:
            raise StreamPositionLost(f"the stored binlog position {file!r}:{offset!r} is not one; the next run takes "
                                     "a new snapshot")
        if server is not None and server != self._server_id:
            problem = f"was read from server_id {server}, but {where} is server_id {self._server_id}"
        elif file not in logs:
            problem = (f"is no longer on {where} (its binlog files are {logs[0]} to {logs[-1]}: purged)" if logs
                       else f"is no longer on {where} (it has no binlog files)")
        else:
            return file, offset
        raise StreamPositionLost(
            f"binlog position {file}:{offset} {problem}: changes made since the last acknowledged position cannot be "
            "read; the next run takes a new snapshot and deletes the documents of rows that vanished meanwhile")

    def _take_snapshot(self) -> None:
        source = self.source
        source._query("START TRANSACTION WITH CONSISTENT SNAPSHOT", action="starting the snapshot")
        status = {str(k).lower(): v for k, v in source._query("SHOW STATUS LIKE 'binlog_snapshot_%'",
                                                               action="reading the snapshot's binlog position")}
        file, offset = status.get("binlog_snapshot_file"), status.get("binlog_snapshot_position")
        if not file or offset is None:
            source._query("COMMIT", action="ending the snapshot")
            raise SourceConfigError(
                f"{source.engine} at {source.settings.address} does not report the binlog position of a consistent "
                "snapshot (binlog_snapshot_file/position: MariaDB does, MySQL does not); continuous_sync needs MariaDB")
        self._start_at = (str(file), int(offset))
        self._file = self._start_at[0]
        with contextlib.suppress(SourceError, IndexError):  # the snapshot's GTID, for the cursor
            self._gtid = str(source._query("SELECT BINLOG_GTID_POS(%s, %s)", self._start_at,
                                           action="reading the snapshot's GTID")[0][0] or "")
        self.snapshot_position = binlog_version(*self._start_at)
        _LOGGER.info("stream %s: snapshot at binlog %s:%s of %d table(s)", self.stream_id, file, offset,
                     len(self.tables))
        self._snapshot_rows = self._read_snapshot()

    def _read_snapshot(self) -> Iterator[dict[str, Any]]:
        try:
            for table in self.tables.values():
                yield from self.source._read_table(table)
        finally:
            with contextlib.suppress(SourceError):
                self.source._query("COMMIT", action="ending the snapshot")

    def snapshot(self) -> Iterator[dict[str, Any]]:
        rows, self._snapshot_rows = self._snapshot_rows, None
        return rows if rows is not None else iter(())

    # -- reading the binlog (a thread, so a change is handed out as soon as it commits) ----------
    def _start(self) -> None:
        if self._thread is not None:
            return
        if self._snapshot_rows is not None:  # the snapshot must be read (or given up) first
            for _ in self._snapshot_rows:
                pass
            self._snapshot_rows = None
        s = self.source.settings
        settings: dict[str, Any] = {"host": s.host, "port": s.port, "user": s.username, "password": s.password,
                                    "connect_timeout": 10}
        if s.ssl_enabled:
            settings["ssl"] = self.source._ssl_context()
        file, offset = self._start_at
        self._reader = BinLogStreamReader(
            connection_settings=settings, server_id=_replica_id(self._server_id, self.stream_id),
            resume_stream=True, log_file=file, log_pos=offset, blocking=True, slave_heartbeat=1,
            only_schemas=[self.database], only_tables=list(self.tables), enable_logging=False,
            only_events=[MariadbGtidEvent, QueryEvent, XidEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
        self._thread = threading.Thread(target=self._run, name=f"binlog-{self.stream_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        txn, gtid = TransactionChanges(), ""
        reader = self._reader
        assert reader is not None
        try:
            for event in reader:
                if self._closing.is_set():
                    return
                if isinstance(event, MariadbGtidEvent):
                    txn.clear()
                    gtid = str(event.gtid)
                elif isinstance(event, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                    if event.schema == self.database and event.table in self.tables:
                        self._rows(event, txn)
                elif isinstance(event, XidEvent):
                    self._put(reader.log_file, event.packet.log_pos, gtid, txn.commit(0, event.timestamp))
                elif isinstance(event, QueryEvent):
                    self._query_event(reader.log_file, event, gtid, txn)
        except Exception as exc:  # noqa: BLE001 - handed to changes(), which raises it
            if not self._closing.is_set():
                self._queue.put(self._error(exc))
        else:
            if not self._closing.is_set():
                self._queue.put(SourceUnavailable(f"the binlog of {self._where()} ended"))

    def _query_event(self, file: str, event: QueryEvent, gtid: str, txn: TransactionChanges) -> None:
        query = event.query.decode("utf-8", "replace") if isinstance(event.query, bytes) else str(event.query)
        statement = query.strip().upper()
        if statement == "BEGIN":
            return
        match = _TRUNCATE.match(query)
        if match:
            first = (match.group(1) or "").replace("``", "`") or match.group(2)
            second = (match.group(3) or "").replace("``", "`") or match.group(4)
            schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema or "")
            schema, table = (first, second) if second else (schema, first)
            if schema == self.database and table in self.tables:
                txn.truncate(table)
        # COMMIT of a non-transactional table's changes, a TRUNCATE, or DDL: a transaction ends here.
        self._put(file, event.packet.log_pos, gtid, txn.commit(0, event.timestamp))

    def _put(self, file: str, offset: int, gtid: str, changes: list[Change]) -> None:
        version = binlog_version(file, offset)
        changes = [c._replace(position=version) for c in changes]
        while not self._closing.is_set():
            try:
                self._queue.put((version, gtid, changes), timeout=0.5)
                return
            except queue.Full:
                continue

    def _mapper(self, table: str, columns: list[str]) -> _RowMapper:
        """Rows of ``table`` -> documents, as the snapshot (and a batch sync) makes them."""
        known = self._mappers.get(table)
        if known is None or known[0] != columns:
            info: TableInfo = self.tables[table]
            chosen = self.source.settings.id_columns
            keys = chosen if chosen and all(c in columns for c in chosen) else info.primary_key
            known = columns, _RowMapper(columns, id_prefix=table, key_columns=[c for c in keys if c in columns],
                                        json_columns=info.json_columns,
                                        timestamp_column=self.source.settings.timestamp_column,
                                        meta=self.source._meta(table))
            self._mappers[table] = known
        return known[1]

    def _rows(self, event: Any, txn: TransactionChanges) -> None:
        columns = [c.name for c in event.columns]
        converters = [_converter(c) for c in event.columns]
        mapper = self._mapper(event.table, columns)

        def values(row: dict[str, Any]) -> list[Any]:
            return [convert(row.get(name)) for name, convert in zip(columns, converters, strict=True)]

        for row in event.rows:
            if isinstance(event, DeleteRowsEvent):
                txn.add(Change("delete", {"_id": mapper(values(row["values"]))["_id"]}, 0), event.table)
                continue
            if isinstance(event, UpdateRowsEvent):
                old_id = mapper(values(row["before_values"]))["_id"]
                doc = mapper(values(row["after_values"]))
                if old_id != doc["_id"]:  # the key changed: the old document goes
                    txn.add(Change("delete", {"_id": old_id}, 0), event.table)
            else:
                doc = mapper(values(row["values"]))
            txn.add(Change("index", doc, 0), event.table)

    def _error(self, exc: Exception) -> SourceError:
        reason = self.source._reason(exc)
        code = exc.args[0] if isinstance(exc, pymysql.Error) and exc.args and isinstance(exc.args[0], int) else None
        if code == _BINLOG_GONE:
            return StreamPositionLost(
                f"{self._where()} can no longer serve binlog position {self._position_text()}: {reason}; the next run "
                "takes a new snapshot and deletes the documents of rows that vanished meanwhile")
        if code in _DENIED:
            return SourceConfigError(
                f"user {self.source.settings.username} may not read the binlog of {self._where()}: {reason}; grant it "
                "REPLICATION SLAVE and BINLOG MONITOR (docs/sources/mysql.md)")
        if isinstance(exc, (pymysql.OperationalError, OSError)):
            return SourceUnavailable(f"lost {self._where()} while reading its binlog: {reason}")
        return SourceError(f"reading the binlog of {self._where()} failed: {type(exc).__name__}: {reason}")

    def _where(self) -> str:
        return f"{self.source.engine} at {self.source.settings.address}"

    def _position_text(self) -> str:
        return "%s:%s" % self._start_at

    # -- changes -------------------------------------------------------------------------
    def changes(self, timeout: float) -> list[Change]:
        self._start()
        deadline = time.monotonic() + timeout
        out: list[Change] = []
        while len(out) < _MAX_CHANGES:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if not out else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Exception):
                raise item
            version, gtid, changes = item
            if changes:
                out.extend(changes)
                self._emitted = version
                self._gtids.append((version, gtid))
            elif self._acked >= self._emitted and self._acked and not out:
                # Nothing of ours is on its way: the position may pass what others wrote.
                self._acked, self._emitted, self._gtid = version, version, gtid or self._gtid
            if time.monotonic() >= deadline:
                break
        return out

    # -- acknowledgement -----------------------------------------------------------------
    def acknowledge(self, position: int) -> None:
        if self.snapshot_position and position >= self.snapshot_position:
            self.snapshot_position = 0  # the snapshot is in Elasticsearch: the cursor may say where we stand
            self._acked = max(self._acked, binlog_version(*self._start_at))
        if not self._acked or position <= self._acked:
            return
        self._acked = position
        while self._gtids and self._gtids[0][0] <= position:
            self._gtid = self._gtids.popleft()[1] or self._gtid

    def cursor(self) -> dict[str, Any]:
        """``{"file", "pos", "gtid", "server_id"}`` of the acknowledged position; ``{}`` while the
        snapshot is not acknowledged (the next stream then snapshots again)."""
        if not self._acked:
            return {}
        file, offset = binlog_position(self._acked, self._file or self._start_at[0])
        return {"file": file, "pos": offset, "gtid": self._gtid, "server_id": self._server_id}

    def lag_hint(self) -> dict[str, Any]:
        return {"queued_transactions": self._queue.qsize()}

    def close(self) -> None:
        self._closing.set()
        if self._snapshot_rows is not None:
            with contextlib.suppress(Exception):
                self._snapshot_rows.close()  # type: ignore[attr-defined]
            self._snapshot_rows = None
        reader = self._reader
        if reader is not None:
            sock = getattr(getattr(reader, "_stream_connection", None), "_sock", None)
            with contextlib.suppress(Exception):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
            with contextlib.suppress(Exception):
                reader.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _replica_id(server_id: int, stream_id: str) -> int:
    """A replica server_id for this stream, unlike the server's own (two readers must not share one)."""
    import zlib

    value = 0x40000000 + zlib.crc32(stream_id.encode("utf-8")) % 0x3FFFFFFF
    return value + 1 if value == server_id else value


def _converter(column: Any) -> Any:
    """Turn mysql-replication's value of ``column`` into what PyMySQL returns for it (the snapshot's)."""
    if column.type == FIELD_TYPE.BIT:
        size = max(1, (int(getattr(column, "bits", 0) or 0) + 7) // 8)
        return lambda v: v if v is None or isinstance(v, bytes) else int(v, 2).to_bytes(size, "big")
    if column.type == FIELD_TYPE.SET:
        order = list(getattr(column, "set_values", None) or [])
        return lambda v: v if not isinstance(v, (set, frozenset)) else ",".join(
            sorted(v, key=lambda m: order.index(m) if m in order else len(order)))
    return _same


def _same(value: Any) -> Any:
    return value
