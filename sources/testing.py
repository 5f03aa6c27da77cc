"""Helpers for testing a source without Beam or Elasticsearch, and a source for tests.

* :func:`read_all` / :func:`read_partitions` read a source the way the pipeline does
  (same driver, same calling conventions), in one process;
* :func:`check_change_stream` checks a continuous-sync source's stream against its backend;
* :func:`check_source_contract` is the suite every source must pass (ping, picklable
  partitions, unique string-able ids, partitions that cover the source exactly once,
  ``close`` called);
* :class:`MemorySource` yields documents given in its configuration, split into
  partitions, optionally failing midway: the pipeline's own tests use it.

Example usage::

    from sources.testing import check_source_contract, read_all

    docs = check_source_contract(MySource, {"host": "localhost"})
    assert {d["_id"] for d in docs} == {"1", "2"}
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sources.base import BaseDataSource, Doc, Filter, Partition
from sources.driver import SourceDriver, as_pair, build_source, call_get_docs
from sources.errors import SourceError

__all__ = ["read_all", "read_partitions", "ping", "check_source_contract", "check_change_stream", "MemorySource", "make_docs"]


def read_all(
    source: Any,
    *,
    partition: Partition | None = None,
    filtering: Filter | None = None,
    download: bool = True,
    close: bool = True,
) -> list[Doc]:
    """Every document of one partition (default: the whole source as one read)."""
    driver = SourceDriver(source)
    try:
        docs = []
        for item in driver.iterate(call_get_docs(source, filtering, partition)):
            doc, lazy, _ = as_pair(item)
            doc = dict(doc)
            if download:
                extra = driver.download(lazy, doc)
                if extra:
                    doc.update({k: v for k, v in extra.items() if k not in ("_id", "_timestamp")})
            docs.append(doc)
        return docs
    finally:
        if close:
            driver.close()


def read_partitions(source: Any, *, filtering: Filter | None = None, download: bool = True) -> list[Doc]:
    """Every document, read partition by partition as the pipeline does; closes the source."""
    partitions = list(source.get_partitions()) if hasattr(source, "get_partitions") else [Partition()]
    docs: list[Doc] = []
    for partition in partitions or [Partition()]:
        docs.extend(read_all(source, partition=partition, filtering=filtering, download=download, close=False))
    SourceDriver(source).close()
    return docs


def ping(source: Any) -> Any:
    driver = SourceDriver(source)
    try:
        return driver.call(source.ping)
    finally:
        driver.loop.close()


def check_source_contract(cls: type[Any], configuration: Mapping[str, Any],
                          operator_settings: Mapping[str, Any] | None = None) -> list[Doc]:
    """Assert that ``cls`` meets the source contract; return its documents.

    ``operator_settings``: what config.yml would give the source (e.g. ``allowed_roots``).

    Checks: it builds from a configuration; ``ping`` succeeds; partitions are picklable
    (they travel between workers); every document has an ``_id``; ids are unique; reading
    partition by partition yields exactly what one whole read yields; ``close`` is called
    once per instance and may be called on an instance that never read.
    """
    from transforms.normalize import document_id  # ids as the pipeline computes them

    source = build_source(cls, configuration, operator_settings)
    ping(source)
    partitions = list(source.get_partitions()) if hasattr(source, "get_partitions") else [Partition()]
    for partition in partitions:
        assert pickle.loads(pickle.dumps(partition)) == partition, f"partition {partition!r} does not pickle"
    by_partition = read_partitions(build_source(cls, configuration, operator_settings))
    ids = [document_id(doc.get("_id")) for doc in by_partition]
    assert len(ids) == len(set(ids)), f"{cls.__name__}: ids repeat across partitions"
    whole = read_all(build_source(cls, configuration, operator_settings), partition=None)
    assert sorted(document_id(d["_id"]) for d in whole) == sorted(ids), (
        f"{cls.__name__}: its partitions do not cover the source exactly once")
    SourceDriver(build_source(cls, configuration, operator_settings)).close()  # close without reading
    return by_partition


def check_change_stream(cls: type[Any], configuration: Mapping[str, Any], make_changes: Callable[[], int], *,
                        operator_settings: Mapping[str, Any] | None = None, stream_id: str = "contract-check",
                        timeout: float = 30.0) -> tuple[list[Doc], list[Any]]:
    """Assert that ``cls`` meets the streaming contract (:mod:`sources.streaming`) against its real
    backend; return the snapshot's documents and the changes read.

    ``make_changes()`` changes the backend (it runs after the stream opened, before its snapshot
    is read) and returns how many changes the stream must yield at least. Checks: the source
    says it streams and has the ``continuous_sync`` toggle; a first stream takes a snapshot at a
    positive position, with unique ids; its changes come in order (positions never go back,
    after the snapshot's), with known operations, at most one per document per position, and a
    JSON cursor; opened again after :meth:`~sources.streaming.ChangeStream.acknowledge`, the
    stream takes no snapshot and yields nothing already acknowledged; ``release_change_stream``
    leaves nothing behind (the next stream snapshots again). The stream is released at the end.
    """
    import json

    from sources.streaming import CONTINUOUS_SYNC_FIELD, STREAM_OPS, supports_continuous_sync

    assert supports_continuous_sync(cls), f"{cls.__name__}: continuous_sync_enabled and open_change_stream needed"
    field = cls.get_default_configuration().get(CONTINUOUS_SYNC_FIELD) or {}
    assert field.get("type") == "bool" and field.get("display") == "toggle" and field.get("default_value") is False, (
        f"{cls.__name__}: the {CONTINUOUS_SYNC_FIELD} field must be a toggle, off by default")
    source = build_source(cls, configuration, operator_settings)
    source.release_change_stream(None, stream_id=stream_id)
    stream = source.open_change_stream(None, stream_id=stream_id)
    try:
        assert stream.snapshot_position > 0, f"{cls.__name__}: a first stream must take a snapshot"
        expected = make_changes()
        snapshot = list(stream.snapshot())
        ids = [doc["_id"] for doc in snapshot]
        assert len(ids) == len(set(ids)), f"{cls.__name__}: the snapshot repeats ids"
        changes: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(changes) < expected and time.monotonic() < deadline:
            changes.extend(stream.changes(0.5))
        assert len(changes) >= expected, f"{cls.__name__}: {len(changes)} changes read, {expected} expected"
        last = stream.snapshot_position
        seen: set[tuple[int, str]] = set()
        for change in changes:
            assert change.op in STREAM_OPS, f"unknown operation {change.op!r}"
            assert change.position >= last, f"positions go back: {change.position} after {last}"
            last = change.position
            key = (change.position, json.dumps(change.doc.get("_id", change.doc), sort_keys=True, default=str))
            assert key not in seen, f"two changes of one document at position {change.position}"
            seen.add(key)
        stream.acknowledge(last)
        json.dumps(stream.cursor())
        cursor = stream.cursor()
    finally:
        stream.close()
    again = source.open_change_stream(cursor, stream_id=stream_id)
    try:
        assert again.snapshot_position == 0, f"{cls.__name__}: an acknowledged stream must not snapshot again"
        replayed = again.changes(1.0)
        assert all(c.position > last for c in replayed), f"{cls.__name__}: acknowledged changes came again"
    finally:
        again.close()
        source.release_change_stream(cursor, stream_id=stream_id)
    fresh = source.open_change_stream(None, stream_id=stream_id)
    try:
        assert fresh.snapshot_position > 0, f"{cls.__name__}: after release_change_stream a stream snapshots again"
    finally:
        fresh.close()
        source.release_change_stream(None, stream_id=stream_id)
        SourceDriver(source).close()
    return snapshot, changes


def make_docs(count: int, *, version: int = 0, prefix: str = "doc") -> list[Doc]:
    """``count`` small documents with stable ids; ``version`` changes content and timestamps."""
    return [
        {
            "_id": f"{prefix}-{i}",
            "title": f"document {i} v{version}",
            "rank": i,
            "_timestamp": f"2024-01-01T00:{version % 60:02d}:00+00:00",
        }
        for i in range(count)
    ]


class MemorySource(BaseDataSource):
    """Documents given in the configuration, for tests and examples.

    Configuration: ``docs`` (a list of dicts) or ``count``/``version`` (see :func:`make_docs`);
    ``partitions`` (documents are dealt round-robin); ``fail_after`` (partition 0 raises
    after yielding that many documents; -1: never); ``lazy`` (a ``body`` is downloaded
    lazily, through an async download when ``lazy_async``).
    """

    name = "Memory"
    service_type = "memory"
    incremental_sync_enabled = True
    #: The documents are the configuration: changing them changes the data, not its shape.
    document_neutral_fields = frozenset({"docs", "count", "version", "partitions", "fail_after", "changes"})

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            "docs": {"label": "Documents", "type": "list", "required": False, "default_value": []},
            "count": {"label": "Generated documents", "type": "int", "required": False, "default_value": 0},
            "version": {"label": "Generated version", "type": "int", "required": False, "default_value": 0},
            "partitions": {"label": "Partitions", "type": "int", "required": False, "default_value": 1},
            "fail_after": {"label": "Fail after", "type": "int", "required": False, "default_value": -1},
            "lazy": {"label": "Lazy body", "type": "bool", "required": False, "default_value": False},
            "lazy_async": {"label": "Async lazy body", "type": "bool", "required": False, "default_value": False},
            "changes": {"label": "Incremental changes", "type": "list", "required": False, "default_value": []},
        }

    def _docs(self) -> list[Doc]:
        docs = list(self.configuration["docs"] or [])
        if self.configuration["count"]:
            docs += make_docs(int(self.configuration["count"]), version=int(self.configuration["version"] or 0))
        return docs

    def get_partitions(self) -> list[Partition]:
        count = max(1, int(self.configuration["partitions"] or 1))
        return [Partition(f"part-{i}", {"index": i, "of": count}) for i in range(count)]

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None) -> Iterator[Any]:
        params = partition.params if partition and partition.params else {"index": 0, "of": 1}
        fail_after = int(self.configuration["fail_after"])
        for position, doc in enumerate(d for n, d in enumerate(self._docs()) if n % params["of"] == params["index"]):
            if params["index"] == 0 and 0 <= fail_after <= position:
                raise SourceError(f"Memory: the backend went away after {position} documents")
            yield dict(doc), self._lazy(doc)

    def _lazy(self, doc: Doc) -> Any:
        if not self.configuration["lazy"]:
            return None
        body = f"body of {doc['_id']}"
        if self.configuration["lazy_async"]:
            async def download(doit: bool = False, timestamp: Any = None) -> Doc | None:
                await asyncio.sleep(0)
                return {"body": body} if doit else None
            return download
        return lambda doit=False, timestamp=None: {"body": body} if doit else None

    def get_docs_incrementally(self, sync_cursor: dict[str, Any] | None, filtering: Filter | None = None):
        """Changes are ``{"op": "index"|"update"|"delete", "doc": {...}}``; the cursor counts them."""
        seen = int((sync_cursor or {}).get("position", 0))
        changes = list(self.configuration["changes"] or [])
        for change in changes[seen:]:
            yield dict(change["doc"]), None, change["op"]
        self._sync_cursor = {"position": len(changes)}
