"""The source contract: the one thing a third party codes against.

A source is any importable class that subclasses :class:`BaseDataSource` (or merely looks
like one: sources written for Elastic's original connector framework run unchanged). It
is named in ``config.yml`` by its fully qualified name::

    sources:
      dir: sources.directory:DirectoryDataSource
      mysource: mycompany_source.module:MySource

One instance is built per sync (or per parallel worker) from the connector's
``configuration``. The service calls, in order:

1. ``ping()`` - raise with an actionable message when the backend cannot be reached;
2. ``get_partitions()`` - split the data into independent slices (default: one);
3. ``get_docs(filtering=..., partition=...)`` for each partition, possibly in parallel
   on other processes or machines (each with its own instance);
4. ``close()``.

``get_docs`` yields ``(doc, lazy_download)`` pairs (or bare ``doc`` dicts). A doc is a
JSON-like dict with ``_id`` and, when the backend knows it, ``_timestamp`` (the
last-modification time; a document whose ``_timestamp`` equals the indexed one is not
downloaded or sent again). ``lazy_download`` is ``None`` or a callable that fetches the
content only when the document is new or changed; it is called as
``lazy_download(doit=True, timestamp=doc["_timestamp"])``, may be sync or async, and
returns a dict merged into the doc (e.g. ``{"body": text}`` or ``{"_attachment": base64}``).

``get_docs`` may be an ``async def`` generator (the original framework's style) or a plain
generator; the service drives either. Raise on any read failure: the sync then fails and
deletes nothing.

Incremental syncs (``incremental_sync_enabled = True``) call
``get_docs_incrementally(sync_cursor)`` instead, which yields ``(doc, lazy_download,
operation)`` with ``OP_INDEX``, ``OP_UPSERT`` or ``OP_DELETE`` and sets ``self._sync_cursor``;
the cursor is stored only when the job completes.

Document-level security (access-control syncs): a source that can say who may see what
sets ``dls_enabled = True`` and implements ``get_access_control()``, which yields one
identity document per user (``{"_id": user, "identity": {...}, "query": {...}}``, as
Elastic's connectors write them); an ``access_control`` job writes them, as a full sync
does, into ``.search-acl-filter-<content index>``. Its ``get_docs`` then gives each
document the identities allowed to read it in ``_allow_access_control``. Other sources
leave both alone: their access-control jobs end ``error`` without touching any index, and
the CLI does not offer them (:func:`supports_access_control`).

What the operator allows a source (folders, hosts) comes from config.yml, never from the
connector document: a ``sources:`` entry may be a mapping ``{class: FQN, <settings>}``,
validated at load against the class's ``operator_settings_model`` (a subclass of
:class:`OperatorSettings`) and handed to each instance as ``self.operator_settings``. A
source that connects to hosts lists them in ``network_endpoints()``; the service checks
them against ``allowed_hosts`` before the source does anything else.

Continuous syncs (``continuous_sync_enabled = True``, :mod:`sources.streaming`): the service
calls ``open_change_stream(cursor)`` and applies the stream's snapshot and changes as they
come, acknowledging positions Elasticsearch acknowledged; ``release_change_stream(cursor)``
when the user turns the connector's ``continuous_sync`` field off.

docs/source-contract.md has the whole contract, step by step, and a larger example (with
partitions and an incremental sync); ``sources.testing.check_source_contract`` is the
suite every source must pass.

A complete small source::

    import os
    from sources.base import BaseDataSource, Partition

    class NotesSource(BaseDataSource):
        \"\"\"Each line of a text file is a document.\"\"\"

        name = "Notes"
        service_type = "notes"

        @classmethod
        def get_default_configuration(cls):
            return {"path": {"label": "File", "type": "str", "order": 1}}

        async def ping(self):
            if not os.path.isfile(self.configuration["path"]):
                raise FileNotFoundError(f"no file at {self.configuration['path']}")

        def get_docs(self, filtering=None, partition=None):
            with open(self.configuration["path"], encoding="utf-8") as lines:
                for number, line in enumerate(lines):
                    yield {"_id": str(number), "text": line.rstrip("\\n")}, None
"""

from __future__ import annotations

import abc
import copy
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "BaseDataSource",
    "OperatorSettings",
    "Endpoint",
    "DataSourceConfiguration",
    "Filter",
    "Partition",
    "Doc",
    "LazyDownload",
    "OP_INDEX",
    "OP_UPSERT",
    "OP_DELETE",
    "FIELD_DEFAULTS",
    "ACCESS_CONTROL_INDEX_PREFIX",
    "supports_access_control",
    "supports_job_type",
    "CONFIG_DIR_ENV",
    "config_folder",
]

