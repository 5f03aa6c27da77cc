"""The streaming part of the source contract: continuous sync (change capture).

A source that can follow its backend's changes (PostgreSQL logical replication, a MySQL
binlog, file-system notifications) sets ``continuous_sync_enabled = True``, adds
:data:`CONTINUOUS_SYNC_FIELD` to its configuration schema (:func:`with_continuous_sync_field`),
and implements two methods of :class:`~sources.base.BaseDataSource`:

* ``open_change_stream(cursor, filtering=None) -> ChangeStream``: where to resume (``cursor``
  is what :meth:`ChangeStream.cursor` returned before, or None the first time);
* ``release_change_stream(cursor)``: drop what the backend keeps for the stream (a
  replication slot, a publication) when the user turns the continuous sync off.

A :class:`ChangeStream` then serves, in this order:

1. :meth:`ChangeStream.snapshot`: when it starts without a usable position, the documents of
   one consistent snapshot of the source (else nothing); each is written with the version
   :attr:`ChangeStream.snapshot_position`. Changes committed after the snapshot are exactly
   those :meth:`ChangeStream.changes` yields next: nothing lost or applied twice at the handoff.
2. :meth:`ChangeStream.changes`: the changes available within ``timeout`` seconds, in commit
   order (an empty list when the source is idle). Each :class:`Change` has a ``position``: a
   positive integer that grows with the commit order, used as the Elasticsearch document's
   external version, so an older change replayed after a newer one never wins.
   A source whose backend keeps no log of its changes (a folder) may instead compare itself with
   what the index holds: right after opening a stream, before reading ``snapshot_position``,
   the service calls :meth:`ChangeStream.attach_index` with a reader of the content index; the
   stream may then find what changed while no stream ran and yield it as changes (no
   snapshot, no sweep).
3. :meth:`ChangeStream.acknowledge`: called with a position once Elasticsearch acknowledged
   every write up to it; the source may then let its backend forget what came before.
4. :meth:`ChangeStream.close`.

Operations: :data:`OP_INDEX` (``doc`` is the whole new document), :data:`OP_DELETE` (``doc``
needs only ``_id``), :data:`OP_TRUNCATE` (``doc`` maps field names to values: every
document whose fields hold those values is removed, e.g. ``{"table": "orders"}``). After a
snapshot the service removes every document the snapshot did not write (its version is
lower than ``snapshot_position``): what vanished while no stream ran.

When the stored position cannot be served any more, ``open_change_stream`` raises
:class:`~sources.errors.StreamPositionLost` with what happened, and arranges for the next
``open_change_stream`` to take a new snapshot.

Example: a source whose backend is an append-only list of ``(id, text)`` rows::

    class ListStream(ChangeStream):
        def __init__(self, rows, start):
            self.rows, self.next = rows, start
            self.snapshot_position = len(rows) if start == 0 else 0

        def snapshot(self):
            if not self.snapshot_position:
                return iter(())
            self.next = self.snapshot_position
            return iter({"_id": str(i), "text": t} for i, (_, t) in enumerate(self.rows))

        def changes(self, timeout):
            out = [Change(OP_INDEX, {"_id": str(i), "text": self.rows[i][1]}, i + 1)
                   for i in range(self.next, len(self.rows))]
            self.next = len(self.rows)
            return out

        def acknowledge(self, position):
            self.acked = position

        def cursor(self):
            return {"next": self.next}

docs/source-contract.md has the contract step by step; ``sources.testing.check_change_stream``
checks a source's stream against a real backend.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "Change",
    "ChangeStream",
    "IndexReader",
    "OP_TRUNCATE",
    "STREAM_OPS",
    "CONTINUOUS_SYNC_FIELD",
    "continuous_sync_field",
    "with_continuous_sync_field",
    "supports_continuous_sync",
    "continuous_sync_on",
    "TransactionChanges",
]

#: Remove every document whose fields hold the change's ``doc`` values (a truncated table).
OP_TRUNCATE = "truncate"
#: The operations a change stream yields.
STREAM_OPS = ("index", "delete", OP_TRUNCATE)

#: The configuration field that turns a connector's continuous sync on.
CONTINUOUS_SYNC_FIELD = "continuous_sync"


def continuous_sync_field(order: int = 50) -> dict[str, Any]:
    """The schema of the ``continuous_sync`` field (a toggle, off by default)."""
    return {
        "label": "Sync continuously (change capture)",
        "order": order,
        "type": "bool",
        "display": "toggle",
        "default_value": False,
        "value": False,
        "required": False,
        "tooltip": ("Keep one job running that applies every change of the source to the index within about a "
                    "second (inserts, updates, deletes), instead of waiting for the next scheduled sync."),
    }


def with_continuous_sync_field(schema: dict[str, dict[str, Any]], order: int = 50) -> dict[str, dict[str, Any]]:
    """``schema`` plus the ``continuous_sync`` field."""
    return {**schema, CONTINUOUS_SYNC_FIELD: continuous_sync_field(order)}


#: ``read_index(fields)``: ``(_id, {field: value}, version)`` of every document the content index
#: holds (refreshed first, read whole: it raises rather than return part of the index).
IndexReader = Callable[[Sequence[str]], Iterator[tuple[str, dict[str, Any], int]]]


class Change(NamedTuple):
    """One change of a source, in commit order.

    ``position``: a positive integer growing with the commit order (several changes of one
    transaction may share it; a stream then yields at most one change per document for
    it), the written document's external version. ``committed_at``: when the source
    committed it (epoch seconds; None when unknown), for the lag the job reports.
    """

    op: str
    doc: dict[str, Any]
    position: int
    committed_at: float | None = None


class ChangeStream(abc.ABC):
    """A source's changes from one position on (see the module docstring)."""

    #: The version of the snapshot's documents (0: no snapshot was taken by this stream).
    snapshot_position: int = 0
    #: Set by the service right after opening (its ``pipeline.max_download_bytes``; 0: no limit): a
    #: stream that downloads content (files) leaves out content larger than this, keeping the
    #: document's other fields, as full syncs do.
    max_download_bytes: int = 0

    def snapshot(self) -> Iterator[dict[str, Any]]:
        """The documents of a consistent snapshot when this stream started without a usable
        position (read it whole before calling :meth:`changes`); else nothing."""
        return iter(())

    def attach_index(self, read_index: IndexReader) -> None:
        """Called by the service right after the stream opened, before ``snapshot_position`` is read:
        ``read_index`` reads what the content index holds (:data:`IndexReader`). A source without a
        change log compares it with the backend to find what changed while no stream ran (and may
        then set ``snapshot_position`` to 0). Default: unused."""

    @abc.abstractmethod
    def changes(self, timeout: float) -> list[Change]:
        """The changes available within ``timeout`` seconds, oldest first (``[]`` when idle)."""

    @abc.abstractmethod
    def acknowledge(self, position: int) -> None:
        """Elasticsearch acknowledged every write up to ``position``; the backend may forget it."""

    @abc.abstractmethod
    def cursor(self) -> dict[str, Any]:
        """Where this stream stands, as JSON (stored in the connector's ``sync_cursor``)."""

    def lag_hint(self) -> dict[str, Any]:
        """What the backend says about how far behind the stream is (shown in the job's metadata)."""
        return {}

    def close(self) -> None:
        """Release connections (the backend keeps the position)."""


