"""ReadStream: a continuous sync's unbounded read, as a splittable DoFn.

One element (an impulse) in; out, without end, the source's changes as
``(op, doc, position, committed_at, generation)`` tuples: first the snapshot's documents (``index`` at the
snapshot's position) and a ``sweep`` marker (remove what the snapshot did not write), then
the changes of :meth:`sources.streaming.ChangeStream.changes`. Sync rules apply as in
other syncs: a document they exclude becomes a ``delete``.

Each call of ``process`` reads for at most ``poll_seconds`` (or one chunk of the snapshot),
emits what it read, and defers the rest of its (infinite) offset restriction by
``poll_seconds / 4``: the runner calls it again, so the stream is read in short bundles and
each reaches the writer at once. The snapshot's position is held in the ledger until its sweep
is emitted (:meth:`transforms.stream_ledger.StreamLedger.hold`): the source hears the snapshot
is in Elasticsearch once all of it is, not once the chunks read so far are. Right after
opening, the stream is given a reader of the content index (:func:`index_reader`, for
sources that compare themselves with it, e.g. a folder). The watermark follows the wall
clock. The stream itself (its connections, the snapshot being read) is kept per job in this process between calls; the
source is acknowledged, at each call, at the position the writer's acknowledgements allow
(:mod:`transforms.stream_ledger`), and the stream's state (position, lag, conflicts) is
stored at most every second as the job's ``stream`` record for the daemon.

At least once, whatever the runner: when changes never reach Elasticsearch (a runner that
dropped a bundle's output: seen on Prism 2.77 under load) the ledger notices (a change still
unwritten :data:`LOST_AFTER` seconds after later ones were written) and the stream is opened
again at the position Elasticsearch acknowledged, under a new ``generation`` (what the
writer acknowledges for an older one is ignored); the versions make the replay harmless. So
it is when nothing was written after the lost changes (the end of a snapshot, then an idle
source): changes unwritten :data:`LOST_AFTER` seconds while no ``_bulk`` was under way and the
writer acknowledged nothing (a writer retrying through an Elasticsearch outage is not stuck).

Runs on Prism, Dataflow (Runner v2) and any runner honouring deferred remainders; not on
FnApiRunner (batch only) nor the Python BundleBasedDirectRunner (docs/runners.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import WalltimeWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration
from elasticsearch import NotFoundError
from elasticsearch.helpers import scan

from sources.errors import SourceError
from sources.streaming import STREAM_OPS
from transforms.es_client import ElasticsearchConnection
from transforms.normalize import document_id
from transforms.progress import STREAM_RECORD, write_job_record
from transforms.read_from_source import SourceSpec
from transforms.stream_ledger import ledger, new_ledger
from transforms.sync_rules import BasicRules

__all__ = ["ReadStream", "SWEEP", "STREAM_RECORD", "index_reader"]

#: After a snapshot: remove every document of a version lower than the snapshot's position.
SWEEP = "sweep"
_LOGGER = logging.getLogger(__name__)
_END = 2**62
_SNAPSHOT_CHUNK = 2000  # snapshot documents per call
#: Seconds a change may stay unwritten after later ones were written before it counts as lost.
LOST_AFTER = 10.0


class _OneStreamTracker(OffsetRestrictionTracker):
    """Checkpoints (``defer_remainder``) only: a runner's dynamic split (Prism asks for them) would
    have two bundles read one stream at once."""

    def try_split(self, fraction_of_remainder: float) -> Any:
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _Forever(RestrictionProvider):
    def initial_restriction(self, element: Any) -> OffsetRange:
        return OffsetRange(0, _END)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return _OneStreamTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> int:
        return 1

    def split(self, element: Any, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one stream: never split


class _Open:
    """A job's open stream in this process, between calls."""

    def __init__(self, source: Any, stream: Any, generation: int):
        self.source, self.stream, self.generation = source, stream, generation
        self.snapshot = stream.snapshot() if stream.snapshot_position else None
        self.sweep_at = stream.snapshot_position
        self.last_record = 0.0
        self.last_ack = 0
        self.lock = threading.Lock()  # one read of the stream at a time, whatever the runner does


