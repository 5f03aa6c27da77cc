"""The daemon's health endpoint and Prometheus metrics, on ``service.metrics_address``.

``GET /healthz`` answers 200 ``ok`` while polls succeed, and 503 with the reason otherwise:
waiting for Elasticsearch at start, Elasticsearch unreachable (since when, why), the
protocol's indices unusable (e.g. a field mapped with the wrong type by another client:
see :func:`launcher.indices.check_mappings`), or no successful poll for three polling
intervals plus a minute;
``GET /metrics`` is the Prometheus text exposition. Loopback by default: bind elsewhere
only on purpose (the endpoint has no authentication; it exposes counts, never secrets).

What is exported (``elastic_ingest_`` prefix):

=====================================================  =======  ====================================
name                                                   type     meaning
=====================================================  =======  ====================================
``up``                                                 gauge    1 while the metrics server runs
``running_syncs``                                      gauge    syncs running in this instance
``polls``                                              gauge    successful polls since start
``poll_errors``                                        gauge    failed polls in the error-budget window
``last_successful_poll_timestamp_seconds``             gauge    Unix time of the last good poll
``jobs{status}``                                       gauge    sync jobs by status, whole cluster
``indexed_documents``                                  gauge    documents indexed by all jobs, cluster
``jobs_finished_total{status}``                        counter  jobs this instance ran, by end status
``documents_indexed_total``                            counter  documents indexed by those jobs
``bytes_indexed_total``                                counter  bytes of JSON indexed by those jobs
``documents_deleted_total``                            counter  documents deleted by those jobs
``dead_letters_total``                                 counter  documents dead-lettered by those jobs
``bulk_retries_total``                                 counter  ``_bulk`` requests/items retried
``streaming_connectors``                               gauge    continuous syncs running here
``stream_lag_seconds{connector}``                      gauge    a continuous sync's commit -> ack lag
``stream_version_conflicts{connector}``                gauge    older changes refused (replays)
``stream_changes_applied{connector}``                  gauge    changes Elasticsearch acknowledged
``stream_pending_changes{connector}``                  gauge    changes read, not yet acknowledged
``stream_last_acknowledged_timestamp_seconds{conn..}``  gauge    Unix time of the last acknowledgement
=====================================================  =======  ====================================

The ``stream_`` gauges are those of this instance's running continuous syncs (the job's run:
they start from zero when the job is resumed). ``/healthz`` adds one line per such sync
after ``ok`` (or after the reason of a 503): ``streaming <connector>: streaming, lag 0.24s,
at lsn=0/3700000, last acknowledged <ISO time>``.

The per-instance counters are added when each run of a job ends, from that run's own
counters (:class:`launcher.counters.Counters`: Beam's for a run that reached its end, the
workers' progress reports for one stopped early); a job suspended here and resumed
elsewhere is counted once, each instance adding what its own run wrote.

Example usage::

    server = serve_metrics("127.0.0.1:9108", daemon)
    ...
    server.shutdown()
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from sources.errors import ConfigError

__all__ = ["serve_metrics", "MetricsServer", "JobMetrics", "streaming_runners"]

_LOGGER = logging.getLogger(__name__)


class MetricsServer:
    """The running HTTP server; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread, registry: CollectorRegistry,
                 job_metrics: "JobMetrics"):
        self.server, self.thread, self.registry, self.job_metrics = server, thread, registry, job_metrics

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class JobMetrics:
    """Counters of the jobs this instance ran, updated when each one ends."""

    def __init__(self, registry: CollectorRegistry):
        self.finished = Counter("elastic_ingest_jobs_finished", "sync jobs run by this instance, by end status",
                                ["status"], registry=registry)
        self.documents = Counter("elastic_ingest_documents_indexed", "documents indexed by this instance's jobs",
                                 registry=registry)
        self.bytes = Counter("elastic_ingest_bytes_indexed", "bytes of documents indexed by this instance's jobs",
                             registry=registry)
        self.deleted = Counter("elastic_ingest_documents_deleted", "documents deleted by this instance's jobs",
                               registry=registry)
        self.dead_letters = Counter("elastic_ingest_dead_letters", "documents dead-lettered by this instance's jobs",
                                    registry=registry)
        self.bulk_retries = Counter("elastic_ingest_bulk_retries", "_bulk requests and items retried",
                                    registry=registry)

    def record(self, status: str | None, run: Any = None) -> None:
        """Count one ended run (``run``: its :class:`~launcher.counters.Counters`, None when
        it wrote none); never raises: metrics must not break the supervisor.

        The job is counted as finished last, so a scrape that sees it finished also sees
        its documents.
        """
        try:
            if run is not None:
                self.documents.inc(_non_negative(getattr(run, "indexed", 0)))
                self.bytes.inc(_non_negative(getattr(run, "bytes", 0)))
                self.deleted.inc(_non_negative(getattr(run, "deleted", 0)))
                self.dead_letters.inc(_non_negative(getattr(run, "dead_letters", 0)))
                self.bulk_retries.inc(_non_negative(getattr(run, "bulk_retries", 0)))
        except Exception as exc:  # noqa: BLE001
            _LOGGER.debug("metrics: cannot count a run: %s", exc)
        finally:
            self.finished.labels(status=status or "unknown").inc()


