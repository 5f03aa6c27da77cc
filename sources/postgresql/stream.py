"""PostgreSQL change capture: logical replication (``pgoutput``) through psycopg2.

psycopg 3 has no replication protocol; psycopg2's ``LogicalReplicationConnection`` is the
client here. For a connector the stream keeps, on the server, named after the connector
(``elastic_ingest_<connector id>``):

* a publication of the connector's tables only (``CREATE PUBLICATION ... FOR TABLE``; its
  comment records the tables and whether the first snapshot was fully acknowledged);
* a logical replication slot (``pgoutput``), whose ``confirmed_flush_lsn`` is the position:
  it moves only when :meth:`PgChangeStream.acknowledge` is called, i.e. after Elasticsearch
  acknowledged every write up to it.

First run: the slot is created inside a ``REPEATABLE READ`` transaction with
``USE_SNAPSHOT``, the tables are read in that same transaction (the slot's consistent
point), then replication starts at exactly that point: nothing is lost or applied twice at
the handoff, whatever is written meanwhile.

Changes: one per row and transaction (the last one wins: a row inserted then deleted in one
transaction is one delete), positioned at the transaction's commit end LSN, the document
version. ``TRUNCATE`` removes the table's documents. Updates whose unchanged TOASTed columns
the server leaves out are read again from the table. Tables need a primary key (PostgreSQL
refuses UPDATE and DELETE on a published table without a replica identity).

Idle: the slot is confirmed up to the server's WAL end whenever everything sent was
acknowledged, so an idle connector does not hold WAL back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import select
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from sources._sql import TableInfo, _key_part, _RowMapper
from sources.errors import SourceConfigError, SourceError, SourceUnavailable, StreamPositionLost
from sources.streaming import Change, ChangeStream, TransactionChanges

__all__ = ["PgChangeStream", "stream_name", "drop_stream", "lsn_text", "parse_lsn"]

_LOGGER = logging.getLogger(__name__)
_PG_EPOCH = 946_684_800  # 2000-01-01 in Unix seconds: pgoutput's timestamps count from there
_FEEDBACK_EVERY = 1.0  # seconds between two acknowledgements sent to the server
_IDLE_CONFIRM_EVERY = 10.0  # seconds between two confirmations of an idle slot
_MAX_CHANGES = 2000  # changes returned by one changes() call at most (whole transactions)


def stream_name(stream_id: str) -> str:
    """The slot and publication name of a connector: ``elastic_ingest_`` + its id, lower-case."""
    slug = re.sub(r"[^a-z0-9_]", "_", stream_id.lower())
    return f"elastic_ingest_{slug}"[:63]


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _connect(source: Any, *, replication: bool) -> Any:
    s = source.settings
    kwargs: dict[str, Any] = {}
    if s.ssl_enabled:
        ca = source._ca_file()
        kwargs = {"sslmode": "verify-full", "sslrootcert": ca} if ca else {"sslmode": "require"}
    try:
        conn = psycopg2.connect(
            host=s.host, port=s.port, user=s.username, password=s.password, dbname=s.database,
            connect_timeout=10, application_name="elastic-ingest-stream", options="-c TimeZone=UTC",
            connection_factory=psycopg2.extras.LogicalReplicationConnection if replication else None, **kwargs)
    except psycopg2.Error as exc:
        reason = source._scrub(" ".join(str(exc).split()))
        if "replication" in reason and ("permission" in reason or "must be" in reason):
            raise SourceConfigError(f"user {s.username} may not use replication on PostgreSQL at {s.address}: "
                                    f"{reason}; grant it REPLICATION (docs/sources/postgresql.md)") from exc
        raise SourceUnavailable(f"cannot reach PostgreSQL at {s.address} for change capture: {reason}") from exc
    if not replication:
        conn.autocommit = True
    return conn


@contextlib.contextmanager
def _errors(source: Any, action: str) -> Iterator[None]:
    try:
        yield
    except psycopg2.OperationalError as exc:
        raise SourceUnavailable(f"lost PostgreSQL at {source.settings.address} while {action}: "
                                f"{source._scrub(' '.join(str(exc).split()))}") from exc
    except psycopg2.Error as exc:
        raise SourceError(f"PostgreSQL failed while {action}: {source._scrub(' '.join(str(exc).split()))}") from exc


def _comment(cur: Any, name: str) -> dict[str, Any] | None:
    """The publication's comment (what the stream recorded), None when there is no publication."""
    cur.execute("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s", (name,))
    row = cur.fetchone()
    if row is None:
        return None
    try:
        return json.loads(row[0]) if row[0] else {}
    except ValueError:
        return {}


