"""The continuous sync: one unbounded Beam pipeline per streaming job, on Prism.

::

    Impulse -> ReadStream (splittable DoFn: snapshot, sweep, then changes; deferred remainders,
               wall-clock watermark; acknowledges the source at what Elasticsearch acknowledged)
            -> WriteVersioned (normalize; batched versioned _bulk, sent at max_docs/max_bytes and at
               the end of each bundle, one read of the source; truncate/sweep as versioned deletes)
            -> WriteDeadLetters

The pipeline never ends by itself: the daemon stops the sync process (cancel, suspend,
``continuous_sync`` turned off) and the position is the source's (a PostgreSQL slot keeps
its ``confirmed_flush_lsn``); Prism keeps nothing across restarts. A replay from the last
acknowledged position writes the same versions again, so the index ends the same.
"""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam

from pipelines.job import SyncJob
from pipelines.settings import PipelineConfig
from transforms.dead_letter import WriteDeadLetters
from transforms.es_client import ElasticsearchConnection
from transforms.read_stream import ReadStream
from transforms.write_versioned import GC_DELETES, WriteVersioned

__all__ = ["build_stream_pipeline", "prepare_stream_index", "POLL_SECONDS"]

_LOGGER = logging.getLogger(__name__)
#: The longest one read of the stream waits for changes.
POLL_SECONDS = 0.2


def prepare_stream_index(es: Any, index: str) -> None:
    """Keep deleted documents' versions for :data:`GC_DELETES` on the content index (Elasticsearch's
    default is 60 s), so a replayed older change cannot bring back a document deleted since."""
    current = es.indices.get_settings(index=index, name="index.gc_deletes", include_defaults=True)
    for body in current.values():
        value = (body.get("settings", {}).get("index", {}).get("gc_deletes")
                 or body.get("defaults", {}).get("index", {}).get("gc_deletes"))
        if value != GC_DELETES:
            es.indices.put_settings(index=index, settings={"index": {"gc_deletes": GC_DELETES}})
            _LOGGER.info("index %s: index.gc_deletes set to %s for the continuous sync", index, GC_DELETES)


def build_stream_pipeline(job: SyncJob, settings: PipelineConfig, conn: ElasticsearchConnection, *,
                          runner: Any = None, options: Any = None, secrets: Any = None,
                          spec: Any = None, shape: str | None = None) -> beam.Pipeline:
    """The unbounded pipeline of a continuous sync (not yet run); ``shape``: the documents' shape
    (:func:`pipelines.sync.job_shape`), recorded in each as a full sync records it."""
    from pipelines.sync import bulk_settings, source_spec

    p = beam.Pipeline(runner=runner, options=options)
    conn = conn.by_reference(secrets)
    spec = (spec or source_spec(job)).by_reference(secrets)
    changes = p | "Impulse" >> beam.Impulse() | "Read" >> ReadStream(
        spec, conn, job_id=job.job_id, stream_id=job.connector_id, cursor=job.sync_cursor, poll_seconds=POLL_SECONDS,
        index=job.index_name, max_download_bytes=settings.max_download_bytes)
    dead = changes | "Write" >> WriteVersioned(
        conn, job.index_name, job_id=job.job_id, settings=bulk_settings(settings), pipeline=job.ingest_pipeline,
        pipeline_flags=job.pipeline_flags, max_document_bytes=settings.max_document_bytes,
        extract_text=settings.extract_text, shape=shape)
    _ = dead | "DeadLetters" >> WriteDeadLetters(settings.dead_letters, job_id=job.job_id)
    return p
