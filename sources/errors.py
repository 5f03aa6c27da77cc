"""Every error the service raises on purpose, in one tree.

    IngestError                      base; ``str(err)`` is a message a user can act on
    ├── ConfigError                  config.yml or CLI input is wrong (``path``: where)
    │   ├── NotElasticsearch         elasticsearch.host answers, but not as Elasticsearch
    │   ├── AuthenticationException  Elasticsearch refused the credentials (401)
    │   └── UntrustedCertificate     Elasticsearch's TLS certificate cannot be verified
    ├── ConnectorError               a connector or job document is wrong (``connector_id``)
    │   ├── UnknownServiceType       service_type not in config.yml ``sources:``
    │   ├── SyncRulesError           sync rules invalid
    │   ├── IndexConflict            index_name is another connector's, or an alias over several indices
    │   └── SecretReferenceError     a ${env:...} / ${file:...} reference the operator does not allow
    ├── SourceError                  the source failed
    │   ├── SourceConfigError        the connector's configuration values are invalid
    │   ├── SourceUnavailable        cannot reach the backend (retriable)
    │   ├── SourceLoadError          the source's FQN cannot be imported
    │   └── DocumentUnreadable       one document's content cannot be read (a dead letter; the sync goes on)
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

import re
from collections.abc import Iterable

__all__ = [
    "IngestError",
    "StreamPositionLost",
    "ConfigError",
    "NotElasticsearch",
    "AuthenticationException",
    "UntrustedCertificate",
    "ConnectorError",
    "UnknownServiceType",
    "SyncRulesError",
    "IndexConflict",
    "SecretReferenceError",
    "SourceError",
    "SourceConfigError",
    "SourceUnavailable",
    "SourceLoadError",
    "DocumentUnreadable",
    "IndexingError",
    "ElasticsearchUnavailable",
    "InsufficientPrivileges",
    "TooManyErrors",
    "PartialScan",
    "JobError",
    "JobCanceled",
    "JobGone",
    "format_error",
    "connection_failure",
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


class NotElasticsearch(ConfigError):
    """``elasticsearch.host`` reaches an HTTP server that is not Elasticsearch (a proxy, another service)."""


class AuthenticationException(ConfigError):
    """Elasticsearch refused our credentials (HTTP 401): the message says which settings to check."""


class UntrustedCertificate(ConfigError):
    """Elasticsearch's TLS certificate cannot be verified (``elasticsearch.ca_certs``)."""


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


class DocumentUnreadable(SourceError):
    """Raised by a lazy download when this one document cannot be read (e.g. access denied to
    the file): the document becomes a dead letter (stage ``download``) and the sync goes on.
    Its indexed version, if any, is kept (it counts as seen). Any other download failure fails
    the sync."""


class StreamPositionLost(SourceError):
    """A continuous sync's stored position can no longer be served (a replication slot dropped or
    invalidated, a binlog purged): the next run takes a new snapshot."""


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


def connection_failure(exc: BaseException) -> str | None:
    """A failed connection of the Elasticsearch client in plain words, e.g. ``cannot connect to
    127.0.0.1:9200: [Errno 111] Connection refused`` (None for any other error).

    elastic-transport wraps urllib3's error twice (``Connection error caused by:
    ConnectionError(Connection error caused by: NewConnectionError(HTTPConnection(...): ...))``);
    the innermost cause says it all.
    """
    kind = type(exc)
    if not (kind.__module__.startswith("elastic_transport") or kind.__module__.startswith("elasticsearch")) or \
            kind.__name__ not in ("ConnectionError", "ConnectionTimeout", "TlsError"):
        return None
    chain: list[BaseException] = [exc]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    def said(error: BaseException) -> str:  # elastic-transport's str() is only "Connection error"
        return str(getattr(error, "message", None) or error).strip() or type(error).__name__

    for cause in chain:  # urllib3's names the address
        match = re.match(r"^\w*Connection(?:Pool)?\(host='([^']*)', port=(\d+)\): (.+)$", said(cause), re.S)
        if match:
            return f"cannot connect to {match.group(1)}:{match.group(2)}: {' '.join(match.group(3).split())}"
    text = " ".join(said(chain[-1]).split())
    if len(chain) == 1:
        return text  # nothing nested to unwrap
    if kind.__name__ == "ConnectionTimeout":
        return f"Elasticsearch did not answer in time: {text}"
    return f"the connection to Elasticsearch failed: {text}"


def format_error(exc: BaseException) -> str:
    """``"<ErrorType>: <message>"`` as written to job documents and printed by the CLI (a failed
    connection of the Elasticsearch client is said plainly, see :func:`connection_failure`)."""
    message = connection_failure(exc) or str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {message}"
