"""ReadFromSource: read a source's partitions in parallel, download only what changed.

::

    partitions --Reshuffle--> read partition (source.get_docs) --> basic sync rules
        --> batch of read_batch_size --> look up indexed _timestamps (one mget) --> unchanged? only its id
        --> changed: lazy download (bounded threads, size limit) --> document

Only partition descriptors are reshuffled; documents flow on without a shuffle. The
source class is imported by FQN and instantiated in ``DoFn.setup()`` on each worker, and
closed in ``teardown()``. Skipping unchanged documents needs no id set in memory: each
batch asks the index for its own ids' timestamps.

Outputs (a ``DoOutputsTuple``): ``docs`` (new or changed documents, content downloaded,
``_id`` normalized), ``ids`` (the id of every document the source yielded and the sync
rules kept, for the deletion join) and ``dead_letters``. Any read failure fails the
pipeline, and so no deletion is made.

Example usage::

    outputs = (p | beam.Create(partitions)
                 | ReadFromSource(SourceSpec("sources.directory:DirectoryDataSource", config),
                                  skip_unchanged=IndexedTimestamps(conn, "search-docs")))
    outputs.docs, outputs.ids, outputs.dead_letters
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from elasticsearch import NotFoundError

from sources.base import Filter, Partition
from sources.driver import SourceDriver, as_pair, call_get_docs
from sources.errors import SourceError
from sources.registry import load_source_class
from transforms.dead_letter import DeadLetter
from transforms.es_client import ElasticsearchConnection
from transforms.normalize import document_id, iso_timestamp
from transforms.sync_rules import BasicRules

__all__ = ["ReadFromSource", "SourceSpec", "IndexedTimestamps", "DOCS", "IDS", "DEAD_LETTERS"]

DOCS, IDS, DEAD_LETTERS = "docs", "ids", "dead_letters"
_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """Everything a worker needs to build the source: its FQN, configuration and rules."""

    fqn: str
    configuration: Mapping[str, Any] = field(default_factory=dict, repr=False)
    basic_rules: tuple[Mapping[str, Any], ...] = ()
    advanced_rules: Any = None

    def build(self) -> Any:
        return load_source_class(self.fqn)(configuration=dict(self.configuration))

    def filtering(self) -> Filter:
        return Filter(basic_rules=list(self.basic_rules), advanced_rules=self.advanced_rules or {})


@dataclass(frozen=True)
class IndexedTimestamps:
    """Where to look up the ``_timestamp`` already indexed for a batch of ids."""

    conn: ElasticsearchConnection
    index: str

    def open(self) -> Any:
        return self.conn.client()

    def lookup(self, es: Any, ids: list[str]) -> dict[str, str | None]:
        try:
            response = es.mget(index=self.index, ids=ids, source_includes=["_timestamp"], realtime=False)
        except NotFoundError:
            return {}
        found: dict[str, str | None] = {}
        for doc in response["docs"]:
            if doc.get("found"):
                found[doc["_id"]] = (doc.get("_source") or {}).get("_timestamp")
        return found


class _ReadPartitionFn(beam.DoFn):
    def __init__(self, spec: SourceSpec, skip_unchanged: IndexedTimestamps | None, batch_size: int,
                 download_concurrency: int, max_download_bytes: int):
        self.spec = spec
        self.skip_unchanged = skip_unchanged
        self.batch_size = batch_size
        self.download_concurrency = download_concurrency
        self.max_download_bytes = max_download_bytes
        self.read_count = Metrics.counter("elastic_ingest", "source_documents")
        self.skipped = Metrics.counter("elastic_ingest", "unchanged_documents")
        self.filtered = Metrics.counter("elastic_ingest", "filtered_documents")
        self.partitions = Metrics.counter("elastic_ingest", "partitions_read")

    def setup(self) -> None:
        self.source = self.spec.build()
        self.driver = SourceDriver(self.source)
        self.rules = BasicRules(self.spec.basic_rules)
        self.es = self.skip_unchanged.open() if self.skip_unchanged else None
        self.pool = ThreadPoolExecutor(max_workers=self.download_concurrency, thread_name_prefix="download")

    def teardown(self) -> None:
        if getattr(self, "pool", None):
            self.pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "driver", None):
            self.driver.close()
        if getattr(self, "es", None) is not None:
            self.es.close()

    def process(self, partition: Partition) -> Iterator[Any]:
        batch: list[tuple[str, dict[str, Any], Any]] = []
        iterator = self.driver.iterate(call_get_docs(self.source, self.spec.filtering(), partition))
        try:
            for item in iterator:
                doc, lazy, _ = as_pair(item)
                self.read_count.inc()
                try:
                    doc_id = document_id(doc.get("_id") if isinstance(doc, Mapping) else None)
                except ValueError as exc:
                    yield pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(
                        doc, doc_id=None, operation="index", stage="read", error=exc))
                    continue
                if self.rules and not self.rules.should_index(doc):
                    self.filtered.inc()
                    continue
                batch.append((doc_id, doc, lazy))
                if len(batch) >= self.batch_size:
                    yield from self._flush(batch)
                    batch = []
            yield from self._flush(batch)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(
                f"reading partition {partition.key!r} of {self.spec.fqn} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.partitions.inc()

    def _flush(self, batch: list[tuple[str, dict[str, Any], Any]]) -> Iterator[Any]:
        if not batch:
            return
        indexed: dict[str, str | None] = {}
        if self.skip_unchanged is not None:
            indexed = self.skip_unchanged.lookup(self.es, [doc_id for doc_id, _, _ in batch])
        changed: list[tuple[str, dict[str, Any], Any]] = []
        for doc_id, doc, lazy in batch:
            yield pvalue.TaggedOutput(IDS, doc_id)
            stamp = iso_timestamp(doc.get("_timestamp"))
            if stamp is not None and doc_id in indexed and iso_timestamp(indexed[doc_id]) == stamp:
                self.skipped.inc()
                continue
            changed.append((doc_id, doc, lazy))
        downloads = [
            self.pool.submit(self._download, lazy, doc) if lazy is not None else None for _, doc, lazy in changed
        ]
        for (doc_id, doc, _), future in zip(changed, downloads):
            out = dict(doc)
            out["_id"] = doc_id
            if future is not None:
                extra, problem = future.result()
                if problem is not None:
                    out.setdefault("_download_error", problem)
                elif extra:
                    out.update({k: v for k, v in extra.items() if k not in ("_id", "_timestamp")})
            yield out

    def _download(self, lazy: Any, doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        size = doc.get("size") or doc.get("size_in_bytes")
        if isinstance(size, int) and self.max_download_bytes and size > self.max_download_bytes:
            return None, f"content not downloaded: {size} bytes is over pipeline.max_download_bytes"
        # Each download runs its coroutine on a loop of its own thread.
        driver = SourceDriver(self.source)
        try:
            return driver.download(lazy, doc), None
        finally:
            driver.loop.close()


class ReadFromSource(beam.PTransform):
    """Partitions in, documents out (see the module docstring for the outputs).

    Args:
        spec: the source's FQN, configuration and sync rules.
        skip_unchanged: look up indexed timestamps to skip unchanged documents (None: send all).
        batch_size: documents per timestamp lookup.
        download_concurrency: lazy downloads in flight per worker.
        max_download_bytes: documents declaring a larger ``size`` are not downloaded.
    """

    def __init__(self, spec: SourceSpec, *, skip_unchanged: IndexedTimestamps | None = None, batch_size: int = 500,
                 download_concurrency: int = 8, max_download_bytes: int = 10 * 1024 * 1024):
        super().__init__()
        if batch_size < 1 or download_concurrency < 1:
            raise ValueError("ReadFromSource: batch_size and download_concurrency must be positive")
        self.spec = spec
        self.skip_unchanged = skip_unchanged
        self.batch_size = batch_size
        self.download_concurrency = download_concurrency
        self.max_download_bytes = max_download_bytes

    def expand(self, partitions: beam.PCollection):
        return (
            partitions
            | "SpreadPartitions" >> beam.Reshuffle()
            | "ReadPartition" >> beam.ParDo(
                _ReadPartitionFn(self.spec, self.skip_unchanged, self.batch_size, self.download_concurrency,
                                 self.max_download_bytes)
            ).with_outputs(IDS, DEAD_LETTERS, main=DOCS)
        )
