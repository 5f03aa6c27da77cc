"""SyncJob: everything one sync needs, as plain data handed from the launcher to a sync process.

The launcher builds it from the claimed job document and config.yml and writes it to a
private file (mode 0600: it holds the source's secrets, :func:`write_job_file`); the sync
process reads it back. Nothing here talks to Elasticsearch or imports Beam (the daemon
imports this module).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.settings import PipelineConfig
    from transforms.es_client import ElasticsearchConnection

__all__ = ["SyncJob", "JOB_TYPES", "write_job_file", "DAEMON_PID_ENV"]

#: Set by the daemon for its sync processes: its pid (the warm process's, for a sync it forks),
#: so a sync whose starter died, even before the sync started, knows it at once.
DAEMON_PID_ENV = "ELASTIC_INGEST_DAEMON_PID"

JOB_TYPES = ("full", "incremental", "access_control")


@dataclass
class SyncJob:
    job_id: str
    connector_id: str
    job_type: str
    index_name: str
    service_type: str
    source_fqn: str
    configuration: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The operator's settings for the source (its config.yml ``sources:`` entry).
    source_settings: dict[str, Any] = field(default_factory=dict)
    basic_rules: list[dict[str, Any]] = field(default_factory=list)
    advanced_rules: Any = None
    pipeline_flags: dict[str, bool] = field(default_factory=dict)
    ingest_pipeline: str | None = None
    sync_cursor: Any = None
    language: str | None = None
    #: A full sync that writes every document again (job metadata ``reindex: true``; ``sync --reindex``).
    reindex: bool = False
    #: An incremental job of a connector whose ``continuous_sync`` is on: an unbounded stream.
    continuous: bool = False

    def __post_init__(self) -> None:
        if self.job_type not in JOB_TYPES:
            raise ValueError(f"job_type: expected one of {', '.join(JOB_TYPES)}, got {self.job_type!r}")
        if not self.index_name:
            raise ValueError("index_name: required")


def write_job_file(path: str | os.PathLike[str], job: SyncJob, settings: PipelineConfig,
                   conn: ElasticsearchConnection, progress_interval: float = 0.0) -> None:
    """Write what a sync process needs, readable by this user only (it holds secrets)."""
    payload = {
        "job": asdict(job),
        "pipeline": settings.model_dump(),
        "elasticsearch": {**asdict(conn), "hosts": list(conn.hosts)},
        "progress_interval": progress_interval,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(payload, out, default=str)
