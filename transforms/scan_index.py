"""ScanIndex: what a content index holds, as compact digests, read as parallel slices of a point in time.

``scan_pages`` reads an index with ``slices`` concurrent readers, each on its own slice of
one point in time (PIT), paging with ``search_after`` (10,000 hits a page; only ``_id`` and
the requested ``_source`` fields travel). Pages are handed over through a small queue, so
memory holds a few pages, whatever the index's size.

A scan is all or nothing: every slice reads the same snapshot (the one PIT), every
request says ``allow_partial_search_results: false``, and every answer's ``_shards`` is
checked. A shard that fails (closed or deleted under the scan, lost with its node, its
search context expired) raises :class:`~sources.errors.PartialScan`, which fails the
sync: a partial scan is never taken for the index's content, so nothing is deleted from
it and nothing is cached.

``ScanIndex`` turns the pages into one :class:`~transforms.digests.IndexDigests` (id and
``_timestamp`` or ``_content_digest`` digests combined with ``_shape_digest``, 16 bytes per document, in files of ``work_dir`` when given: a directory
marked by :func:`~transforms.work_dir.mark_work_dir`, which each worker checks it sees), the side input that lets
:class:`~transforms.read_from_source.ReadFromSource` skip unchanged documents and
:class:`~transforms.find_deletions.FindDeletions` tell whether anything must be deleted.
A missing index reads as empty.

With ``cache`` (and ``work_dir``), an index nobody wrote to since its digests were
kept in the :class:`~transforms.digest_cache.DigestCache` (by a clean sync, or by a scan)
is not read again: the kept digests are used (counter ``index_digests_from_cache``). A
scan during which nothing was written is kept there.

Example usage::

    mark_work_dir("/tmp/sync-1")
    indexed = p | ScanIndex(conn, "search-docs", slices=2, work_dir="/tmp/sync-1",
                            cache=DigestCache("~/.cache/elastic-ingest/index-digests"))  # one IndexDigests
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
from elasticsearch import ApiError, NotFoundError

from sources.errors import ElasticsearchUnavailable, PartialScan
from transforms.digest_cache import INDEX_DIGESTS_PREFIX, DigestCache, index_state, write_state
from transforms.digests import CONTENT_FIELD, IndexDigests, IndexDigestsWriter, id_digests, indexed_stamp
from transforms.document_shape import SHAPE_FIELD
from transforms.es_client import ElasticsearchConnection
from transforms.retries import retry_with_backoff
from transforms.work_dir import check_work_dir
from transforms.write_to_elasticsearch import BulkSettings

__all__ = ["ScanIndex", "scan_pages", "PAGE_SIZE"]

_LOGGER = logging.getLogger(__name__)
#: Hits per page: Elasticsearch's default ``index.max_result_window``.
PAGE_SIZE = 10_000
_DONE = object()
#: What a document is compared by (:func:`~transforms.digests.indexed_stamp`): only these fields of ``_source`` travel.
_COMPARED = ("_timestamp", CONTENT_FIELD, SHAPE_FIELD)
#: Only what the readers use travels and is parsed (no _index, _score): the hits, and the shard counts checked.
_PAGE_FIELDS = "pit_id,timed_out,_shards,hits.hits._id,hits.hits._source,hits.hits.sort"


def _check_shards(response: Any, index: str, what: str) -> None:
    """Raise :class:`PartialScan` unless ``response`` (a search or an opened point in time)
    covers every shard of ``index``.

    ``allow_partial_search_results: false`` makes Elasticsearch refuse most partial
    answers itself; this check is for the rest (a response that still reports failed
    shards, or a search that timed out), so a scan that missed any shard never passes as
    the index's content.
    """
    shards = response.get("_shards") or {}
    total, failed = int(shards.get("total") or 0), int(shards.get("failed") or 0)
    answered = int(shards.get("successful") or 0) + int(shards.get("skipped") or 0)
    if failed or answered < total or response.get("timed_out"):
        reasons = sorted({str((f.get("reason") or {}).get("type") or f.get("reason"))
                          for f in shards.get("failures") or () if isinstance(f, dict)})
        raise PartialScan(
            f"{what} of {index} did not read the whole index ({failed} of {total} shard(s) failed"
            + (f": {', '.join(reasons)}" if reasons else "") + (", timed out" if response.get("timed_out") else "")
            + "); the sync stops without deleting anything, and scans again next time"
        )


def _refused_partial(exc: BaseException, index: str, what: str) -> PartialScan | None:
    """Elasticsearch's own refusal of a partial answer (``search_phase_execution_exception``), as a PartialScan."""
    cause = exc.__cause__ if isinstance(exc, ElasticsearchUnavailable) else exc  # refused on every retry
    if not isinstance(cause, ApiError) or not isinstance(cause.body, dict):
        return None
    error = cause.body.get("error")
    if not isinstance(error, dict) or error.get("type") != "search_phase_execution_exception":
        return None
    reasons = [error.get("reason"), *((c.get("reason") or {}).get("type") for c in error.get("failed_shards") or ()
                                      if isinstance(c, dict))]
    caused_by = error.get("caused_by") if isinstance(error.get("caused_by"), dict) else {}
    reasons.append(caused_by.get("reason"))
    reason = "; ".join(dict.fromkeys(str(r) for r in reasons if r)) or "shards failed"
    return PartialScan(f"{what} of {index} did not read the whole index (Elasticsearch refused a partial answer: "
                       f"{reason}); the sync stops without deleting anything, and scans again next time")


