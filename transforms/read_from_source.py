"""ReadFromSource: read a source's partitions in parallel, download only what changed.

::

    partitions --Reshuffle--> read partition (source.get_docs) --> basic sync rules
        --> batch of read_batch_size --> id and _timestamp (or content) digests, with the shape
        --> indexed unchanged? skipped
        --> changed: lazy download (at most download_concurrency at once, size limit) --> document

Only partition descriptors are reshuffled; documents flow on without a shuffle. The
source class is imported by FQN and instantiated in ``DoFn.setup()`` on each worker, and
closed in ``teardown()``. Skipping unchanged documents compares each batch with the
index's digests (:class:`~transforms.digests.IndexDigests`, a side input scanned before
the read): no request per batch, 16 bytes per indexed document. Async lazy downloads run
on the source's own event loop (where its clients were opened), sync ones on a thread
pool. A document without ``_timestamp`` whose content came with it (no lazy download)
is compared by content: it gets a ``_content_digest`` field
(:func:`~transforms.digests.content_digest` of the document as the source yielded it),
so an unchanged row of a table without a timestamp column costs no write. Every
comparison includes the documents' shape (``shape``, :mod:`transforms.document_shape`):
a document indexed with other settings is written again. With ``reindex`` nothing is
skipped (every document is written), and deletions still work. Content over ``max_download_bytes`` (declared as ``size`` before, or measured after
the download) is left out: the document is indexed with its metadata only.

Outputs (a ``DoOutputsTuple``): ``docs`` (new or changed documents, content downloaded,
``_id`` normalized), ``seen`` (one packed bitmap per bundle, a bit per indexed document,
set when the source yielded it and the sync rules kept it, for
:class:`~transforms.find_deletions.FindDeletions`; only with ``track_seen``) and
``dead_letters`` (documents without a usable ``_id``, and those whose lazy download raised
:class:`~sources.errors.DocumentUnreadable`: one unreadable file). Any other read failure fails
the pipeline, and so no deletion is made. With
``record_digests``, the id and ``_timestamp`` digests of every document read are also
written to files there (for the digest cache, after a clean sync).

Example usage::

    indexed = p | ScanIndex(conn, "search-docs")
    outputs = (p | beam.Create(partitions)
                 | ReadFromSource(SourceSpec("sources.directory:DirectoryDataSource", config),
                                  skip_unchanged=indexed, track_seen=True))
    outputs.docs, outputs.seen, outputs.dead_letters
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from sources.base import Filter, Partition
from sources.driver import SourceDriver, as_pair, build_source, call_get_docs, call_lazy, is_async_callable
from sources.errors import DocumentUnreadable, SourceError
from sources.registry import load_source_class
from transforms.dead_letter import DeadLetter
from transforms.digests import (
    CONTENT_FIELD, IndexDigests, content_digest, document_stamp, id_digests, mark_seen, new_seen, shaped, write_records,
)
from transforms.normalize import document_id
from transforms.secrets import SecretRef
from transforms.sync_rules import BasicRules
from transforms.work_dir import check_work_dir

__all__ = ["ReadFromSource", "SourceSpec", "DOCS", "SEEN", "DEAD_LETTERS"]

DOCS, SEEN, DEAD_LETTERS = "docs", "seen", "dead_letters"
_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """Everything a worker needs to build the source: its FQN, configuration, rules and the
    operator's settings for it (config.yml; not secrets).

    The copy in a pipeline holds no sensitive value (:meth:`by_reference`): :meth:`build`
    reads them, on the worker, from where the sync put them (:mod:`transforms.secrets`).
    """

    fqn: str
    configuration: Mapping[str, Any] = field(default_factory=dict, repr=False)
    basic_rules: tuple[Mapping[str, Any], ...] = ()
    advanced_rules: Any = None
    #: read the source's identities (``get_access_control()``) instead of its documents
    access_control: bool = False
    #: where the sensitive values of ``configuration`` are, when this copy does not hold them
    secrets: SecretRef | None = None
    #: the operator's settings for the source (its config.yml ``sources:`` entry)
    operator_settings: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        configuration = self.configuration
        if self.secrets is not None:
            stored = self.secrets.section("source")
            configuration = {name: _with_value(spec, stored[name]) if name in stored else spec
                             for name, spec in configuration.items()}
        return build_source(load_source_class(self.fqn), configuration, self.operator_settings)

    def sensitive_fields(self) -> set[str]:
        """The configuration fields that are secrets: marked ``sensitive`` here or in the source's schema."""
        schema_of = getattr(load_source_class(self.fqn), "get_default_configuration", None)
        schema = schema_of() if callable(schema_of) else {}
        return {name for name in set(self.configuration) | set(schema)
                if any(isinstance(spec, Mapping) and spec.get("sensitive")
                       for spec in (self.configuration.get(name), schema.get(name)))}

    def secret_values(self) -> dict[str, Any]:
        """The sensitive values this spec holds (for :func:`transforms.secrets.worker_secrets`)."""
        values = {name: (spec.get("value") if isinstance(spec, Mapping) else spec)
                  for name, spec in self.configuration.items() if name in self.sensitive_fields()}
        return {name: value for name, value in values.items() if value not in (None, "")}

    def by_reference(self, secrets: SecretRef | None) -> "SourceSpec":
        """This spec without its sensitive values, which ``build()`` reads from ``secrets``."""
        if secrets is None:
            return self
        hidden = set(self.secret_values())
        configuration = {name: (_with_value(spec, None) if name in hidden else spec)
                         for name, spec in self.configuration.items()}
        return replace(self, configuration=configuration, secrets=secrets)

    def filtering(self) -> Filter:
        return Filter(basic_rules=list(self.basic_rules), advanced_rules=self.advanced_rules or {})


