"""WriteToElasticsearch: batched, retried, idempotent ``_bulk`` writes with every item inspected.

Elements are ``(doc_id, json_bytes)`` for ``index`` and ``update`` (from
:class:`~transforms.normalize.Normalize`; ``update`` merges the fields into the indexed
document, creating it if missing) or ``doc_id`` strings for ``delete``, or ``(op, doc_id, json_bytes_or_None)`` for
``mixed`` (an incremental sync's ordered changes). Each DoFn
instance buffers elements and sends a ``_bulk`` request when ``max_docs`` or
``max_bytes`` is reached, and at the end of each bundle; up to ``max_in_flight`` requests
run at once (on a small thread pool; metrics are counted back on the DoFn's thread).

Failures, in order of how they are handled:

* the whole request fails with 429, 5xx, a timeout or a connection error: resent with
  exponential backoff (``initial_backoff * 2**attempt``, capped at ``max_backoff``) and
  jitter (a random wait between half and all of it), up to ``max_retries`` times, then
  the job fails;
* single items answer 429 (or 5xx) inside a successful response: only those items are
  resent, with the same backoff;
* other item failures (mapping conflicts, invalid field names, ...): the document goes to
  the ``dead_letters`` output with Elasticsearch's error type and reason;
* ``delete`` of a missing document is not an error.

Every acknowledged item is also compared with what was sent: counters ``writes_applied``
(writes that took a sequence number in the index) and ``writes_not_as_sent`` (an ingest
pipeline dropped the document, rerouted it to another index or changed its id) are the
figures the digest cache checks against the index's own (``transforms/digest_cache.py``).

Ids are deterministic, so a retried request or bundle overwrites rather than duplicates.

Example usage::

    dead = docs | WriteToElasticsearch(conn, "search-docs",
                                       settings=BulkSettings(max_docs=1000, max_bytes=8 << 20))
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from elasticsearch import ApiError, ConnectionError as ESConnectionError, ConnectionTimeout, TransportError

from sources.errors import ElasticsearchUnavailable, connection_failure
from transforms.dead_letter import DeadLetter
from transforms.es_client import ElasticsearchConnection
from transforms.progress import ProgressReporter

__all__ = ["WriteToElasticsearch", "BulkSettings", "DEAD_LETTERS", "MIXED", "retry_with_backoff", "RETRIABLE_STATUS"]

DEAD_LETTERS = "dead_letters"
#: ``operation`` for a stream of ``(op, doc_id, json_bytes_or_None)`` applied in order.
MIXED = "mixed"
RETRIABLE_STATUS = {429, 500, 502, 503, 504}
_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkSettings:
    """Batching and retry knobs (config.yml ``pipeline.bulk``)."""

    max_docs: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    max_in_flight: int = 4
    max_batch_seconds: float = 2.0
    max_retries: int = 8
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_error_rate: float = 0.05
    min_errors_to_fail: int = 10


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, (ESConnectionError, ConnectionTimeout)):
        return True
    if isinstance(exc, ApiError):
        return exc.meta.status in RETRIABLE_STATUS
    return isinstance(exc, TransportError)


def retry_with_backoff(call: Callable[[], Any], settings: BulkSettings, *, on_retry: Callable[[], None] = lambda: None,
                       sleep: Callable[[float], None] = time.sleep, what: str = "bulk request") -> Any:
    """Run ``call``; retry retriable Elasticsearch failures with exponential backoff and full jitter."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _retriable(exc):
                raise
            if attempt >= settings.max_retries:
                raise ElasticsearchUnavailable(
                    f"{what} failed after {attempt + 1} attempts: {_describe(exc)}"
                ) from exc
            delay = min(settings.max_backoff, settings.initial_backoff * 2**attempt)
            attempt += 1
            on_retry()
            _LOGGER.warning("%s failed (%s); retry %d in up to %.1fs", what, _describe(exc), attempt, delay)
            sleep(random.uniform(delay / 2, delay))


#: Item results that took a new sequence number in the index (a delete of a missing document too).
_APPLIED = frozenset({"created", "updated", "deleted", "not_found"})


def _concrete_indices(es: Any, name: str) -> frozenset[str]:
    """The indices ``name`` (an index or an alias) stands for; just ``name`` when that cannot be read."""
    try:
        resolved = es.indices.resolve_index(name=name)
    except Exception as exc:  # noqa: BLE001 - unknown: writes elsewhere then count as not as sent
        _LOGGER.debug("cannot resolve %s: %s", name, exc)
        return frozenset({name})
    names = {entry["name"] for entry in resolved.get("indices") or ()}
    for alias in resolved.get("aliases") or ():
        names.update(alias.get("indices") or ())
    return frozenset(names or {name})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.meta.status} {exc.message}"
    return connection_failure(exc) or f"{type(exc).__name__}: {exc}"


