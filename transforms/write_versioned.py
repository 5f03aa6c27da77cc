"""WriteVersioned: a continuous sync's batched, versioned ``_bulk`` writes.

Elements are ``(op, doc_id, json_bytes_or_None, position, committed_at, generation)``. Each
worker instance buffers them and sends a ``_bulk`` request when it holds ``max_docs`` changes
or ``max_bytes``, and at the end of each bundle (``finish_bundle``): a bundle ends only once
Elasticsearch acknowledged its changes. Read, normalize and write have no shuffle between
them, so the runner fuses them into one stage and a bundle is one read of the source (at most
a poll's changes or a snapshot chunk): the changes of one read go out in one request, the
next read starts after it (backpressure: the runner buffers nothing between the stages), and
no batch waits in runner state for a timer. (A batch kept in keyed state and flushed by a
processing-time timer was measured on Prism first: lost timers left batches unwritten until
the ledger's 10 s stall rule read the stream again, a whole snapshot retaken at its end;
Prism's memory held every batch.)

Every write carries ``version=<position>, version_type=external``: a change older than what
the index holds (a replay after a crash, a reordering) is refused by Elasticsearch with a
version conflict, counted (metric ``version_conflicts``, the job's ``stream`` record) and
dropped: the newer document stays. A ``delete`` leaves a tombstone of its version, which
Elasticsearch keeps ``index.gc_deletes`` (the continuous sync sets it to :data:`GC_DELETES` on
the content index), so an older insert replayed later does not bring the document back.

``truncate`` (``doc_id`` is None, the JSON holds ``{field: value}``) and ``sweep`` (after a
snapshot) send the buffer first, then find the documents concerned (a ``_source``-filtered
scroll with versions) and delete them with the version ``position - 1``: documents written
later (a higher version) are kept, whatever the order. ``sweep`` removes documents whose
version is lower than the snapshot's: those the snapshot did not write.

Per-document failures (mappings, an ingest pipeline's error) go to the dead letters, as in
other syncs; 429/5xx and connection failures are retried (:mod:`transforms.retries`). Each
acknowledged change is recorded in the job's :mod:`transforms.stream_ledger`, which tells the
reader what the source may be acknowledged at, and counted in the job's progress records.

Ingest pipelines: ``pipeline`` is named in each request; Elasticsearch runs it before the
versioned write, so versions apply to what the pipeline produced. With ``shape`` each document
records it (``_shape_digest``) as a full sync records it, so a full sync finds the stream's
documents unchanged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue
from elasticsearch.helpers import scan

from sources.streaming import OP_TRUNCATE
from transforms.dead_letter import DeadLetter
from transforms.es_client import ElasticsearchConnection
from transforms.progress import ProgressReporter
from transforms.read_stream import SWEEP
from transforms.retries import ItemsRejected, attempt_timeout, retry_with_backoff
from transforms.stream_ledger import ledger
from transforms.write_to_elasticsearch import BulkSettings

__all__ = ["WriteVersioned", "GC_DELETES"]

#: How long Elasticsearch remembers a deleted document's version on a continuously synced index.
GC_DELETES = "1h"
_LOGGER = logging.getLogger(__name__)

Item = tuple[str, str | None, bytes | None, int, float | None, int]


def _body(items: list[Item], numbers: Any) -> bytes:
    """The NDJSON ``_bulk`` body of ``items[n]`` for each n of ``numbers``, each with its external version."""
    lines: list[bytes] = []
    for number in numbers:
        op, doc_id, data, position, _, _ = items[number]
        lines.append(orjson.dumps({op: {"_id": doc_id, "version": position, "version_type": "external"}}))
        if op == "index":
            lines.append(data or b"{}")
    return b"\n".join(lines) + b"\n"


class _WriteVersionedFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, settings: BulkSettings, pipeline: str | None,
                 job_id: str):
        self.conn, self.index, self.settings, self.pipeline = conn, index, settings, pipeline
        self.job_id = job_id
        self.indexed = Metrics.counter("elastic_ingest", "indexed_document_count")
        self.indexed_bytes = Metrics.counter("elastic_ingest", "indexed_document_bytes")
        self.deleted = Metrics.counter("elastic_ingest", "deleted_document_count")
        self.conflicts = Metrics.counter("elastic_ingest", "version_conflicts")
        self.failed = Metrics.counter("elastic_ingest", "dead_letters_write")
        self.retries = Metrics.counter("elastic_ingest", "bulk_retries")

    def setup(self) -> None:
        self.es = self.conn.client(max_retries=0)
        self.progress = ProgressReporter(self.es, self.job_id)
        self._items: list[Item] = []
        self._bytes = 0

    def teardown(self) -> None:
        if getattr(self, "progress", None):
            self.progress.close()
        if getattr(self, "es", None) is not None:
            self.es.close()

    def start_bundle(self) -> None:
        self._items, self._bytes = [], 0

    def process(self, item: Item) -> Iterator[DeadLetter]:
        if item[0] in (OP_TRUNCATE, SWEEP):
            yield from self._flush()
            self._remove(item)
            return
        self._items.append(item)
        self._bytes += len(item[2] or b"")
        if len(self._items) >= self.settings.max_docs or self._bytes >= self.settings.max_bytes:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for letter in self._flush():
            yield GlobalWindows.windowed_value(letter)

    def _flush(self) -> list[DeadLetter]:
        items, self._items, self._bytes = self._items, [], 0
        return self._send(items)

    # -- writing ---------------------------------------------------------------------
    def _send(self, items: list[Item]) -> list[DeadLetter]:
        if not items:
            return []
        body = _body(items, range(len(items)))
        deadline = time.monotonic() + self.settings.max_retry_seconds
        answer: dict[str, Any] = {}
        pending = list(range(len(items)))
        results: dict[int, dict[str, Any]] = {}

        def attempt() -> None:
            nonlocal body, pending
            timeout = attempt_timeout(deadline, self.conn.request_timeout)
            answer.update(self.es.options(request_timeout=max(1, int(timeout))).bulk(
                index=self.index, operations=body, pipeline=self.pipeline))
            retry = []
            for number, item in zip(pending, answer["items"]):
                result = next(iter(item.values()))
                if result.get("status", 500) in (429, 500, 502, 503, 504):
                    retry.append(number)
                else:
                    results[number] = result
            if retry:
                pending, body = retry, _body(items, retry)
                raise ItemsRejected(len(retry), self.index)

        book = ledger(self.job_id)
        book.writing(+1)
        try:
            retry_with_backoff(attempt, self.settings, on_retry=self.retries.inc, deadline=deadline,
                               what=f"versioned _bulk to {self.index}")
        finally:
            book.writing(-1)
        return self._count(items, results)

    def _count(self, items: list[Item], results: dict[int, dict[str, Any]]) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        done: Counter[int] = Counter()
        committed: list[float] = []
        indexed = deleted = volume = conflicts = 0
        book = ledger(self.job_id)
        for number, (op, doc_id, data, position, committed_at, generation) in enumerate(items):
            result = results[number]
            status = result.get("status", 500)
            if generation == book.generation:
                done[position] += 1
            if committed_at:
                committed.append(committed_at)
            if status < 300:
                if op == "delete":
                    deleted += result.get("result") == "deleted"
                else:
                    indexed += 1
                    volume += len(data or b"")
            elif status == 409:  # an older change than the indexed one: the newer stays
                conflicts += 1
            elif op == "delete" and status == 404:
                continue
            else:
                error = result.get("error") or {}
                letters.append(DeadLetter.of(data, doc_id=doc_id, operation=op, stage="write",
                                             error=str(error.get("reason", error)),
                                             error_type=str(error.get("type", f"http_{status}"))))
        self.indexed.inc(indexed)
        self.indexed_bytes.inc(volume)
        self.deleted.inc(deleted)
        self.conflicts.inc(conflicts)
        self.failed.inc(len(letters))
        self.progress.add(indexed_document_count=indexed, indexed_document_bytes=volume,
                          deleted_document_count=deleted, dead_letter_count=len(letters))
        book.done(dict(done), committed_at=committed[-1:], conflicts=conflicts)
        if conflicts:
            _LOGGER.info("continuous sync %s: %d change(s) older than the indexed documents were refused "
                         "(version conflicts)", self.job_id, conflicts)
        return letters

    def _remove(self, item: Item) -> None:
        """A truncate (documents whose fields hold the given values) or a sweep (documents older than
        the snapshot), deleted with the version before the change's: later writes are kept."""
        op, _doc_id, data, position, committed_at, generation = item
        self.es.indices.refresh(index=self.index)
        match = orjson.loads(data) if data else {}
        if op == OP_TRUNCATE:
            query = {"bool": {"filter": [{"match_phrase": {name: value}} for name, value in match.items()]}}
            fields = list(match)
        else:
            query, fields = {"match_all": {}}, []
        doomed = []
        for hit in scan(self.es, index=self.index, query={"query": query, "version": True, "_source": fields or False},
                        size=1000):
            source = hit.get("_source") or {}
            if op == OP_TRUNCATE and any(source.get(name) != value for name, value in match.items()):
                continue
            if op == SWEEP and hit.get("_version", 0) >= position:
                continue
            doomed.append(hit["_id"])
        deleted = conflicts = 0
        for start in range(0, len(doomed), 1000):
            chunk = doomed[start:start + 1000]
            answer = self.es.bulk(index=self.index, operations=[
                {"delete": {"_id": doc_id, "version": position - 1, "version_type": "external"}} for doc_id in chunk])
            for entry in answer["items"]:
                status = entry["delete"].get("status", 500)
                if status < 300:
                    deleted += 1
                elif status == 409:
                    conflicts += 1
        self.deleted.inc(deleted)
        self.conflicts.inc(conflicts)
        self.progress.add(deleted_document_count=deleted)
        book = ledger(self.job_id)
        if generation == book.generation:
            book.done({position: 1}, committed_at=[committed_at] if committed_at else None)
        _LOGGER.info("continuous sync %s: %s removed %d document(s)", self.job_id,
                     "the snapshot's sweep" if op == SWEEP else f"truncate of {match}", deleted)