def _with_value(spec: Any, value: Any) -> Any:
    """A configuration field (an object with ``value``, or a bare value) holding ``value``."""
    return {**spec, "value": value} if isinstance(spec, Mapping) else value


_MIB = 1 << 20


def _download_group(items: list[tuple[int, Any, dict[str, Any]]]) -> list[tuple[int, Any]]:
    """Run sync lazy downloads one after the other (one pool task); (position, result) each
    (a :class:`~sources.errors.DocumentUnreadable` raised is the result: that document's dead letter)."""
    return [(position, _lazy_result(lazy, doc)) for position, lazy, doc in items]


def _lazy_result(lazy: Any, doc: dict[str, Any]) -> Any:
    try:
        return call_lazy(lazy, doc)
    except DocumentUnreadable as exc:
        return exc


async def _awaited_result(awaitable: Any) -> Any:
    try:
        return await awaitable
    except DocumentUnreadable as exc:
        return exc


class _BlockingDownloads:
    """Where a worker runs a source's sync lazy downloads: in ``download_concurrency`` groups on
    the thread pool, or one after the other on the reading thread, whichever measured faster.

    Downloads that wait (a network read) go faster on the pool; downloads that are mostly
    Python (a file in the page cache: ~10 us) only fight over the GIL there, and a pool task
    costs more than such a read. The wall time per document of each way is kept as a moving
    average; the faster is used, and the other tried again after ``explore`` windows, so a
    change (the cache emptied, a slower disk) is seen. Each retry that confirms the choice
    doubles that wait (up to ``max_explore``): downloads that wait on the network are run
    one after the other only rarely.
    """

    def __init__(self, pool: ThreadPoolExecutor, concurrency: int, explore: int = 16, max_explore: int = 1024):
        self.pool, self.concurrency = pool, concurrency
        self.explore, self.min_explore, self.max_explore = explore, explore, max_explore
        self.cost: dict[str, float] = {}
        self.windows = 0
        self._exploring: str | None = None

    def _way(self, count: int) -> str:
        if self.concurrency == 1 or count == 1:
            return "inline"  # a pool of one thread only adds a hand-over
        self.windows += 1
        for way in ("pool", "inline"):
            if way not in self.cost:
                return way
        best = min(self.cost, key=self.cost.get)  # type: ignore[arg-type]
        if self.windows >= self.explore:
            self.windows = 0
            self._exploring = "inline" if best == "pool" else "pool"
            return self._exploring
        return best

    def start(self, items: list[tuple[int, Any, dict[str, Any]]]) -> Any:
        """Start ``items``; a callable returning their ``(position, result)`` pairs when done."""
        if not items:
            return list
        way, started = self._way(len(items)), time.perf_counter()
        if way == "inline":
            done = _download_group(items)

            def finished() -> list[tuple[int, Any]]:
                self._took(way, started, len(items))
                return done
            return finished
        groups = min(self.concurrency, len(items))
        futures = [self.pool.submit(_download_group, items[n::groups]) for n in range(groups)]

        def collected() -> list[tuple[int, Any]]:
            out = [pair for future in futures for pair in future.result()]
            self._took(way, started, len(items))
            return out
        return collected

    def _took(self, way: str, started: float, count: int) -> None:
        per_document = (time.perf_counter() - started) / count
        last = self.cost.get(way)
        self.cost[way] = per_document if last is None else 0.7 * last + 0.3 * per_document
        if way == self._exploring:
            self._exploring = None
            other = self.cost.get("pool" if way == "inline" else "inline")
            confirmed = other is not None and self.cost[way] > other  # the retried way is still slower
            self.explore = min(self.explore * 2, self.max_explore) if confirmed else self.min_explore


