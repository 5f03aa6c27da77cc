"""Logging set-up: readable text by default, ECS-style JSON lines as an option.

Every line of a sync carries the job and connector ids (the sync process puts them in
its format; the daemon's supervisor logs them in the message).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

__all__ = ["setup_logging", "EcsJsonFormatter"]


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
        for key in ("job_id", "connector_id"):
            value = getattr(record, key, None)
            if value:
                entry[f"labels.{key}"] = value
        if record.exc_info:
            entry["error.stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(*, debug: bool = False, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(EcsJsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("elastic_transport", "urllib3", "apache_beam", "botocore", "google"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug and noisy == "elastic_transport" else logging.ERROR)