#: Set by the service to the folder of its config file (see :func:`config_folder`).
CONFIG_DIR_ENV = "ELASTIC_INGEST_CONFIG_DIR"


def config_folder() -> Path:
    """The folder a relative path in a connector's configuration is read from: the folder of
    the service's config file (the daemon and its sync processes), else the working directory."""
    return Path(os.environ.get(CONFIG_DIR_ENV) or os.getcwd())


#: Where an access-control sync writes a content index's identities (Elastic's name).
ACCESS_CONTROL_INDEX_PREFIX = ".search-acl-filter-"

Doc = dict[str, Any]
LazyDownload = Callable[..., Union[Awaitable[Union[Doc, None]], Doc, None]]

OP_INDEX = "index"
OP_UPSERT = "update"
OP_DELETE = "delete"

# Properties every configurable field has (PROTOCOL.md section 4). A source declares a
# partial schema; the service fills the rest from here.
FIELD_DEFAULTS: dict[str, Any] = {
    "default_value": None,
    "depends_on": [],
    "display": "text",
    "label": "",
    "options": [],
    "order": 1,
    "required": True,
    "sensitive": False,
    "tooltip": None,
    "type": "str",
    "ui_restrictions": [],
    "validations": [],
    "value": "",
}


@dataclass(frozen=True)
class Partition:
    """A small, picklable descriptor of one independent slice of a source.

    Partitions travel between workers (they are reshuffled to spread the reads); documents
    never do. Keep ``params`` small: a key range, an object-name prefix, a table chunk.

    Example::

        Partition("users[0:10000]", {"table": "users", "low": 0, "high": 10000})
    """

    key: str = "all"
    params: dict[str, Any] = field(default_factory=dict)


class DataSourceConfiguration(Mapping):
    """The connector's ``configuration`` as a read-only mapping of field name -> value.

    Built from the connector document's ``configuration`` object (field name -> field
    object with ``value``), completed with the source's default schema, so a missing value
    reads as its ``default_value``. ``config["host"]`` gives the value; ``config.field("host")``
    the whole field object. Sensitive values are hidden from ``repr``.
    """

    def __init__(self, fields: Mapping[str, Any] | None = None, schema: Mapping[str, Any] | None = None):
        merged: dict[str, dict[str, Any]] = {}
        for name, spec in (schema or {}).items():
            merged[name] = {**FIELD_DEFAULTS, **copy.deepcopy(spec)}
        for name, given in (fields or {}).items():
            if isinstance(given, Mapping):
                merged[name] = {**merged.get(name, FIELD_DEFAULTS), **given}
            else:  # a bare value, as written by hand or by a test
                merged[name] = {**merged.get(name, FIELD_DEFAULTS), "value": given}
        self._fields = merged

    def __getitem__(self, name: str) -> Any:
        spec = self._fields[name]
        value = spec.get("value")
        if value in (None, "") and spec.get("default_value") is not None:
            return spec["default_value"]
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def field(self, name: str) -> dict[str, Any]:
        """The whole field object (label, type, sensitive, ...)."""
        return self._fields[name]

    def get_field(self, name: str) -> SimpleNamespace:
        """The field object with attribute access (``.value``, ``.label``), as the original framework has it."""
        return SimpleNamespace(**{**self._fields[name], "value": self[name]})

    def is_empty(self) -> bool:
        return not self._fields

    def is_sensitive(self, name: str) -> bool:
        return bool(self._fields.get(name, {}).get("sensitive"))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self._fields)

    def __repr__(self) -> str:
        shown = {k: ("****" if self.is_sensitive(k) else self[k]) for k in self._fields}
        return f"DataSourceConfiguration({shown!r})"


class Filter(dict):
    """The active sync rules handed to a source: ``{"basic_rules": [...], "advanced_rules": {...}}``.

    Basic rules are applied by the service to every document; a source only needs to look
    at the advanced rules, which it may push down into its query.
    """

    def get_advanced_rules(self) -> Any:
        return self.get("advanced_rules") or {}

    def has_advanced_rules(self) -> bool:
        return bool(self.get("advanced_rules"))

    def get_basic_rules(self) -> list[dict[str, Any]]:
        return list(self.get("basic_rules") or [])


