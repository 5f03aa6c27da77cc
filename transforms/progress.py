"""Live job counters that reach the daemon on every runner, and small per-job records.

Beam metrics are exact but most runners report them only at the end, and not at all for a
pipeline that is stopped or fails. Each writer DoFn instance therefore also keeps a
:class:`ProgressReporter`: its cumulative counters, written as one small document per
instance in the hidden index ``elastic-ingest-progress`` after every acknowledged
``_bulk`` (by a background thread, one write in flight, so a burst of acknowledgements
costs one write). The daemon sums them (:func:`read_progress`) for the job's heartbeat,
and for the counters of a job stopped early (canceled, suspended, failed): those are then
exact up to the requests that were in flight. A sync process that is told to stop
(SIGTERM) writes its last reports first (:func:`flush_all`).

Records belong to one run of one job: the daemon deletes them (:func:`delete_progress`)
when the run ends, whatever its outcome, and before a run starts.

Workers reach Elasticsearch anyway (they write the documents), so this channel works on
the local runner, Flink and Dataflow alike.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

__all__ = ["STREAM_RECORD", "ProgressReporter", "read_progress", "delete_progress", "flush_all", "local_totals",
           "write_job_record", "read_job_record", "PROGRESS_INDEX", "COUNTERS"]

PROGRESS_INDEX = "elastic-ingest-progress"
#: What a progress record counts.
COUNTERS = ("indexed_document_count", "indexed_document_bytes", "deleted_document_count", "dead_letter_count")
_LOGGER = logging.getLogger(__name__)
#: Reporters of this process that may hold unwritten counts, for :func:`flush_all`.
_LIVE: set["ProgressReporter"] = set()
#: Every count reported in this process, by job: exact when all workers run in this process.
_TOTALS: dict[str, Counter] = {}
_REGISTRY_LOCK = threading.RLock()  # re-entered by flush_all in a signal handler


def _ensure_index(es: Elasticsearch) -> None:
    if not es.indices.exists(index=PROGRESS_INDEX):
        try:
            es.indices.create(
                index=PROGRESS_INDEX,
                settings={"index": {"hidden": True, "refresh_interval": "1s"}},  # shards, replicas: the cluster's
                mappings={"dynamic": False, "properties": {"job_id": {"type": "keyword"}}},
            )
        except Exception as exc:  # noqa: BLE001 - created concurrently by another worker
            if "resource_already_exists" not in str(exc):
                raise


class ProgressReporter:
    """Cumulative counters of one worker instance for one job, written after each :meth:`add`.

    ``interval``: the least time between two writes (0: as soon as the previous write is
    done). Writes never fail the sync: a failed one is retried with the next counts.
    """

    def __init__(self, es: Elasticsearch, job_id: str, *, interval: float = 0.0, clock=time.monotonic):
        self.es = es
        self.job_id = job_id
        self.interval = interval
        self.clock = clock
        self.doc_id = f"{job_id}.{uuid.uuid4().hex}"
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Condition()
        self._io = threading.Lock()  # one write at a time, so a newer snapshot is never overwritten
        self._generation = 0  # bumped by every add
        self._written = 0  # the generation the index holds
        self._last_write = float("-inf")
        self._index_ready = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, **deltas: int) -> None:
        """Count an acknowledged request's results; they are written at once, in the background."""
        with _REGISTRY_LOCK:
            totals = _TOTALS.setdefault(self.job_id, Counter())
            totals.update(deltas)
            _LIVE.add(self)
        with self._lock:
            for name, delta in deltas.items():
                self.counts[name] += delta
            self._generation += 1
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()
            self._lock.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write the current counts now (if not written yet). False if that failed or timed out."""
        with self._lock:
            if self._written >= self._generation:
                return True
        return self._write(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush and stop the background writer."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify()
        with _REGISTRY_LOCK:
            _LIVE.discard(self)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._written >= self._generation and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                pause = self._last_write + self.interval - self.clock()
            if pause > 0:
                time.sleep(pause)
            if not self._write(timeout=None):
                time.sleep(1.0)  # Elasticsearch away: try again with the counts of then

    def _write(self, timeout: float | None) -> bool:
        if not self._io.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            with self._lock:
                generation = self._generation
                body = {"job_id": self.job_id, **self.counts, "updated_at": time.time()}
                self._last_write = self.clock()
            if generation <= self._written:
                return True
            if not self._index_ready:
                _ensure_index(self.es)
                self._index_ready = True
            self.es.index(index=PROGRESS_INDEX, id=self.doc_id, document=body)
        except Exception as exc:  # noqa: BLE001 - progress is best effort, never fails a sync
            _LOGGER.debug("progress write failed: %s", exc)
            return False
        finally:
            self._io.release()
        with self._lock:
            self._written = max(self._written, generation)
            if self._written >= self._generation:
                with _REGISTRY_LOCK:
                    _LIVE.discard(self)
        return True


def flush_all(timeout: float = 2.0) -> None:
    """Write every unwritten count of this process's reporters (the sync process on SIGTERM)."""
    deadline = time.monotonic() + timeout
    with _REGISTRY_LOCK:
        reporters = list(_LIVE)
    for reporter in reporters:
        reporter.flush(timeout=max(0.05, deadline - time.monotonic()))