class _BulkWriteFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, operation: str, settings: BulkSettings,
                 pipeline: str | None, job_id: str | None, progress_interval: float):
        self.conn = conn
        self.index = index
        self.operation = operation
        self.settings = settings
        self.pipeline = pipeline
        self.job_id = job_id
        self.progress_interval = progress_interval
        self.indexed = Metrics.counter("elastic_ingest", "indexed_document_count")
        self.indexed_bytes = Metrics.counter("elastic_ingest", "indexed_document_bytes")
        self.deleted = Metrics.counter("elastic_ingest", "deleted_document_count")
        self.retries = Metrics.counter("elastic_ingest", "bulk_retries")
        self.item_retries = Metrics.counter("elastic_ingest", "bulk_item_retries")
        self.failed = Metrics.counter("elastic_ingest", "dead_letters_write")
        # Elasticsearch's own figures, for the digest cache (transforms/digest_cache.py):
        # writes that took a sequence number in the index, and writes acknowledged but not
        # applied as sent (an ingest pipeline dropped the document, rerouted it to another
        # index, or changed its id).
        self.applied = Metrics.counter("elastic_ingest", "writes_applied")
        self.not_as_sent = Metrics.counter("elastic_ingest", "writes_not_as_sent")
        self.targets: frozenset[str] | None = None  # the concrete indices behind ``index``, once needed

    def setup(self) -> None:
        # Mixed operations keep the source's order: one request at a time.
        self.max_in_flight = 1 if self.operation == MIXED else self.settings.max_in_flight
        self.es = self.conn.client(connections_per_node=max(10, self.max_in_flight * 2))
        self.pool = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="bulk")
        self.progress = ProgressReporter(self.es, self.job_id, interval=self.progress_interval) if self.job_id else None

    def start_bundle(self) -> None:
        self.buffer: list[tuple[str, str, bytes | None]] = []
        self.buffer_bytes = 0
        self.buffer_since = 0.0
        self.in_flight: list[Future] = []

    def process(self, element: Any) -> Iterator[Any]:
        if self.operation == "delete":
            op, doc_id, data = "delete", (element if isinstance(element, str) else element[0]), None
        elif self.operation == MIXED:
            op, doc_id, data = element
        else:
            op, (doc_id, data) = self.operation, element
        size = len(data or b"") + len(doc_id) + 64
        if self.buffer and self.buffer_bytes + size > self.settings.max_bytes:
            yield from self._send()
        if not self.buffer:
            self.buffer_since = time.monotonic()
        self.buffer.append((op, doc_id, data))
        self.buffer_bytes += size
        # A slow source still shows progress: a batch waits at most max_batch_seconds.
        if (len(self.buffer) >= self.settings.max_docs
                or time.monotonic() - self.buffer_since >= self.settings.max_batch_seconds):
            yield from self._send()

    def finish_bundle(self) -> Iterator[Any]:
        for output in self._send(wait_all=True):
            yield pvalue.TaggedOutput(DEAD_LETTERS, GlobalWindows.windowed_value(output.value))
        if self.progress:
            self.progress.flush()

    def teardown(self) -> None:
        pool = getattr(self, "pool", None)
        if pool:
            pool.shutdown(wait=True)
        if getattr(self, "progress", None):
            self.progress.close()
        es = getattr(self, "es", None)
        if es is not None:
            es.close()

    # -- sending -----------------------------------------------------------------------
    def _send(self, wait_all: bool = False) -> Iterator[Any]:
        if self.buffer:
            batch, self.buffer, self.buffer_bytes = self.buffer, [], 0
            self.in_flight.append(self.pool.submit(self._write_batch, batch))
        while self.in_flight and (wait_all or len(self.in_flight) >= self.max_in_flight):
            letters, stats = self.in_flight.pop(0).result()
            # Beam metrics must be updated on the DoFn's thread, not the pool's.
            self.indexed.inc(stats["indexed"])
            self.indexed_bytes.inc(stats["bytes"])
            self.deleted.inc(stats["deleted"])
            self.retries.inc(stats["retries"])
            self.item_retries.inc(stats["item_retries"])
            self.failed.inc(len(letters))
            self.applied.inc(stats["applied"])
            self.not_as_sent.inc(stats["not_as_sent"])
            for letter in letters:
                yield pvalue.TaggedOutput(DEAD_LETTERS, letter)

    def _actions(self, batch: list[tuple[str, str, bytes | None]]) -> list[bytes]:
        lines: list[bytes] = []
        for op, doc_id, data in batch:
            lines.append(orjson.dumps({op: {"_index": self.index, "_id": doc_id}}))
            if op == "update":
                lines.append(b'{"doc":' + (data or b"{}") + b',"doc_as_upsert":true}')
            elif op != "delete":
                lines.append(data or b"{}")
        return lines

    def _as_sent(self, op: str, doc_id: str, result: dict[str, Any]) -> bool:
        """Whether an acknowledged item was applied to this index, under this id (no ingest
        pipeline dropped it, rerouted it, or changed its id)."""
        if result.get("_id") != doc_id or (result.get("result") == "noop" and op != "update"):
            return False  # a dropped document answers noop, with no sequence number
        written_to = result.get("_index")
        if written_to == self.index:
            return True
        if self.targets is None:  # an alias: the concrete indices behind it
            self.targets = _concrete_indices(self.es, self.index)
        return written_to in self.targets

    def _write_batch(self, batch: list[tuple[str, str, bytes | None]]) -> tuple[list[DeadLetter], dict[str, int]]:
        """Send one batch until every item succeeded or failed for good. Runs in a pool thread."""
        letters: list[DeadLetter] = []
        stats = {"indexed": 0, "bytes": 0, "deleted": 0, "retries": 0, "item_retries": 0, "applied": 0,
                 "not_as_sent": 0}
        pending = batch
        attempt = 0

        def count_retry() -> None:
            stats["retries"] += 1

        while pending:
            response = retry_with_backoff(
                lambda: self.es.bulk(operations=self._actions(pending), pipeline=self.pipeline),
                self.settings, on_retry=count_retry, what=f"_bulk {self.operation} to {self.index}",
            )
            retry: list[tuple[str, str, bytes | None]] = []
            rejected: list[DeadLetter] = []
            ok = deleted = volume = 0
            for (op, doc_id, data), item in zip(pending, response["items"]):
                result = item.get(op) or next(iter(item.values()))
                status = result.get("status", 500)
                if status < 300 or (op == "delete" and status == 404):
                    if not self._as_sent(op, doc_id, result):
                        stats["not_as_sent"] += 1
                    elif result.get("result") in _APPLIED:
                        stats["applied"] += 1
                if status < 300:
                    if op == "delete":
                        if result.get("result") == "deleted":
                            deleted += 1
                    else:
                        ok += 1
                        volume += len(data or b"")
                elif op == "delete" and status == 404:
                    continue
                elif status == 429 or status >= 500:
                    retry.append((op, doc_id, data))
                else:
                    error = result.get("error") or {}
                    rejected.append(DeadLetter.of(
                        data, doc_id=doc_id, operation=op, stage="write",
                        error=f"{error.get('reason', error)}" + (
                            f" (caused by: {error['caused_by'].get('reason')})" if isinstance(error.get("caused_by"), dict) else ""),
                        error_type=str(error.get("type", f"http_{status}")),
                    ))
            stats["indexed"] += ok
            stats["bytes"] += volume
            stats["deleted"] += deleted
            letters.extend(rejected)
            if self.progress:
                self.progress.add(indexed_document_count=ok, indexed_document_bytes=volume,
                                  deleted_document_count=deleted, dead_letter_count=len(rejected))
            if retry:
                if attempt >= self.settings.max_retries:
                    raise ElasticsearchUnavailable(
                        f"{len(retry)} documents were still rejected with 429/5xx after "
                        f"{attempt + 1} attempts to {self.index}"
                    )
                stats["item_retries"] += len(retry)
                delay = min(self.settings.max_backoff, self.settings.initial_backoff * 2**attempt)
                attempt += 1
                time.sleep(random.uniform(delay / 2, delay))
            pending = retry
        return letters, stats