class OperatorSettings(BaseModel):
    """What the operator allows a source, from its ``sources:`` entry in config.yml.

    A connector document cannot change these. A source that needs settings of its own
    subclasses this model (typed fields with defaults, validators that say what is
    expected) and names the subclass in ``operator_settings_model``; config.yml is
    validated against it at load, each problem reported with its path, e.g.
    ``sources.dir.allowed_roots[0]: ...``. Every source accepts:

    * ``allowed_hosts``: the hosts and networks the source may connect to (names,
      ``*.example.com`` patterns, IP addresses, CIDR networks such as ``10.0.0.0/8``).
      ``None`` (the default): any host. Checked against :meth:`BaseDataSource.network_endpoints`
      before the source is asked to do anything.

    Example::

        class NotesSettings(OperatorSettings):
            max_lines: int = 10_000

        class NotesSource(BaseDataSource):
            operator_settings_model = NotesSettings
            ...   # reads self.operator_settings.max_lines

        # config.yml:  sources: {notes: {class: mypackage.notes:NotesSource, max_lines: 500}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_hosts: tuple[str, ...] | None = None

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            from sources.network import validate_allowed_hosts

            validate_allowed_hosts(value)
        return value


class Endpoint(NamedTuple):
    """A host a source connects to (``port`` None when the source does not say)."""

    host: str
    port: int | None = None


class BaseDataSource(abc.ABC):
    """One data source for one sync, built from the connector's configuration.

    Subclasses set ``name`` (display name) and ``service_type`` and implement
    :meth:`get_docs`. Everything else has a sensible default. See the module docstring for
    the call order and a complete example.
    """

    name: ClassVar[str] = "Unnamed source"
    service_type: ClassVar[str] = ""
    #: True when :meth:`get_docs_incrementally` is implemented honestly.
    incremental_sync_enabled: ClassVar[bool] = False
    #: True when the source pushes advanced sync rules (``filtering.get_advanced_rules()``) down.
    advanced_rules_enabled: ClassVar[bool] = False
    #: Basic rules are applied by the service, so every source supports them.
    basic_rules_enabled: ClassVar[bool] = True
    #: Configuration fields that never change what a document holds (tuning: page sizes,
    #: partitions), or that are the data itself: changing them does not make the next full sync
    #: write every document again as other fields do (transforms/document_shape.py).
    document_neutral_fields: ClassVar[frozenset[str]] = frozenset()
    #: True when :meth:`get_access_control` is implemented (document-level security).
    dls_enabled: ClassVar[bool] = False
    #: True when :meth:`open_change_stream` is implemented (continuous sync, :mod:`sources.streaming`).
    continuous_sync_enabled: ClassVar[bool] = False
    #: The operator settings this source accepts (see :class:`OperatorSettings`).
    operator_settings_model: ClassVar[type[OperatorSettings]] = OperatorSettings

    def __init__(self, configuration: Mapping[str, Any] | DataSourceConfiguration | None = None, *,
                 operator_settings: OperatorSettings | Mapping[str, Any] | None = None):
        #: What the operator allows this source (config.yml); defaults when built without.
        if isinstance(operator_settings, self.operator_settings_model):
            self.operator_settings = operator_settings
        else:
            self.operator_settings = self.operator_settings_model.model_validate(
                operator_settings.model_dump() if isinstance(operator_settings, BaseModel) else (operator_settings or {}))
        if isinstance(configuration, DataSourceConfiguration):
            self.configuration = configuration
        else:
            self.configuration = DataSourceConfiguration(configuration, self.get_default_configuration())
        self._logger = logging.getLogger(f"sources.{self.service_type or type(self).__name__}")
        self._sync_cursor: dict[str, Any] | None = None

    # -- description ---------------------------------------------------------------
    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        """The configuration schema: field name -> partial field object (PROTOCOL.md section 4)."""
        return {}

    @classmethod
    def features(cls) -> dict[str, Any]:
        """The connector's ``features`` object, derived from the class flags."""
        return {
            "sync_rules": {
                "basic": {"enabled": cls.basic_rules_enabled},
                "advanced": {"enabled": cls.advanced_rules_enabled},
            },
            "incremental_sync": {"enabled": cls.incremental_sync_enabled},
            "document_level_security": {"enabled": cls.dls_enabled},
        }

    def set_logger(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        """Replace the logger (the service passes one that carries job and connector ids)."""
        self._logger = logger

    # -- lifecycle -----------------------------------------------------------------
    def network_endpoints(self) -> Iterable[Endpoint]:
        """The hosts this source will connect to, read from its configuration, connecting to none.

        A source that reaches the network must list every host its configuration names:
        the service checks them against the operator's ``allowed_hosts`` before it calls
        ``validate_config``, ``ping`` or ``get_docs``, and refuses the connector (or fails
        the job) with the reason. Raise ``SourceConfigError`` when the configuration names
        no usable host. The default: none (a source that reads no network).
        """
        return ()

    async def validate_config(self) -> None:
        """Check values beyond the schema (e.g. that a table exists); raise with what to fix."""

    async def ping(self) -> None:
        """Raise with an actionable message when the backend cannot be reached."""

    async def changed(self) -> bool:
        """Whether the source may have changed since the last sync (True when unknown)."""
        return True

    async def close(self) -> None:
        """Release clients and connections. Called once per instance, even after errors."""

    # -- reading -------------------------------------------------------------------
    def get_partitions(self) -> Iterable[Partition]:
        """Independent slices that together cover the whole source exactly once.

        Called once, on one worker, before reading. Override to let big sources be read in
        parallel. The default is a single partition.
        """
        return [Partition()]

    @abc.abstractmethod
    def get_docs(
        self, filtering: Filter | None = None, partition: Partition | None = None
    ) -> AsyncIterator[Any] | Iterator[Any]:
        """Yield every document of ``partition`` as ``(doc, lazy_download)`` or ``doc``.

        May be an async generator or a plain generator. Raise on any read failure: a sync
        whose source could not be read completely fails and deletes nothing.
        """

    def get_docs_incrementally(
        self, sync_cursor: dict[str, Any] | None, filtering: Filter | None = None
    ) -> AsyncIterator[Any] | Iterator[Any]:
        """Yield changes since ``sync_cursor`` as ``(doc, lazy_download, operation)``.

        ``operation`` is ``OP_INDEX``, ``OP_UPSERT`` or ``OP_DELETE`` (a delete needs only
        ``_id``). Set the new cursor with ``self._sync_cursor = ...``; it is stored only if
        the job completes. Only called when ``incremental_sync_enabled`` is True.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support incremental syncs")

    def get_access_control(self) -> AsyncIterator[Any] | Iterator[Any]:
        """Yield one identity document per user, for document-level security (``dls_enabled``).

        Each is ``{"_id": <user>, "identity": {...}, "query": {...}}`` (or a
        ``(doc, None)`` pair), and the access-control sync writes them into
        ``.search-acl-filter-<content index>``, deleting identities no longer yielded, as a
        full sync does. ``get_docs`` then lists, in each document's
        ``_allow_access_control``, the identities allowed to read it. May be async.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support document-level security")

    def open_change_stream(self, cursor: dict[str, Any] | None, filtering: Filter | None = None, *,
                           stream_id: str = "default") -> Any:
        """A :class:`sources.streaming.ChangeStream` resuming at ``cursor`` (None: the first run,
        which starts with a snapshot). ``stream_id`` (the connector's id) names what the backend
        keeps for the stream. Raise :class:`sources.errors.StreamPositionLost` when the
        backend cannot serve ``cursor`` any more. Only called when ``continuous_sync_enabled``."""
        raise NotImplementedError(f"{type(self).__name__} does not support continuous syncs")

    def release_change_stream(self, cursor: dict[str, Any] | None, *, stream_id: str = "default") -> None:
        """Drop what the backend keeps for the stream (called when continuous sync is turned off)."""

    def sync_cursor(self) -> dict[str, Any] | None:
        """The cursor to store after this sync (None: keep none).

        For a full sync it is read from the planning instance after ``get_partitions()``
        and before any document is read, so changes made during the read are seen again by
        the next incremental sync rather than lost.
        """
        return self._sync_cursor

    def serialize(self, doc: Any) -> Any:
        """Kept for sources of the original framework, which call ``self.serialize(doc=...)``.

        The service makes every value JSON-safe after reading (``transforms.normalize``),
        so this returns ``doc`` as it is.
        """
        return doc

    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        """Problems with an advanced sync rules snippet (empty list: valid)."""
        return []


def supports_access_control(source_class: type) -> bool:
    """Whether ``source_class`` runs access-control syncs: it sets ``dls_enabled`` and implements
    ``get_access_control`` (sources of Elastic's framework, which do both, included)."""
    method = getattr(source_class, "get_access_control", None)
    return (getattr(source_class, "dls_enabled", False) is True and callable(method)
            and method is not getattr(BaseDataSource, "get_access_control"))


def supports_job_type(source_class: type, job_type: str) -> bool:
    """Whether ``source_class`` runs jobs of ``job_type``: ``full`` always, ``incremental`` with
    ``incremental_sync_enabled`` (a continuous sync's own incremental job is the streaming
    contract's business, :func:`sources.streaming.supports_continuous_sync`), ``access_control``
    with document-level security (:func:`supports_access_control`)."""
    if job_type == "incremental":
        return bool(getattr(source_class, "incremental_sync_enabled", False))
    if job_type == "access_control":
        return supports_access_control(source_class)
    return job_type == "full"