class _NormalizeChangeFn(beam.DoFn):
    """``(op, doc, position, committed_at, generation)`` -> ``(op, doc_id, json_bytes, position,
    committed_at, generation)``,
    serialized as other syncs do (:mod:`transforms.normalize`); a document that cannot be is dead-lettered."""

    def __init__(self, job_id: str, pipeline_flags: dict[str, Any], max_document_bytes: int, extract_text: bool,
                 shape: str | None = None):
        from transforms.normalize import _NormalizeFn

        self.job_id = job_id
        self.inner = _NormalizeFn(pipeline_flags, max_document_bytes, extract_text, operation="mixed", shape=shape)

    def process(self, change: tuple[str, dict[str, Any], int, float | None, int]) -> Iterator[Any]:
        op, doc, position, committed_at, generation = change
        if op in (OP_TRUNCATE, SWEEP):
            yield op, None, orjson.dumps(doc), position, committed_at, generation
            return
        for out in self.inner.process((op, doc)):
            if isinstance(out, beam.pvalue.TaggedOutput):  # dead-lettered: done as far as the stream goes
                book = ledger(self.job_id)
                if generation == book.generation:
                    book.done({position: 1})
                yield beam.pvalue.TaggedOutput("dead_letters", out.value)
            else:
                yield out[0], out[1], out[2], position, committed_at, generation


