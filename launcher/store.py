"""The protocol's storage behind one interface (PROTOCOL.md sections 1-3, 9).

Everything the launcher and the CLI read or write about connectors and sync jobs goes
through a :class:`ConnectorStore`. Two backends implement it:

* :class:`~launcher.index_store.IndexStore` reads and writes the documents of
  ``.elastic-connectors`` and ``.elastic-connectors-sync-jobs`` directly (clusters without
  the connector API; Elastic's own service with ``feature_use_connectors_api: false``);
* :class:`~launcher.api_store.ConnectorApiStore` speaks Elasticsearch's connector API
  (``_connector/...``), where the cluster has it (Elasticsearch 8.12+, and 9, where the
  indices are system indices).

:func:`open_store` picks one: ``auto`` asks the cluster once whether it has the API.
The rest of the launcher never knows which backend it got.

Concurrency: every write that decides ownership (the connector lock, a fire time taken,
a configuration completed) is *conditional*: it names the :class:`Connector` or
:class:`Job` it was decided on (``expected=``) and fails with
:class:`elasticsearch.ConflictError` when the document changed since it was read. A
successful conditional write keeps the caller's copy current (fields and concurrency
token), so the next conditional write can build on it.

Example usage::

    store = open_store(es, "auto")
    problems = store.prepare()          # indices, aliases, mappings (see index_store)
    connector = store.get_connector("my-connector")
    store.update_connector(connector.id, {"status": "connected", "error": None})
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

__all__ = ["Connector", "Job", "ConnectorStore", "open_store", "as_store", "BACKENDS", "JOB_STATUSES",
           "FINAL_STATUSES", "Backend"]

JOB_STATUSES = ("pending", "in_progress", "canceling", "canceled", "suspended", "completed", "error")
FINAL_STATUSES = ("canceled", "completed", "error")
Backend = Literal["auto", "connector_api", "indices"]
BACKENDS: tuple[str, ...] = ("auto", "connector_api", "indices")


@dataclass
class Connector:
    """A connector document as read, with what a conditional write needs to name it."""

    id: str
    doc: dict[str, Any]
    seq_no: int | None = None
    primary_term: int | None = None
    version: int | None = None  # per document: +1 on each write, unlike the shard-wide _seq_no

    @property
    def service_type(self) -> Any:
        return self.doc.get("service_type")

    @property
    def index_name(self) -> Any:
        return self.doc.get("index_name")

    def get(self, key: str, default: Any = None) -> Any:
        return self.doc.get(key, default)

    @classmethod
    def from_hit(cls, hit: Mapping[str, Any]) -> "Connector":
        return cls(hit["_id"], dict(hit.get("_source") or {}), hit.get("_seq_no"), hit.get("_primary_term"),
                   hit.get("_version"))


@dataclass
class Job:
    """A sync-job document as read."""

    id: str
    doc: dict[str, Any]
    seq_no: int | None = None
    primary_term: int | None = None

    @property
    def status(self) -> Any:
        return self.doc.get("status")

    @property
    def connector_id(self) -> Any:
        connector = self.doc.get("connector")
        return connector.get("id") if isinstance(connector, Mapping) else None

    @property
    def job_type(self) -> Any:
        return self.doc.get("job_type", "full")

    @classmethod
    def from_hit(cls, hit: Mapping[str, Any]) -> "Job":
        return cls(hit["_id"], dict(hit.get("_source") or {}), hit.get("_seq_no"), hit.get("_primary_term"))


def merged_copy(doc: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` after a partial update with ``fields``, as JSON (what the caller's copy becomes)."""
    result = dict(doc)
    result.update(json.loads(json.dumps(dict(fields), default=str)))
    return result


