"""Every error the service raises on purpose, in one tree.

    IngestError                      base; ``str(err)`` is a message a user can act on
    ├── ConfigError                  config.yml or CLI input is wrong (``path``: where)
    ├── ConnectorError               a connector or job document is wrong (``connector_id``)
    │   ├── UnknownServiceType       service_type not in config.yml ``sources:``
    │   ├── SyncRulesError           sync rules invalid
    │   ├── IndexConflict            index_name is another connector's, or an alias over several indices
    │   └── SecretReferenceError     a ${env:...} / ${file:...} reference the operator does not allow
    ├── SourceError                  the source failed
    │   ├── SourceConfigError        the connector's configuration values are invalid
    │   ├── SourceUnavailable        cannot reach the backend (retriable)
    │   └── SourceLoadError          the source's FQN cannot be imported
    ├── IndexingError                Elasticsearch refused our writes (or a whole read of the index)
    │   ├── ElasticsearchUnavailable cannot reach Elasticsearch (retriable)
    │   ├── InsufficientPrivileges   the credentials lack privileges the service needs (listed)
    │   ├── PartialScan              a scan of the content index missed shards
    │   └── TooManyErrors            dead letters exceeded the configured error rate
    └── JobError                     a sync job ended badly
        ├── JobCanceled
        └── JobGone                  the job or its connector was deleted under us

Lower-level exceptions are translated at the boundary with ``raise ... from exc``. The
CLI prints ``TypeName: message`` for any ``IngestError`` and shows a traceback only with
``--debug``. Messages never contain secrets.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "IngestError",
    "ConfigError",
    "ConnectorError",
    "UnknownServiceType",
    "SyncRulesError",
    "IndexConflict",
    "SecretReferenceError",
    "SourceError",
    "SourceConfigError",
    "SourceUnavailable",
    "SourceLoadError",
    "IndexingError",
    "ElasticsearchUnavailable",
    "InsufficientPrivileges",
    "TooManyErrors",
    "PartialScan",
    "JobError",
    "JobCanceled",
    "JobGone",
    "format_error",
]


class IngestError(Exception):
    """Base of the service's own errors."""


class ConfigError(IngestError):
    """The configuration is wrong. ``problems`` lists every ``path: message`` found."""

    def __init__(self, message: str, problems: Iterable[str] = ()):
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class ConnectorError(IngestError):
    def __init__(self, message: str, connector_id: str | None = None):
        self.connector_id = connector_id
        super().__init__(message)


class UnknownServiceType(ConnectorError):
    pass


class SyncRulesError(ConnectorError):
    pass


class IndexConflict(ConnectorError):
    pass


class SecretReferenceError(ConnectorError):
    pass


class SourceError(IngestError):
    pass


class SourceConfigError(SourceError):
    pass


class SourceUnavailable(SourceError):
    retriable = True


class SourceLoadError(SourceError):
    pass


class IndexingError(IngestError):
    pass


class ElasticsearchUnavailable(IndexingError):
    retriable = True


class InsufficientPrivileges(IndexingError):
    pass


class TooManyErrors(IndexingError):
    pass


class PartialScan(IndexingError):
    """Elasticsearch answered a scan of the content index for only some of its shards."""


class JobError(IngestError):
    pass


class JobCanceled(JobError):
    pass


class JobGone(JobError):
    pass


def format_error(exc: BaseException) -> str:
    """``"<ErrorType>: <message>"`` as written to job documents and printed by the CLI."""
    message = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {message}"
