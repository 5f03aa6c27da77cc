"""SyncJob: everything one sync needs, as plain data handed from the launcher to a sync process.

The launcher builds it from the claimed job document and config.yml and writes it to a
private file (mode 0600: it holds the source's secrets); the sync process reads it back.
Nothing here talks to Elasticsearch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SyncJob", "JOB_TYPES"]

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

    def __post_init__(self) -> None:
        if self.job_type not in JOB_TYPES:
            raise ValueError(f"job_type: expected one of {', '.join(JOB_TYPES)}, got {self.job_type!r}")
        if not self.index_name:
            raise ValueError("index_name: required")
