"""The MongoDB source: the documents of one collection, read with pymongo.

Documents
    One Elasticsearch document per MongoDB document, fields and nesting kept. ``_id``
    becomes a string: ``str(ObjectId)``, the string itself, a number's digits, a date's
    ISO 8601 form, or the relaxed Extended JSON of anything else (an embedded-document
    ``_id`` such as ``{"a": 1}``). The number ``5`` and the string ``"5"`` therefore give
    the same id. Values: ObjectId -> ``str``, Decimal128 -> ``decimal.Decimal``, Int64 ->
    ``int``, dates -> timezone-aware UTC ``datetime``, BSON timestamps -> their ``datetime``,
    dates outside Python's range -> milliseconds since the epoch, binary -> ``bytes``, UUIDs
    (binary subtype 4) -> ``str``, regular expressions -> ``"/pattern/flags"``, JavaScript
    -> its source text, MinKey/MaxKey -> ``"MinKey"``/``"MaxKey"``, DBRef -> ``{"$ref", "$id",
    "$db"}``. The pipeline makes datetimes, decimals and bytes JSON-safe.

Timestamps and incremental syncs
    With ``timestamp_field`` set (e.g. ``updated_at``, dotted paths allowed), a document
    whose field holds a BSON date gets ``_timestamp`` (ISO 8601 UTC), so unchanged
    documents are not sent again. Incremental syncs read the documents whose field is at or
    after the previous sync's start (minus a few seconds of overlap, for writers whose
    clocks run behind the server's), plus every document whose field is missing or not a
    date, which cannot be compared. The field must be set by whoever writes the collection;
    a change that does not touch it is missed by incremental syncs (full syncs see it).
    Deletions are never seen incrementally: only a full sync removes their documents.
    (MongoDB change streams would see them, but need a replica set, and the project's test
    server has none; see ``scripts/servers/mongo``.)

Partitions
    A collection is split into ``_id`` ranges of at least ``batch_size`` documents, at most
    ``partition_count`` of them. Bounds are the ``_id`` values found at even offsets of the
    ``_id`` order (``skip`` over the ``_id`` index), so ranges follow the data whatever the
    id type. The first and last ranges are open-ended, so documents inserted during the
    sync are not lost. MongoDB compares values of one type family only (numbers, strings,
    ObjectIds, dates), so a collection whose smallest and largest ``_id`` are of different
    families is read as one partition.

Advanced sync rules
    Elastic's shape: ``{"find": {"filter": {...}, "projection": {...}, ...}}`` or
    ``{"aggregate": {"pipeline": [...], ...}}``, values in MongoDB Extended JSON (``{"$oid":
    ...}``, ``{"$date": ...}``). A ``find`` rule is combined with each partition's range; a
    ``find`` with ``skip``/``limit`` and any ``aggregate`` rule are read whole, by the first
    partition. Aggregation results must keep ``_id``.

Example usage::

    from sources.mongo import MongoDataSource
    from sources.testing import read_all

    source = MongoDataSource({
        "host": "mongodb://127.0.0.1:27018/", "user": "elastic", "password": "changeme",
        "database": "shop", "collection": "orders", "timestamp_field": "updated_at",
    })
    docs = read_all(source)   # [{"_id": "65f0c0ffee...", "total": Decimal("9.90"), ...}, ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus

import pymongo
import pymongo.errors
from bson import json_util
from bson.binary import UuidRepresentation
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.errors import BSONError
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

from sources.base import OP_INDEX, BaseDataSource, Doc, Endpoint, Filter, Partition
from sources._tls import CaFile
from sources.cursors import CURSOR_OVERLAP, cursor_timestamp, timestamp_cursor
from sources.config_values import read_flag, read_int, read_text
from sources.errors import SourceConfigError, SourceError, SourceUnavailable

__all__ = ["MongoDataSource", "MongoSettings", "mask_uri", "plain_value", "document_id"]

# Incremental reads start this long before the previous sync's start (see module docstring).
_AUTH_FAILED, _UNAUTHORIZED = 18, 13
_APP_NAME = "elastic-ingest"
_JSON_OPTIONS = json_util.JSONOptions(
    json_mode=json_util.JSONMode.CANONICAL,
    tz_aware=True,
    tzinfo=timezone.utc,
    uuid_representation=UuidRepresentation.STANDARD,
)
# Type families MongoDB compares across (type bracketing): a range over one family.
_RANGE_FAMILIES = {"number", "string", "objectid", "date"}
_FIND_OPTIONS = {
    "filter": (dict,),
    "projection": (dict, list),
    "skip": (int,),
    "limit": (int,),
    "batch_size": (int,),
    "max_time_ms": (int,),
    "allow_disk_use": (bool,),
    "no_cursor_timeout": (bool,),
    "allow_partial_results": (bool,),
    "return_key": (bool,),
    "show_record_id": (bool,),
}
_AGGREGATE_OPTIONS = {
    "pipeline": (list,),
    "allowDiskUse": (bool,),
    "maxTimeMS": (int,),
    "batchSize": (int,),
    "let": (dict,),
}


def _toggle(label: str, order: int, **extra: Any) -> dict[str, Any]:
    return {"label": label, "order": order, "type": "bool", "display": "toggle", "default_value": False,
            "required": False, **extra}


def _number(label: str, order: int, default: int, tooltip: str) -> dict[str, Any]:
    return {"label": label, "order": order, "type": "int", "display": "numeric", "default_value": default,
            "required": False, "ui_restrictions": ["advanced"], "tooltip": tooltip,
            "validations": [{"type": "greater_than", "constraint": 0}]}


_CONFIGURATION: dict[str, dict[str, Any]] = {
    "host": {
        "label": "Server hostname",
        "order": 1,
        "type": "str",
        "tooltip": (
            "A MongoDB connection string, e.g. mongodb://127.0.0.1:27017 or mongodb+srv://cluster0.example.net. "
            "Put credentials in Username and Password rather than in the string."
        ),
    },
    "user": {"label": "Username", "order": 2, "type": "str", "required": False,
             "tooltip": "The user to log in as (empty: no authentication); it needs the read role on the database."},
    "password": {"label": "Password", "order": 3, "type": "str", "sensitive": True, "required": False,
                 "tooltip": "The user's password."},
    "database": {"label": "Database", "order": 4, "type": "str",
                 "tooltip": "The database that holds the collection."},
    "collection": {"label": "Collection", "order": 5, "type": "str",
                   "tooltip": "The collection to index: one document per MongoDB document."},
    "direct_connection": _toggle(
        "Direct connection", 6, tooltip="Connect to the named host only, without discovering the replica set."
    ),
    "ssl_enabled": _toggle("SSL/TLS connection", 7, tooltip="Connect with TLS."),
    "ssl_ca": {
        "label": "Certificate authority (.pem)",
        "order": 8,
        "type": "str",
        "display": "textarea",
        "required": False,
        "depends_on": [{"field": "ssl_enabled", "value": True}],
        "tooltip": "PEM text or path of the CA that signed the server's certificate (empty: the system's CAs).",
    },
    "tls_insecure": _toggle(
        "Skip certificate verification",
        9,
        depends_on=[{"field": "ssl_enabled", "value": True}],
        tooltip="Accept any server certificate and host name. The connection is encrypted but not authenticated.",
    ),
    "timestamp_field": {
        "label": "Last-modified field",
        "order": 10,
        "type": "str",
        "required": False,
        "tooltip": (
            "A field holding each document's last modification time as a date (e.g. updated_at), kept up to "
            "date by the application. Enables incremental syncs; documents whose value is unchanged are not "
            "sent again. Deletions are only seen by full syncs."
        ),
    },
    "batch_size": _number(
        "Documents per batch", 11, 1000, "Documents fetched per round trip; also the smallest partition."
    ),
    "partition_count": _number(
        "Maximum parallel partitions", 12, 8, "The collection is read in at most this many _id ranges in parallel."
    ),
    "timeout": _number("Connection timeout (seconds)", 13, 10, "How long to wait for the server before giving up."),
}


# -- settings ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MongoSettings:
    """The configuration, typed and checked. ``repr`` shows neither ``password`` nor a URI's password."""

    host: str = dataclasses.field(repr=False)
    user: str
    password: str = dataclasses.field(repr=False)
    database: str
    collection: str
    direct_connection: bool
    ssl_enabled: bool
    ssl_ca: str | None
    tls_insecure: bool
    timestamp_field: str | None
    batch_size: int
    partition_count: int
    timeout: float

    @property
    def address(self) -> str:
        """The host with any password in it masked: safe for messages and logs."""
        return mask_uri(self.host)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        return f"MongoSettings(host={self.address!r}, {shown})"

    @classmethod
    def from_configuration(cls, config: Mapping[str, Any]) -> MongoSettings:
        """Parse every field, collect every problem, raise :class:`SourceConfigError` once."""
        problems: list[str] = []

        def text(name: str, *, required: bool = True) -> str:
            return read_text(config, name, problems, required=required)

        def flag(name: str) -> bool:
            return read_flag(config, name)

        def positive(name: str, default: int) -> int:
            return read_int(config, name, problems, default=default)

        host = text("host")
        scheme = host.partition("://")[0].lower() if "://" in host else None
        if scheme is not None and scheme not in ("mongodb", "mongodb+srv"):
            problems.append(f"host: expected a mongodb:// or mongodb+srv:// URI, got {mask_uri(host)!r}")
        password = config.get("password")
        settings = cls(
            host=host,
            user=text("user", required=False),
            password="" if password is None else str(password),
            database=text("database"),
            collection=text("collection"),
            direct_connection=flag("direct_connection"),
            ssl_enabled=flag("ssl_enabled"),
            ssl_ca=text("ssl_ca", required=False) or None,
            tls_insecure=flag("tls_insecure"),
            timestamp_field=text("timestamp_field", required=False) or None,
            batch_size=positive("batch_size", 1000),
            partition_count=positive("partition_count", 8),
            timeout=float(positive("timeout", 10)),
        )
        if problems:
            raise SourceConfigError("invalid MongoDB configuration: " + "; ".join(problems))
        return settings


