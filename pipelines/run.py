"""The sync process: ``python -m pipelines.run JOB_FILE RESULT_FILE``.

The launcher starts one such process per sync, so a sync can be stopped at once (the
process is killed) and its memory is returned when it ends. It:

1. reads the job file (a :class:`~pipelines.job.SyncJob`, the pipeline settings and how
   to reach Elasticsearch; mode 0600, it holds secrets);
2. plans: builds the source, validates its configuration, pings it, asks for partitions
   and, for a full sync, the cursor to keep;
3. makes sure the content index exists and checks the ingest pipeline;
4. builds the Beam pipeline, runs it on the configured runner and waits;
5. writes the result (status, exact counters from Beam metrics, error, cursor, dead
   letters) to RESULT_FILE as JSON, and exits 0 (completed) or 1 (error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apache_beam.metrics.metric import MetricsFilter

from pipelines.job import DAEMON_PID_ENV, SyncJob, write_job_file
from pipelines.options import runner_and_options, worker_paths, workers_share_this_disk
from pipelines.settings import PipelineConfig
from pipelines.sync import build_sync_pipeline, job_shape, read_digests_dir, source_spec
from sources.driver import SourceDriver, build_source
from sources.errors import (
    ConfigError, IngestError, SourceConfigError, SourceUnavailable, TooManyErrors, format_error,
)
from sources.registry import load_source_class
from transforms.content_index import count_documents, ensure_content_index, ingest_pipeline_exists
from transforms.dead_letter_files import count_dead_letters, dead_letter_folder, dead_letter_location
from transforms.digest_cache import DigestCache, IndexState, default_cache_dir, index_state, started_from, store_synced
from transforms.digests import IndexDigests
from transforms.document_shape import describe_reshape, reshaped_documents
from transforms.es_client import ElasticsearchConnection
from transforms.progress import PROGRESS_INDEX, flush_all, local_totals, read_job_record
from transforms.secrets import discard_all, worker_secrets
from transforms.work_dir import mark_work_dir
from transforms.write_to_elasticsearch import FIRST_BULK_METRIC

__all__ = ["run_sync", "write_job_file", "main", "DAEMON_PID_ENV"]

#: Kibana's default ingest pipeline (launcher.protocol.DEFAULT_PIPELINE): its absence is only a notice.
DEFAULT_INGEST_PIPELINE = "search-default-ingestion"
_LOGGER = logging.getLogger("pipelines.run")
MIB = 1024 * 1024
# Pipelines running in this process: on SIGTERM (the daemon cancels or suspends the job)
# remote jobs (Dataflow, a Flink cluster) are cancelled too, not left running.
_RUNNING: dict[str, Any] = {}
# Work directories of the syncs in this process, removed on SIGTERM too.
_WORK_DIRS: set[str] = set()


def _quiet_stopped_workers() -> None:
    """Once the sync is told to stop: Beam's worker threads (LOOPBACK, in this process) see their
    gRPC streams close as the pipeline is cancelled and would log it as errors with tracebacks,
    dozens of lines for a stop the daemon asked for, and Prism's own log (``PrismJobServer``) the
    cancelled bundles as failed. Silence them: the process exits next."""
    threading.excepthook = lambda _args: None
    for name in ("apache_beam.runners.worker", "PrismJobServer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _cancel_running_and_exit(signum: int, _frame: Any) -> None:
    _quiet_stopped_workers()
    # The workers of this process write what Elasticsearch acknowledged since their last
    # report: the daemon takes a stopped job's counters from those reports.
    flush_all(timeout=2.0)
    for job_id, result in list(_RUNNING.items()):
        try:
            _LOGGER.info("sync %s: stopping (signal %d); cancelling the pipeline", job_id, signum)
            result.cancel()
        except Exception as exc:  # noqa: BLE001 - a runner that cannot cancel: we exit anyway
            _LOGGER.warning("sync %s: could not cancel the pipeline: %s", job_id, format_error(exc))
    from transforms.read_stream import close_streams

    close_streams()  # a continuous sync's last acknowledgement reaches the source
    for path in list(_WORK_DIRS):  # dying of the signal skips the `finally` blocks
        _remove_work_dir(path)
    discard_all()  # the secrets put for the workers (a file, a Secret Manager secret)
    signal.signal(signum, signal.SIG_DFL)  # then die of the signal, as without this handler
    if os.getpgrp() == os.getpid():
        # The daemon started this process in a group of its own: end the processes it started
        # too (the Prism a PrismRunner sync starts, local SDK workers), which would outlive it.
        os.killpg(os.getpid(), signum)
    os.kill(os.getpid(), signum)


def _plan(job: SyncJob, reindex: bool = False) -> tuple[list[Any] | None, Any]:
    """Validate, ping and partition the source; ``(None, cursor)`` when it reports no change
    (never when every document, or some, must be written again: ``reindex``)."""
    source = build_source(load_source_class(job.source_fqn), job.configuration, job.source_settings)
    driver = SourceDriver(source)
    try:
        # Our own errors say what they are (one name per failure); another error is the
        # source's own: its type is named in the message, after what it means here.
        if hasattr(source, "validate_config"):
            try:
                driver.call(source.validate_config)
            except IngestError:
                raise
            except Exception as exc:  # noqa: BLE001 - the source's own error type
                raise SourceConfigError(f"invalid configuration: {exc} ({type(exc).__name__})") from exc
        if hasattr(source, "ping"):
            try:
                driver.call(source.ping)
            except IngestError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise SourceUnavailable(f"the source cannot be reached: {exc} ({type(exc).__name__})") from exc
        if job.continuous:
            from sources.streaming import supports_continuous_sync

            if not supports_continuous_sync(type(source)):
                raise SourceConfigError(f"{type(source).__name__} does not support continuous syncs")
            return [], None
        if job.job_type == "incremental":
            if not getattr(source, "incremental_sync_enabled", False):
                raise SourceConfigError(f"{type(source).__name__} does not support incremental syncs")
            return [], None
        from sources.base import Partition, supports_access_control

        if job.job_type == "access_control":
            if not supports_access_control(type(source)):  # the launcher checks first; never the content index
                raise SourceConfigError(f"{type(source).__name__} does not support document-level security")
            return [Partition()], None

        cursor_of = (lambda: driver.call(source.sync_cursor)) if hasattr(source, "sync_cursor") else (lambda: None)
        if not reindex and hasattr(source, "changed") and driver.call(source.changed) is False:
            return None, cursor_of()
        partitions = list(driver.call(source.get_partitions)) if hasattr(source, "get_partitions") else []
        return partitions or [Partition()], cursor_of()
    finally:
        driver.close()


#: The job's ``reindex_reason`` when it asked to write every document again.
REQUESTED = "requested (job metadata.reindex: true, e.g. sync --reindex): every document is written again"


def _shape_and_reason(es: Any, job: SyncJob, settings: PipelineConfig) -> tuple[str | None, str | None]:
    """The shape of the job's documents, and why a full sync writes documents that did not
    change (None: it does not; those it writes are new or changed)."""
    effective = job
    if job.ingest_pipeline:
        try:
            exists = ingest_pipeline_exists(es, job.ingest_pipeline)
        except Exception:  # noqa: BLE001 - unknown: as configured (the check before indexing says more)
            exists = True
        if not exists:  # documents go through no pipeline: their shape says so
            effective = dataclasses.replace(job, ingest_pipeline=None)
    shape = job_shape(effective, settings)
    if job.job_type != "full":
        return shape, None
    if job.reindex:
        return shape, REQUESTED
    reshaped = reshaped_documents(es, job.index_name, shape) if shape else None
    return shape, describe_reshape(*reshaped, shape) if reshaped else None


def _counters(result: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace("elastic_ingest"))
    except Exception as exc:  # noqa: BLE001 - a runner without metrics
        _LOGGER.warning("the runner reported no metrics: %s", exc)
        return totals
    for distribution in metrics.get("distributions", ()):
        # Times (epoch milliseconds): the earliest is the distribution's minimum.
        value = distribution.committed or distribution.attempted
        if value is not None and value.count:
            name = distribution.key.metric.name
            totals[name] = min(totals.get(name, value.min), value.min)
    counters = metrics["counters"]
    for counter in counters:
        # Committed values are exact (retried bundles counted once); portable runners that
        # report only attempted values (some Flink versions) fall back to those.
        value = counter.committed if counter.committed else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


@contextlib.contextmanager
def _work_dir(settings: PipelineConfig, job_id: str, root: str | None) -> Iterator[str | None]:
    """A private directory for the sync's files (index digests) in ``pipeline.work_dir``, else
    ``root``, else $TMPDIR; removed at the end. None when the workers may run on other
    machines (the digests then travel in the pipeline)."""
    if not workers_share_this_disk(settings):
        yield None
        return
    parent = settings.work_dir or root
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        path = tempfile.mkdtemp(prefix=f"elastic-ingest-{job_id}-", dir=parent)
    except OSError as exc:
        where = "pipeline.work_dir" if settings.work_dir else "the sync's working directory"
        raise ConfigError(f"{where} {parent or tempfile.gettempdir()!r}: cannot create a directory there "
                          f"({exc.strerror or exc})") from exc
    _WORK_DIRS.add(path)
    try:
        mark_work_dir(path)  # what each worker checks it sees (pipeline.workers_share_disk)
        yield path
    finally:
        _remove_work_dir(path)


def _keep_index_digests(es: Any, index: str, cache: DigestCache, work_dir: str, counts: dict[str, int],
                        empty_at: IndexState | None) -> bool:
    """After a clean full sync: keep what it read as the index's digests, for the next sync.

    The sync started from an empty index (``empty_at``), or from digests of the index at a
    known state (the scan's or the cache's ``state.json``). Never raises: the cache is an
    optimization, and the sync is complete already.
    """
    try:
        before = empty_at or started_from(work_dir)
        if before is None:
            return False
        records = sorted(Path(read_digests_dir(work_dir)).glob("*.rec"))
        kept = store_synced(cache, es, index, before=before, records=records, work_dir=work_dir,
                            writes=counts.get("writes_applied", 0), not_as_sent=counts.get("writes_not_as_sent", 0))
    except Exception as exc:  # noqa: BLE001
        _LOGGER.warning("index %s: its digests could not be kept for the next sync: %s", index, format_error(exc))
        return False
    if kept:
        _LOGGER.info("index %s: digests kept; the next sync does not scan it unless someone writes to it", index)
    return kept


def _digest_cache(settings: PipelineConfig) -> DigestCache | None:
    if not settings.digest_cache:
        return None
    return DigestCache(os.path.expanduser(settings.digest_cache_dir or default_cache_dir()),
                       max_bytes=settings.digest_cache_max_bytes)


def _remove_work_dir(path: str) -> None:
    _WORK_DIRS.discard(path)
    IndexDigests.release(path)
    shutil.rmtree(path, ignore_errors=True)


def run_sync(job: SyncJob, settings: PipelineConfig, conn: ElasticsearchConnection,
             progress_interval: float = 0.0, work_root: str | None = None) -> dict[str, Any]:
    """Run one sync to its end; return the result document (never raises for a failed sync).

    ``work_root``: where its working files go unless ``pipeline.work_dir`` says (the daemon
    gives the job file's directory, which it removes when the sync process ends).
    """
    started = time.monotonic()
    settings = worker_paths(settings)  # dead letters and work dir as absolute paths, as workers need them
    outcome: dict[str, Any] = {"status": "error", "runner": settings.runner, "job_id": job.job_id}
    timings = outcome["timings"] = {}  # where the sync's time went, by phase (seconds)
    mark = _Marks(timings)
    es = conn.client()
    try:
        shape, reindex_reason = _shape_and_reason(es, job, settings)
        if reindex_reason:
            outcome["reindex_reason"] = reindex_reason
            _LOGGER.info("sync %s: re-indexing: %s", job.job_id, reindex_reason)
        partitions, cursor = _plan(job, reindex=reindex_reason is not None)
        mark("plan")
        if partitions is None:
            _LOGGER.info("sync %s: %s reports no change since the last sync; nothing to do", job.job_id,
                         job.service_type)
            outcome.update(_job_counters({}), status="completed", sync_cursor=cursor,
                           dead_letters={"count": 0, "location": dead_letter_folder(settings.dead_letters, job.job_id)})
            return outcome
        ensure_content_index(es, job.index_name, settings.content_index.model_dump())
        if job.ingest_pipeline and not ingest_pipeline_exists(es, job.ingest_pipeline):
            if job.ingest_pipeline == DEFAULT_INGEST_PIPELINE:  # Kibana's default, absent from a bare cluster
                _LOGGER.info("ingest pipeline %s does not exist; indexing without it", job.ingest_pipeline)
            else:  # a name somebody chose: never silent
                warning = (f"ingest pipeline {job.ingest_pipeline!r} does not exist, so this sync indexed without it "
                           "(create it, or choose another with update-connector --pipeline)")
                _LOGGER.warning("sync %s: %s", job.job_id, warning)
                outcome.setdefault("warnings", []).append(warning)
            job.ingest_pipeline = None
        if job.continuous:
            _run_stream(job, settings, conn, es, outcome, mark, work_root, shape=shape)
            return outcome
        runner, options = runner_and_options(settings, job_name=f"sync-{job.job_id}")
        cache = _digest_cache(settings) if job.job_type == "full" else None
        state = index_state(es, job.index_name) if cache is not None else None
        index_empty = job.job_type == "full" and count_documents(es, job.index_name) == 0
        # An empty index at a known state: what the sync writes will be all it holds.
        empty_at = state if index_empty and state is not None and index_state(es, job.index_name) == state else None
        mark("prepare")
        with (_work_dir(settings, job.job_id, work_root) as work_dir,
              worker_secrets({"elasticsearch": conn.secret_values(), "source": source_spec(job).secret_values()},
                             settings, work_dir=work_dir, job_id=job.job_id) as secrets):
            cache = cache if work_dir else None
            # The graph holds no secret: the workers read them from ``secrets`` (transforms/secrets.py).
            pipeline = build_sync_pipeline(job, settings, conn, partitions=partitions, runner=runner,
                                           options=options, progress_interval=progress_interval,
                                           index_empty=index_empty, work_dir=work_dir, digest_cache=cache,
                                           secrets=secrets, shape=shape)
            mark("build")
            _LOGGER.info("sync %s: %s sync of %s into %s, %d partition(s), runner %s", job.job_id, job.job_type,
                         job.service_type, job.index_name, len(partitions), settings.runner)
            result = pipeline.run()
            _RUNNING[job.job_id] = result
            try:
                result.wait_until_finish()
            finally:
                _RUNNING.pop(job.job_id, None)
            mark("run")
            counts = _counters(result)
            if counts.get(FIRST_BULK_METRIC):
                outcome["first_bulk_sent_at"] = counts[FIRST_BULK_METRIC] / 1000.0
            if cache is not None and work_dir and not counts.get("dead_letters"):
                # A clean sync (nothing dead-lettered: it cannot fail from here on).
                outcome["index_digests_kept"] = _keep_index_digests(es, job.index_name, cache, work_dir, counts,
                                                                    empty_at)
                mark("keep_digests")
        if job.job_type == "incremental":
            cursor = _new_cursor(es, job)
        dead = counts.get("dead_letters", 0)  # counted where they are written, whatever the stage
        outcome.update(_job_counters(counts))
        outcome["dead_letters"] = {"count": dead, "location": dead_letter_folder(settings.dead_letters, job.job_id)}
        outcome["sync_cursor"] = cursor
        seen = counts.get("source_documents", 0)
        if dead >= max(1, settings.min_errors_to_fail) and seen and dead / seen > settings.max_error_rate:
            raise TooManyErrors(
                f"{dead} of {seen} documents were dead-lettered ({dead / seen:.1%}, over pipeline.max_error_rate "
                f"{settings.max_error_rate:.1%}); see {outcome['dead_letters']['location']}"
            )
        outcome["status"] = "completed"
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error
        # Our own errors say what failed; others may hide Elasticsearch refusing the credentials.
        outcome["error"] = ((None if isinstance(exc, IngestError) else _refused(exc, conn, job.index_name))
                            or format_error(_root_cause(exc)).split(" [while running '", 1)[0])
        _LOGGER.error("sync %s failed: %s", job.job_id, outcome["error"])
        _LOGGER.debug("sync %s failure", job.job_id, exc_info=True)
        if "indexed_document_count" not in outcome:
            # A failed pipeline reports no metrics: what the workers reported (the daemon adds
            # their progress records), and what was written where the dead letters go.
            flush_all(timeout=5.0)
            outcome["progress"] = local_totals(job.job_id)
        if "dead_letters" not in outcome:
            outcome["dead_letters"] = _dead_letters_written(settings.dead_letters, job.job_id)
    finally:
        mark("other")
        outcome["total_document_count"] = _safe_count(es, job.index_name)
        mark("count")
        outcome["duration_seconds"] = round(time.monotonic() - started, 3)
        es.close()
    return outcome


def _run_stream(job: SyncJob, settings: PipelineConfig, conn: ElasticsearchConnection, es: Any,
                outcome: dict[str, Any], mark: "_Marks", work_root: str | None, shape: str | None = None) -> None:
    """A continuous sync (pipelines/stream.py): runs until the process is stopped, or fails. ``shape``:
    the documents' shape, recorded in each as a full sync does (so it finds them unchanged)."""
    from pipelines.options import streaming_runner_and_options, streaming_settings
    from pipelines.stream import build_stream_pipeline, prepare_stream_index
    from sources.errors import StreamPositionLost
    from transforms.read_stream import close_streams

    prepare_stream_index(es, job.index_name)
    runner, options = streaming_runner_and_options(settings, job_name=f"sync-{job.job_id}")
    outcome["runner"] = "PrismRunner"
    settings = streaming_settings(settings)
    with (_work_dir(settings, job.job_id, work_root) as work_dir,
          worker_secrets({"elasticsearch": conn.secret_values(), "source": source_spec(job).secret_values()},
                         settings, work_dir=work_dir, job_id=job.job_id) as secrets):
        pipeline = build_stream_pipeline(job, settings, conn, runner=runner, options=options, secrets=secrets,
                                         shape=shape)
        mark("build")
        _LOGGER.info("sync %s: continuous sync of %s into %s on Prism", job.job_id, job.service_type, job.index_name)
        result = pipeline.run()
        _RUNNING[job.job_id] = result
        try:
            result.wait_until_finish()
        except Exception as exc:
            cause = _root_cause(exc)
            if isinstance(cause, StreamPositionLost) or "StreamPositionLost" in str(exc):
                outcome["sync_cursor"] = {}  # the next run takes a new snapshot
            raise
        finally:
            _RUNNING.pop(job.job_id, None)
            close_streams()
        mark("run")
    outcome.update(_job_counters(_counters(result)))
    outcome["dead_letters"] = _dead_letters_written(settings.dead_letters, job.job_id)
    outcome["status"] = "completed"


class _Marks:
    """Seconds since the last mark, added to ``timings[phase]``."""

    def __init__(self, timings: dict[str, float]):
        self.timings, self.last = timings, time.monotonic()

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        self.timings[phase] = round(self.timings.get(phase, 0.0) + now - self.last, 3)
        self.last = now


def _new_cursor(es: Any, job: SyncJob) -> Any:
    """The cursor an incremental sync's read stored (the one it started from if the source
    set none). A record that cannot be read fails the job: completing it with the old cursor
    would silently replay the same changes next time."""
    from sources.errors import IndexingError

    try:
        cursor = read_job_record(es, job.job_id, "sync_cursor")
    except Exception as exc:  # noqa: BLE001 - missing or unreadable: either way not the new cursor
        raise IndexingError(f"the new sync cursor could not be read back from {PROGRESS_INDEX} ({format_error(exc)}); "
                            "the job fails rather than keep the old cursor") from exc
    return job.sync_cursor if cursor is None else cursor


def _job_counters(counts: dict[str, int]) -> dict[str, int]:
    return {
        "indexed_document_count": counts.get("indexed_document_count", 0),
        "indexed_document_volume": int(math.floor(counts.get("indexed_document_bytes", 0) / MIB + 0.5)),
        "indexed_document_bytes": counts.get("indexed_document_bytes", 0),
        "deleted_document_count": counts.get("deleted_document_count", 0),
        "source_document_count": counts.get("source_documents", 0),
        "unchanged_document_count": counts.get("unchanged_documents", 0),
        "index_digests_from_cache": counts.get("index_digests_from_cache", 0),
        "bulk_retries": counts.get("bulk_retries", 0) + counts.get("bulk_item_retries", 0),
    }


def _refused(exc: BaseException, conn: ElasticsearchConnection, index: str) -> str | None:
    """A clear message when Elasticsearch refused our credentials (401) or their privileges (403)."""
    from elasticsearch import AuthenticationException, AuthorizationException

    used = ("elasticsearch.api_key" if conn.api_key else
            "elasticsearch.username/password" if conn.username else "no credentials")
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = ""
        if isinstance(current, (AuthenticationException, AuthorizationException)):
            body = current.body if isinstance(current.body, dict) else {}
            error = body.get("error") if isinstance(body.get("error"), dict) else {}
            reason = f": {error['reason']}" if error.get("reason") else ""
        if isinstance(current, AuthenticationException):
            return (f"AuthenticationException: Elasticsearch at {conn.display} refused the sync's credentials "
                    f"(HTTP 401{reason}) with {used}; check elasticsearch.username and elasticsearch.password, "
                    "or elasticsearch.api_key")
        if isinstance(current, AuthorizationException):
            return (f"AuthorizationException: Elasticsearch at {conn.display} denied the sync (HTTP 403{reason}); "
                    f"the {used} lack the privileges to write to {index!r}")
        current = current.__cause__ or current.__context__
    return None


def _dead_letters_written(location: str, job_id: str) -> dict[str, Any]:
    folder = dead_letter_folder(location, job_id)
    return {"count": count_dead_letters(folder), "location": folder}


def _safe_count(es: Any, index: str) -> int | None:
    try:
        return count_documents(es, index)
    except Exception:  # noqa: BLE001
        return None


def _root_cause(exc: BaseException) -> BaseException:
    """Beam wraps worker errors; find ours (or the original) in the chain or the message."""
    from sources.errors import IndexingError, IngestError

    seen = set()
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, IngestError):
            found.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    # Elasticsearch failing under a read (e.g. the skip-unchanged lookup) is wrapped in a
    # SourceError by the reader; the cause is Elasticsearch, not the source: say so.
    indexing = [e for e in found if isinstance(e, IndexingError)]
    if indexing:
        return indexing[0]
    if found:
        return found[0]
    text = str(exc)
    for name in ("ElasticsearchUnavailable", "PartialScan", "TooManyErrors", "SourceError", "SourceUnavailable",
                 "SourceConfigError", "ConfigError"):
        marker = f"{name}: "
        if marker in text:
            import sources.errors as errors

            message = text.split(marker, 1)[1].split("\n", 1)[0].strip().rstrip("'\"]")
            return getattr(errors, name)(message)
    return exc