class TransactionChanges:
    """One source transaction's changes while it is read, for :meth:`ChangeStream.changes`.

    At most one change per document (a later one replaces an earlier one, and moves to the
    end: a row inserted then deleted is one delete); a truncate voids what the transaction
    did to that table before it, and what follows it stays. :meth:`commit` gives them all
    the transaction's position::

        txn = TransactionChanges()
        txn.add(Change("index", {"_id": "t_1"}, 0), "t")
        txn.add(Change("delete", {"_id": "t_1"}, 0), "t")
        txn.commit(42, committed_at=None)   # [Change("delete", {"_id": "t_1"}, 42)]
    """

    def __init__(self) -> None:
        self._changes: dict[Any, Change] = {}  # document id (or a truncate's key) -> change, in order
        self._tables: dict[Any, str] = {}  # document id -> its table

    def __bool__(self) -> bool:
        return bool(self._changes)

    def clear(self) -> None:
        """Forget what was read (a transaction begins)."""
        self._changes, self._tables = {}, {}

    def add(self, change: Change, table: str) -> None:
        """A row change of ``table`` (``change.doc`` has the document's ``_id``)."""
        doc_id = change.doc["_id"]
        self._changes.pop(doc_id, None)
        self._changes[doc_id] = change
        self._tables[doc_id] = table

    def truncate(self, table: str, doc: dict[str, Any] | None = None) -> None:
        """``table`` was emptied: its documents go (``doc``: the truncate's fields, default ``{"table": table}``)."""
        for doc_id in [k for k, t in self._tables.items() if t == table]:
            del self._tables[doc_id]
            self._changes.pop(doc_id, None)
        self._changes[(OP_TRUNCATE, len(self._changes), table)] = Change(OP_TRUNCATE, doc or {"table": table}, 0)

    def commit(self, position: int, committed_at: float | None) -> list[Change]:
        """The transaction's changes, in order, at ``position``; then it is cleared."""
        out = [c._replace(position=position, committed_at=committed_at) for c in self._changes.values()]
        self.clear()
        return out


def supports_continuous_sync(source_class: type) -> bool:
    """Whether ``source_class`` runs continuous syncs (it sets ``continuous_sync_enabled`` and
    implements ``open_change_stream``)."""
    from sources.base import BaseDataSource

    method = getattr(source_class, "open_change_stream", None)
    return (getattr(source_class, "continuous_sync_enabled", False) is True and callable(method)
            and method is not getattr(BaseDataSource, "open_change_stream", None))


def continuous_sync_on(configuration: Mapping[str, Any] | None) -> bool:
    """Whether a connector's ``configuration`` (field name -> field object, or bare values) has
    ``continuous_sync`` on."""
    if not isinstance(configuration, Mapping):
        return False
    field = configuration.get(CONTINUOUS_SYNC_FIELD)
    value = field.get("value") if isinstance(field, Mapping) else field
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return value is True