# -- the source -------------------------------------------------------------------------
class MongoDataSource(BaseDataSource):
    """The documents of one MongoDB collection; see the module docstring for their shape."""

    name = "MongoDB"
    service_type = "mongodb"
    advanced_rules_enabled = True
    incremental_sync_enabled = True

    def __init__(self, configuration: Any = None, *, operator_settings: Any = None):
        super().__init__(configuration, operator_settings=operator_settings)
        self._settings: MongoSettings | None = None
        self._client: pymongo.MongoClient | None = None
        self._ca = CaFile()

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {name: dict(spec) for name, spec in _CONFIGURATION.items()}

    # -- settings, client and errors -----------------------------------------------------
    def network_endpoints(self) -> list[Endpoint]:
        """The hosts the connection string names (a ``mongodb+srv://`` name itself: the members
        its DNS records and the replica set advertise are the named server's)."""
        from pymongo.uri_parser import split_hosts

        hosts = self.settings.host.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        try:
            return [Endpoint(host, port) for host, port in split_hosts(hosts, default_port=27017)]
        except (pymongo.errors.PyMongoError, ValueError) as exc:
            raise SourceConfigError(f"host: {self._scrub(exc)}") from exc

    @property
    def settings(self) -> MongoSettings:
        if self._settings is None:
            self._settings = MongoSettings.from_configuration(self.configuration)
        return self._settings

    def _ca_file(self) -> str | None:
        """Path of the configured CA (PEM text is written to a private temporary file)."""
        return self._ca.path(self.settings.ssl_ca)

    @property
    def client(self) -> pymongo.MongoClient:
        """The client, opened on first use (it connects lazily, on the first command)."""
        if self._client is None:
            s = self.settings
            options: dict[str, Any] = {
                "appname": _APP_NAME,
                "connect": False,
                "directConnection": s.direct_connection,
                "serverSelectionTimeoutMS": int(s.timeout * 1000),
                "connectTimeoutMS": int(s.timeout * 1000),
                "tz_aware": True,
                "tzinfo": timezone.utc,
                "uuidRepresentation": "standard",
                "datetime_conversion": "DATETIME_AUTO",
            }
            if s.user or s.password:
                options.update(username=s.user, password=s.password)
            if s.ssl_enabled:
                options["tls"] = True
                ca = self._ca_file()
                if ca:
                    options["tlsCAFile"] = ca
                if s.tls_insecure:
                    options["tlsInsecure"] = True
            self._logger.debug("connecting to MongoDB at %s", s.address)
            with self._errors("opening the client"):
                self._client = pymongo.MongoClient(s.host, **options)
        return self._client

    @property
    def _collection(self) -> Any:
        return self.client[self.settings.database][self.settings.collection]

    @property
    def _namespace(self) -> str:
        return f"`{self.settings.database}.{self.settings.collection}`"

    def _scrub(self, message: Any) -> str:
        """``message`` without the password or any credentials of a URI, on one line."""
        text = " ".join(mask_uri(word) if "://" in word else word for word in str(message).split())
        if self._settings is not None:
            for secret in (self._settings.password, _uri_password(self._settings.host)):
                if secret:
                    text = text.replace(secret, "****").replace(quote_plus(secret), "****")
        return text[:500] + (" ..." if len(text) > 500 else "")

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate pymongo's errors raised while ``action`` into :mod:`sources.errors`."""
        try:
            yield
        except SourceError:
            raise
        except pymongo.errors.OperationFailure as exc:
            s = self.settings
            if exc.code == _AUTH_FAILED:
                raise SourceConfigError(
                    f"authentication failed for user `{s.user or '(none)'}` on MongoDB at {s.address}: check the "
                    "user and password (and the URI's authSource when the user is not defined in `admin`)"
                ) from exc
            if exc.code == _UNAUTHORIZED:
                raise SourceConfigError(
                    f"user `{s.user or '(none)'}` is not allowed to {action} on MongoDB at {s.address}: "
                    f"{self._scrub(exc.details.get('errmsg', '') if exc.details else exc)}; give it the `read` "
                    f"role on database `{s.database}`"
                ) from exc
            raise SourceError(f"MongoDB failed while {action}: {self._scrub(exc)}") from exc
        except (pymongo.errors.ServerSelectionTimeoutError, pymongo.errors.ConnectionFailure) as exc:
            raise SourceUnavailable(
                f"cannot reach MongoDB at {self.settings.address} while {action}: {self._scrub(exc)}"
            ) from exc
        except pymongo.errors.ConfigurationError as exc:
            raise SourceConfigError(f"host: {self._scrub(exc)}") from exc
        except pymongo.errors.PyMongoError as exc:
            raise SourceError(f"MongoDB failed while {action}: {self._scrub(exc)}") from exc

    def _server_now(self) -> datetime:
        """The server's clock (the local clock when the server does not say)."""
        with self._errors("reading the server time"):
            value = self.client.admin.command("hello").get("localTime")
        if isinstance(value, datetime):
            return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return datetime.now(timezone.utc)

    # -- lifecycle -----------------------------------------------------------------------
    async def ping(self) -> None:
        with self._errors("pinging the server"):
            self.client.admin.command("ping")

    async def validate_config(self) -> None:
        s = self.settings
        databases: list[str] | None
        with self._errors("list databases"):
            try:
                databases = sorted(self.client.list_database_names())
            except pymongo.errors.OperationFailure as exc:
                if exc.code != _UNAUTHORIZED:
                    raise
                databases = None  # a user restricted to one database may not list them
        if databases is not None and s.database not in databases:
            raise SourceConfigError(
                f"database `{s.database}` does not exist; databases are: {', '.join(databases) or '(none)'}"
            )
        with self._errors(f"list the collections of database `{s.database}`"):
            collections = sorted(self.client[s.database].list_collection_names())
        if s.collection not in collections:
            raise SourceConfigError(
                f"collection `{s.collection}` does not exist in database `{s.database}`; "
                f"collections are: {', '.join(collections) or '(none)'}"
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._ca.remove()

    # -- partitions ----------------------------------------------------------------------
    def get_partitions(self) -> list[Partition]:
        s = self.settings
        if s.timestamp_field:
            self._sync_cursor = timestamp_cursor(self._server_now())
        whole = [Partition(s.collection, {})]
        collection = self._collection
        with self._errors(f"planning the partitions of {self._namespace}"):
            count = collection.estimated_document_count()
            wanted = min(s.partition_count, math.ceil(count / s.batch_size))
            if wanted <= 1:
                return whole
            first = _id_at(collection, pymongo.ASCENDING)
            last = _id_at(collection, pymongo.DESCENDING)
            if first is None or last is None:
                return whole
            families = {_family(first), _family(last)}
            if len(families) != 1 or not families <= _RANGE_FAMILIES:
                self._logger.info(
                    "%s has _id values of types %s: reading it as one partition", self._namespace, sorted(families)
                )
                return whole
            bounds: list[Any] = []
            for i in range(1, wanted):
                found = _id_at(collection, pymongo.ASCENDING, skip=i * count // wanted)
                if found is None:
                    break
                if found != first and (not bounds or found != bounds[-1]):
                    bounds.append(found)
        if not bounds:
            return whole
        lows, highs = [None, *bounds], [*bounds, None]
        return [
            Partition(
                f"{s.collection}[{'' if lo is None else lo}:{'' if hi is None else hi}]",
                {"gte": _encode(lo), "lt": _encode(hi), "index": i, "of": len(lows)},
            )
            for i, (lo, hi) in enumerate(zip(lows, highs))
        ]

    # -- reading -------------------------------------------------------------------------
    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None) -> Iterator[Any]:
        """Every document of the partition (default: the collection), sorted by ``_id``."""
        if partition is None and self.settings.timestamp_field and self._sync_cursor is None:
            self._sync_cursor = timestamp_cursor(self._server_now())
        first = partition is None or not partition.params or partition.params.get("index", 0) == 0
        yield from ((doc, None) for doc in self._read(_advanced_rules(filtering), _range(partition), first))

    def get_docs_incrementally(
        self, sync_cursor: dict[str, Any] | None, filtering: Filter | None = None
    ) -> Iterator[Any]:
        """Documents changed since the cursor as ``(doc, None, "index")``; deletions are not seen.

        Without ``timestamp_field`` (or a usable cursor) every document is sent again;
        aggregation rules are always read whole.
        """
        field = self.settings.timestamp_field
        since = cursor_timestamp(sync_cursor) if field else None
        self._sync_cursor = timestamp_cursor(self._server_now()) if field else None
        if since is None:
            self._logger.warning("incremental sync without a usable cursor: reading every document again")
            changed: dict[str, Any] = {}
        else:
            changed = {"$or": [{field: {"$gte": since - CURSOR_OVERLAP}}, {field: {"$not": {"$type": "date"}}}]}
        yield from ((doc, None, OP_INDEX) for doc in self._read(_advanced_rules(filtering), changed, True))

    def _read(self, rules: Mapping[str, Any], condition: dict[str, Any], first: bool) -> Iterator[Doc]:
        """Stream one query's documents, ``batch_size`` per round trip.

        ``condition`` (an ``_id`` range or a change filter) narrows a ``find``; queries that
        cannot be split (aggregations, ``find`` with skip/limit) run whole when ``first``.
        """
        s = self.settings
        collection = self._collection
        if "aggregate" in rules:
            if not first:
                return
            options = dict(rules["aggregate"])
            pipeline = options.pop("pipeline", None)
            if not isinstance(pipeline, list) or not pipeline:
                raise SourceConfigError("advanced rules: `aggregate.pipeline` must be a non-empty list of stages")
            options.setdefault("batchSize", s.batch_size)
            action = f"running the aggregation rule on {self._namespace}"
            with self._errors(action):
                cursor = collection.aggregate(pipeline, **options)
        else:
            options = dict(rules.get("find") or {})
            query = options.pop("filter", None) or {}
            projection = options.pop("projection", None)
            if "skip" in options or "limit" in options:
                if not first:
                    return
                condition = {} if condition.keys() <= {"_id"} else condition
            if condition:
                query = {"$and": [query, condition]} if query else condition
            options.setdefault("batch_size", s.batch_size)
            action = f"reading {self._namespace}"
            with self._errors(action):
                cursor = collection.find(query, projection, **options).sort("_id", pymongo.ASCENDING)
        with self._errors(action), cursor:
            for raw in cursor:
                yield self._document(raw)

    def _document(self, raw: Mapping[str, Any]) -> Doc:
        doc: Doc = {"_id": document_id(raw["_id"])} if "_id" in raw else {}
        doc.update((key, plain_value(value)) for key, value in raw.items() if key != "_id")
        field = self.settings.timestamp_field
        if field:
            stamp = _lookup(raw, field)
            if isinstance(stamp, datetime):
                stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
                doc["_timestamp"] = stamp.astimezone(timezone.utc).isoformat()
        return doc

    # -- advanced rules ------------------------------------------------------------------
    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        """Problems with a ``{"find": {...}}`` or ``{"aggregate": {...}}`` snippet (empty: valid).

        Checks the shape and option types (no server round trip).
        """
        rules = _snippet_value(advanced_rules)
        if rules in (None, {}):
            return []
        example = '{"find": {"filter": {"status": "active"}}} or {"aggregate": {"pipeline": [{"$match": {}}]}}'
        if not isinstance(rules, Mapping) or len(rules) != 1 or not set(rules) <= {"find", "aggregate"}:
            return [f"advanced rules must be one object with a single key, `find` or `aggregate`, like {example}"]
        kind, body = next(iter(rules.items()))
        allowed = _FIND_OPTIONS if kind == "find" else _AGGREGATE_OPTIONS
        if not isinstance(body, Mapping):
            return [f"`{kind}` must be an object with {', '.join(allowed)}"]
        problems = []
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            problems.append(f"`{kind}`: unknown keys {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        for key, types in allowed.items():
            value = body.get(key)
            if key in body and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
                problems.append(f"`{kind}.{key}` must be {' or '.join(_TYPE_NAMES[t] for t in types)}")
        if kind == "aggregate":
            pipeline = body.get("pipeline")
            if not isinstance(pipeline, list) or not pipeline:
                problems.append("`aggregate.pipeline` must be a non-empty list of stages")
            else:
                for number, stage in enumerate(pipeline, 1):
                    if not (isinstance(stage, Mapping) and len(stage) == 1 and str(next(iter(stage))).startswith("$")):
                        problems.append(f"`aggregate.pipeline` stage {number} must be an object with one `$stage` key")
        else:
            projection = body.get("projection")
            if isinstance(projection, Mapping) and projection.get("_id") in (0, False):
                problems.append("`find.projection` must not exclude `_id`: it identifies the documents")
            for key in ("skip", "limit", "batch_size", "max_time_ms"):
                if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] < 0:
                    problems.append(f"`find.{key}` must not be negative")
        if not problems:
            try:
                _decode_rules(rules)
            except (TypeError, ValueError, BSONError) as exc:
                problems.append(f"invalid MongoDB Extended JSON: {exc}")
        return problems


# -- values -----------------------------------------------------------------------------
def document_id(value: Any) -> str:
    """The string ``_id`` of a MongoDB ``_id`` value (see the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    return json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS)


def plain_value(value: Any) -> Any:
    """A BSON value as a plain Python value (see the module docstring)."""
    if value is None or isinstance(value, (bool, float, Decimal)):
        return value
    if isinstance(value, str):
        return str(value)  # JavaScript Code too: its source text
    if isinstance(value, int):
        return int(value)  # Int64 too
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):  # Binary is a bytes
        return bytes(value)
    if isinstance(value, Timestamp):
        return value.as_datetime()
    if isinstance(value, DatetimeMS):
        return int(value)
    if isinstance(value, Regex):
        return f"/{value.pattern}/{_regex_flags(value.flags)}"
    if isinstance(value, re.Pattern):
        return f"/{value.pattern}/{_regex_flags(value.flags)}"
    if isinstance(value, MinKey):
        return "MinKey"
    if isinstance(value, MaxKey):
        return "MaxKey"
    if isinstance(value, DBRef):
        ref = {"$ref": value.collection, "$id": plain_value(value.id)}
        if value.database:
            ref["$db"] = value.database
        return ref
    return str(value)


def mask_uri(uri: str) -> str:
    """``uri`` with the password of its credentials replaced by ``****``."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@([^@]*)$", uri)
    if not match:
        return uri
    scheme, userinfo, rest = match.groups()
    user, sep, _ = userinfo.partition(":")
    return f"{scheme}{user}{':****' if sep else ''}@{rest}"