def _set_comment(cur: Any, name: str, value: dict[str, Any]) -> None:
    cur.execute(f'COMMENT ON PUBLICATION "{name}" IS %s', (json.dumps(value, sort_keys=True),))


def _slot(cur: Any, name: str) -> tuple[str, str | None] | None:
    """(confirmed_flush_lsn, wal_status) of the slot, None when there is none."""
    cur.execute("SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s", (name,))
    row = cur.fetchone()
    return (row[0], row[1]) if row else None


def _drop_slot(cur: Any, name: str) -> bool:
    """Drop the slot (True) if there is one; a stream that just stopped may hold it for a moment,
    one still holding it is ended first."""
    for attempt in range(50):
        cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            return False
        if row[0] is not None:
            if attempt >= 10:
                cur.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            time.sleep(0.1)
            continue
        cur.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        return True
    raise SourceError(f"replication slot {name} is still in use by another session")


def drop_stream(source: Any, stream_id: str) -> bool:
    """Drop the connector's slot and publication (True when something was dropped)."""
    name = stream_name(stream_id)
    conn = _connect(source, replication=False)
    dropped = False
    try:
        with _errors(source, f"dropping replication slot and publication {name}"), conn.cursor() as cur:
            dropped = _drop_slot(cur, name)
            cur.execute(f'DROP PUBLICATION IF EXISTS "{name}"')
            dropped = dropped or cur.statusmessage == "DROP PUBLICATION"
    finally:
        conn.close()
    _LOGGER.info("dropped replication slot and publication %s", name)
    return dropped


class _Relation:
    """What a ``Relation`` message says about a table, and how its rows become documents."""

    def __init__(self, namespace: str, name: str, columns: list[tuple[bool, str, int]], info: TableInfo,
                 source: Any):
        self.namespace, self.name = namespace, name
        self.names = [c[1] for c in columns]
        self.oids = [c[2] for c in columns]
        self.key = [n for n in info.primary_key if n in self.names] or [c[1] for c in columns if c[0]]
        self.mapper = _RowMapper(self.names, id_prefix=name, key_columns=self.key, json_columns=frozenset(),
                                 timestamp_column=source.settings.timestamp_column, meta=source._meta(name))

    def doc_id(self, values: dict[str, Any]) -> str:
        return f"{self.name}_" + "_".join(_key_part(values[k]) for k in self.key)