class WriteVersioned(beam.PTransform):
    """Changes in (``(op, doc, position, committed_at, generation)``), dead letters out (see the module docstring)."""

    def __init__(self, conn: ElasticsearchConnection, index: str, *, job_id: str, settings: BulkSettings,
                 pipeline: str | None = None, pipeline_flags: dict[str, Any] | None = None,
                 max_document_bytes: int = 20 * 1024 * 1024, extract_text: bool = True, shape: str | None = None):
        super().__init__()
        self.shape = shape
        self.conn, self.index, self.job_id, self.settings, self.pipeline = conn, index, job_id, settings, pipeline
        self.pipeline_flags = dict(pipeline_flags or {})
        self.max_document_bytes, self.extract_text = max_document_bytes, extract_text

    def expand(self, changes: beam.PCollection) -> beam.PCollection:
        normalized = changes | "Normalize" >> beam.ParDo(_NormalizeChangeFn(
            self.job_id, self.pipeline_flags, self.max_document_bytes, self.extract_text, self.shape)).with_outputs(
            "dead_letters", main="changes")
        written = normalized.changes | "Bulk" >> beam.ParDo(_WriteVersionedFn(
            self.conn, self.index, self.settings, self.pipeline, self.job_id))
        return (written, normalized.dead_letters) | "DeadLetters" >> beam.Flatten()
