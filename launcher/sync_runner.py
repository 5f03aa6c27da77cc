"""SyncRunner: run one claimed job in its own process and keep its job document current.

The daemon never runs a pipeline in its own process. For each claimed job a SyncRunner
thread:

1. builds the :class:`~pipelines.job.SyncJob` from the job's connector snapshot and
   config.yml (the source FQN and the operator's settings for it come from config.yml,
   never from the document; secret references are resolved here), checks the service's
   privileges on the content index and that no other connector uses it
   (:mod:`launcher.privileges`, :mod:`launcher.index_ownership`: otherwise the job fails
   with the reason, nothing written), and writes it to a private 0600 file;
2. starts the sync process (``pipelines.run JOB_FILE RESULT_FILE``) in a new process group,
   forked from the daemon's warm process or as a fresh interpreter
   (:mod:`launcher.sync_processes`);
3. every ``job_progress_interval`` seconds writes the live counters (the earlier runs'
   plus the workers' progress records, :mod:`launcher.counters`) and ``last_seen`` to the job; every
   ``cancel_check_interval`` seconds re-reads the job: ``canceling`` (or a deleted job
   or connector) stops the process at once; a job somebody else ended (the reaper) is
   left alone; an unreachable Elasticsearch does not stop the supervision;
4. writes the end state from the process's result (retried while Elasticsearch is
   unreachable) with the counters of every run of the job, releases the connector's
   lock and deletes the run's progress records.

Sensitive configuration values are not in job documents (see
:func:`launcher.protocol.job_snapshot`); they are read from the connector document here.

``suspend()`` (on SIGTERM/SIGINT) stops the process and marks the job ``suspended`` so
any instance picks it up again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError
from elasticsearch import ConnectionError as ESConnectionError

from launcher.config import Config
from launcher.configuration import values_of, with_secrets
from launcher.continuous_jobs import is_continuous, release_stream, stream_should_stop
from launcher.counters import Counters
from launcher.index_ownership import check_index_ownership
from launcher.outage import Outage, is_outage
from launcher.privileges import check_privileges
from launcher.secret_refs import resolve_references
from launcher.protocol import (
    FINAL_STATUSES, Claim, connector_problems, draft_rules_problem, finish_job, job_refusal, job_sync_cursor,
    now_iso, snapshot_filtering,
)
from launcher.store import ConnectorStore, as_store
from launcher.sync_processes import SyncProcesses
from pipelines.job import DAEMON_PID_ENV, SyncJob, write_job_file
from sources.base import ACCESS_CONTROL_INDEX_PREFIX
from sources.registry import load_source_class
from sources.streaming import continuous_sync_on
from sources.errors import ConnectorError, JobGone, SyncRulesError, UnknownServiceType, format_error
from transforms.dead_letter_files import count_dead_letters, dead_letter_folder, dead_letter_location
from transforms.progress import PROGRESS_INDEX, STREAM_RECORD, delete_progress, read_job_record, read_progress
from transforms.sync_rules import validate_rules

__all__ = ["SyncRunner", "build_sync_job", "requested_reindex"]

_LOGGER = logging.getLogger(__name__)
#: Why a job ends when its connector document disappears (a continuous job then releases its stream).
_CONNECTOR_DELETED = "the connector was deleted while the job ran"


def build_sync_job(config: Config, claim: Claim) -> SyncJob:
    """The SyncJob for a claimed job; raises a ConnectorError subclass for a bad document."""
    job = claim.job
    problems = connector_problems(claim.connector.doc) if claim.connector.doc else []
    if problems:
        raise ConnectorError("the connector cannot sync until its document is fixed: " + "; ".join(problems),
                             claim.connector.id)
    snapshot = job.doc.get("connector") or {}
    if not isinstance(snapshot, dict):
        raise ConnectorError(f"connector: expected an object, got {type(snapshot).__name__}", claim.connector.id)
    for key in ("configuration", "pipeline"):
        if snapshot.get(key) is not None and not isinstance(snapshot.get(key), dict):
            raise ConnectorError(f"connector.{key}: expected an object, got {type(snapshot.get(key)).__name__}",
                                 claim.connector.id)
    service_type = snapshot.get("service_type") or claim.connector.service_type
    fqn = config.sources.get(service_type) if isinstance(service_type, str) else None
    if fqn is None:
        raise UnknownServiceType(
            f"service_type {service_type!r} is not in config.yml sources (known: {', '.join(sorted(config.sources))})",
            claim.connector.id,
        )
    if job.job_type in ("incremental", "access_control"):
        refusal = job_refusal(job.doc, load_source_class(fqn))
        if refusal:  # (the daemon refuses these before claiming them) ended here: no index is touched
            raise ConnectorError(refusal, claim.connector.id)
    active = snapshot_filtering(snapshot)
    rules = active["rules"]
    if not isinstance(rules, list):
        raise SyncRulesError(f"sync rules are invalid: rules must be a list, got {type(rules).__name__}",
                             claim.connector.id)
    errors = validate_rules(rules)
    validation = active["validation"] if isinstance(active["validation"], dict) else {}
    if not errors and validation.get("state") == "invalid":
        listed = validation.get("errors") if isinstance(validation.get("errors"), list) else []
        errors = [e for e in listed if isinstance(e, dict) and isinstance(e.get("messages"), list)] or [
            {"ids": [], "messages": ["the active rules are marked invalid"]}]
    if errors:
        raise SyncRulesError("sync rules are invalid: " + "; ".join(
            str(m) for e in errors for m in (e.get("messages") or [])), claim.connector.id)
    snippet = active["advanced_snippet"]
    advanced = (snippet.get("value") if isinstance(snippet, dict) else None) or None
    pipeline = snapshot.get("pipeline") or {}
    index_name = snapshot.get("index_name") or claim.connector.index_name
    if not isinstance(index_name, str) or not index_name:
        raise ConnectorError(f"the connector has no index_name (got {index_name!r}); set one before syncing",
                             claim.connector.id)
    live = claim.connector.get("configuration")
    live = live if isinstance(live, dict) else {}
    configuration = snapshot.get("configuration") or live
    # Sensitive values come from the connector document; references there are resolved here.
    configuration = resolve_references(with_secrets(configuration, live), config.secrets)
    typed = values_of(configuration)
    merged = {name: ({**spec, "value": typed.get(name, spec.get("value"))} if isinstance(spec, dict) else spec)
              for name, spec in configuration.items()}
    reindex = requested_reindex(job.doc, claim.connector.id)
    if reindex and job.job_type != "full":
        raise ConnectorError(f"metadata.reindex: only full syncs re-index every document; this is a {job.job_type} "
                             "job", claim.connector.id)
    if job.job_type == "access_control":
        # Identities go to the content index's access-control index (Elastic's name); the
        # connector API's snapshot already names it so.
        if not index_name.startswith(ACCESS_CONTROL_INDEX_PREFIX):
            index_name = ACCESS_CONTROL_INDEX_PREFIX + index_name
        rules, advanced = [], None
    return SyncJob(
        job_id=job.id,
        connector_id=claim.connector.id,
        job_type=job.job_type,
        index_name=index_name,
        service_type=service_type,
        source_fqn=fqn,
        configuration=merged,
        source_settings=config.source_settings.get(service_type, {}),
        basic_rules=[r for r in rules if isinstance(r, dict)],
        advanced_rules=advanced,
        pipeline_flags={
            "_extract_binary_content": bool(pipeline.get("extract_binary_content", True)),
            "_reduce_whitespace": bool(pipeline.get("reduce_whitespace", True)),
            "_run_ml_inference": bool(pipeline.get("run_ml_inference", False)),
        } if job.job_type != "access_control" else {},
        ingest_pipeline=(pipeline.get("name") or None) if job.job_type != "access_control" else None,
        sync_cursor=_starting_cursor(job, claim),
        language=snapshot.get("language"),
        reindex=reindex,
        continuous=job.job_type == "incremental" and is_continuous(job.doc),
    )


def _starting_cursor(job: Any, claim: Claim) -> Any:
    """Where an incremental job starts; a continuous one from the connector's cursor as it is now
    (the stream's last acknowledged position, kept there while it runs), not the one of its claim."""
    if job.job_type != "incremental":
        return None
    if is_continuous(job.doc):
        current = claim.connector.get("sync_cursor")
        return current if isinstance(current, dict) else None
    return job_sync_cursor(job.doc, claim.connector)


#: Counts in a continuous job's ``metadata.stream`` that add up over its runs (a job suspended,
#: then resumed, keeps counting from where it stood).
_STREAM_TOTALS = ("version_conflicts", "changes_applied")


def _stream_totals(job_doc: Mapping[str, Any]) -> dict[str, int]:
    """The stream totals a (resumed) continuous job reported so far, from its metadata."""
    metadata = job_doc.get("metadata")
    state = metadata.get("stream") if isinstance(metadata, Mapping) else None
    if not isinstance(state, Mapping):
        return {key: 0 for key in _STREAM_TOTALS}
    totals = {}
    for key in _STREAM_TOTALS:
        try:
            totals[key] = max(0, int(state.get(key) or 0))
        except (TypeError, ValueError):  # written by something else: counted from here
            totals[key] = 0
    return totals


def requested_reindex(job_doc: Mapping[str, Any], connector_id: str | None = None) -> bool:
    """Whether the job document asks for a full sync that writes every document again:
    ``metadata.reindex: true`` (absent: no; anything but a boolean is refused)."""
    metadata = job_doc.get("metadata")
    value = metadata.get("reindex") if isinstance(metadata, Mapping) else None
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ConnectorError(f"metadata.reindex: expected true or false, got {value!r}", connector_id)


def _ended_without_result(process: Any) -> str:
    """How a sync process that wrote no result ended (``returncode`` as ``subprocess.Popen`` gives it: -N
    for signal N; unknown for a warm process's child whose parent died before it could tell)."""
    code = getattr(process, "returncode", None)
    if code is None or getattr(process, "orphaned", False):
        return "the sync process ended without a result, and how is unknown (the warm process that started it is gone)"
    if code >= 0:
        return f"the sync process ended with exit code {code} and no result"
    try:
        name = f"{signal.Signals(-code).name} (signal {-code}"
    except ValueError:
        name = f"signal {-code} (unknown"
    name += ": kill -9 or the kernel's out-of-memory killer)" if code == -signal.SIGKILL else ")"
    return (f"the sync process was killed by {name} before it reported its result; the counters are what its workers "
            "had reported")


def _unavailable(exc: BaseException) -> bool:
    """Elasticsearch away or not ready yet (no connection, a timeout, 429 or 5xx: shards still recovering)."""
    if isinstance(exc, ApiError):
        return exc.meta.status == 429 or exc.meta.status >= 500
    return isinstance(exc, (ESConnectionError, TransportError))


class SyncRunner(threading.Thread):
    """Supervises one sync process for one claimed job (see the module docstring)."""

    def __init__(self, config: Config, es: Elasticsearch, claim: Claim, *, on_done=None,
                 store: ConnectorStore | None = None, owner: Mapping[str, Any] | None = None,
                 outage: Outage | None = None, processes: SyncProcesses | None = None):
        super().__init__(name=f"sync-{claim.job.id}", daemon=True)
        self.config = config
        self.es = es  # the content index and the progress records
        self.store = store or as_store(es)  # the connector and the job
        self.claim = claim
        self.job_id = claim.job.id
        self.connector_id = claim.connector.id
        self.on_done = on_done
        self._suspend = threading.Event()
        #: How the sync process starts (the daemon's warm process; default: a fresh interpreter).
        self.processes = processes or SyncProcesses(warm=False)
        self.process: Any = None  # subprocess.Popen or launcher.sync_processes.WarmProcess
        self.final_status: str | None = None
        #: The claiming service's identity, written into the job's metadata (launcher/recovery.py).
        self.owner = dict(owner or {})
        #: The job's earlier runs (a suspended job claimed again); this run adds to them.
        self.carried = Counters.carried(claim.job.doc)
        #: This run's counters once it ended (what the Prometheus counters of this instance add).
        self.run_counters: Counters | None = None
        self.metadata: dict[str, Any] = {}
        self.index_name: str | None = None
        #: The service's record of Elasticsearch outages (logged there once, not by every supervisor).
        self.outage = outage
        #: A continuous sync (launcher/continuous_jobs.py): it runs until stopped.
        self.continuous = claim.job.job_type == "incremental" and is_continuous(claim.job.doc)
        #: Why a continuous sync was ended by the service (None: it was not).
        self.stream_ended: str | None = None
        #: The continuous sync's position last stored as the connector's ``sync_cursor``.
        self.stream_cursor: dict[str, Any] | None = None
        #: A resumed continuous job's earlier runs' stream totals (each run's ledger starts at 0).
        self.stream_carried = _stream_totals(claim.job.doc) if self.continuous else {}
        #: The source class's FQN (once the job was built).
        self.source_fqn: str | None = None

    # -- control -------------------------------------------------------------------
    def suspend(self) -> None:
        """Stop the sync and leave the job ``suspended`` (graceful shutdown)."""
        self._suspend.set()
        self._stop_process()

    def _stop_process(self) -> None:
        """SIGTERM, then SIGKILL after 5 s. A continuous sync's process alone gets the SIGTERM: it
        cancels its pipeline on the Prism it started (which must still run to hear it), then ends
        its process group itself (pipelines/run.py); a batch sync's whole group gets it."""
        process = self.process
        if process is not None and process.poll() is None:
            try:
                if self.continuous:
                    os.kill(process.pid, signal.SIGTERM)
                else:
                    os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    def _reap_group(self) -> None:
        """Once the sync process ended (a SIGKILL included), end what it started and left behind in its
        process group (the Prism a continuous sync runs on would otherwise run on, orphaned)."""
        process = self.process
        if process is not None and process.poll() is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- the thread ----------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - never leave a job in_progress because of us
            _LOGGER.error("job %s: supervisor failed: %s", self.job_id, format_error(exc))
            _LOGGER.debug("supervisor failure", exc_info=True)
            self._stop_process()
            if _unavailable(exc):
                _LOGGER.error("job %s: the daemon stops while Elasticsearch is unreachable; the job is taken back when "
                              "this service restarts, or ended by the reaper", self.job_id)
            elif self.final_status is None:  # an end state already written is not overwritten
                try:
                    self._finish("error", error=format_error(exc))
                except Exception as again:  # noqa: BLE001 - the reaper will end it
                    _LOGGER.error("job %s: could not write its end state: %s", self.job_id, format_error(again))
        finally:
            if self.on_done:
                self.on_done(self)

    def _run(self) -> None:
        service = self.config.service
        pipeline_settings = self.config.pipeline_for(self.connector_id)
        if self.claim.problems:
            self._finish("error", error=format_error(JobGone("; ".join(self.claim.problems))))
            return
        try:
            sync_job = build_sync_job(self.config, self.claim)
            check_privileges(self.es, sync_job.index_name, who="the service's credentials (config.yml elasticsearch)")
            # Re-checked for every job: connector documents may have been written by anyone.
            content_index = (sync_job.index_name.removeprefix(ACCESS_CONTROL_INDEX_PREFIX)
                             if sync_job.job_type == "access_control" else sync_job.index_name)
            check_index_ownership(self.store, content_index, self.connector_id)
        except Exception as exc:  # noqa: BLE001 - a bad document, bad rules, an index that is not its own
            _LOGGER.warning("job %s: %s", self.job_id, format_error(exc))
            self._finish("error", error=format_error(exc))
            return
        # Relative to the daemon's working directory, recorded absolute: the CLI reads it from anywhere.
        pipeline_settings = pipeline_settings.model_copy(
            update={"dead_letters": dead_letter_location(pipeline_settings.dead_letters)})
        self.index_name, self.source_fqn = sync_job.index_name, sync_job.source_fqn
        self._delete_progress()  # a run counts from zero: an earlier run's leftovers are not ours
        workdir = Path(tempfile.mkdtemp(prefix=f"elastic-ingest-{self.job_id}-"))
        job_file, result_file = workdir / "job.json", workdir / "result.json"
        write_job_file(job_file, sync_job, pipeline_settings, self.config.elasticsearch.connection())
        self.metadata = {**self.owner, "runner": pipeline_settings.runner, "worker_pid": None,
                         "dead_letters": {"location": dead_letter_folder(pipeline_settings.dead_letters, self.job_id)}}
        rules_problem = (draft_rules_problem(self.claim.connector.doc, pending=True)
                         if sync_job.job_type != "access_control" else None)
        if rules_problem:  # never silent: the job says what it ran without (jobs, sync --wait), and the log
            _LOGGER.warning("job %s: connector %s: %s", self.job_id, self.connector_id, rules_problem)
            self.metadata["warnings"] = [rules_problem]
        if sync_job.reindex:
            self.metadata["reindex"] = True  # the request stays on the job, whose metadata this replaces
        if self.continuous:
            self.metadata.update({key: self.claim.job.doc["metadata"].get(key)
                                  for key in ("continuous", "config_fingerprint")}, runner="PrismRunner")
        env = dict(os.environ)
        env[DAEMON_PID_ENV] = str(os.getpid())  # the sync stops if this daemon dies, even before it starts
        # Temporary files of the sync and its libraries (Beam leaves empty folders behind) go to
        # the job's private folder, removed when the job ends.
        env["TMPDIR"] = str(workdir)
        self.process = self.processes.start([str(job_file), str(result_file)], env=env, cwd=os.getcwd())
        self.metadata["worker_pid"] = self.process.pid
        _LOGGER.info("job %s: %s sync of connector %s started (pid %s)", self.job_id, sync_job.job_type,
                     self.connector_id, self.process.pid)
        last_progress = last_check = 0.0
        canceled, gone, lost = False, None, None
        while self.process.poll() is None:
            if self._suspend.is_set():
                break
            now = time.monotonic()
            if now - last_check >= service.cancel_check_interval:
                last_check = now
                try:
                    canceled, gone, lost = self._check_job()
                    if self.continuous and not (canceled or gone or lost):
                        self.stream_ended = self._stream_check()
                    if self.outage is not None:
                        self.outage.ended()
                except (ESConnectionError, TransportError, ApiError) as exc:
                    # Elasticsearch is away: the sync goes on (it retries its own writes); so do we.
                    # A continuous sync too: its check reads the connector and the waiting jobs.
                    self._es_failed("cannot check the job document", exc)
                if canceled or gone or lost or self.stream_ended:
                    self._stop_process()
                    break
            if now - last_progress >= service.job_progress_interval:
                last_progress = now
                self._write_progress()
            try:
                self.process.wait(timeout=0.2)  # returns as soon as the sync ends
            except subprocess.TimeoutExpired:
                pass
        self._reap_group()
        try:
            if self._suspend.is_set():
                self._stop_process()
                self._finish_suspended()
                return
            if lost:
                # Somebody else decided this job's fate (the reaper, a client): leave both
                # documents alone, the connector's lock may belong to another job by now.
                self.final_status = "lost"
                _LOGGER.warning("job %s: %s; stopped without writing its end state", self.job_id, lost)
                return
            if gone:
                if self.continuous and gone == _CONNECTOR_DELETED:
                    # Deleted on purpose: the stream ends (completed, the reason in its metadata as
                    # when continuous_sync is turned off), not as a failure.
                    self._release_stream(self.claim, why="connector deleted")
                    self._end_stream("the connector was deleted")
                    return
                self._finish("error", run=self._stopped_run(), error=format_error(JobGone(gone)))
                return
            if canceled:
                self._finish("canceled", run=self._stopped_run())
                return
            if self.stream_ended:
                self._end_stream(self.stream_ended)
                return
            self._finish_from_result(result_file)
        finally:
            # The job file (it holds secrets), the result and whatever a killed sync left.
            shutil.rmtree(workdir, ignore_errors=True)

    # -- job document --------------------------------------------------------------
    def _check_job(self) -> tuple[bool, str | None, str | None]:
        """(canceling?, why the job is gone, why it is no longer ours)."""
        job = self.store.get_job(self.job_id)
        if job is None:
            return False, "the job was deleted while it ran", None
        if job.status in FINAL_STATUSES or job.status in ("pending", "suspended"):
            return False, None, f"the job became {job.status} while it ran here"
        if job.doc.get("worker_hostname") not in (None, self.claim.job.doc.get("worker_hostname")):
            return False, None, f"the job was claimed by {job.doc.get('worker_hostname')}"
        connector = self.store.get_connector(self.connector_id)
        if connector is None or connector.get("deleted"):
            return False, _CONNECTOR_DELETED, None
        return job.status == "canceling", None, None

    def _stream_check(self) -> str | None:
        """Why this continuous sync should end now (launcher/continuous_jobs.py), None: it goes on."""
        connector = self.store.get_connector(self.connector_id)
        job = self.store.get_job(self.job_id)
        if connector is None or job is None:
            return None  # the next check says it is gone
        return stream_should_stop(self.store, job.doc, connector,
                                  source_class=load_source_class(self.source_fqn) if self.source_fqn else None)

    def _end_stream(self, reason: str) -> None:
        """End a continuous sync the service stopped: ``completed`` with the reason in its metadata,
        and the stream's last reported cursor (acknowledged by Elasticsearch) as the connector's
        ``sync_cursor``, where the next continuous job starts from; turned off, the source
        releases what it kept for the stream."""
        _LOGGER.info("job %s: continuous sync ended: %s", self.job_id, reason)
        self.metadata["stream_ended"] = reason
        if reason.startswith("continuous_sync was turned off"):
            connector = self.store.get_connector(self.connector_id)
            self._release_stream(Claim(self.claim.job, connector) if connector is not None else self.claim)
        cursor = (self.metadata.get("stream") or {}).get("cursor")
        self._finish("completed", run=self._stopped_run(), sync_cursor=cursor if isinstance(cursor, dict) else None)

    def _release_stream(self, claim: Claim, why: str = "continuous sync off") -> None:
        """Drop what the source keeps for this stream (``claim``: the job and its connector's
        configuration); a failure is logged (turned off, the daemon's maintenance retries:
        release_if_off)."""
        try:
            sync_job = build_sync_job(self.config, claim)
            release_stream(load_source_class(sync_job.source_fqn), sync_job.configuration,
                           sync_job.source_settings, self.connector_id, why=why)
            self.metadata["stream_released"] = True
        except Exception as exc:  # noqa: BLE001 - reported; the job still ends
            _LOGGER.warning("job %s: could not release the stream (%s): %s", self.job_id, why, format_error(exc))

    # -- counters ------------------------------------------------------------------
    def _stopped_run(self, local: dict[str, Any] | None = None) -> Counters:
        """This run's counters when it did not reach its end: the workers' progress records
        (``local``: the sync process's own totals, when it could report them), and the dead
        letters its workers wrote."""
        try:
            self.es.indices.refresh(index=PROGRESS_INDEX, ignore_unavailable=True)
        except Exception:  # noqa: BLE001 - Elasticsearch away: the read below says what it can
            pass
        run = Counters.of_progress(read_progress(self.es, self.job_id), dead_letters=self._dead_letters_written())
        if local:
            run = run.at_least(Counters.of_progress(local, dead_letters=run.dead_letters))
        return run

    def _dead_letters_written(self) -> int:
        """Dead letters this run wrote: those in its folder, less the earlier runs'."""
        location = self.metadata.get("dead_letters", {}).get("location")
        if not location:
            return 0
        written = count_dead_letters(location)
        return max(0, written - self.carried.dead_letters) if written is not None else 0

    def _index_count(self, *, refresh: bool = True) -> int | None:
        """What the content index holds now (None: it cannot be counted)."""
        if not self.index_name:
            return None
        try:
            if refresh:
                self.es.indices.refresh(index=self.index_name, ignore_unavailable=True)
            return int(self.es.count(index=self.index_name)["count"])
        except Exception:  # noqa: BLE001 - no index yet
            return None

    def _job_counters(self, run: Counters) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job document's counter fields and metadata for the earlier runs plus ``run``."""
        total = self.carried + run
        location = self.metadata.get("dead_letters", {}).get("location")
        return total.job_fields(), {**self.metadata, **total.metadata(location)}

    def _write_progress(self) -> None:
        run = Counters.of_progress(read_progress(self.es, self.job_id))
        total = None
        if self.continuous:
            self._read_stream_state()
            # A continuous job never reaches the end where a bounded one counts the index: it
            # reports what the index holds as it goes (as of the last refresh), not 0.
            total = self._index_count(refresh=False)
        counters, metadata = self._job_counters(run)
        if total is not None:
            counters["total_document_count"] = total
        try:
            self.store.job_stats(self.job_id, counters, metadata=metadata)
        except NotFoundError:
            pass  # noticed by the next check
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried next time
            self._es_failed("could not write progress", exc)

    def _read_stream_state(self) -> None:
        """A continuous sync's position and lag (its ``stream`` record) into the job's metadata."""
        try:
            state = read_job_record(self.es, self.job_id, STREAM_RECORD)
            if isinstance(state, dict):
                state = {**state, **{key: int(state.get(key) or 0) + earlier
                                     for key, earlier in self.stream_carried.items()}}
            self.metadata["stream"] = state
        except LookupError:
            return  # not written yet (the snapshot's first second)
        except Exception as exc:  # noqa: BLE001 - next time
            self._es_failed("could not read the stream's state", exc)
            return
        cursor = self.metadata["stream"].get("cursor") if isinstance(self.metadata["stream"], dict) else None
        if isinstance(cursor, dict) and cursor and cursor != self.stream_cursor:
            self._store_cursor(cursor)

    def _store_cursor(self, cursor: dict[str, Any]) -> None:
        """Keep a continuous sync's acknowledged position as the connector's ``sync_cursor`` (a source
        whose server keeps no position for it, e.g. a MySQL binlog, resumes from there; ``{}``: the
        position was lost, the next stream takes a new snapshot)."""
        if not self.connector_id:
            return
        try:
            self.store.replace_connector_object(self.connector_id, "sync_cursor", cursor)
            self.stream_cursor = cursor
        except NotFoundError:
            pass  # the connector was deleted: noticed by the next check
        except Exception as exc:  # noqa: BLE001 - stored again at the next progress write
            self._es_failed("could not store the stream's position", exc)

    def _es_failed(self, what: str, exc: BaseException) -> None:
        """A request to Elasticsearch failed: an outage is the service's to log (once, see
        launcher.outage); anything else is logged here."""
        if self.outage is not None and is_outage(exc):
            self.outage.failed(format_error(exc))
        else:
            _LOGGER.warning("job %s: %s: %s", self.job_id, what, format_error(exc))

    def _delete_progress(self) -> None:
        try:
            delete_progress(self.es, self.job_id)
        except Exception as exc:  # noqa: BLE001 - left-overs only cost a little space
            _LOGGER.warning("job %s: could not delete its progress records: %s", self.job_id, format_error(exc))

    # -- end states ----------------------------------------------------------------
    def _finish_from_result(self, result_file: Path) -> None:
        try:
            outcome = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._finish("error", run=self._stopped_run(),
                         error=f"SyncProcessError: {_ended_without_result(self.process)}")
            return
        # Exact (Beam metrics) when the pipeline reached its end; else what the workers reported.
        run = Counters.of_outcome(outcome) or self._stopped_run(outcome.get("progress"))
        self.metadata.update({key: outcome.get(key) for key in (
            "duration_seconds", "source_document_count", "unchanged_document_count", "index_digests_from_cache",
            "cpu_seconds", "first_bulk_sent_at", "timings")})
        if isinstance(outcome.get("warnings"), list) and outcome["warnings"]:
            self.metadata["warnings"] = [*self.metadata.get("warnings", []), *map(str, outcome["warnings"])]
        if outcome.get("reindex_reason"):  # why documents that did not change were written again
            self.metadata["reindex_reason"] = outcome["reindex_reason"]
        if isinstance(outcome.get("dead_letters"), dict) and outcome["dead_letters"].get("location"):
            self.metadata["dead_letters"] = {"location": outcome["dead_letters"]["location"]}
        if self.continuous and outcome.get("sync_cursor") == {}:
            self._store_cursor({})  # the stream's position was lost: the next one takes a new snapshot
        self._finish(outcome.get("status", "error"), run=run, total=outcome.get("total_document_count"),
                     error=outcome.get("error"), sync_cursor=outcome.get("sync_cursor"))

    def _finish(self, status: str, *, run: Counters | None = None, total: int | None = None, error: str | None = None,
                sync_cursor: Any = None) -> None:
        """Write the end state; while Elasticsearch is unreachable, retry until it answers.

        The job is this daemon's as long as it runs (its own reaper leaves it alone), so
        its own outcome is written however long the outage lasts, unless the daemon stops
        meanwhile (the job is then taken back at restart, see launcher/recovery.py). After
        an outage the job is read first: one another instance ended or claimed meanwhile
        is left as it is.
        """
        delay, waited = 0.5, False
        while True:
            try:
                if waited and self._taken_over():
                    return
                self._write_end(status, run=run, total=total, error=error, sync_cursor=sync_cursor)
                break
            except (ESConnectionError, TransportError, ApiError) as exc:
                if self._suspend.is_set() or not _unavailable(exc):
                    raise  # the daemon is stopping, or Elasticsearch refused the write itself
                self._es_failed("cannot write its end state yet; retrying", exc)
                waited = True
                self._suspend.wait(delay)
                delay = min(delay * 2, 10.0)
        if run is not None:
            self._delete_progress()

    def _taken_over(self) -> bool:
        """Whether somebody else ended the job, or claimed it, while Elasticsearch was away."""
        job = self.store.get_job(self.job_id)
        if job is not None and job.status in ("in_progress", "canceling") and \
                job.doc.get("worker_hostname") in (None, self.claim.job.doc.get("worker_hostname")):
            return False
        self.final_status = "lost"
        _LOGGER.warning("job %s: %s meanwhile; its end state is not written", self.job_id,
                        "deleted" if job is None else f"became {job.status} on {job.doc.get('worker_hostname')}")
        return True

    def _write_end(self, status: str, *, run: Counters | None, total: int | None, error: str | None,
                   sync_cursor: Any) -> None:
        counters: dict[str, Any] = {}
        metadata: dict[str, Any] | None = None
        if run is not None:
            counters, metadata = self._job_counters(run)
            total = self._index_count() if total is None else total  # e.g. Elasticsearch was away at the end
            if total is not None:
                counters["total_document_count"] = total
        if sync_cursor is not None and not self.continuous and \
                continuous_sync_on(self.claim.connector.get("configuration")):
            # The connector's sync_cursor is its stream's position (where the stream resumes after
            # this sync): a bounded sync's own cursor (e.g. a timestamp) would replace it, and the
            # stream would take a whole new snapshot.
            sync_cursor = None
        finish_job(self.store, self.job_id, self.connector_id or None, status, counters=counters, error=error,
                   sync_cursor=sync_cursor, metadata=metadata, job_type=self.claim.job.job_type,
                   previous_sync_status=self.claim.connector.get("last_sync_status"))
        self.final_status, self.run_counters = status, run
        log = _LOGGER.info if status == "completed" else _LOGGER.warning
        log("job %s: %s%s %s", self.job_id, status, f" ({error})" if error else "",
            json.dumps(counters, sort_keys=True))

    def _finish_suspended(self) -> None:
        self.final_status = "suspended"
        run = self._stopped_run()
        counters, metadata = self._job_counters(run)
        total = self._index_count()
        if total is not None:
            counters["total_document_count"] = total
        try:
            self.store.end_job(self.job_id, "suspended", {**counters, "metadata": metadata, "last_seen": now_iso()})
        except NotFoundError:
            pass
        self.run_counters = run
        self._delete_progress()
        try:
            released = ("suspended" if self.claim.job.job_type != "access_control"
                        else self.claim.connector.get("last_sync_status"))
            self.store.update_connector(self.connector_id, {"last_sync_status": released})
        except NotFoundError:
            pass
        _LOGGER.info("job %s: suspended %s", self.job_id, json.dumps(counters, sort_keys=True))