class PgChangeStream(ChangeStream):
    """A connector's PostgreSQL changes (see the module docstring)."""

    def __init__(self, source: Any, stream_id: str, cursor: dict[str, Any] | None):
        self.source = source
        self.name = stream_name(stream_id)
        self.tables = {t.name: t for t in source._keyed_tables(
            "PostgreSQL refuses UPDATE and DELETE on a published table without one")}
        self._sql = _connect(source, replication=False)
        self._repl = _connect(source, replication=True)
        self._cur = self._repl.cursor()
        self._relations: dict[int, _Relation] = {}
        self._snapshot_rows: Iterator[dict[str, Any]] | None = None
        self._started = False
        self._acked = self._sent = self._last_emitted = 0
        self._last_feedback = self._last_idle = 0.0
        self._txn = TransactionChanges()
        self._open(cursor)

    # -- setup ---------------------------------------------------------------------------
    def _open(self, cursor: dict[str, Any] | None) -> None:
        tables = sorted(self.tables)
        with _errors(self.source, f"preparing publication {self.name}"), self._sql.cursor() as cur:
            comment = _comment(cur, self.name)
            slot = _slot(cur, self.name)
            complete = bool(comment and comment.get("snapshot") == "complete" and comment.get("tables") == tables)
            if complete and (slot is None or slot[1] == "lost"):
                # The slot that held our position is gone: say so once; the next run snapshots again.
                _set_comment(cur, self.name, {"tables": tables, "snapshot": "lost"})
                if slot is not None:
                    _drop_slot(cur, self.name)
                raise StreamPositionLost(
                    f"replication slot {self.name} on PostgreSQL at {self.source.settings.address} "
                    f"{'was invalidated (max_slot_wal_keep_size)' if slot else 'no longer exists'}: changes made since "
                    "the last acknowledged position cannot be read; the next run takes a new snapshot and deletes the "
                    "documents of rows that vanished meanwhile")
            if complete:
                self._acked = parse_lsn(slot[0]) if slot and slot[0] else 0
                self._sent = self._acked
                return
            if slot is not None:  # a snapshot that never finished: start over
                _drop_slot(cur, self.name)
            qualified = ", ".join(self.source._qualified(t) for t in tables)
            if comment is None:
                cur.execute(f'CREATE PUBLICATION "{self.name}" FOR TABLE {qualified}')
            else:
                cur.execute(f'ALTER PUBLICATION "{self.name}" SET TABLE {qualified}')
            _set_comment(cur, self.name, {"tables": tables, "snapshot": "started"})
        with _errors(self.source, f"creating replication slot {self.name}"):
            self._cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            self._cur.execute(f'CREATE_REPLICATION_SLOT "{self.name}" LOGICAL pgoutput USE_SNAPSHOT')
            _slot_name, consistent_point, _snap, _plugin = self._cur.fetchone()
        self.snapshot_position = parse_lsn(consistent_point)
        self._acked = self._sent = self.snapshot_position
        _LOGGER.info("slot %s created at %s; reading the snapshot of %d table(s)", self.name, consistent_point,
                     len(tables))
        self._snapshot_rows = self._read_snapshot()

    def _read_snapshot(self) -> Iterator[dict[str, Any]]:
        fetch = self.source.settings.fetch_size
        for table in self.tables.values():
            with _errors(self.source, f"reading the snapshot of table `{table.name}`"):
                self._cur.execute(f"DECLARE elastic_ingest_snapshot NO SCROLL CURSOR FOR SELECT * FROM "
                                  f"{self.source._qualified(table.name)}")
                mapper = None
                while True:
                    self._cur.execute(f"FETCH {fetch} FROM elastic_ingest_snapshot")
                    if mapper is None:
                        columns = [d[0] for d in self._cur.description]
                        mapper = _RowMapper(columns, id_prefix=table.name,
                                            key_columns=[c for c in table.primary_key if c in columns],
                                            json_columns=frozenset(), timestamp_column=self.source.settings.timestamp_column,
                                            meta=self.source._meta(table.name))
                    rows = self._cur.fetchall()
                    if not rows:
                        break
                    for row in rows:
                        yield mapper(row)
                self._cur.execute("CLOSE elastic_ingest_snapshot")
        with _errors(self.source, "ending the snapshot"):
            self._cur.execute("COMMIT")

    def snapshot(self) -> Iterator[dict[str, Any]]:
        rows, self._snapshot_rows = self._snapshot_rows, None
        return rows if rows is not None else iter(())

    def _start(self) -> None:
        if self._started:
            return
        if self._snapshot_rows is not None:  # the snapshot must be read (or given up) first
            for _ in self._snapshot_rows:
                pass
            self._snapshot_rows = None
        with _errors(self.source, f"starting replication from slot {self.name}"):
            self._cur.start_replication(slot_name=self.name, decode=False, status_interval=10,
                                        options={"proto_version": "1", "publication_names": self.name})
        self._started = True

    # -- changes -------------------------------------------------------------------------
    def changes(self, timeout: float) -> list[Change]:
        self._start()
        deadline = time.monotonic() + timeout
        out: list[Change] = []
        with _errors(self.source, f"reading changes from slot {self.name}"):
            while True:
                message = self._cur.read_message()
                if message is not None:
                    done = self._handle(message.payload)
                    if done:
                        out.extend(done)
                        # Received, not yet in Elasticsearch: the idle confirmation must not pass it.
                        self._last_emitted = done[-1].position
                        if len(out) >= _MAX_CHANGES:
                            break
                    continue
                self._send_feedback()
                left = deadline - time.monotonic()
                if left <= 0 or (out and not self._txn):
                    break
                select.select([self._repl], [], [], min(left, 0.05))
        return out

    def _handle(self, payload: bytes) -> list[Change] | None:
        kind = payload[:1]
        if kind == b"B":
            self._txn.clear()
        elif kind == b"C":
            _flags, _commit, end_lsn, ts = struct.unpack_from("!BQQq", payload, 1)
            return self._txn.commit(end_lsn, _PG_EPOCH + ts / 1e6)
        elif kind == b"R":
            self._relation(payload)
        elif kind in (b"I", b"U", b"D"):
            self._row_change(kind, payload)
        elif kind == b"T":
            self._truncate(payload)
        return None

    def _relation(self, payload: bytes) -> None:
        (relid,) = struct.unpack_from("!I", payload, 1)
        offset = 5
        namespace, offset = _cstring(payload, offset)
        name, offset = _cstring(payload, offset)
        offset += 1  # replica identity
        (count,) = struct.unpack_from("!H", payload, offset)
        offset += 2
        columns = []
        for _ in range(count):
            flags = payload[offset]
            column, offset = _cstring(payload, offset + 1)
            oid, _typmod = struct.unpack_from("!Ii", payload, offset)
            offset += 8
            columns.append((bool(flags & 1), column, oid))
        info = self.tables.get(name) or TableInfo(name, {})
        self._relations[relid] = _Relation(namespace, name, columns, info, self.source)

    def _values(self, relation: _Relation, tuple_data: list[Any]) -> tuple[list[Any], bool]:
        """The row's Python values (psycopg2's casts, as the snapshot reads them); whether some were left out."""
        values, partial = [], False
        for oid, raw in zip(relation.oids, tuple_data, strict=True):
            if raw is _UNCHANGED:
                partial = True
                values.append(None)
            elif raw is None:
                values.append(None)
            else:
                cast = psycopg2.extensions.string_types.get(oid)
                values.append(cast(raw, self._cur) if cast is not None else raw)
        return values, partial

    def _row_change(self, kind: bytes, payload: bytes) -> None:
        (relid,) = struct.unpack_from("!I", payload, 1)
        relation = self._relations[relid]
        offset = 5
        old = None
        if kind in (b"U", b"D") and payload[offset:offset + 1] in (b"K", b"O"):
            old, offset = _tuple(payload, offset + 1)
        if kind == b"D":
            values, _ = self._values(relation, old or [])
            self._txn.add(Change("delete", {"_id": relation.doc_id(dict(zip(relation.names, values, strict=True)))},
                                 0), relation.name)
            return
        offset += 1  # 'N'
        new, offset = _tuple(payload, offset)
        values, partial = self._values(relation, new)
        by_name = dict(zip(relation.names, values, strict=True))
        if old is not None:  # the key changed: the old document goes
            old_values, _ = self._values(relation, old)
            old_id = relation.doc_id(dict(zip(relation.names, old_values, strict=True)))
            if old_id != relation.doc_id(by_name):
                self._txn.add(Change("delete", {"_id": old_id}, 0), relation.name)
        if partial:
            row = self._reread(relation, by_name)
            if row is None:  # deleted since: its delete follows
                return
            values = row
        self._txn.add(Change("index", relation.mapper(values), 0), relation.name)

    def _reread(self, relation: _Relation, values: dict[str, Any]) -> list[Any] | None:
        columns = ", ".join(self.source._quote(c) for c in relation.names)
        where = " AND ".join(f"{self.source._quote(k)} = %s" for k in relation.key)
        with self._sql.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM {self.source._qualified(relation.name)} WHERE {where}",
                        [values[k] for k in relation.key])
            row = cur.fetchone()
        return list(row) if row else None

    def _truncate(self, payload: bytes) -> None:
        (count,) = struct.unpack_from("!I", payload, 1)
        relids = struct.unpack_from(f"!{count}I", payload, 6)
        for relid in relids:
            relation = self._relations.get(relid)
            if relation is None:
                continue
            self._txn.truncate(relation.name)

    # -- acknowledgement -----------------------------------------------------------------
    def acknowledge(self, position: int) -> None:
        if self._snapshot_position_acked(position):
            with _errors(self.source, f"recording publication {self.name}'s snapshot"), self._sql.cursor() as cur:
                _set_comment(cur, self.name, {"tables": sorted(self.tables), "snapshot": "complete"})
        if position > self._acked:
            self._acked = position
            self._send_feedback()

    def _snapshot_position_acked(self, position: int) -> bool:
        if self.snapshot_position and position >= self.snapshot_position:
            done, self.snapshot_position = True, 0  # recorded once
            return done
        return False

    def _send_feedback(self) -> None:
        if not self._started:
            return
        now = time.monotonic()
        idle = self._acked >= self._last_emitted and not self._txn and not self.snapshot_position
        wal_end = getattr(self._cur, "wal_end", 0) or 0
        if idle and wal_end > self._acked and now - self._last_idle >= _IDLE_CONFIRM_EVERY:
            # Everything sent is in Elasticsearch: the WAL up to the server's end is of no use to us.
            self._last_idle = now
            self._acked = self._last_emitted = wal_end
        if self._acked > self._sent and now - self._last_feedback >= _FEEDBACK_EVERY:
            self._cur.send_feedback(flush_lsn=self._acked, write_lsn=self._acked, force=True)
            self._sent, self._last_feedback = self._acked, now

    def cursor(self) -> dict[str, Any]:
        return {"slot": self.name, "publication": self.name, "lsn": lsn_text(self._acked)}

    def lag_hint(self) -> dict[str, Any]:
        wal_end = getattr(self._cur, "wal_end", 0) or 0
        return {"wal_bytes_behind": max(0, wal_end - self._acked) if wal_end else None}

    def close(self) -> None:
        for conn in (self._repl, self._sql):
            with contextlib.suppress(Exception):
                if self._started and self._acked > self._sent and conn is self._repl:
                    self._cur.send_feedback(flush_lsn=self._acked, write_lsn=self._acked, force=True)
                conn.close()


_UNCHANGED = object()


def _cstring(payload: bytes, offset: int) -> tuple[str, int]:
    end = payload.index(b"\0", offset)
    return payload[offset:end].decode("utf-8"), end + 1


def _tuple(payload: bytes, offset: int) -> tuple[list[Any], int]:
    (count,) = struct.unpack_from("!H", payload, offset)
    offset += 2
    values: list[Any] = []
    for _ in range(count):
        kind = payload[offset:offset + 1]
        offset += 1
        if kind == b"n":
            values.append(None)
        elif kind == b"u":
            values.append(_UNCHANGED)
        else:  # b"t": text
            (length,) = struct.unpack_from("!I", payload, offset)
            offset += 4
            values.append(payload[offset:offset + length].decode("utf-8"))
            offset += length
    return values, offset
