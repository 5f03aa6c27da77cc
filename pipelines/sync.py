"""build_sync_pipeline: one claimed job -> one Beam pipeline. The whole graph, in one screen.

Full sync::

    ScanIndex(content index) -> indexed digests ---+-----------------------+ (side inputs)
                                                   v                       v
    partitions -> ReadFromSource(skip unchanged) -> docs -> Normalize -> WriteToElasticsearch(index) --+
                        |                                                                            |
                        +-> seen bitmaps --> FindDeletions (OR, then the unseen) -> WriteToElasticsearch(delete)
                                                                                                     +-> WriteDeadLetters

Incremental sync::

    cursor -> ReadChanges -> (op, doc) in order -> Normalize(mixed) -> WriteToElasticsearch(mixed) -> WriteDeadLetters

(index, update and delete operations stay one ordered stream: one id indexed then
deleted in the same sync ends deleted.)

A full sync's documents travel from the read to the writer as lists (one per read batch,
or per download window), so Beam's cost per element is paid per list, not per document.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.job import SyncJob
from pipelines.settings import PipelineConfig
from sources.base import Partition
from sources.registry import load_source_class
from sources.streaming import CONTINUOUS_SYNC_FIELD
from transforms.dead_letter import WriteDeadLetters
from transforms.digest_cache import DigestCache
from transforms.document_shape import document_shape
from transforms.es_client import ElasticsearchConnection
from transforms.find_deletions import FindDeletions
from transforms.normalize import Normalize
from transforms.read_changes import ReadChanges
from transforms.read_from_source import ReadFromSource, SourceSpec
from transforms.scan_index import ScanIndex
from transforms.secrets import SecretRef
from transforms.write_to_elasticsearch import MIXED, BulkSettings, WriteToElasticsearch

__all__ = ["build_sync_pipeline", "bulk_settings", "read_digests_dir", "source_spec", "one_worker", "job_shape"]


def one_worker(settings: PipelineConfig) -> bool:
    """Whether one in-process worker runs the whole sync (the local runner's default): partitions
    are then read one after another whatever the shuffle, which is left out."""
    return settings.runner == "FnApiRunner" and settings.direct_num_workers == 1


def read_digests_dir(work_dir: str) -> str:
    """Where a full sync's read records the digests of what it read."""
    return os.path.join(work_dir, "read-digests")


def bulk_settings(settings: PipelineConfig) -> BulkSettings:
    b = settings.bulk
    return BulkSettings(
        max_docs=b.max_docs, max_bytes=b.max_bytes, max_in_flight=b.max_in_flight, max_retries=b.max_retries,
        max_retry_seconds=b.max_retry_seconds,
        max_batch_seconds=b.max_batch_seconds,
        initial_backoff=b.initial_backoff, max_backoff=b.max_backoff, max_error_rate=settings.max_error_rate,
        min_errors_to_fail=settings.min_errors_to_fail,
    )


def source_spec(job: SyncJob) -> SourceSpec:
    """What the workers build the job's source from (sensitive values included)."""
    # An access-control sync is a full sync of the source's identities into the job's
    # index (``.search-acl-filter-<content index>``, chosen by the launcher).
    return SourceSpec(job.source_fqn, job.configuration, tuple(job.basic_rules), job.advanced_rules,
                      access_control=job.job_type == "access_control", operator_settings=job.source_settings)


def job_shape(job: SyncJob, settings: PipelineConfig) -> str | None:
    """The shape of the documents ``job`` writes (:mod:`transforms.document_shape`); None for an
    access-control sync. ``job.ingest_pipeline``: the pipeline they go through (None when it does
    not exist). Sensitive configuration values, those the source declares neutral
    (``document_neutral_fields``) and ``continuous_sync`` (how the service syncs, not what a
    document holds: turning it on or off must not rewrite the index) are left out."""
    if job.job_type == "access_control":
        return None
    spec = source_spec(job)
    hidden = (spec.sensitive_fields() | {CONTINUOUS_SYNC_FIELD}
              | set(getattr(load_source_class(job.source_fqn), "document_neutral_fields", ())))
    values = {name: (value.get("value") if isinstance(value, dict) else value)
              for name, value in job.configuration.items() if name not in hidden}
    return document_shape(ingest_pipeline=job.ingest_pipeline, pipeline_flags=job.pipeline_flags,
                          extract_text=settings.extract_text, max_download_bytes=settings.max_download_bytes,
                          service_type=job.service_type, configuration=values, advanced_rules=job.advanced_rules)


def build_sync_pipeline(
    job: SyncJob,
    settings: PipelineConfig,
    conn: ElasticsearchConnection,
    *,
    partitions: Sequence[Partition] = (Partition(),),
    runner: Any = None,
    options: PipelineOptions | None = None,
    progress_interval: float = 0.0,
    index_empty: bool = False,
    work_dir: str | None = None,
    digest_cache: DigestCache | None = None,
    secrets: SecretRef | None = None,
    shape: str | None = None,
) -> beam.Pipeline:
    """The pipeline for ``job`` (not yet run). ``partitions`` come from the source's planning.

    ``index_empty``: the content index held no document when the sync started, so a full
    sync has nothing to compare timestamps with and nothing to delete: both steps are left
    out (a first sync then costs what indexing costs).

    ``work_dir``: a directory all workers can read, where the index's digests are kept as
    files while the sync runs (None: they travel inside the side input).

    ``digest_cache``: where the index's digests are kept between syncs (with ``work_dir``;
    None: no cache, the index is scanned by every full sync). The read then records the
    digests of what it read in ``read_digests_dir(work_dir)``, for after the sync.

    ``secrets``: where the workers find the Elasticsearch credentials and the source's
    sensitive values (:func:`transforms.secrets.worker_secrets` put them there): the graph
    then holds none of them. None: ``conn`` and the job's configuration hold no secret.

    ``shape``: the documents' shape (:func:`job_shape`), recorded in each and compared by
    the full sync; with ``job.reindex`` the full sync skips nothing.
    """
    p = beam.Pipeline(runner=runner, options=options)
    conn, spec = conn.by_reference(secrets), source_spec(job).by_reference(secrets)
    write = dict(settings=bulk_settings(settings), pipeline=job.ingest_pipeline, job_id=job.job_id,
                 progress_interval=progress_interval)
    normalize = dict(max_document_bytes=settings.max_document_bytes, extract_text=settings.extract_text, shape=shape)

    if job.job_type == "incremental":
        changes = p | "Cursor" >> beam.Create([job.sync_cursor]) | "Read" >> ReadChanges(spec, conn, job_id=job.job_id)
        # One ordered stream from the source to one writer: the changes' order is kept.
        ops, normalize_dead = changes.changes | "Normalize" >> Normalize(job.pipeline_flags, operation=MIXED,
                                                                         **normalize)
        write_dead = ops | "Apply" >> WriteToElasticsearch(conn, job.index_name, operation=MIXED, **write)
        dead_letters = [changes.dead_letters, normalize_dead, write_dead]
    else:
        indexed = None if index_empty else p | "ScanIndex" >> ScanIndex(
            conn, job.index_name, slices=settings.scan_slices, work_dir=work_dir, cache=digest_cache)
        read = (
            p
            | "Partitions" >> beam.Create(list(partitions), reshuffle=False)  # spread by the read, if at all
            | "Read" >> ReadFromSource(
                spec,
                skip_unchanged=indexed,
                track_seen=indexed is not None,
                batch_size=settings.read_batch_size,
                download_concurrency=settings.download_concurrency,
                max_download_bytes=settings.max_download_bytes,
                record_digests=read_digests_dir(work_dir) if digest_cache is not None and work_dir else None,
                max_batch_seconds=settings.bulk.max_batch_seconds,
                spread=not one_worker(settings),
                shape=shape,
                reindex=job.reindex,
                batched=True,  # lists of documents from the read to the writer: Beam's cost per batch
            )
        )
        docs, normalize_dead = read.docs | "Normalize" >> Normalize(job.pipeline_flags, batched=True, **normalize)
        index_dead = docs | "Index" >> WriteToElasticsearch(conn, job.index_name, batched=True, **write)
        dead_letters = [read.dead_letters, normalize_dead, index_dead]
        if indexed is not None:
            stale = p | "FindDeletions" >> FindDeletions(conn, job.index_name, seen=read.seen, indexed=indexed,
                                                         slices=settings.scan_slices)
            dead_letters.append(
                stale | "Delete" >> WriteToElasticsearch(conn, job.index_name, operation="delete", **write))

    (
        tuple(dead_letters)
        | "AllDeadLetters" >> beam.Flatten()
        | "DeadLetters" >> WriteDeadLetters(settings.dead_letters, job_id=job.job_id)
    )
    return p