def _uri_password(uri: str) -> str:
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://(.*)@[^@]*$", uri)
    return match.group(1).partition(":")[2] if match else ""


_TYPE_NAMES = {dict: "an object", list: "a list", int: "a whole number", bool: "true or false"}
_REGEX_FLAGS = ((re.IGNORECASE, "i"), (re.LOCALE, "l"), (re.MULTILINE, "m"), (re.DOTALL, "s"),
                (re.UNICODE, "u"), (re.VERBOSE, "x"))


def _regex_flags(flags: Any) -> str:
    if isinstance(flags, str):
        return flags
    return "".join(letter for flag, letter in _REGEX_FLAGS if int(flags) & flag)


def _id_at(collection: Any, direction: int, skip: int = 0) -> Any:
    """The ``_id`` at offset ``skip`` of the ``_id`` order (None past the end)."""
    found = collection.find_one({}, {"_id": 1}, sort=[("_id", direction)], skip=skip)
    return None if found is None else found["_id"]


def _family(value: Any) -> str:
    """The type family MongoDB compares ``value`` within."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, Decimal128)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, ObjectId):
        return "objectid"
    if isinstance(value, datetime):
        return "date"
    return type(value).__name__


def _encode(value: Any) -> str | None:
    """A partition bound as canonical Extended JSON (small, picklable, type-exact)."""
    return None if value is None else json_util.dumps({"v": value}, json_options=_JSON_OPTIONS)


def _decode(text: str | None) -> Any:
    return None if text is None else json_util.loads(text, json_options=_JSON_OPTIONS)["v"]


def _range(partition: Partition | None) -> dict[str, Any]:
    """The ``_id`` condition of a partition (empty: no bound)."""
    params = partition.params if partition is not None else {}
    bound: dict[str, Any] = {}
    if params.get("gte") is not None:
        bound["$gte"] = _decode(params["gte"])
    if params.get("lt") is not None:
        bound["$lt"] = _decode(params["lt"])
    return {"_id": bound} if bound else {}


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _snippet_value(snippet: Any) -> Any:
    """The rules, whether given bare or as an advanced snippet object ``{"value": {...}}``."""
    if isinstance(snippet, Mapping) and set(snippet) - {"find", "aggregate"} and "value" in snippet:
        return snippet["value"]
    return snippet


def _decode_rules(rules: Any) -> dict[str, Any]:
    """Rules with their Extended JSON (``{"$oid": ...}``, ``{"$date": ...}``) turned into BSON values."""
    return json_util.loads(json_util.dumps(rules, json_options=_JSON_OPTIONS), json_options=_JSON_OPTIONS)


def _advanced_rules(filtering: Mapping[str, Any] | None) -> dict[str, Any]:
    if not filtering:
        return {}
    rules = _snippet_value(Filter(filtering).get_advanced_rules())
    if not isinstance(rules, Mapping) or not rules:
        return {}
    if not set(rules) <= {"find", "aggregate"} or len(rules) != 1:
        raise SourceConfigError(
            f"advanced rules must have a single key, `find` or `aggregate`; got {', '.join(map(str, rules))}"
        )
    try:
        return _decode_rules(rules)
    except (TypeError, ValueError, BSONError) as exc:
        raise SourceConfigError(f"advanced rules: invalid MongoDB Extended JSON: {exc}") from exc