class WriteToElasticsearch(beam.PTransform):
    """Write documents (or deletions) to one index with ``_bulk``; returns the dead letters.

    Args:
        conn: how to reach Elasticsearch.
        index: the content index.
        operation: ``"index"`` (replace) or ``"update"`` (partial update, upsert) for
            ``(doc_id, json_bytes)`` elements; ``"delete"`` for ids; ``"mixed"`` for
            ``(op, doc_id, json_bytes or None)`` elements applied in their order (one request
            in flight), as an incremental sync's changes need.
        settings: batch sizes, requests in flight, retries (the error-rate limit is checked per job).
        pipeline: an ingest pipeline to name in the requests (only if it exists).
        job_id: when set, live counters are reported for the daemon after every acknowledged
            request (see ``transforms.progress``).
        progress_interval: the least seconds between two progress reports of one worker.
    """

    def __init__(self, conn: ElasticsearchConnection, index: str, *, operation: str = "index",
                 settings: BulkSettings = BulkSettings(), pipeline: str | None = None,
                 job_id: str | None = None, progress_interval: float = 0.0):
        super().__init__()
        if operation not in ("index", "update", "delete", MIXED):
            raise ValueError(
                f"WriteToElasticsearch: operation must be 'index', 'update', 'delete' or 'mixed', got {operation!r}")
        if not index:
            raise ValueError("WriteToElasticsearch: index is required")
        if settings.max_docs < 1 or settings.max_bytes < 1 or settings.max_in_flight < 1:
            raise ValueError("WriteToElasticsearch: max_docs, max_bytes and max_in_flight must be positive")
        self.conn, self.index, self.operation = conn, index, operation
        self.settings, self.pipeline, self.job_id = settings, pipeline, job_id
        self.progress_interval = progress_interval

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        results = elements | "Bulk" >> beam.ParDo(
            _BulkWriteFn(self.conn, self.index, self.operation, self.settings, self.pipeline, self.job_id,
                         self.progress_interval)
        ).with_outputs(DEAD_LETTERS, main="written")
        return results[DEAD_LETTERS]