class ConnectorStore(abc.ABC):
    """Where connectors and sync jobs live; see the module docstring.

    Reads return None (or an empty list) for what does not exist; writes raise
    :class:`elasticsearch.NotFoundError` for a document that does not exist and
    :class:`elasticsearch.ConflictError` when a conditional write lost a race.
    """

    #: ``indices`` or ``connector_api``: for logs, ``/healthz`` and the docs.
    backend: ClassVar[str]

    def __init__(self, es: Any):
        self.es = es

    # -- set-up --------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self) -> list[str]:
        """Make the storage usable; return what stops it from working (empty: ready).

        Called at start and at each poll (cheap once done).
        """

    # -- connectors ----------------------------------------------------------------
    @abc.abstractmethod
    def get_connector(self, connector_id: str) -> Connector | None:
        """The connector (soft-deleted ones too: callers check ``deleted``), or None."""

    @abc.abstractmethod
    def list_connectors(self, *, service_types: Iterable[str] | None = None,
                        connector_ids: Iterable[str] | None = None, include_deleted: bool = False) -> list[Connector]:
        """Connectors matching every filter given (ids and service types), oldest first where known."""

    @abc.abstractmethod
    def create_connector(self, doc: Mapping[str, Any], connector_id: str | None = None) -> str:
        """Write a new connector document (as :func:`launcher.protocol.new_connector` shapes it); its id."""

    @abc.abstractmethod
    def delete_connector(self, connector_id: str) -> bool:
        """Delete a connector (its jobs stay); False when there was none."""

    @abc.abstractmethod
    def update_connector(self, connector_id: str, fields: Mapping[str, Any], *,
                         expected: Connector | None = None, conditional: bool = True) -> None:
        """Partial update of the connector.

        ``expected`` is the caller's copy: the write is conditional on it (unless
        ``conditional=False``), and a successful write keeps it current. Objects are merged
        key by key (a partial update); use :meth:`replace_connector_object` to set an
        object field to exactly a value.
        """

    @abc.abstractmethod
    def replace_connector_object(self, connector_id: str, name: str, value: Any) -> None:
        """Set the object field ``name`` to exactly ``value`` (keys it lacks do not survive)."""

    @abc.abstractmethod
    def check_in(self, connector_id: str, *, expected: Connector | None = None) -> None:
        """The connector heartbeat: ``last_seen`` = now (unconditional; keeps ``expected`` current)."""

    @abc.abstractmethod
    def update_filtering_validation(self, connector_id: str, validation: Mapping[str, Any], *, activate: bool,
                                    expected: Connector | None = None) -> None:
        """Write the DEFAULT draft's ``validation``; ``activate`` copies the (valid) draft over ``active``."""

    # -- jobs ----------------------------------------------------------------------
    @abc.abstractmethod
    def get_job(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abc.abstractmethod
    def list_jobs(self, *, connector_ids: Iterable[str] | None = None, service_types: Iterable[str] | None = None,
                  statuses: Iterable[str] | None = None, size: int = 100, newest_first: bool = False) -> list[Job]:
        """Jobs matching every filter given, by ``created_at``."""

    @abc.abstractmethod
    def create_job(self, connector: Connector, doc: Mapping[str, Any]) -> str:
        """Write a new ``pending`` job for ``connector`` (``doc`` as :func:`launcher.protocol.new_job` shapes it)."""

    @abc.abstractmethod
    def update_job(self, job_id: str, fields: Mapping[str, Any], *, expected: Job | None = None) -> None:
        """Partial update of the job; conditional on ``expected`` when given."""

    @abc.abstractmethod
    def claim_job(self, job: Job, hostname: str, *, sync_cursor: Any = None,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Mark ``job`` ``in_progress`` for ``hostname`` (conditional on ``job`` as read); the fields written.

        ``sync_cursor`` (not None) is recorded as the job's ``connector.sync_cursor``;
        ``defaults`` are protocol fields the job's creator left out, written with the claim.
        """

    @abc.abstractmethod
    def job_stats(self, job_id: str, counters: Mapping[str, Any], *, metadata: Mapping[str, Any] | None = None,
                  ) -> None:
        """The job heartbeat: counters so far, ``last_seen`` = now, and ``metadata`` when given."""

    @abc.abstractmethod
    def end_job(self, job: Job | str, status: str, fields: Mapping[str, Any], *,
                expected: Job | None = None) -> None:
        """Write an end state (``completed``, ``error``, ``canceled``, ``suspended``) with ``fields``."""

    @abc.abstractmethod
    def cancel_job(self, job: Job) -> str:
        """A client's cancel request: ``pending``/``suspended`` -> ``canceled``, running -> ``canceling``."""

    @abc.abstractmethod
    def job_totals(self) -> tuple[dict[str, int], float]:
        """Jobs by status and the sum of ``indexed_document_count``, across the cluster (for metrics)."""


def open_store(es: Any, backend: str = "auto") -> ConnectorStore:
    """The store for ``es``: ``indices``, ``connector_api``, or ``auto`` (the API where the cluster has it)."""
    from launcher.api_store import ConnectorApiStore, has_connector_api
    from launcher.es_warnings import log_elasticsearch_warnings_once
    from launcher.index_store import IndexStore

    log_elasticsearch_warnings_once()
    if backend not in BACKENDS:
        raise ValueError(f"protocol backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "connector_api" if has_connector_api(es) else "indices"
    return ConnectorApiStore(es) if backend == "connector_api" else IndexStore(es)


def as_store(store_or_es: Any) -> ConnectorStore:
    """A store as it is; an Elasticsearch client as an :class:`~launcher.index_store.IndexStore`.

    Lets code and tests that hold a client call the protocol functions unchanged.
    """
    if isinstance(store_or_es, ConnectorStore):
        return store_or_es
    from launcher.index_store import IndexStore

    return IndexStore(store_or_es)