def local_totals(job_id: str) -> dict[str, int]:
    """What this process's workers counted for ``job_id``: the job's counters when every
    worker ran in this process (the local runner's ``in_memory`` and ``multi_threading``)."""
    with _REGISTRY_LOCK:
        totals = _TOTALS.get(job_id, Counter())
        return {name: int(totals.get(name, 0)) for name in COUNTERS}


def read_progress(es: Elasticsearch, job_id: str) -> dict[str, int]:
    """The job's counters so far, summed over its worker instances (0s if unreadable)."""
    totals = dict.fromkeys(COUNTERS, 0)
    try:
        result = es.search(
            index=PROGRESS_INDEX, query={"term": {"job_id": job_id}}, size=10000,
            source_includes=list(COUNTERS), ignore_unavailable=True,
        )
    except Exception as exc:  # noqa: BLE001
        _LOGGER.debug("progress read failed: %s", exc)
        return totals
    for hit in result["hits"]["hits"]:
        for name in COUNTERS:
            totals[name] += int(hit["_source"].get(name, 0) or 0)
    return totals


def delete_progress(es: Elasticsearch, job_id: str) -> int:
    """Delete the job's progress records and job records; the number deleted.

    By id (search then ``_bulk`` delete): ``_delete_by_query`` is a module some clusters lack.
    """
    es.indices.refresh(index=PROGRESS_INDEX, ignore_unavailable=True)
    hits = es.search(index=PROGRESS_INDEX, query={"term": {"job_id": job_id}}, size=10000, source=False,
                     ignore_unavailable=True)["hits"]["hits"]
    if not hits:
        return 0
    es.bulk(operations=[{"delete": {"_index": PROGRESS_INDEX, "_id": hit["_id"]}} for hit in hits])
    return len(hits)


#: The job record holding a continuous sync's position and lag (written by its reader,
#: transforms/read_stream.py, read by the daemon: defined here, where the daemon imports no Beam).
STREAM_RECORD = "stream"


def write_job_record(es: Elasticsearch, job_id: str, name: str, value: Any) -> None:
    """Store a small per-job value workers produce (e.g. an incremental sync's new cursor)."""
    _ensure_index(es)
    es.index(index=PROGRESS_INDEX, id=f"{job_id}.{name}", document={"job_id": job_id, "name": name, "value": value},
             refresh=True)


def read_job_record(es: Elasticsearch, job_id: str, name: str) -> Any:
    """The value stored by :func:`write_job_record`; raises ``LookupError`` when there is none,
    and Elasticsearch's error when it cannot be read (never a silent None)."""
    try:
        return es.get(index=PROGRESS_INDEX, id=f"{job_id}.{name}")["_source"].get("value")
    except NotFoundError as exc:
        raise LookupError(f"no {name} record of job {job_id} in {PROGRESS_INDEX}") from exc
