"""WriteToElasticsearch: batched, retried, idempotent ``_bulk`` writes with every item inspected.

Elements are ``(doc_id, json_bytes)`` for ``index`` and ``update`` (from
:class:`~transforms.normalize.Normalize`; ``update`` merges the fields into the indexed
document, creating it if missing) or ``doc_id`` strings for ``delete``, or ``(op, doc_id, json_bytes_or_None)`` for
``mixed`` (an incremental sync's ordered changes). Each DoFn
instance buffers elements and sends a ``_bulk`` request when ``max_docs`` or
``max_bytes`` is reached, and at the end of each bundle; up to ``max_in_flight`` requests
run at once (on a small thread pool; metrics are counted back on the DoFn's thread).

Failures, in order of how they are handled (one policy, :mod:`transforms.retries`):

* the whole request fails with 429, 5xx, a timeout or a connection error: resent with
  exponential backoff and full jitter, up to ``max_retries`` times and for at most
  ``max_retry_seconds``, then the job fails with the last error (the client's own retries
  are off);
* single items answer 429 (or 5xx) inside a successful response: only those items are
  resent, under the same policy;
* other item failures (mapping conflicts, invalid field names, ...): the document goes to
  the ``dead_letters`` output with Elasticsearch's error type and reason;
* ``delete`` of a missing document is not an error.

A batch is sent when it holds ``max_docs`` documents or ``max_bytes``, at the end of each
bundle, and at the latest ``max_batch_seconds`` after its first document: a timer thread
sends a batch a slow source leaves waiting (its results are handed to the next
``process``/``finish_bundle`` call, the only places Beam lets a DoFn emit).

Ids are deterministic, so a retried request or bundle overwrites rather than duplicates.

Example usage::

    dead = docs | WriteToElasticsearch(conn, "search-docs",
                                       settings=BulkSettings(max_docs=1000, max_bytes=8 << 20))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.dead_letter import DeadLetter
from transforms.es_client import ElasticsearchConnection
from transforms.progress import ProgressReporter
from transforms.retries import ItemsRejected, attempt_timeout, retry_with_backoff

__all__ = ["WriteToElasticsearch", "BulkSettings", "DEAD_LETTERS", "MIXED", "FIRST_BULK_METRIC"]

DEAD_LETTERS = "dead_letters"
#: ``operation`` for a stream of ``(op, doc_id, json_bytes_or_None)`` applied in order.
MIXED = "mixed"
#: A distribution metric: when each writer sent its first request (epoch ms); its minimum is the
#: sync's first ``_bulk`` (what a sync's fixed cost is measured to).
FIRST_BULK_METRIC = "first_bulk_sent_ms"
_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkSettings:
    """Batching and retry knobs (config.yml ``pipeline.bulk``)."""

    max_docs: int = 1000
    max_bytes: int = 8 * 1024 * 1024
    max_in_flight: int = 4
    max_batch_seconds: float = 2.0
    max_retries: int = 8
    max_retry_seconds: float = 120.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_error_rate: float = 0.05
    min_errors_to_fail: int = 10


#: Item results that took a new sequence number in the index (a delete of a missing document too).
_APPLIED = frozenset({"created", "updated", "deleted", "not_found"})
#: The start of each operation's action line (the index is named in the request's path).
_ACTION_PREFIX = {op: b'{"' + op.encode() + b'":{"_id":' for op in ("index", "update", "delete", "create")}


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


class _BulkWriteFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, operation: str, settings: BulkSettings,
                 pipeline: str | None, job_id: str | None, progress_interval: float, batched: bool = False):
        self.batched = batched
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
        self.first_sent = Metrics.distribution("elastic_ingest", FIRST_BULK_METRIC)
        self.first_sent_at: float | None = None  # set when the first request goes (any thread)
        self.first_reported = False
        self.targets: frozenset[str] | None = None  # the concrete indices behind ``index``, once needed
        #: The client per attempt timeout (whole seconds): ``options()`` builds a new client each call.
        self.clients: dict[int, Any] = {}

    def setup(self) -> None:
        # Mixed operations keep the source's order: one request at a time (the pool's one
        # thread also runs batches the timer sends in the order they were taken).
        self.max_in_flight = 1 if self.operation == MIXED else self.settings.max_in_flight
        # No client retries: ours (transforms.retries) apply, with backoff, counted, bounded in time.
        self.es = self.conn.client(connections_per_node=max(10, self.max_in_flight * 2), max_retries=0)
        self.pool = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="bulk")
        self.progress = ProgressReporter(self.es, self.job_id, interval=self.progress_interval) if self.job_id else None
        self.lock = threading.Lock()  # the buffer and the requests in flight, shared with the timer
        self.buffer: list[tuple[str, str, bytes | None]] = []
        self.buffer_bytes = 0
        self.buffer_since = 0.0
        self.in_flight: list[Future] = []
        self.answered = 0  # requests answered since the last _collect: a hint, no lock needed
        self.clients = {}
        self.stopping = threading.Event()
        self.timer = threading.Thread(target=self._send_on_time, name="bulk-timer", daemon=True)
        self.timer.start()

    def start_bundle(self) -> None:
        with self.lock:
            self.buffer, self.buffer_bytes, self.in_flight = [], 0, []

    def process(self, element: Any) -> Iterator[Any] | None:
        if self.batched:
            return self._process_batch(element)
        operation = self.operation
        if operation == "index" or operation == "update":
            op, (doc_id, data) = operation, element
        elif operation == "delete":
            op, doc_id, data = "delete", (element if isinstance(element, str) else element[0]), None
        else:
            op, doc_id, data = element
        with self.lock:
            self._add(op, doc_id, data)
        if self.in_flight and (self.answered or len(self.in_flight) >= self.max_in_flight):
            return self._collect()
        return None  # no output (most elements): no generator made

    def _process_batch(self, items: list[tuple[str, bytes]]) -> Iterator[Any]:
        """A list of ``(doc_id, json_bytes)`` (``Normalize(batched=True)``), buffered under one lock
        until a request is sent; after each, as for single documents, at most ``max_in_flight``
        requests stay in flight (a list larger than ``max_docs`` never queues requests beyond,
        whose retries would then run one after another, each with its whole deadline)."""
        op, add = self.operation, self._add
        position, count = 0, len(items)
        while position < count:
            with self.lock:
                sent = len(self.in_flight)
                while position < count and len(self.in_flight) == sent:
                    doc_id, data = items[position]
                    position += 1
                    add(op, doc_id, data)
                if position >= count and self.first_sent_at is None:
                    self._submit()  # the first request goes with the first list: a sync starts writing at once
            if self.in_flight and (self.answered or len(self.in_flight) >= self.max_in_flight):
                yield from self._collect()

    def _add(self, op: str, doc_id: str, data: bytes | None) -> None:
        """Buffer one operation (under ``self.lock``); send the buffer when it reaches ``max_bytes``
        (before this one) or ``max_docs`` (with it)."""
        size = len(data or b"") + len(doc_id) + 64
        if self.buffer and self.buffer_bytes + size > self.settings.max_bytes:
            self._submit()
        if not self.buffer:
            self.buffer_since = time.monotonic()
        self.buffer.append((op, doc_id, data))
        self.buffer_bytes += size
        if len(self.buffer) >= self.settings.max_docs:
            self._submit()

    def finish_bundle(self) -> Iterator[Any]:
        with self.lock:
            self._submit()
        for output in self._collect(wait_all=True):
            yield pvalue.TaggedOutput(DEAD_LETTERS, GlobalWindows.windowed_value(output.value))
        if self.progress:
            self.progress.flush()

    def teardown(self) -> None:
        if getattr(self, "stopping", None) is not None:
            self.stopping.set()
        pool = getattr(self, "pool", None)
        if pool:
            pool.shutdown(wait=True)
        if getattr(self, "progress", None):
            self.progress.close()
        es = getattr(self, "es", None)
        if es is not None:
            es.close()

    # -- sending -----------------------------------------------------------------------
    def _send_on_time(self) -> None:
        """The timer: a batch waits at most ``max_batch_seconds``, even when no element comes
        (a slow source). It only sends; the results are collected on the DoFn's thread."""
        wait = self.settings.max_batch_seconds
        while not self.stopping.wait(min(wait, 1.0)):
            with self.lock:
                age = time.monotonic() - self.buffer_since if self.buffer else 0.0
                if self.buffer and age >= self.settings.max_batch_seconds:
                    self._submit()
                    age = 0.0
            wait = max(0.01, self.settings.max_batch_seconds - age)

    def _submit(self) -> None:
        """Send the buffer as a batch (under ``self.lock``)."""
        if self.buffer:
            batch, self.buffer, self.buffer_bytes = self.buffer, [], 0
            if self.first_sent_at is None:
                self.first_sent_at = time.time()
            future = self.pool.submit(self._write_batch, batch)
            future.add_done_callback(self._count_answer)
            self.in_flight.append(future)

    def _count_answer(self, _future: Future) -> None:
        self.answered += 1

    def _collect(self, wait_all: bool = False) -> Iterator[Any]:
        """Count the answered batches (Beam metrics are updated on the DoFn's thread, not the
        pool's) and emit their dead letters: every batch with ``wait_all``; else those
        answered, and the oldest while ``max_in_flight`` are in flight."""
        if self.first_sent_at is not None and not self.first_reported:
            self.first_reported = True
            self.first_sent.update(int(self.first_sent_at * 1000))
        while True:
            with self.lock:
                if not self.in_flight or not (wait_all or len(self.in_flight) >= self.max_in_flight
                                              or self.in_flight[0].done()):
                    self.answered = sum(1 for future in self.in_flight if future.done())
                    return
                future = self.in_flight.pop(0)
            letters, stats = future.result()
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

    def _actions(self, batch: list[tuple[str, str, bytes | None]]) -> bytes:
        """The NDJSON body: one action line per item (the index is in the request's path), then its source."""
        lines: list[bytes] = []
        append = lines.append
        for op, doc_id, data in batch:
            append(_ACTION_PREFIX[op] + orjson.dumps(doc_id) + b"}}")
            if op == "update":
                append(b'{"doc":' + (data or b"{}") + b',"doc_as_upsert":true}')
            elif op != "delete":
                append(data or b"{}")
        append(b"")
        return b"\n".join(lines)

    def _client(self, timeout: float) -> Any:
        """The client whose requests wait at most ``timeout`` seconds (rounded down), made once."""
        seconds = max(1, int(timeout))
        client = self.clients.get(seconds)
        if client is None:
            client = self.clients[seconds] = self.es.options(request_timeout=seconds)
        return client

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
        deadline = time.monotonic() + self.settings.max_retry_seconds  # the whole batch, item retries too
        items_failed = False

        def attempt() -> None:
            nonlocal pending, items_failed
            items_failed = False
            timeout = attempt_timeout(deadline, self.conn.request_timeout)
            response = self._client(timeout).bulk(index=self.index, operations=self._actions(pending),
                                                  pipeline=self.pipeline, filter_path=_ANSWER_FIELDS)
            retry = self._answered(pending, response, letters, stats)
            if retry:
                pending, items_failed = retry, True
                raise ItemsRejected(len(retry), self.index)

        def count_retry() -> None:
            if items_failed:
                stats["item_retries"] += len(pending)
            else:
                stats["retries"] += 1

        retry_with_backoff(attempt, self.settings, on_retry=count_retry, deadline=deadline,
                           what=f"_bulk {self.operation} to {self.index}")
        return letters, stats

    def _answered(self, sent: list[tuple[str, str, bytes | None]], response: dict[str, Any],
                  letters: list[DeadLetter], stats: dict[str, int]) -> list[tuple[str, str, bytes | None]]:
        """Count a ``_bulk`` answer's items (and report them); the items to send again (429/5xx)."""
        retry: list[tuple[str, str, bytes | None]] = []
        rejected: list[DeadLetter] = []
        ok = deleted = volume = 0
        index, applied, not_as_sent = self.index, 0, 0
        for (op, doc_id, data), item in zip(sent, response["items"]):
            result = item.get(op) or next(iter(item.values()))
            status = result.get("status", 500)
            if status < 300 or (op == "delete" and status == 404):
                outcome = result.get("result")
                # The usual answer, checked inline: this id, this index, a write (see _as_sent).
                if (result.get("_index") == index and result.get("_id") == doc_id and outcome != "noop") or \
                        self._as_sent(op, doc_id, result):
                    applied += outcome in _APPLIED
                else:
                    not_as_sent += 1
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
        stats["applied"] += applied
        stats["not_as_sent"] += not_as_sent
        stats["bytes"] += volume
        stats["deleted"] += deleted
        letters.extend(rejected)
        if self.progress:
            self.progress.add(indexed_document_count=ok, indexed_document_bytes=volume,
                              deleted_document_count=deleted, dead_letter_count=len(rejected))
        return retry


#: What ``_answered`` reads of a ``_bulk`` answer: the rest (``_version``, ``_seq_no``, ``_shards``,
#: ...) is left out by Elasticsearch, a smaller answer to receive and parse (every item keeps its
#: ``status``, so the items stay in the request's order).
_ANSWER_FIELDS = "errors,items.*.status,items.*.result,items.*._index,items.*._id,items.*.error"


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
        batched: elements are lists of ``(doc_id, json_bytes)`` (``Normalize(batched=True)``;
            operation ``"index"`` or ``"update"``).
    """

    def __init__(self, conn: ElasticsearchConnection, index: str, *, operation: str = "index",
                 settings: BulkSettings = BulkSettings(), pipeline: str | None = None,
                 job_id: str | None = None, progress_interval: float = 0.0, batched: bool = False):
        super().__init__()
        if batched and operation not in ("index", "update"):
            raise ValueError("WriteToElasticsearch: batched is for operation 'index' or 'update'")
        self.batched = batched
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
                         self.progress_interval, self.batched)
        ).with_outputs(DEAD_LETTERS, main="written")
        return results[DEAD_LETTERS]
