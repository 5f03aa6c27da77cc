"""Logging set-up: readable text by default, ECS-style JSON lines as an option.

Every line logged about a sync carries the job and connector ids:

* in the sync process (``python -m pipelines.run``), which serves one job, every line;
* in the daemon, every line logged by a job's supervisor thread (a
  :class:`~launcher.sync_runner.SyncRunner`, which has ``job_id`` and ``connector_id``).

In JSON they are ``labels.job_id`` and ``labels.connector_id``; in text, a
``[job ... connector ...]`` prefix. The format chosen for the daemon
(``service.log_format``) is exported as ``ELASTIC_INGEST_LOG_FORMAT`` so the sync
processes it starts log the same way into the same stream.

Example usage::

    setup_logging(log_format="json")                                   # the daemon
    setup_logging(log_format="json", job_id=job, connector_id=conn)    # a sync process
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import datetime, timezone

__all__ = ["setup_logging", "EcsJsonFormatter", "LOG_FORMAT_ENV"]

LOG_FORMAT_ENV = "ELASTIC_INGEST_LOG_FORMAT"
_CONTEXT = ("job_id", "connector_id")
_NOISY = ("elastic_transport", "urllib3", "apache_beam", "botocore", "google")


class _SyncContext(logging.Filter):
    """Adds ``job_id``/``connector_id`` to records: fixed ones (a sync process) or the emitting thread's."""

    def __init__(self, job_id: str | None = None, connector_id: str | None = None):
        super().__init__()
        self.fixed = {"job_id": job_id, "connector_id": connector_id}

    def filter(self, record: logging.LogRecord) -> bool:
        thread = threading.current_thread()
        for key in _CONTEXT:
            if getattr(record, key, None):
                continue
            value = self.fixed[key] or getattr(thread, key, None)
            if value:
                setattr(record, key, value)
        return True


class EcsJsonFormatter(logging.Formatter):
    """One JSON object per line with ECS field names."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "@timestamp": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
            "process.pid": record.process,
            "process.thread.name": record.threadName,
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value:
                entry[f"labels.{key}"] = value
        if record.exc_info:
            entry["error.stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(context)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job, connector = getattr(record, "job_id", None), getattr(record, "connector_id", None)
        record.context = (f"[job {job}" + (f" connector {connector}" if connector else "") + "] ") if job else ""
        return super().format(record)


def setup_logging(*, debug: bool = False, log_format: str = "text", job_id: str | None = None,
                  connector_id: str | None = None, level: str | int | None = None) -> None:
    """Log to stderr in ``log_format`` (``text`` or ``json``); child processes inherit the format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EcsJsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_SyncContext(job_id, connector_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or (logging.DEBUG if debug else logging.INFO))
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug and noisy == "elastic_transport" else logging.ERROR)
    # Beam logs a failing DoFn's whole traceback; the sync reports the error itself, in one line
    # (and the traceback with --debug).
    logging.getLogger("apache_beam.runners.common").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    os.environ[LOG_FORMAT_ENV] = "json" if log_format == "json" else "text"