def _non_negative(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number > 0 else 0.0


def _watch_jobs(daemon: Any, job_metrics: JobMetrics) -> None:
    """Count each job the daemon's supervisors end.

    The daemon builds every SyncRunner with ``on_done=daemon._done``; wrapping that bound
    method on the instance, before the first poll, sees every job end exactly once.
    """
    original = daemon._done

    def done(runner: Any) -> None:
        try:
            job_metrics.record(getattr(runner, "final_status", None), getattr(runner, "run_counters", None))
        finally:
            original(runner)

    daemon._done = done


def _registry(daemon: Any) -> tuple[CollectorRegistry, JobMetrics, Any]:
    registry = CollectorRegistry()
    Gauge("elastic_ingest_up", "1 while the metrics server runs", registry=registry).set(1)
    running = Gauge("elastic_ingest_running_syncs", "syncs running in this instance", registry=registry)
    running.set_function(lambda: len(daemon.running))
    polls = Gauge("elastic_ingest_polls", "successful polls since start", registry=registry)
    polls.set_function(lambda: daemon.polls)
    errors = Gauge("elastic_ingest_poll_errors", "failed polls within service.max_errors_span", registry=registry)
    errors.set_function(lambda: len(getattr(daemon, "_errors", ())))
    last = Gauge("elastic_ingest_last_successful_poll_timestamp_seconds", "time of the last successful poll",
                 registry=registry)
    last.set_function(lambda: daemon.last_successful_poll or 0)
    jobs = Gauge("elastic_ingest_jobs", "sync jobs by status (whole cluster)", ["status"], registry=registry)
    docs = Gauge("elastic_ingest_indexed_documents", "documents indexed by finished jobs (whole cluster)",
                 registry=registry)
    job_metrics = JobMetrics(registry)
    streaming = Gauge("elastic_ingest_streaming_connectors", "continuous syncs running in this instance",
                      registry=registry)
    lag = Gauge("elastic_ingest_stream_lag_seconds", "a continuous sync's lag, source commit -> Elasticsearch "
                "acknowledgement (last batch)", ["connector"], registry=registry)
    conflicts = Gauge("elastic_ingest_stream_version_conflicts", "changes a continuous sync found older than the "
                      "indexed document (replays)", ["connector"], registry=registry)
    applied = Gauge("elastic_ingest_stream_changes_applied", "changes of a continuous sync Elasticsearch acknowledged "
                    "(this run of its job)", ["connector"], registry=registry)
    pending = Gauge("elastic_ingest_stream_pending_changes", "changes a continuous sync read and Elasticsearch did "
                    "not acknowledge yet", ["connector"], registry=registry)
    acknowledged = Gauge("elastic_ingest_stream_last_acknowledged_timestamp_seconds", "when Elasticsearch last "
                         "acknowledged a continuous sync's changes", ["connector"], registry=registry)
    by_field = {"lag_seconds": lag, "version_conflicts": conflicts, "changes_applied": applied,
                "pending_changes": pending}

    def collect_streams() -> None:
        runners = streaming_runners(daemon)
        streaming.set(len(runners))
        for gauge in (*by_field.values(), acknowledged):
            gauge.clear()
        for runner in runners:
            state = _stream_of(runner)
            for field, gauge in by_field.items():
                if isinstance(state.get(field), (int, float)):
                    gauge.labels(connector=runner.connector_id).set(state[field])
            when = _epoch(state.get("acknowledged_at"))
            if when is not None:
                acknowledged.labels(connector=runner.connector_id).set(when)

    def collect_jobs() -> None:
        collect_streams()
        try:
            counts, indexed = daemon.store.job_totals()
        except Exception:  # noqa: BLE001 - scraped again later
            return
        for status in {*counts, "pending", "in_progress", "canceling", "canceled", "suspended", "completed", "error"}:
            jobs.labels(status=status).set(counts.get(status, 0))
        docs.set(indexed)

    return registry, job_metrics, collect_jobs


def streaming_runners(daemon: Any) -> list[Any]:
    """The daemon's running continuous syncs (their supervisors)."""
    return [r for r in list(daemon.running.values()) if getattr(r, "continuous", False)]


def _stream_of(runner: Any) -> dict[str, Any]:
    state = (getattr(runner, "metadata", None) or {}).get("stream")
    return state if isinstance(state, dict) else {}


def _epoch(stamp: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else None
    except ValueError:
        return None


def _streams_text(daemon: Any) -> str:
    """One line per running continuous sync, for ``/healthz``."""
    from launcher.continuous_jobs import describe_stream, stream_summary

    return "".join(f"streaming {runner.connector_id}: "
                   f"{describe_stream(stream_summary(runner.job_id, 'in_progress', _stream_of(runner)))}\n"
                   for runner in sorted(streaming_runners(daemon), key=lambda r: str(r.connector_id)))


def _not_ready(daemon: Any, stale_after: float) -> str | None:
    """Why ``/healthz`` says 503 (None: 200 ok): the daemon's own reason (waiting for
    Elasticsearch, an outage, unusable protocol indices), else no successful poll lately."""
    reason = getattr(daemon, "not_ready", None)
    if reason:
        return str(reason)
    last = daemon.last_successful_poll
    if last is None:
        return "no successful poll yet"
    if time.time() - last >= stale_after:
        return f"no successful poll in the last {time.time() - last:,.0f}s"
    return None


def serve_metrics(address: str, daemon: Any) -> MetricsServer:
    """Serve ``/healthz`` and ``/metrics`` for ``daemon`` on ``host:port`` (port 0: any free port)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"service.metrics_address: expected host:port (e.g. 127.0.0.1:9108), got {address!r}")
    registry, job_metrics, collect_jobs = _registry(daemon)
    _watch_jobs(daemon, job_metrics)
    stale_after = 3 * daemon.config.service.idling + 60

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                reason = _not_ready(daemon, stale_after)
                held = getattr(daemon, "slots_held", None)
                body = (("ok\n" if reason is None else reason.rstrip("\n") + "\n") + _streams_text(daemon)
                        + (f"{held}\n" if held else ""))
                body = body.encode()
                self._reply(200 if reason is None else 503, body, "text/plain; charset=utf-8")
            elif path == "/metrics":
                collect_jobs()
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    except OSError as exc:
        hint = ("another process (another elastic-ingest?) listens there: stop it, or choose another port"
                if exc.errno == errno.EADDRINUSE else "use host:port with an address of this machine")
        raise ConfigError(f"service.metrics_address: cannot listen on {address}: {exc.strerror}; {hint}") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    _LOGGER.info("health and metrics on http://%s:%d/healthz and /metrics", host or "127.0.0.1",
                 server.server_address[1])
    return MetricsServer(server, thread, registry, job_metrics)
