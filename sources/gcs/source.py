"""The Google Cloud Storage source: objects of GCS buckets as documents.

Listing, partitioning (key ranges cut at top-level prefixes), the document shape, the size
limit, advanced sync rules and incremental syncs are shared with the S3 source and
explained in :mod:`sources._object_store`; this module is the google-cloud-storage side.

Credentials, in order: the service account key in ``service_account_credentials`` (the
JSON file's content); else, when an endpoint is set (``endpoint`` or the
``STORAGE_EMULATOR_HOST`` environment variable, e.g. fake-gcs-server), anonymous access;
else the service's application default credentials.

Example usage::

    from sources.gcs import GoogleCloudStorageDataSource
    from sources.testing import read_all

    source = GoogleCloudStorageDataSource({
        "buckets": ["reports"],
        "service_account_credentials": open("key.json").read(),
    })
    docs = read_all(source)  # [{"_id": "reports/2024/q1.pdf", "_attachment": "JVBERi0x...", ...}]

An incremental sync sees new and changed objects, not deletions (see the shared module).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sources.config_values import read_int, read_url
from sources._object_store import (
    Failure,
    ObjectStoreSettings,
    ObjectStoreSource,
    StoredObject,
    buckets_field,
    common_fields,
)

__all__ = ["GoogleCloudStorageDataSource"]

_READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_SERVICE_ACCOUNT_KEYS = ("type", "client_email", "private_key", "token_uri")


@dataclass(frozen=True)
class _GcsSettings(ObjectStoreSettings):
    service_account_info: dict[str, Any] | None = field(default=None, repr=False)
    project_id: str | None = None
    endpoint: str | None = None
    timeout: int = 60
    retry_timeout: int = 120


class GoogleCloudStorageDataSource(ObjectStoreSource):
    """Google Cloud Storage (and emulators through ``endpoint`` / ``STORAGE_EMULATOR_HOST``)."""

    name = "Google Cloud Storage"
    service_type = "google_cloud_storage"
    url_scheme = "gs"
    credential_fields = "`service_account_credentials`"
    endpoint_field = "endpoint"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            **buckets_field("Names of the buckets to index."),
            "service_account_credentials": {
                "label": "Google Cloud service account JSON",
                "order": 2,
                "display": "textarea",
                "required": False,
                "sensitive": True,
                "tooltip": "The content of a service account key file. Leave empty to use the "
                "service's application default credentials (or anonymous access with an endpoint).",
            },
            "project_id": {
                "label": "Project ID",
                "order": 3,
                "required": False,
                "tooltip": "Needed to list buckets (buckets: *); defaults to the service account's project.",
            },
            "endpoint": {
                "label": "API endpoint",
                "order": 4,
                "required": False,
                "tooltip": "Only for emulators, e.g. http://127.0.0.1:4443. Empty means Google, "
                f"or ${_EMULATOR_ENV} when that environment variable is set.",
            },
            "timeout": {
                "label": "Request timeout (seconds)",
                "order": 5,
                "type": "int",
                "display": "numeric",
                "default_value": 60,
                "required": False,
                "tooltip": "How long to wait for each answer of Cloud Storage.",
            },
            "retry_timeout": {
                "label": "Retry for at most (seconds)",
                "order": 6,
                "type": "int",
                "display": "numeric",
                "default_value": 120,
                "required": False,
                "tooltip": "Failed requests are retried with backoff for this long; 0 disables retries.",
            },
            **common_fields(first_order=7),
        }

    # -- backend ---------------------------------------------------------------------
    def _backend_settings(self, common: dict[str, Any], problems: list[str]) -> _GcsSettings:
        config = self.configuration
        info = _service_account_info(config.get("service_account_credentials"), problems)
        endpoint = read_url(config, "endpoint", problems, fallback=os.environ.get(_EMULATOR_ENV, ""))
        return _GcsSettings(
            **common,
            service_account_info=info,
            project_id=str(config.get("project_id") or "").strip() or (info or {}).get("project_id"),
            endpoint=endpoint,
            timeout=read_int(config, "timeout", problems, minimum=1),
            retry_timeout=read_int(config, "retry_timeout", problems, minimum=0),
        )

    def _backend_connect(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        from google.oauth2 import service_account

        settings: _GcsSettings = self.settings  # type: ignore[assignment]
        project = settings.project_id
        if settings.service_account_info is not None:
            credentials = service_account.Credentials.from_service_account_info(
                settings.service_account_info, scopes=[_READ_ONLY_SCOPE]
            )
        elif settings.endpoint:
            credentials, project = AnonymousCredentials(), project or "<none>"
        else:
            credentials = None  # application default credentials
        options = {"api_endpoint": settings.endpoint} if settings.endpoint else None
        return storage.Client(project=project, credentials=credentials, client_options=options)

    @property
    def _calls(self) -> dict[str, Any]:
        """Retry and timeout arguments for every request."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        settings: _GcsSettings = self.settings  # type: ignore[assignment]
        retry = DEFAULT_RETRY.with_timeout(settings.retry_timeout) if settings.retry_timeout else None
        return {"retry": retry, "timeout": settings.timeout}

    def _backend_endpoint(self) -> str:
        return self.settings.endpoint or "storage.googleapis.com"  # type: ignore[attr-defined]

    def _backend_url(self) -> str:
        return self.settings.endpoint or "https://storage.googleapis.com"  # type: ignore[attr-defined]

    def _backend_buckets(self) -> list[str]:
        return [bucket.name for bucket in self._api.list_buckets(**self._calls)]

    def _backend_check_bucket(self, bucket: str) -> bool:
        # Listing one object needs only storage.objects.list, unlike reading the bucket's metadata.
        from google.api_core.exceptions import NotFound

        try:
            next(iter(self._api.list_blobs(bucket, max_results=1, **self._calls)), None)
        except NotFound:
            return False
        return True

    def _backend_list(
        self, bucket: str, *, prefix: str = "", start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[StoredObject | str]:
        listing = self._api.list_blobs(
            bucket,
            prefix=prefix or None,
            start_offset=start_after,  # inclusive: the caller skips the start key itself
            delimiter=delimiter,
            page_size=self.settings.page_size,
            **self._calls,
        )
        for page in listing.pages:
            yield from sorted(page.prefixes)
            for blob in page:
                yield StoredObject(
                    bucket=bucket,
                    key=blob.name,
                    size=blob.size,
                    last_modified=blob.updated,
                    etag=blob.etag,
                    content_type=blob.content_type,
                    extra={"md5_hash": blob.md5_hash, "storage_class": blob.storage_class},
                )

    def _backend_read(self, obj: StoredObject, sink: BinaryIO) -> dict[str, Any] | None:
        from google.api_core.exceptions import NotFound

        blob = self._api.bucket(obj.bucket).blob(obj.key)
        try:
            # One streaming GET, written to the sink as it arrives (and checked against the
            # object's MD5); a chunked reader would add a request per chunk.
            blob.download_to_file(sink, **self._calls)
        except NotFound:
            return None
        return {}

    def _backend_classify(self, exc: BaseException) -> tuple[str, str] | None:
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        if isinstance(exc, api.RetryError) and exc.cause is not None:
            return self._backend_classify(exc.cause)
        if isinstance(exc, auth.RefreshError):
            reason = str(exc.args[0]) if exc.args else type(exc).__name__
            return Failure.CREDENTIALS, reason[:200]
        if isinstance(exc, auth.DefaultCredentialsError):
            return Failure.CREDENTIALS, "no application default credentials were found"
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, auth.TransportError)):
            return Failure.UNREACHABLE, type(exc).__name__
        if isinstance(exc, api.Unauthorized):
            return Failure.CREDENTIALS, "401 Unauthorized"
        if isinstance(exc, api.Forbidden):
            return Failure.FORBIDDEN, "403 Forbidden"
        if isinstance(exc, api.NotFound):
            return Failure.NO_BUCKET, "404 Not Found"
        if isinstance(exc, api.ServerError):
            return Failure.UNREACHABLE, f"{exc.code} {type(exc).__name__}"
        return None


def _service_account_info(raw: Any, problems: list[str]) -> dict[str, Any] | None:
    """The parsed key, checked to load; its content never appears in messages."""
    if raw in (None, ""):
        return None
    if isinstance(raw, dict):
        info = raw
    else:
        try:
            info = json.loads(str(raw))
        except ValueError:
            problems.append("service_account_credentials: not valid JSON; paste the whole key file")
            return None
    if not isinstance(info, dict):
        problems.append("service_account_credentials: expected a JSON object (a service account key file)")
        return None
    missing = [key for key in _SERVICE_ACCOUNT_KEYS if not info.get(key)]
    if missing or info.get("type") != "service_account":
        problems.append(
            "service_account_credentials: not a service account key "
            f"(needs type=service_account and {', '.join(_SERVICE_ACCOUNT_KEYS[1:])})"
        )
        return None
    from google.oauth2 import service_account

    try:
        service_account.Credentials.from_service_account_info(info)
    except (ValueError, TypeError) as exc:
        problems.append(
            f"service_account_credentials: the key cannot be used ({type(exc).__name__}); paste the whole key file"
        )
        return None
    return info
