"""Live job counters that reach the daemon on every runner.

Beam metrics are exact but most runners report them only at the end. Each writer DoFn
instance therefore also keeps a :class:`ProgressReporter`: cumulative counters written,
at most every ``interval`` seconds and when the instance finishes, as one small document
per instance in the hidden index ``elastic-ingest-progress``. The daemon sums them
(:func:`read_progress`) for the job's heartbeat; the final counters come from Beam metrics.

Workers reach Elasticsearch anyway (they write the documents), so this channel works on
the local runner, Flink and Dataflow alike.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from elasticsearch import Elasticsearch

__all__ = ["ProgressReporter", "read_progress", "write_job_record", "read_job_record", "PROGRESS_INDEX"]

PROGRESS_INDEX = "elastic-ingest-progress"
_COUNTERS = ("indexed_document_count", "indexed_document_bytes", "deleted_document_count", "dead_letter_count")
_LOGGER = logging.getLogger(__name__)


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
    """Cumulative counters of one worker instance for one job."""

    def __init__(self, es: Elasticsearch, job_id: str, *, interval: float = 5.0, clock=time.monotonic):
        self.es = es
        self.job_id = job_id
        self.interval = interval
        self.clock = clock
        self.doc_id = f"{job_id}.{uuid.uuid4().hex}"
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self._last = clock()
        self._dirty = False
        self._lock = threading.Lock()
        self._index_ready = False

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counts[name] += delta
            self._dirty = True
        if self.clock() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            body = {"job_id": self.job_id, **self.counts, "updated_at": time.time()}
            self._dirty = False
            self._last = self.clock()
        try:
            if not self._index_ready:
                _ensure_index(self.es)
                self._index_ready = True
            self.es.index(index=PROGRESS_INDEX, id=self.doc_id, document=body)
        except Exception as exc:  # noqa: BLE001 - progress is best effort, never fails a sync
            _LOGGER.debug("progress write failed: %s", exc)


def read_progress(es: Elasticsearch, job_id: str) -> dict[str, int]:
    """The job's counters so far, summed over its worker instances."""
    totals = dict.fromkeys(_COUNTERS, 0)
    try:
        result = es.search(
            index=PROGRESS_INDEX, query={"term": {"job_id": job_id}}, size=10000,
            source_includes=list(_COUNTERS), ignore_unavailable=True,
        )
    except Exception as exc:  # noqa: BLE001
        _LOGGER.debug("progress read failed: %s", exc)
        return totals
    for hit in result["hits"]["hits"]:
        for name in _COUNTERS:
            totals[name] += int(hit["_source"].get(name, 0) or 0)
    return totals


def write_job_record(es: Elasticsearch, job_id: str, name: str, value: Any) -> None:
    """Store a small per-job value workers produce (e.g. an incremental sync's new cursor)."""
    _ensure_index(es)
    es.index(index=PROGRESS_INDEX, id=f"{job_id}.{name}", document={"job_id": f"{job_id}.{name}", "value": value},
             refresh=True)


def read_job_record(es: Elasticsearch, job_id: str, name: str) -> Any:
    try:
        return es.get(index=PROGRESS_INDEX, id=f"{job_id}.{name}")["_source"].get("value")
    except Exception:  # noqa: BLE001 - missing
        return None