_OPEN: dict[str, _Open] = {}
_OPEN_LOCK = threading.Lock()


def close_streams() -> None:
    """Close the streams open in this process (the sync is stopping): their last acknowledgement is sent."""
    with _OPEN_LOCK:
        opened = list(_OPEN.values())
        _OPEN.clear()
    for entry in opened:
        try:
            entry.stream.close()
        except Exception:  # noqa: BLE001 - stopping anyway
            pass


def index_reader(es: Any, index: str | None) -> Callable[[Sequence[str]], Iterator[tuple[str, dict[str, Any], int]]]:
    """A :data:`sources.streaming.IndexReader` of ``index``: every document's ``_id``, the requested
    ``_source`` fields and version, after a refresh; a shard that fails raises (never part of the
    index); a missing index reads as empty."""

    def read(fields: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], int]]:
        if not index:
            return
        try:
            es.indices.refresh(index=index)
        except NotFoundError:
            return
        for hit in scan(es, index=index, query={"query": {"match_all": {}}, "version": True,
                                                "_source": list(fields) or False},
                        size=1000, raise_on_error=True):
            yield hit["_id"], hit.get("_source") or {}, int(hit.get("_version") or 0)

    return read


class _ReadStreamFn(beam.DoFn):
    def __init__(self, spec: SourceSpec, conn: ElasticsearchConnection, job_id: str, stream_id: str,
                 cursor: Any, poll_seconds: float, index: str | None = None, max_download_bytes: int = 0):
        self.spec, self.conn, self.job_id, self.stream_id = spec, conn, job_id, stream_id
        self.cursor, self.poll_seconds, self.index = cursor, poll_seconds, index
        self.max_download_bytes = max_download_bytes
        self.read_count = Metrics.counter("elastic_ingest", "source_documents")

    def setup(self) -> None:
        self.rules = BasicRules(self.spec.basic_rules)
        self.es = self.conn.client()

    def teardown(self) -> None:
        es = getattr(self, "es", None)
        if es is not None:
            es.close()

    def _open(self, *, again: bool = False) -> _Open:
        with _OPEN_LOCK:
            entry = None if again else _OPEN.get(self.job_id)
        if entry is None:
            book = new_ledger(self.job_id) if again else ledger(self.job_id)
            source = self.spec.build()
            stream = source.open_change_stream(self.cursor or None, filtering=self.spec.filtering(),
                                               stream_id=self.stream_id)
            stream.max_download_bytes = self.max_download_bytes
            stream.attach_index(index_reader(self.es, self.index))
            entry = _Open(source, stream, book.generation)
            if entry.snapshot is not None:
                book.hold(entry.sweep_at)  # confirmable only once the whole snapshot and its sweep are written
            with _OPEN_LOCK:
                _OPEN[self.job_id] = entry
            _LOGGER.info("continuous sync %s: stream open%s", self.job_id,
                         f", snapshot at position {entry.sweep_at}" if entry.sweep_at else "")
        return entry

    def process(self, element: Any, tracker=beam.DoFn.RestrictionParam(_Forever()),
                _watermark=beam.DoFn.WatermarkEstimatorParam(WalltimeWatermarkEstimator.default_provider()),
                ) -> Iterator[tuple[str, dict[str, Any], int, float | None, int]]:
        offset = tracker.current_restriction().start
        if not tracker.try_claim(offset):
            return
        try:
            entry = self._open()
            with entry.lock:
                self.book = ledger(self.job_id)
                if self.book.lost(LOST_AFTER):
                    entry = self._reopen(entry)
                out = list(self._read(entry))
                self._acknowledge(entry)
            yield from out
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"continuous read of {self.spec.fqn} failed: {type(exc).__name__}: {exc}") from exc
        tracker.defer_remainder(Duration.of(self.poll_seconds / 4))

    def _reopen(self, entry: _Open) -> _Open:
        """Changes were lost on the way to Elasticsearch (see StreamLedger.lost): read again from the
        position Elasticsearch acknowledged (a snapshot not fully acknowledged is taken again)."""
        _LOGGER.warning("continuous sync %s: %d change(s) never reached Elasticsearch; reading again from the "
                        "acknowledged position", self.job_id, self.book.pending())
        try:
            # From the position Elasticsearch acknowledged (sources that keep none server-side need it).
            self.cursor = entry.stream.cursor() or self.cursor
            entry.stream.close()
        except Exception:  # noqa: BLE001 - opened again below
            pass
        fresh = self._open(again=True)
        self.book = ledger(self.job_id)
        return fresh

    def _read(self, entry: _Open) -> Iterator[tuple[str, dict[str, Any], int, float | None, int]]:
        if entry.snapshot is not None:
            count = 0
            for doc in entry.snapshot:
                out = self._change("index", doc, entry.sweep_at, None, entry.generation)
                if out is not None:
                    yield out
                count += 1
                if count >= _SNAPSHOT_CHUNK:
                    return
            entry.snapshot = None
            self.book.emitted(entry.sweep_at)
            self.book.release()  # every document of the snapshot was emitted, the sweep last
            yield SWEEP, {}, entry.sweep_at, None, entry.generation
            return
        for change in entry.stream.changes(self.poll_seconds):
            out = self._change(change.op, change.doc, change.position, change.committed_at, entry.generation)
            if out is not None:
                yield out

    def _change(self, op: str, doc: dict[str, Any], position: int, committed_at: float | None, generation: int):
        if op not in STREAM_OPS:
            raise ValueError(f"unknown operation {op!r}; expected one of {', '.join(STREAM_OPS)}")
        if not isinstance(position, int) or position <= 0:
            raise ValueError(f"change position must be a positive integer, got {position!r}")
        self.read_count.inc()
        if op != "truncate":
            doc = {**doc, "_id": document_id(doc.get("_id"))}
            if op == "index" and self.rules and not self.rules.should_index(doc):
                op, doc = "delete", {"_id": doc["_id"]}
        self.book.emitted(position)
        return op, doc, position, committed_at, generation

    def _acknowledge(self, entry: _Open) -> None:
        confirmable = self.book.confirmable()
        if confirmable > entry.last_ack:
            entry.stream.acknowledge(confirmable)
            entry.last_ack = confirmable
        now = time.monotonic()
        if now - entry.last_record >= 1.0:
            entry.last_record = now
            state = {**self.book.state(), **entry.stream.lag_hint(), "cursor": entry.stream.cursor(),
                     "snapshot": "reading" if entry.snapshot is not None else "done",
                     "recorded_at": datetime.now(timezone.utc).isoformat()}
            try:
                write_job_record(self.es, self.job_id, STREAM_RECORD, state)
            except Exception as exc:  # noqa: BLE001 - a missed report is retried next second
                _LOGGER.warning("continuous sync %s: could not record the stream's state: %s", self.job_id, exc)


class ReadStream(beam.PTransform):
    """An impulse in; the source's changes out, without end (see the module docstring)."""

    def __init__(self, spec: SourceSpec, conn: ElasticsearchConnection, *, job_id: str, stream_id: str,
                 cursor: Any = None, poll_seconds: float = 0.2, index: str | None = None,
                 max_download_bytes: int = 0):
        super().__init__()
        self.spec, self.conn, self.job_id, self.stream_id = spec, conn, job_id, stream_id
        self.cursor, self.poll_seconds, self.index = cursor, poll_seconds, index
        self.max_download_bytes = max_download_bytes

    def expand(self, impulse: beam.PCollection) -> beam.PCollection:
        return impulse | "ReadStream" >> beam.ParDo(_ReadStreamFn(
            self.spec, self.conn, self.job_id, self.stream_id, self.cursor, self.poll_seconds, self.index,
            self.max_download_bytes))
