"""ScanIndex: what a content index holds, as compact digests, read as parallel slices of a point in time.

``scan_pages`` reads an index with ``slices`` concurrent readers, each on its own point in
time (PIT) slice, paging with ``search_after`` (10,000 hits a page; only ``_id`` and the
requested ``_source`` fields travel). Pages are handed over through a small queue, so
memory holds a few pages, whatever the index's size.

``ScanIndex`` turns the pages into one :class:`~transforms.digests.IndexDigests` (id and
``_timestamp`` digests, 16 bytes per document, in files of ``work_dir`` when given: a directory
marked by :func:`~transforms.work_dir.mark_work_dir`, which each worker checks it sees), the side input that lets
:class:`~transforms.read_from_source.ReadFromSource` skip unchanged documents and
:class:`~transforms.find_deletions.FindDeletions` tell whether anything must be deleted.
A missing index reads as empty.

With ``cache_dir`` (and ``work_dir``), an index nobody wrote to since its digests were
kept in the :class:`~transforms.digest_cache.DigestCache` (by a clean sync, or by a scan)
is not read again: the kept digests are used (counter ``index_digests_from_cache``). A
scan during which nothing was written is kept there.

Example usage::

    mark_work_dir("/tmp/sync-1")
    indexed = p | ScanIndex(conn, "search-docs", slices=2, work_dir="/tmp/sync-1",
                            cache_dir="~/.cache/elastic-ingest/index-digests")  # one IndexDigests
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from elasticsearch import NotFoundError

from transforms.digest_cache import INDEX_DIGESTS_PREFIX, DigestCache, index_state, write_state
from transforms.digests import IndexDigests, IndexDigestsWriter, id_digests, stamp_digest
from transforms.es_client import ElasticsearchConnection
from transforms.work_dir import check_work_dir
from transforms.write_to_elasticsearch import BulkSettings, retry_with_backoff

__all__ = ["ScanIndex", "scan_pages", "PAGE_SIZE"]

_LOGGER = logging.getLogger(__name__)
#: Hits per page: Elasticsearch's default ``index.max_result_window``.
PAGE_SIZE = 10_000
_DONE = object()
#: Only what the readers use travels and is parsed (no _index, _score, shard counts).
_PAGE_FIELDS = "pit_id,hits.hits._id,hits.hits._source,hits.hits.sort"


def _scan_slice(es: Any, index: str, slice_id: int, slices: int, source: Sequence[str] | bool, page_size: int,
                keep_alive: str, out: queue.Queue, stop: threading.Event) -> None:
    retry = BulkSettings(max_retries=5)
    try:
        pit = retry_with_backoff(lambda: es.open_point_in_time(index=index, keep_alive=keep_alive),
                                 retry, what=f"open point in time on {index}")["id"]
    except NotFoundError:
        return  # no index yet: nothing in it
    try:
        search_after = None
        while not stop.is_set():
            body: dict[str, Any] = {
                "size": page_size, "pit": {"id": pit, "keep_alive": keep_alive}, "sort": [{"_shard_doc": "asc"}],
                "_source": list(source) if source else False, "track_total_hits": False,
            }
            if slices > 1:
                body["slice"] = {"id": slice_id, "max": slices}
            if search_after is not None:
                body["search_after"] = search_after
            page = retry_with_backoff(lambda: es.search(**body, filter_path=_PAGE_FIELDS), retry,
                                      what=f"scan of {index}")
            hits = page.get("hits", {}).get("hits")  # an empty page has no "hits" once filtered
            if not hits:
                break
            pit = page.get("pit_id", pit)
            out.put(hits)
            search_after = hits[-1]["sort"]
    finally:
        try:
            es.close_point_in_time(id=pit)
        except Exception:  # noqa: BLE001 - it expires by itself
            pass


def scan_pages(conn: ElasticsearchConnection, index: str, *, slices: int = 2, source: Sequence[str] | bool = False,
               page_size: int = PAGE_SIZE, keep_alive: str = "5m") -> Iterator[list[dict[str, Any]]]:
    """Every hit of ``index`` (``_id``, and ``_source`` limited to ``source``), page by page.

    The ``slices`` run concurrently (one thread and one PIT each); a failure in any of
    them is raised here after the retries, and leaving the iterator early stops them all.
    """
    es = conn.client(connections_per_node=max(10, slices * 2))
    out: queue.Queue = queue.Queue(maxsize=slices)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(slice_id: int) -> None:
        try:
            _scan_slice(es, index, slice_id, slices, source, page_size, keep_alive, out, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            errors.append(exc)
        finally:
            out.put(_DONE)

    threads = [threading.Thread(target=run, args=(n,), name=f"scan-{index}-{n}", daemon=True) for n in range(slices)]
    for thread in threads:
        thread.start()
    try:
        running = slices
        while running:
            item = out.get()
            if item is _DONE:
                running -= 1
                if errors:
                    raise errors[0]
                continue
            yield item
    finally:
        stop.set()
        while any(thread.is_alive() for thread in threads):  # unblock writers waiting on a full queue
            try:
                out.get(timeout=0.1)
            except queue.Empty:
                pass
        es.close()


class _DigestIndexFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, slices: int, work_dir: str | None,
                 cache_dir: str | None):
        self.conn, self.index, self.slices, self.work_dir = conn, index, slices, work_dir
        self.cache_dir = cache_dir if work_dir is not None else None
        self.from_cache = Metrics.counter("elastic_ingest", "index_digests_from_cache")

    def setup(self) -> None:
        if self.work_dir is not None:
            check_work_dir(self.work_dir)  # a worker elsewhere would write digests nobody reads

    def process(self, _: Any) -> Iterator[IndexDigests]:
        if self.work_dir is None:
            yield self._scan(None)
        else:
            directory = os.path.join(self.work_dir, f"{INDEX_DIGESTS_PREFIX}{uuid.uuid4().hex}")
            yield self._scan(directory) if self.cache_dir is None else self._cached_or_scan(directory)

    def _cached_or_scan(self, directory: str) -> IndexDigests:
        """The cached digests while the index is at their state; else a scan, kept when the index did not move."""
        cache, es = DigestCache(self.cache_dir), self.conn.client()
        try:
            state = None
            try:
                state = index_state(es, self.index)
                if state is not None:
                    cached = cache.lookup(self.index, state, into=directory)
                    if cached is not None:
                        _LOGGER.info("index %s: not written since its digests were cached (%d documents); "
                                     "not scanned", self.index, cached.count)
                        self.from_cache.inc()
                        return cached
                    es.indices.refresh(index=self.index)  # the scan then sees every write of `state`
            except Exception as exc:  # noqa: BLE001 - the cache is an optimization: scan
                _LOGGER.debug("index %s: digests cache not used: %s", self.index, exc)
                state = None
            digests = self._scan(directory)
            if state is not None and index_state(es, self.index) == state:  # nothing written meanwhile
                write_state(directory, self.index, state, digests.count)  # what the sync's end builds on
                cache.store(self.index, state, digests)
            return digests
        finally:
            es.close()

    def _scan(self, directory: str | None) -> IndexDigests:
        writer = IndexDigestsWriter(directory)
        try:
            for hits in scan_pages(self.conn, self.index, slices=self.slices, source=["_timestamp"]):
                writer.add(id_digests([hit["_id"] for hit in hits]),
                           np.fromiter((stamp_digest((hit.get("_source") or {}).get("_timestamp")) for hit in hits),
                                       dtype=np.uint64, count=len(hits)))
        except BaseException:
            writer.abort()
            raise
        return writer.finish()


class ScanIndex(beam.PTransform):
    """Root transform: one :class:`~transforms.digests.IndexDigests` of ``index`` (empty when missing).

    The slices run as threads of one worker, which writes the digests: a scan reads
    ~100 k hits/s here, a small part of a sync. With ``work_dir`` (a directory every
    worker can read: the local runner) the digests are files there and the side input is
    a small handle; without, they travel as arrays.
    """

    def __init__(self, conn: ElasticsearchConnection, index: str, *, slices: int = 2, work_dir: str | None = None,
                 cache_dir: str | None = None):
        super().__init__()
        if slices < 1:
            raise ValueError("ScanIndex: slices must be positive")
        self.conn, self.index, self.slices, self.work_dir, self.cache_dir = conn, index, slices, work_dir, cache_dir

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Start" >> beam.Create([None])
            | "Scan" >> beam.ParDo(_DigestIndexFn(self.conn, self.index, self.slices, self.work_dir, self.cache_dir))
        )
