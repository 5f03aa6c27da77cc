"""The Azure Blob Storage source: blobs of Azure storage containers as documents.

Listing, partitioning (key ranges cut at top-level prefixes), the document shape, the size
limit, advanced sync rules and incremental syncs are shared with the S3 and Google Cloud
Storage sources and explained in :mod:`sources._object_store`, where Azure's *container*
is a bucket; this module is the azure-storage-blob side. The configuration is that of
Elastic's ``azure_blob_storage`` connector (``account_name``, ``account_key``,
``blob_endpoint``, ``containers``, ``retry_count``, ``concurrent_downloads``) plus the
listing, size and partition fields every object-store source has.

Requests are signed with the account's shared key. A key-range partition starts its
listing at its first key with List Blobs' ``startFrom`` (service version 2026-02-06; Azurite
3.37+); a server that ignores the parameter lists from the container's start instead, and
the keys before the range are skipped, so the documents are the same, only slower.

Example usage::

    from sources.azure_blob import AzureBlobStorageDataSource
    from sources.testing import read_all

    source = AzureBlobStorageDataSource({
        "account_name": "contosodocs",
        "account_key": "<base64 key from the portal's Access keys>",
        "containers": ["reports"],
    })
    docs = read_all(source)  # [{"_id": "reports/2026/q3.pdf", "container": "reports", "_attachment": "JVBERi0x...", ...}]

An incremental sync sees new and changed blobs, not deletions (see the shared module).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sources._object_store import (
    Failure,
    ObjectStoreSettings,
    ObjectStoreSource,
    StoredObject,
    buckets_field,
    common_fields,
    content_type_of,
    to_utc,
)
from sources.config_values import read_int, read_text, read_url

__all__ = ["AzureBlobStorageDataSource", "DEFAULT_RETRY_COUNT", "MAX_CONCURRENT_DOWNLOADS"]

DEFAULT_RETRY_COUNT = 3
#: Elastic's limit (and default) for ``concurrent_downloads``.
MAX_CONCURRENT_DOWNLOADS = 100
_MAX_PAGE_SIZE = 5000  # List Blobs' maxresults limit
_CHUNK = 4 * 1024 * 1024  # GETs of 4 MiB: a blob that grew past max_file_size is dropped within 4 MiB of it
_ARCHIVE = "Archive"
#: Error codes of a key the service does not accept (Azurite answers AuthorizationFailure
#: with the message of AuthenticationFailed; real Azure's AuthorizationFailure is a refusal).
_CREDENTIAL_CODES = frozenset({"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"})
_AUTHENTICATION_MESSAGE = "failed to authenticate the request"
_RETRIABLE_CODES = frozenset({"ServerBusy", "InternalError", "OperationTimedOut"})

# Every request is logged at INFO by azure-core's HTTP logging policy: one line per listing
# page and per download would drown the sync's own log. Warnings still get through.
if logging.getLogger("azure.core.pipeline.policies.http_logging_policy").level == logging.NOTSET:
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


@dataclass(frozen=True)
class _AzureSettings(ObjectStoreSettings):
    account_name: str = ""
    account_key: str = field(default="", repr=False)
    blob_endpoint: str | None = None
    retry_count: int = DEFAULT_RETRY_COUNT
    concurrent_downloads: int = MAX_CONCURRENT_DOWNLOADS

    @property
    def account_url(self) -> str:
        return self.blob_endpoint or f"https://{self.account_name}.blob.core.windows.net"


class AzureBlobStorageDataSource(ObjectStoreSource):
    """Azure Blob Storage (and Azurite through ``blob_endpoint``)."""

    name = "Azure Blob Storage"
    service_type = "azure_blob_storage"
    url_scheme = "https"
    bucket_term = "container"
    max_page_size = _MAX_PAGE_SIZE
    credential_fields = "`account_name` and `account_key`"
    endpoint_field = "blob_endpoint"

    def __init__(self, configuration: Any = None, *, operator_settings: Any = None):
        super().__init__(configuration, operator_settings=operator_settings)
        self._downloads: threading.BoundedSemaphore | None = None  # made with the client

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            "account_name": {
                "label": "Azure Blob Storage account name",
                "order": 1,
                "tooltip": "The storage account, e.g. contosodocs (devstoreaccount1 on Azurite).",
            },
            "account_key": {
                "label": "Azure Blob Storage account key",
                "order": 2,
                "sensitive": True,
                "tooltip": "One of the account's access keys (base64), from the portal's Access keys.",
            },
            "blob_endpoint": {
                "label": "Azure Blob Storage blob endpoint",
                "order": 3,
                "required": False,
                "tooltip": "Empty means https://{account_name}.blob.core.windows.net; for Azurite, "
                "e.g. http://127.0.0.1:10000/devstoreaccount1.",
            },
            **buckets_field("Names of the containers to index.", term="container", order=4),
            "retry_count": {
                "label": "Retries per request",
                "order": 5,
                "type": "int",
                "display": "numeric",
                "default_value": DEFAULT_RETRY_COUNT,
                "required": False,
                "ui_restrictions": ["advanced"],
                "tooltip": "Failed requests (network errors, throttling, server errors) are retried "
                "this many times with backoff; 0 disables retries.",
            },
            "concurrent_downloads": {
                "label": "Maximum concurrent downloads",
                "order": 6,
                "type": "int",
                "display": "numeric",
                "default_value": MAX_CONCURRENT_DOWNLOADS,
                "required": False,
                "ui_restrictions": ["advanced"],
                "validations": [{"type": "less_than", "constraint": MAX_CONCURRENT_DOWNLOADS + 1}],
                "tooltip": f"At most this many blobs are downloaded at once by each worker (1 to "
                f"{MAX_CONCURRENT_DOWNLOADS}; the service's pipeline.download_concurrency bounds it too).",
            },
            **common_fields(first_order=7, term="container", max_page_size=_MAX_PAGE_SIZE),
        }

    # -- backend ---------------------------------------------------------------------
    def _backend_settings(self, common: dict[str, Any], problems: list[str]) -> _AzureSettings:
        config = self.configuration
        account_name = read_text(config, "account_name", problems)
        if account_name and any(c.isspace() or c in "/;:" for c in account_name):
            problems.append("account_name: expected the storage account's name (letters and digits), "
                            f"got {account_name!r}")
        account_key = read_text(config, "account_key", problems)
        if account_key:
            try:
                base64.b64decode(account_key, validate=True)
            except (binascii.Error, ValueError):
                # Never the value: it is a secret, and a near miss of one.
                problems.append("account_key: not a base64 access key; copy key1 or key2 from the "
                                "storage account's Access keys")
        return _AzureSettings(
            **common,
            account_name=account_name,
            account_key=account_key,
            blob_endpoint=read_url(config, "blob_endpoint", problems),
            retry_count=read_int(config, "retry_count", problems, minimum=0),
            concurrent_downloads=read_int(config, "concurrent_downloads", problems, minimum=1,
                                          maximum=MAX_CONCURRENT_DOWNLOADS),
        )

    @property
    def _azure(self) -> _AzureSettings:
        return self.settings  # type: ignore[return-value]

    def _backend_connect(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        settings = self._azure
        self._downloads = threading.BoundedSemaphore(settings.concurrent_downloads)
        return BlobServiceClient(
            settings.account_url,
            credential={"account_name": settings.account_name, "account_key": settings.account_key},
            retry_total=settings.retry_count,
            connection_timeout=20,
            read_timeout=60,
            max_single_get_size=_CHUNK,
            max_chunk_get_size=_CHUNK,
        )

    def _backend_endpoint(self) -> str:
        return self._azure.account_url

    def _backend_url(self) -> str:
        return self._azure.account_url

    def _object_url(self, obj: StoredObject) -> str:
        return f"{self._azure.account_url}/{obj.bucket}/{urllib.parse.quote(obj.key)}"

    def _backend_buckets(self) -> list[str]:
        return [container.name for container in self._api.list_containers()]

    def _backend_check_bucket(self, bucket: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            next(self._api.get_container_client(bucket).list_blobs(results_per_page=1).by_page(), None)
        except ResourceNotFoundError as exc:
            if _error_code(exc) == "ContainerNotFound":
                return False
            raise
        return True

    def _backend_list(
        self, bucket: str, *, prefix: str = "", start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[StoredObject | str]:
        container = self._api.get_container_client(bucket)
        options: dict[str, Any] = {"name_starts_with": prefix or None, "results_per_page": self.settings.page_size}
        if start_after:
            options["start_from"] = start_after  # inclusive: the caller skips the start key itself
        if delimiter:
            listing = container.walk_blobs(delimiter=delimiter, **options)
        else:
            listing = container.list_blobs(include=["metadata"], **options)
        for item in listing:
            if not hasattr(item, "size"):  # a BlobPrefix of a walk
                yield item.name
                continue
            metadata = dict(item.metadata or {})
            if metadata.get("hdi_isfolder", "").lower() == "true":
                continue  # a folder of a hierarchical-namespace account: no content of its own
            created = item.creation_time
            yield StoredObject(
                bucket=bucket,
                key=item.name,
                size=item.size,
                last_modified=item.last_modified,
                etag=(item.etag or "").strip('"') or None,
                content_type=content_type_of(item.name, item.content_settings.content_type),
                extra={
                    "blob_type": str(item.blob_type.value if hasattr(item.blob_type, "value") else item.blob_type),
                    "tier": item.blob_tier,
                    "created_at": to_utc(created).isoformat() if created else None,
                    "metadata": metadata,
                },
            )

    def _download(self, obj: StoredObject, doit: bool = False, timestamp: str | None = None) -> dict[str, Any] | None:
        if doit and obj.extra.get("tier") == _ARCHIVE:
            # Archived blobs must be rehydrated before they can be read: indexed without content.
            self._logger.debug("not downloading %s: its access tier is Archive", self._object_url(obj))
            return None
        return super()._download(obj, doit, timestamp)

    def _backend_read(self, obj: StoredObject, sink: BinaryIO) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        client = self._api  # opens the client (and the download semaphore) when needed
        assert self._downloads is not None
        with self._downloads:
            try:
                stream = client.get_blob_client(obj.bucket, obj.key).download_blob(max_concurrency=1)
            except ResourceNotFoundError as exc:
                if _error_code(exc) == "BlobNotFound":
                    return None
                raise
            for chunk in stream.chunks():
                sink.write(chunk)
        return {}

    def _backend_classify(self, exc: BaseException) -> tuple[str, str] | None:
        from azure.core import exceptions as azure

        if isinstance(exc, (azure.ServiceRequestError, azure.ServiceResponseError)):
            return Failure.UNREACHABLE, type(exc).__name__
        if not isinstance(exc, azure.HttpResponseError):
            return None
        code = _error_code(exc) or ""
        status = exc.status_code
        detail = f"{status} {code}".strip()
        if code in _CREDENTIAL_CODES or (
            status == 403 and code == "AuthorizationFailure" and _AUTHENTICATION_MESSAGE in str(exc.message or "")
        ):
            return Failure.CREDENTIALS, detail
        if code == "ContainerNotFound":
            return Failure.NO_BUCKET, detail
        if status == 403 or code.startswith("Authorization"):
            return Failure.FORBIDDEN, detail
        if code in _RETRIABLE_CODES or (status is not None and status >= 500):
            return Failure.UNREACHABLE, detail
        return None


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))