def _content_size(extra: Mapping[str, Any]) -> int:
    """Bytes of downloaded content (``_attachment`` is base64: 3 bytes per 4 characters)."""
    size = 0
    for key, value in extra.items():
        if isinstance(value, (str, bytes, bytearray)):
            size += len(value) * 3 // 4 if key == "_attachment" else len(value)
    return size


#: Marks the end of a download window in ``_flush``'s output (never leaves the DoFn).
_WINDOW_END = object()


class _ReadPartitionFn(beam.DoFn):
    def __init__(self, spec: SourceSpec, track_seen: bool, batch_size: int, download_concurrency: int,
                 max_download_bytes: int, record_digests: str | None = None, max_batch_seconds: float | None = None,
                 shape: str | None = None, reindex: bool = False, batched: bool = False):
        self.spec = spec
        self.batched = batched
        self.shape, self.reindex = shape, reindex
        self.max_batch_seconds = max_batch_seconds
        self.track_seen = track_seen
        self.record_digests = record_digests
        self.batch_size = batch_size
        self.download_concurrency = download_concurrency
        self.max_download_bytes = max_download_bytes
        self.read_count = Metrics.counter("elastic_ingest", "source_documents")
        self.skipped = Metrics.counter("elastic_ingest", "unchanged_documents")
        self.filtered = Metrics.counter("elastic_ingest", "filtered_documents")
        self.too_large = Metrics.counter("elastic_ingest", "downloads_over_size_limit")
        self.partitions = Metrics.counter("elastic_ingest", "partitions_read")

    def setup(self) -> None:
        if self.record_digests:  # a directory of the sync's work directory
            check_work_dir(os.path.dirname(self.record_digests))
        self.source = self.spec.build()
        self.driver = SourceDriver(self.source)
        self.rules = BasicRules(self.spec.basic_rules)
        self.pool = ThreadPoolExecutor(max_workers=self.download_concurrency, thread_name_prefix="download")
        self.blocking = _BlockingDownloads(self.pool, self.download_concurrency)

    def teardown(self) -> None:
        if getattr(self, "pool", None):
            self.pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "driver", None):
            self.driver.close()
        if getattr(self, "records", None) is not None:
            self.records.close()

    def start_bundle(self) -> None:
        self.seen: np.ndarray | None = None
        self.records: Any = None

    def finish_bundle(self) -> Iterator[Any]:
        if self.records is not None:
            self.records.close()
            self.records = None
        if self.seen is not None:  # one bitmap per bundle, whatever the partitions it read
            yield pvalue.TaggedOutput(SEEN, GlobalWindows.windowed_value(self.seen))
            self.seen = None

    def _record(self, ids: np.ndarray, stamps: np.ndarray) -> None:
        if self.records is None:  # one file per bundle attempt: a retried bundle never appends to another's
            assert self.record_digests is not None
            os.makedirs(self.record_digests, exist_ok=True)
            self.records = open(os.path.join(self.record_digests, f"read-{uuid.uuid4().hex}.rec"), "wb")
        write_records(self.records, ids, stamps)

    def process(self, partition: Partition, indexed: IndexDigests | None = None) -> Iterator[Any]:
        if self.track_seen and indexed is not None and self.seen is None:
            self.seen = new_seen(len(indexed))
        batch: list[tuple[str, dict[str, Any], Any]] = []
        batch_started = 0.0
        read = 0  # counted per batch: a metric update per document costs more than the rest of the loop
        iterator = self.driver.iterate(self.source.get_access_control() if self.spec.access_control
                                       else call_get_docs(self.source, self.spec.filtering(), partition))
        rules = self.rules if self.rules else None
        batch_size, max_seconds, clock = self.batch_size, self.max_batch_seconds, time.monotonic
        try:
            for item in iterator:
                # The usual (doc, lazy_download) pair unpacked here: as_pair costs a call per document.
                if type(item) is tuple and len(item) == 2:
                    doc, lazy = item
                else:
                    doc, lazy, _ = as_pair(item)
                read += 1
                try:
                    doc_id = document_id(doc.get("_id"))
                except ValueError as exc:
                    yield pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(
                        doc, doc_id=None, operation="index", stage="read", error=exc))
                    continue
                if rules is not None and not rules.should_index(doc):
                    self.filtered.inc()
                    continue
                if not batch:
                    batch_started = clock()
                batch.append((doc_id, doc, lazy))
                # A slow source's documents do not wait for a full batch: at most max_batch_seconds.
                if len(batch) >= batch_size or (max_seconds and clock() - batch_started >= max_seconds):
                    self.read_count.inc(read)
                    read = 0
                    yield from self._emit(batch, indexed)
                    batch = []
            yield from self._emit(batch, indexed)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(
                f"reading partition {partition.key!r} of {self.spec.fqn} failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if read:
                self.read_count.inc(read)
            iterator.close()
        self.partitions.inc()

    def _emit(self, batch: list[tuple[str, dict[str, Any], Any]], indexed: IndexDigests | None) -> Iterator[Any]:
        """The batch's documents: one element each, or (``batched``) a list per download window
        (so a list never holds more content than a window: a batch of large files is not held
        whole); dead letters one by one."""
        if not self.batched:
            for out in self._flush(batch, indexed):
                if out is not _WINDOW_END:
                    yield out
            return
        docs: list[dict[str, Any]] = []
        for out in self._flush(batch, indexed):
            if type(out) is dict:
                docs.append(out)
            elif out is _WINDOW_END:
                if docs:
                    yield docs
                    docs = []
            else:
                yield out
        if docs:
            yield docs

    def _flush(self, batch: list[tuple[str, dict[str, Any], Any]], indexed: IndexDigests | None) -> Iterator[Any]:
        if not batch:
            return
        contents = self._by_content(batch) if self.shape is not None else []
        changed = batch
        if indexed or self.record_digests:
            ids = id_digests([doc_id for doc_id, _, _ in batch])
            stamps = np.fromiter((document_stamp(doc) for _, doc, _ in batch), dtype=np.uint64, count=len(batch))
            for position, digest in contents:
                stamps[position] = digest
            stamps = shaped(stamps, self.shape)
            if self.record_digests:
                self._record(ids, stamps)
        if indexed:
            positions = indexed.positions(ids)
            if self.seen is not None:
                mark_seen(self.seen, positions)
        if indexed and not self.reindex:
            unchanged = indexed.unchanged(positions, stamps)
            skipped = int(np.count_nonzero(unchanged))
            if skipped:
                self.skipped.inc(skipped)
                changed = [item for item, same in zip(batch, unchanged.tolist()) if not same]
        # Downloads run a window at a time, so a worker never holds more than about
        # 2 * download_concurrency documents' content (not a whole lookup batch's).
        if all(lazy is None for _, _, lazy in changed):  # nothing to download (the content came with the documents)
            for doc_id, doc, _ in changed:
                out = dict(doc)
                out["_id"] = doc_id
                yield out
            return
        for chunk in self._windows(changed):
            for (doc_id, doc, _), extra in zip(chunk, self._download_all(chunk)):
                if isinstance(extra, DocumentUnreadable):  # this file only: a dead letter, the sync goes on
                    yield pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(
                        doc, doc_id=doc_id, operation="index", stage="download", error=extra))
                    continue
                out = dict(doc)
                out["_id"] = doc_id
                if extra:
                    out.update(extra)
                    if "_id" in extra or "_timestamp" in extra:  # a download never changes what was compared
                        out["_id"], out["_timestamp"] = doc_id, doc.get("_timestamp")
                        if "_timestamp" not in doc:
                            del out["_timestamp"]
                yield out
            yield _WINDOW_END

    @staticmethod
    def _by_content(batch: list[tuple[str, dict[str, Any], Any]]) -> list[tuple[int, int]]:
        """``(position, content digest)`` of the batch's documents compared by content (no
        ``_timestamp``, nothing to download); each gets its digest as ``_content_digest``."""
        found = []
        for position, (doc_id, doc, lazy) in enumerate(batch):
            if lazy is None and doc.get("_timestamp") in (None, ""):
                try:
                    digest = content_digest(doc)
                except (TypeError, ValueError):  # not representable as JSON: sent, and dead-lettered with its reason
                    continue
                found.append((position, digest))
                batch[position] = (doc_id, {**doc, CONTENT_FIELD: f"{digest:016x}"}, lazy)
        return found

    def _windows(self, changed: list[tuple[str, dict[str, Any], Any]]) -> Iterator[list[tuple[str, dict[str, Any], Any]]]:
        """The batch in windows downloaded one at a time, so a worker never holds much more content
        than ``2 * download_concurrency`` MiB, or documents of undeclared size: their ``size`` counts
        (1 MiB when not declared), so a window of small files is the whole batch."""
        budget = 2 * self.download_concurrency * _MIB
        window: list[tuple[str, dict[str, Any], Any]] = []
        held = 0
        for item in changed:
            doc = item[1]
            size = doc["size"] if "size" in doc else doc.get("size_in_bytes")
            size = size if type(size) is int and 0 <= size < _MIB else _MIB
            if window and held + size > budget:
                yield window
                window, held = [], 0
            window.append(item)
            held += size
        if window:
            yield window

    def _download_all(self, changed: list[tuple[str, dict[str, Any], Any]]) -> list[Mapping[str, Any] | None]:
        """Run the batch's lazy downloads, at most ``download_concurrency`` at once.

        Async downloads run on the source's own event loop (where its clients live); sync
        ones on a thread pool. A failed download fails the read (and so the sync).
        """
        results: list[Any] = [None] * len(changed)
        coroutines: dict[int, Any] = {}
        blocking: list[tuple[int, Any, dict[str, Any]]] = []
        limit = self.max_download_bytes
        for position, (_, doc, lazy) in enumerate(changed):
            if lazy is None:
                continue
            if limit and self._over_limit(doc["size"] if "size" in doc else doc.get("size_in_bytes")):
                continue
            if is_async_callable(lazy):
                coroutines[position] = _awaited_result(call_lazy(lazy, doc))
            else:
                blocking.append((position, lazy, doc))
        pending = self.blocking.start(blocking)
        for position, value in zip(coroutines, self.driver.gather(list(coroutines.values()),
                                                                   limit=self.download_concurrency)):
            results[position] = value
        late: dict[int, Any] = {}
        for position, value in pending():
            if value is not None and type(value) is not dict and inspect.isawaitable(value):
                late[position] = value  # a sync callable that returned a coroutine
            else:
                results[position] = value
        late_results = self.driver.gather([_awaited_result(v) for v in late.values()], limit=self.download_concurrency)
        for position, value in zip(late, late_results):
            results[position] = value
        for position, value in enumerate(results):
            if value is None or isinstance(value, DocumentUnreadable):
                continue
            if type(value) is not dict and not isinstance(value, Mapping):
                raise TypeError(f"a lazy download must return a dict or None, got {type(value).__name__}")
            if value and limit and self._over_limit(_content_size(value)):
                results[position] = None
        return results

    def _over_limit(self, size: Any) -> bool:
        if isinstance(size, int) and not isinstance(size, bool) and self.max_download_bytes and \
                size > self.max_download_bytes:
            self.too_large.inc()
            return True
        return False


