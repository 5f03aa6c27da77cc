"""SyncJob: everything one sync needs, as plain data handed from the launcher to a sync process.

The launcher builds it from the claimed job document and config.yml and writes it to a
private file (mode 0600: it holds the source's secrets); the sync process reads it back.
Nothing here talks to Elasticsearch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
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

    def save(self, path: str | os.PathLike[str]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out, default=str)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SyncJob":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))