#: The daemon's private folder of a job (job file, result, and the sync's temporary files) starts with it.
_PRIVATE_DIR_PREFIX = "elastic-ingest-"


def _stop_when_orphaned(job_file: Path, result_file: Path, interval: float = 0.5) -> None:
    """Stop this sync when the daemon that started it dies (SIGKILL, OOM kill).

    Nobody would read its result, the job is taken back or reaped, and its job file
    (which holds secrets) would stay on disk: delete the files and stop as on SIGTERM.
    The daemon is the pid in ``ELASTIC_INGEST_DAEMON_PID`` (else the parent found now).
    """
    import threading

    given = os.environ.get(DAEMON_PID_ENV, "")
    parent = int(given) if given.isdigit() else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _LOGGER.error("the daemon (pid %d) that started this sync is gone; stopping", parent)
        for work_dir in list(_WORK_DIRS):
            _remove_work_dir(work_dir)
        for path in (job_file, result_file, Path(str(result_file) + ".tmp")):
            path.unlink(missing_ok=True)
        if job_file.parent.name.startswith(_PRIVATE_DIR_PREFIX):  # the daemon's folder for this job only
            shutil.rmtree(job_file.parent, ignore_errors=True)
        else:
            try:
                job_file.parent.rmdir()
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    if parent != 1:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m pipelines.run JOB_FILE RESULT_FILE", file=sys.stderr)
        return 2
    job_file, result_file = argv
    payload = json.loads(Path(job_file).read_text(encoding="utf-8"))
    # The daemon's format (ELASTIC_INGEST_LOG_FORMAT, inherited), every line tagged with the job and connector.
    from launcher.logs import LOG_FORMAT_ENV, setup_logging

    setup_logging(log_format=os.environ.get(LOG_FORMAT_ENV, "text"), job_id=payload["job"]["job_id"],
                  connector_id=payload["job"].get("connector_id"),
                  level=os.environ.get("ELASTIC_INGEST_LOG_LEVEL", "INFO").upper())
    signal.signal(signal.SIGTERM, _cancel_running_and_exit)
    _stop_when_orphaned(Path(job_file), Path(result_file))
    job = SyncJob(**payload["job"])
    settings = PipelineConfig.model_validate(payload["pipeline"])
    es_args = payload["elasticsearch"]
    conn = ElasticsearchConnection(**{**es_args, "hosts": tuple(es_args["hosts"])})
    outcome = run_sync(job, settings, conn, progress_interval=float(payload.get("progress_interval", 0.0)),
                       work_root=str(Path(job_file).parent))
    times = os.times()  # this process's CPU, and its waited children's (Beam's worker processes)
    outcome["cpu_seconds"] = round(times.user + times.system + times.children_user + times.children_system, 3)
    tmp = result_file + ".tmp"
    Path(tmp).write_text(json.dumps(outcome, default=str), encoding="utf-8")
    os.replace(tmp, result_file)
    return 0 if outcome["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