class ReadFromSource(beam.PTransform):
    """Partitions in, documents out (see the module docstring for the outputs).

    Args:
        spec: the source's FQN, configuration and sync rules.
        skip_unchanged: a PCollection of one :class:`~transforms.digests.IndexDigests`
            (from :class:`~transforms.scan_index.ScanIndex`): documents indexed with the same
            ``_timestamp`` are skipped (None: send all).
        track_seen: emit the ``seen`` bitmaps of the indexed documents (for deletions;
            needs ``skip_unchanged``).
        batch_size: documents compared (and digested) at once.
        download_concurrency: lazy downloads in flight per worker.
        max_download_bytes: documents declaring a larger ``size`` are not downloaded.
        record_digests: a directory (shared by the workers) where the id and
            ``_timestamp`` (or content, with the shape) digests of every document read (and kept by the sync rules) are
            written, a file per bundle (:func:`~transforms.digests.read_records`): after
            a clean sync they are the index's (:func:`~transforms.digest_cache.store_synced`).
        max_batch_seconds: a batch is handed on when its first document is this old, even
            if not full (checked as documents come: a slow source's first documents reach
            the writer, whose own timer sends them, long before ``batch_size`` are read).
        spread: reshuffle the partitions so that they are read by several workers (False:
            one worker reads them all anyway, and the shuffle would only cost a stage).
        shape: the shape the documents are written with (:func:`~transforms.document_shape.document_shape`):
            a document indexed with another is not skipped. None: no shape, and documents are
            compared by ``_timestamp`` only (an access-control sync's identities).
        reindex: skip nothing (every document is written again); the ``seen`` bitmaps are
            still emitted, so deletions work as in any full sync.
        batched: ``docs`` elements are lists of documents (up to ``batch_size``, as read and
            compared), for ``Normalize(batched=True)``: Beam's cost per element is then paid
            per batch, not per document.
    """

    def __init__(self, spec: SourceSpec, *, skip_unchanged: beam.PCollection | None = None, track_seen: bool = False,
                 batch_size: int = 500, download_concurrency: int = 8, max_download_bytes: int = 10 * 1024 * 1024,
                 record_digests: str | None = None, max_batch_seconds: float | None = None, spread: bool = True,
                 shape: str | None = None, reindex: bool = False, batched: bool = False):
        super().__init__()
        self.shape, self.reindex, self.batched = shape, reindex, batched
        if batch_size < 1 or download_concurrency < 1:
            raise ValueError("ReadFromSource: batch_size and download_concurrency must be positive")
        if track_seen and skip_unchanged is None:
            raise ValueError("ReadFromSource: track_seen needs skip_unchanged (the index's digests)")
        self.spec = spec
        self.skip_unchanged = skip_unchanged
        self.track_seen = track_seen
        self.batch_size = batch_size
        self.download_concurrency = download_concurrency
        self.max_download_bytes = max_download_bytes
        self.record_digests = record_digests
        self.max_batch_seconds = max_batch_seconds
        self.spread = spread

    def expand(self, partitions: beam.PCollection):
        read = _ReadPartitionFn(self.spec, self.track_seen, self.batch_size, self.download_concurrency,
                                self.max_download_bytes, self.record_digests, self.max_batch_seconds,
                                self.shape, self.reindex, self.batched)
        side = {} if self.skip_unchanged is None else {"indexed": beam.pvalue.AsSingleton(self.skip_unchanged)}
        if self.spread:
            partitions = partitions | "SpreadPartitions" >> beam.Reshuffle()
        return partitions | "ReadPartition" >> beam.ParDo(read, **side).with_outputs(SEEN, DEAD_LETTERS, main=DOCS)