def _open_point_in_time(es: Any, index: str, keep_alive: str, retry: BulkSettings) -> str | None:
    """One point in time over every shard of ``index`` (None when the index does not exist)."""
    try:
        opened = retry_with_backoff(
            lambda: es.open_point_in_time(index=index, keep_alive=keep_alive, allow_partial_search_results=False),
            retry, what=f"open point in time on {index}")
    except NotFoundError:
        return None  # no index yet: nothing in it
    except Exception as exc:  # noqa: BLE001 - translated when it is a refused partial answer
        raise _refused_partial(exc, index, "the point in time") or exc
    try:
        _check_shards(opened, index, "the point in time")
    except PartialScan:
        _close_point_in_time(es, opened["id"])
        raise
    return opened["id"]


def _close_point_in_time(es: Any, pit: str) -> None:
    try:
        es.close_point_in_time(id=pit)
    except Exception:  # noqa: BLE001 - it expires by itself
        pass


def _scan_slice(es: Any, index: str, pit: str, slice_id: int, slices: int, source: Sequence[str] | bool,
                page_size: int, keep_alive: str, out: queue.Queue, stop: threading.Event, retry: BulkSettings) -> str:
    """Read one slice of the shared point in time into ``out``; returns the last point-in-time id."""
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
        try:
            page = retry_with_backoff(
                lambda: es.search(**body, allow_partial_search_results=False, filter_path=_PAGE_FIELDS), retry,
                what=f"scan of {index}")
        except Exception as exc:  # noqa: BLE001 - translated when it is a refused partial answer
            raise _refused_partial(exc, index, "a scan") or exc
        _check_shards(page, index, "a scan")
        hits = page.get("hits", {}).get("hits")  # an empty page has no "hits" once filtered
        pit = page.get("pit_id", pit)
        if not hits:
            break
        out.put(hits)
        search_after = hits[-1]["sort"]
    return pit


def scan_pages(conn: ElasticsearchConnection, index: str, *, slices: int = 2, source: Sequence[str] | bool = False,
               page_size: int = PAGE_SIZE, keep_alive: str = "5m") -> Iterator[list[dict[str, Any]]]:
    """Every hit of ``index`` (``_id``, and ``_source`` limited to ``source``), page by page.

    One point in time is opened, and the ``slices`` read it concurrently (one thread
    each), so every slice reads the same snapshot. Any shard missing from any answer
    raises :class:`~sources.errors.PartialScan`; any other failure, after the retries, is
    raised too; leaving the iterator early stops every slice.
    """
    es = conn.client(connections_per_node=max(10, slices * 2), max_retries=0)  # ours apply (transforms.retries)
    retry = BulkSettings(max_retries=5)
    out: queue.Queue = queue.Queue(maxsize=slices)
    stop = threading.Event()
    errors: list[BaseException] = []
    try:
        pit = _open_point_in_time(es, index, keep_alive, retry)
    except BaseException:
        es.close()
        raise
    if pit is None:
        es.close()
        return
    last_ids = {pit}

    def run(slice_id: int) -> None:
        try:
            last_ids.add(_scan_slice(es, index, pit, slice_id, slices, source, page_size, keep_alive, out, stop,
                                     retry))
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
        for one in last_ids:  # the same point in time, whichever id a slice was last given
            _close_point_in_time(es, one)
        es.close()


class _DigestIndexFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, slices: int, work_dir: str | None,
                 cache: DigestCache | None):
        self.conn, self.index, self.slices, self.work_dir = conn, index, slices, work_dir
        self.cache = cache if work_dir is not None else None
        self.from_cache = Metrics.counter("elastic_ingest", "index_digests_from_cache")

    def setup(self) -> None:
        if self.work_dir is not None:
            check_work_dir(self.work_dir)  # a worker elsewhere would write digests nobody reads

    def _fresh_directory(self) -> str:
        return os.path.join(self.work_dir, f"{INDEX_DIGESTS_PREFIX}{uuid.uuid4().hex}")  # type: ignore[arg-type]

    def process(self, _: Any) -> Iterator[IndexDigests]:
        if self.work_dir is None:
            yield self._scan(None)
        else:
            yield self._scan(self._fresh_directory()) if self.cache is None else self._cached_or_scan()

    def _cached_or_scan(self) -> IndexDigests:
        """The cached digests while the index is at their state; else a scan, kept when the index did not move.

        The scan writes into a directory of its own, never into one a lookup linked
        cache files into.
        """
        cache, es = self.cache, self.conn.client()
        assert cache is not None
        try:
            state = None
            try:
                state = index_state(es, self.index)
                if state is not None:
                    cached = cache.lookup(self.index, state, into=self._fresh_directory())
                    if cached is not None:
                        _LOGGER.info("index %s: not written since its digests were cached (%d documents); "
                                     "not scanned", self.index, cached.count)
                        self.from_cache.inc()
                        return cached
                    es.indices.refresh(index=self.index)  # the scan then sees every write of `state`
            except Exception as exc:  # noqa: BLE001 - the cache is an optimization: scan
                _LOGGER.debug("index %s: digests cache not used: %s", self.index, exc)
                state = None
            directory = self._fresh_directory()
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
            for hits in scan_pages(self.conn, self.index, slices=self.slices, source=_COMPARED):
                writer.add(id_digests([hit["_id"] for hit in hits]),
                           np.fromiter((indexed_stamp(hit.get("_source")) for hit in hits),
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
                 cache: DigestCache | None = None):
        super().__init__()
        if slices < 1:
            raise ValueError("ScanIndex: slices must be positive")
        self.conn, self.index, self.slices, self.work_dir, self.cache = conn, index, slices, work_dir, cache

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Start" >> beam.Create([None])
            | "Scan" >> beam.ParDo(_DigestIndexFn(self.conn, self.index, self.slices, self.work_dir, self.cache))
        )
