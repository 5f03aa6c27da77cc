"""What the object-store sources (S3, Google Cloud Storage, Azure Blob Storage) share.

A bucket is a sorted list of keys, and both services list keys in lexicographic order,
from any key onwards, one page at a time. Everything that follows from that lives here,
once; a backend (:mod:`sources.s3`, :mod:`sources.gcs`) only says how to list, read and
classify errors, by implementing the ``_backend_*`` methods of :class:`ObjectStoreSource`.
Azure calls a bucket a *container* (:attr:`ObjectStoreSource.bucket_term`): its fields,
documents, rules and messages say ``container`` where the others say ``bucket``.

Partitions are key ranges, cut at top-level prefixes::

    bucket "b" with keys  a.txt  docs/1  docs/2  img/x  readme  video/y
    top-level prefixes    docs/  img/  video/   (listing with delimiter "/")
    partitions            (-inf, "docs/"]  ("docs/", "img/"]  ("img/", "video/"]  ("video/", +inf)
                           a.txt            docs/1 docs/2      img/x readme        video/y

Each partition is ``(after, until]``: it holds the keys ``k`` with ``after < k <= until``.
Ranges cut at *any* boundaries cover every key exactly once, so the plan stays exact even
when objects are added under a new prefix between planning and reading (a prefix-list
plan would miss them). Root-level objects simply fall into the range around them. At most
``max_partitions_per_bucket`` ranges are cut per bucket, at evenly spaced prefixes, and a
partition descriptor is four small fields whatever the bucket's size.

Reading a range is one listing from ``after`` (``StartAfter`` / ``startOffset``), stopped
at the first key past ``until``; pages of ``page_size`` keys are fetched on demand, so
memory stays bounded. Advanced sync rules (bucket + key prefix + extensions) are pushed
down as listing prefixes.

Documents (one per object)::

    {"_id": "<bucket>/<key>", "_timestamp": "<last modified, ISO 8601 UTC>",
     "bucket": ..., "key": ..., "filename": "<last path segment>", "extension": ".pdf",
     "size_in_bytes": ..., "content_type": ..., "etag": ..., "url": "s3://bucket/key", ...}

and the lazy download returns ``{"_id", "_timestamp", "_attachment": <base64>}``. It streams
the object into a buffer that refuses more than ``max_file_size`` bytes: bigger objects
(as listed, or grown since) are not downloaded and it returns ``None``. The pipeline
turns ``_attachment`` into ``body`` text; sources never extract text themselves.

Incremental syncs list every object and keep those modified since the previous sync
started (the cursor). Object stores keep no record of deletions, so an incremental sync
cannot see them: deleted objects stay in the index until the next full sync.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import functools
import hashlib
import mimetypes
import posixpath
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, ClassVar

from sources.base import OP_INDEX, BaseDataSource, DataSourceConfiguration, Endpoint, Filter, Partition
from sources.config_values import read_int, read_names
from sources.errors import IngestError, SourceConfigError, SourceError, SourceUnavailable, SyncRulesError
from sources.network import endpoint_of_url

__all__ = [
    "ObjectStoreSource",
    "ObjectStoreSettings",
    "StoredObject",
    "Failure",
    "common_fields",
    "buckets_field",
    "read_common_settings",
    "content_type_of",
    "to_utc",
]

DEFAULT_PAGE_SIZE = 1000
DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_PARTITIONS_PER_BUCKET = 16
ALL_BUCKETS = "*"
_LISTED_BUCKETS_SHOWN = 20
_GENERIC_TYPES = frozenset({"binary/octet-stream", "application/octet-stream"})


@dataclass(frozen=True)
class StoredObject:
    """One object as listed: what a document is made of."""

    bucket: str
    key: str
    size: int | None
    last_modified: datetime  # timezone-aware
    etag: str | None = None
    content_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # backend-specific doc fields


@dataclass(frozen=True)
class ObjectStoreSettings:
    """The settings every object-store source has (backends extend this)."""

    buckets: tuple[str, ...]
    page_size: int = DEFAULT_PAGE_SIZE
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_partitions_per_bucket: int = DEFAULT_MAX_PARTITIONS_PER_BUCKET


class Failure:
    """What went wrong, as a backend classifies a client exception (see ``_backend_classify``)."""

    UNREACHABLE = "unreachable"  # network, DNS, TLS, timeouts: retriable
    CREDENTIALS = "credentials"  # unknown key, bad signature, bad service account
    FORBIDDEN = "forbidden"  # valid credentials without the permission
    NO_BUCKET = "no_bucket"


@dataclass(frozen=True)
class _Rule:
    bucket: str
    prefix: str
    extensions: tuple[str, ...]

    def matches(self, key: str) -> bool:
        return key.startswith(self.prefix) and (
            not self.extensions or key.lower().endswith(self.extensions)
        )


# -- configuration -------------------------------------------------------------------


def buckets_field(tooltip: str, *, term: str = "bucket", order: int = 1) -> dict[str, Any]:
    """The ``<term>s`` field (``buckets``, ``containers``): the names to index, or ``*``."""
    return {
        f"{term}s": {
            "label": f"{term.capitalize()}s",
            "order": order,
            "type": "list",
            "display": "textarea",
            "tooltip": tooltip + f" Use * for every {term} the credentials can list.",
        }
    }


def common_fields(first_order: int, *, term: str = "bucket", max_page_size: int = 1000) -> dict[str, dict[str, Any]]:
    """Listing, size and partition fields, numbered from ``first_order``."""
    fields = {
        "page_size": {
            "label": "Objects per listing page",
            "type": "int",
            "display": "numeric",
            "default_value": DEFAULT_PAGE_SIZE,
            "required": False,
            "tooltip": f"How many objects each listing request returns (1 to {max_page_size}).",
        },
        "max_file_size": {
            "label": "Maximum file size (bytes)",
            "type": "int",
            "display": "numeric",
            "default_value": DEFAULT_MAX_FILE_SIZE,
            "required": False,
            "tooltip": "Larger objects are indexed without their content.",
        },
        f"max_partitions_per_{term}": {
            "label": f"Maximum partitions per {term}",
            "type": "int",
            "display": "numeric",
            "default_value": DEFAULT_MAX_PARTITIONS_PER_BUCKET,
            "required": False,
            "tooltip": f"A {term} is split at its top-level prefixes into at most this many key "
            f"ranges, read in parallel. 1 reads each {term} as a whole.",
        },
    }
    for order, spec in enumerate(fields.values(), start=first_order):
        spec["order"] = order
    return fields


def read_common_settings(config: DataSourceConfiguration, problems: list[str], *, term: str = "bucket",
                         max_page_size: int = 1000) -> dict[str, Any]:
    """The common settings as keyword arguments; appends ``"<field>: <problem>"`` to ``problems``."""
    buckets = read_names(config, f"{term}s")
    if not buckets:
        problems.append(f"{term}s: name at least one {term}, or * for all")
    return {
        "buckets": buckets,
        "page_size": read_int(config, "page_size", problems, minimum=1, maximum=max_page_size),
        "max_file_size": read_int(config, "max_file_size", problems, minimum=1),
        "max_partitions_per_bucket": read_int(config, f"max_partitions_per_{term}", problems, minimum=1),
    }


def content_type_of(key: str, declared: str | None) -> str | None:
    """The declared content type, or one guessed from the key when none (or a generic one) was declared."""
    if declared and declared not in _GENERIC_TYPES:
        return declared
    return mimetypes.guess_type(key)[0]


def to_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- the source ----------------------------------------------------------------------


class ObjectStoreSource(BaseDataSource):
    """Objects of one or more buckets as documents; a backend implements ``_backend_*``.

    Advanced sync rules: a list of ``{"bucket": str, "prefix": str, "extension": [str]}``
    (``prefix`` and ``extension`` optional; the first key is :attr:`bucket_term`,
    ``"container"`` for Azure). With rules, only the objects of the named buckets
    matching at least one rule are synced; without, every object of every configured bucket.
    """

    advanced_rules_enabled = True
    incremental_sync_enabled = True

    #: URL scheme of object URLs, e.g. "s3" (see :meth:`_object_url`).
    url_scheme: ClassVar[str]
    #: What the service calls a bucket: names the configuration field (``<term>s``), the
    #: documents' field, the advanced rules' key and the messages.
    bucket_term: ClassVar[str] = "bucket"
    #: The most objects one listing request may return (bounds ``page_size``).
    max_page_size: ClassVar[int] = 1000
    #: The configuration fields to check when credentials are rejected, for messages.
    credential_fields: ClassVar[str]
    #: The configuration field naming the server, for messages.
    endpoint_field: ClassVar[str]

    def __init__(self, configuration: Any = None, *, operator_settings: Any = None):
        super().__init__(configuration, operator_settings=operator_settings)
        self._clock: Callable[[], datetime] = _utcnow  # tests may replace it
        self._client: Any = None  # opened on first use, by any thread (lazy downloads may run in threads)
        self._client_lock = threading.Lock()

    # -- what a backend implements ---------------------------------------------------
    @abc.abstractmethod
    def _backend_settings(self, common: dict[str, Any], problems: list[str]) -> ObjectStoreSettings:
        """Read the backend's own fields from ``self.configuration``; append problems."""

    @abc.abstractmethod
    def _backend_connect(self) -> Any:
        """A new client (with a ``close()`` method) built from ``self.settings``."""

    @abc.abstractmethod
    def _backend_endpoint(self) -> str:
        """Where requests go, for messages (never with credentials)."""

    @abc.abstractmethod
    def _backend_url(self) -> str:
        """The URL requests go to (the configured endpoint, else the service's own)."""

    def network_endpoints(self) -> list[Endpoint]:
        return [Endpoint(*endpoint_of_url(self._backend_url()))]

    @abc.abstractmethod
    def _backend_buckets(self) -> list[str]:
        """Every bucket the credentials can list."""

    @abc.abstractmethod
    def _backend_check_bucket(self, bucket: str) -> bool:
        """False when ``bucket`` does not exist; raise on any other problem. One cheap request."""

    @abc.abstractmethod
    def _backend_list(
        self, bucket: str, *, prefix: str = "", start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[StoredObject | str]:
        """Objects of ``bucket`` under ``prefix`` in key order, ``page_size`` per request.

        Start at the first key > ``start_after`` (a backend whose API includes the start key
        may yield it: callers skip it). With a delimiter, also yield the common prefixes (str).
        """

    @abc.abstractmethod
    def _backend_read(self, obj: StoredObject, sink: BinaryIO) -> dict[str, Any] | None:
        """Stream ``obj``'s content into ``sink.write`` and return doc fields the read revealed.

        Return None when the object no longer exists. ``sink.write`` raises once the content
        passes ``max_file_size``: let that exception through, it ends the download.
        """

    @abc.abstractmethod
    def _backend_classify(self, exc: BaseException) -> tuple[str, str] | None:
        """``(Failure.*, short detail without secrets)`` for a client exception, None if unknown."""

    # -- settings --------------------------------------------------------------------
    @functools.cached_property
    def settings(self) -> ObjectStoreSettings:
        """The parsed configuration; raises SourceConfigError listing every problem."""
        problems: list[str] = []
        common = read_common_settings(self.configuration, problems, term=self.bucket_term,
                                      max_page_size=self.max_page_size)
        settings = self._backend_settings(common, problems)
        if problems:
            raise SourceConfigError(
                f"{self.name}: the configuration is invalid:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        return settings

    # -- lifecycle -------------------------------------------------------------------
    async def validate_config(self) -> None:
        self.settings  # noqa: B018 - parse, raising on invalid values
        await self.ping()

    async def ping(self) -> None:
        """Reach the server, check the credentials and that every configured bucket exists."""
        await asyncio.to_thread(self._check_buckets)

    async def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def _api(self) -> Any:
        """The client, opened on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._backend_connect()
            return self._client

    def _check_buckets(self) -> None:
        configured = self.settings.buckets
        if ALL_BUCKETS in configured:
            with self._translated(f"list {self.bucket_term}s"):
                self._backend_buckets()
            return
        missing = []
        for bucket in configured:
            with self._translated(f"read {self.bucket_term} `{bucket}`", bucket=bucket):
                if not self._backend_check_bucket(bucket):
                    missing.append(bucket)
        if missing:
            raise SourceConfigError(self._missing_buckets_message(missing))

    # -- planning --------------------------------------------------------------------
    def get_partitions(self) -> list[Partition]:
        self._start_sync()
        partitions = []
        for bucket in self._buckets():
            bounds = self._cut_points(bucket)
            for after, until in zip([None, *bounds], [*bounds, None]):
                key = f"{bucket}:({after or '-inf'}, {until or '+inf'}]"
                partitions.append(Partition(key, {"bucket": bucket, "after": after, "until": until}))
        return partitions

    def _cut_points(self, bucket: str) -> list[str]:
        wanted = self.settings.max_partitions_per_bucket
        if wanted <= 1:
            return []
        with self._translated(f"list the prefixes of {self.bucket_term} `{bucket}`", bucket=bucket):
            prefixes = sorted(p for p in self._backend_list(bucket, delimiter="/") if isinstance(p, str))
        if len(prefixes) < wanted:
            return prefixes
        # wanted - 1 evenly spaced prefixes make wanted ranges.
        return sorted({prefixes[len(prefixes) * i // wanted] for i in range(1, wanted)})

    def _buckets(self) -> list[str]:
        configured = self.settings.buckets
        if ALL_BUCKETS not in configured:
            return list(configured)
        with self._translated(f"list {self.bucket_term}s"):
            return sorted(self._backend_buckets())

    def _start_sync(self) -> None:
        """Remember when this sync started: the next incremental sync reads changes since then."""
        if self._sync_cursor is None:
            self._sync_cursor = {"modified_since": self._clock().isoformat()}

    # -- reading ---------------------------------------------------------------------
    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None):
        """Yield ``(doc, lazy_download)`` for every object of ``partition`` (default: all buckets)."""
        self._start_sync()
        rules = self._rules(filtering)
        params = partition.params if partition is not None else {}
        if "bucket" in params:
            ranges = [(params["bucket"], params.get("after"), params.get("until"))]
        else:
            ranges = [(bucket, None, None) for bucket in self._buckets()]
        for bucket, after, until in ranges:
            for obj in self._objects(bucket, after, until, rules):
                yield self._doc(obj), functools.partial(self._download, obj)

    def get_docs_incrementally(self, sync_cursor: dict[str, Any] | None, filtering: Filter | None = None):
        """Yield ``(doc, lazy_download, "index")`` for objects modified since the last sync started.

        Deleted objects are not seen (object stores keep no tombstones): they are removed
        from the index by the next full sync. Without a cursor, every object is yielded.
        """
        since = _read_cursor(sync_cursor)
        self._sync_cursor = None
        self._start_sync()
        rules = self._rules(filtering)
        for bucket in self._buckets():
            for obj in self._objects(bucket, None, None, rules, since=since):
                yield self._doc(obj), functools.partial(self._download, obj), OP_INDEX

    def _objects(
        self,
        bucket: str,
        after: str | None,
        until: str | None,
        rules: dict[str, list[_Rule]] | None,
        since: datetime | None = None,
    ) -> Iterator[StoredObject]:
        if rules is None:
            prefixes, wanted = [""], None
        else:
            bucket_rules = rules.get(bucket, [])
            prefixes = _outermost([rule.prefix for rule in bucket_rules])
            wanted = bucket_rules
        for prefix in prefixes:
            if until is not None and prefix > until:
                continue  # every key under it sorts after the range
            with self._translated(f"list {self.bucket_term} `{bucket}`", bucket=bucket):
                for obj in self._backend_list(bucket, prefix=prefix, start_after=after):
                    if isinstance(obj, str):
                        continue
                    if after is not None and obj.key <= after:
                        continue
                    if until is not None and obj.key > until:
                        break  # keys come in order: the rest is another partition's
                    if wanted is not None and not any(rule.matches(obj.key) for rule in wanted):
                        continue
                    # Listings have one-second precision on some servers (S3): compare by second
                    # so a change made in the second the last sync started is not missed.
                    if since is not None and obj.last_modified.replace(microsecond=0) < since.replace(microsecond=0):
                        continue
                    yield obj

    def _doc(self, obj: StoredObject) -> dict[str, Any]:
        filename = posixpath.basename(obj.key.rstrip("/")) or obj.key
        timestamp = to_utc(obj.last_modified).isoformat()
        # Listings give last-modified times to the second: an object rewritten in the second a
        # sync read it would look unchanged by time alone. With an etag, full syncs compare the
        # etag and the time (docs/source-contract.md, `_content_digest`).
        compared = {"_content_digest": hashlib.blake2b(f"{obj.etag}|{timestamp}".encode(), digest_size=8).hexdigest()
                    } if obj.etag else {}
        return {
            "_id": f"{obj.bucket}/{obj.key}",
            "_timestamp": timestamp,
            **compared,
            self.bucket_term: obj.bucket,
            "key": obj.key,
            "filename": filename,
            "extension": posixpath.splitext(filename)[1].lower(),
            "size_in_bytes": obj.size,
            "content_type": obj.content_type,
            "etag": obj.etag,
            "url": self._object_url(obj),
            **obj.extra,
        }

    def _object_url(self, obj: StoredObject) -> str:
        """Where the object is, for people: ``<url_scheme>://<bucket>/<key>`` unless a backend says otherwise."""
        return f"{self.url_scheme}://{obj.bucket}/{obj.key}"

    def _download(self, obj: StoredObject, doit: bool = False, timestamp: str | None = None) -> dict[str, Any] | None:
        """The lazy download: ``_attachment`` (base64), or None when not wanted or too big."""
        if not doit:
            return None
        limit = self.settings.max_file_size
        url = self._object_url(obj)
        if obj.size is not None and obj.size > limit:
            self._logger.debug("not downloading %s: %s bytes is over max_file_size (%s)", url, obj.size, limit)
            return None
        sink = _LimitedBuffer(limit)
        try:
            with self._translated(f"download {url}", bucket=obj.bucket):
                fields = self._backend_read(obj, sink)  # type: ignore[arg-type]
        except _TooBig:  # grew since it was listed
            self._logger.debug("not downloading %s: over max_file_size (%s bytes)", url, limit)
            return None
        if fields is None:
            self._logger.warning("not downloading %s: it was deleted after it was listed", url)
            return None
        return {
            "_id": f"{obj.bucket}/{obj.key}",
            "_timestamp": to_utc(obj.last_modified).isoformat(),
            "_attachment": base64.b64encode(sink.content).decode("ascii"),
            **fields,
        }

    # -- advanced sync rules ---------------------------------------------------------
    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        return _parse_rules(_snippet(advanced_rules), self.configuration.get(f"{self.bucket_term}s"),
                            self.bucket_term)[1]

    def _rules(self, filtering: Filter | None) -> dict[str, list[_Rule]] | None:
        """Rules by bucket, or None when every object is wanted."""
        if filtering is None or not filtering.has_advanced_rules():
            return None
        snippet = _snippet(filtering.get_advanced_rules())
        if not snippet:
            return None
        rules, problems = _parse_rules(snippet, self.settings.buckets, self.bucket_term)
        if problems:
            raise SyncRulesError(f"{self.name}: invalid advanced sync rules: " + "; ".join(problems))
        by_bucket: dict[str, list[_Rule]] = {}
        for rule in rules:
            by_bucket.setdefault(rule.bucket, []).append(rule)
        return by_bucket

    # -- errors ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _translated(self, action: str, bucket: str | None = None) -> Iterator[None]:
        """Turn client exceptions into our errors, with what to do and without secrets."""
        try:
            yield
        except (IngestError, _TooBig):
            raise
        except Exception as exc:
            classified = self._backend_classify(exc)
            if classified is None:
                raise SourceError(f"{self.name}: could not {action}: {type(exc).__name__}: {exc}") from exc
            failure, detail = classified
            raise self._error(failure, detail, action, bucket) from exc

    def _error(self, failure: str, detail: str, action: str, bucket: str | None) -> IngestError:
        where = self._backend_endpoint()
        if failure == Failure.UNREACHABLE:
            return SourceUnavailable(
                f"{self.name}: cannot reach {where} to {action} ({detail}); "
                f"check `{self.endpoint_field}` and that the server is running and reachable"
            )
        if failure == Failure.CREDENTIALS:
            return SourceConfigError(
                f"{self.name}: the credentials were rejected ({detail}); check {self.credential_fields}"
            )
        if failure == Failure.NO_BUCKET and bucket is not None:
            return SourceConfigError(self._missing_buckets_message([bucket]))
        if failure == Failure.FORBIDDEN:
            target = f"{self.bucket_term} `{bucket}`" if bucket else f"the {self.bucket_term}s"
            return SourceConfigError(
                f"{self.name}: the credentials may not {action} ({detail}); grant them list and "
                f"read access to {target}"
            )
        return SourceError(f"{self.name}: could not {action} ({detail})")

    def _missing_buckets_message(self, missing: list[str]) -> str:
        names = ", ".join(f"`{bucket}`" for bucket in missing)
        verb = "does not exist" if len(missing) == 1 else "do not exist"
        term = self.bucket_term
        try:
            existing = sorted(self._backend_buckets())
        except Exception as exc:  # the listing is a courtesy; the missing bucket is the news
            self._logger.debug("cannot list %ss for the message: %s", term, type(exc).__name__)
            return f"{self.name}: {term} {names} {verb} (and these credentials cannot list {term}s)"
        if not existing:
            return f"{self.name}: {term} {names} {verb}; there are no {term}s at {self._backend_endpoint()}"
        shown = ", ".join(existing[:_LISTED_BUCKETS_SHOWN])
        if len(existing) > _LISTED_BUCKETS_SHOWN:
            shown += f" and {len(existing) - _LISTED_BUCKETS_SHOWN} more"
        return f"{self.name}: {term} {names} {verb}; {term}s are: {shown}"


# -- helpers ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _TooBig(Exception):
    """Raised by :class:`_LimitedBuffer` to stop a download; never leaves this module."""


class _LimitedBuffer:
    """A write-only file that holds at most ``limit`` bytes, then refuses (raises _TooBig)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.content = bytearray()

    def write(self, chunk: bytes) -> int:
        self.content += chunk
        if len(self.content) > self.limit:
            raise _TooBig()
        return len(chunk)


def _snippet(advanced_rules: Any) -> Any:
    """The rules list, from the list itself or an ``advanced_snippet`` (``{"value": [...]}``)."""
    if isinstance(advanced_rules, Mapping) and set(advanced_rules) == {"value"}:
        return advanced_rules["value"]
    return advanced_rules


def _parse_rules(snippet: Any, configured_buckets: Any, term: str = "bucket") -> tuple[list[_Rule], list[str]]:
    if snippet in (None, {}, []):
        return [], []
    if not isinstance(snippet, list):
        return [], [
            f'advanced rules must be a list like [{{"{term}": "b", "prefix": "docs/", "extension": [".pdf"]}}], '
            f"got {type(snippet).__name__}"
        ]
    allowed = frozenset({term, "prefix", "extension"})
    if isinstance(configured_buckets, str):
        configured_buckets = configured_buckets.split(",")
    configured = {str(b).strip() for b in configured_buckets or []}
    rules, problems = [], []
    for number, item in enumerate(snippet, start=1):
        where = f"rule {number}"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must be an object, got {type(item).__name__}")
            continue
        unknown = sorted(set(item) - allowed)
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)} (allowed: {term}, prefix, extension)")
        bucket, prefix, extensions = item.get(term), item.get("prefix", ""), item.get("extension", [])
        if not isinstance(bucket, str) or not bucket.strip():
            problems.append(f"{where}: `{term}` must be a {term} name")
        elif configured and ALL_BUCKETS not in configured and bucket not in configured:
            problems.append(f"{where}: {term} `{bucket}` is not one of the configured {term}s")
        if not isinstance(prefix, str):
            problems.append(f"{where}: `prefix` must be a string")
        if isinstance(extensions, str):
            extensions = [extensions]
        if not isinstance(extensions, list) or not all(isinstance(e, str) and e.strip(".") for e in extensions):
            problems.append(f"{where}: `extension` must be a list of extensions like [\".pdf\", \".txt\"]")
            continue
        if isinstance(bucket, str) and isinstance(prefix, str):
            normalized = tuple("." + e.strip().lstrip(".").lower() for e in extensions)
            rules.append(_Rule(bucket.strip(), prefix, normalized))
    return rules, problems


def _outermost(prefixes: list[str]) -> list[str]:
    """The prefixes not under another one: listing them finds each key once."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept


def _read_cursor(sync_cursor: Mapping[str, Any] | None) -> datetime | None:
    if not sync_cursor or not sync_cursor.get("modified_since"):
        return None
    try:
        return to_utc(datetime.fromisoformat(str(sync_cursor["modified_since"])))
    except ValueError as exc:
        raise SourceError(f"the sync cursor is unreadable ({sync_cursor!r}); run a full sync") from exc

