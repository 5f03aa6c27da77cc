"""The S3 source: objects of S3 buckets (AWS or any S3-compatible server) as documents.

Listing, partitioning (key ranges cut at top-level prefixes), the document shape, the size
limit, advanced sync rules and incremental syncs are shared with the Google Cloud Storage
source and explained in :mod:`sources._object_store`; this module is the boto3 side.

Example usage::

    from sources.s3 import S3DataSource
    from sources.testing import read_all

    source = S3DataSource({
        "buckets": ["reports"],
        "aws_access_key_id": "AKIA...",
        "aws_secret_access_key": "...",
        "region": "eu-west-1",
    })
    docs = read_all(source)  # [{"_id": "reports/2024/q1.pdf", "_attachment": "JVBERi0x...", ...}]

Without keys, boto3's own chain is used (environment, shared config, instance role). An
incremental sync sees new and changed objects, not deletions (see the shared module).
"""

from __future__ import annotations

import mimetypes
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

__all__ = ["S3DataSource"]

_CHUNK = 1024 * 1024
_GENERIC_TYPES = frozenset({"binary/octet-stream", "application/octet-stream"})
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
_FORBIDDEN_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})


@dataclass(frozen=True)
class _S3Settings(ObjectStoreSettings):
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    endpoint_url: str | None = None
    read_timeout: int = 90
    max_attempts: int = 5


class S3DataSource(ObjectStoreSource):
    """Amazon S3 (and S3-compatible servers through ``endpoint_url``)."""

    name = "Amazon S3"
    service_type = "s3"
    url_scheme = "s3"
    credential_fields = "`aws_access_key_id` and `aws_secret_access_key`"
    endpoint_field = "endpoint_url"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            **buckets_field("Names of the buckets to index."),
            "aws_access_key_id": {
                "label": "AWS access key ID",
                "order": 2,
                "required": False,
                "tooltip": "Leave empty to use the service's own AWS credentials (environment, instance role).",
            },
            "aws_secret_access_key": {
                "label": "AWS secret access key",
                "order": 3,
                "required": False,
                "sensitive": True,
                "tooltip": "The secret of the access key ID above.",
            },
            "region": {
                "label": "Region",
                "order": 4,
                "default_value": "us-east-1",
                "required": False,
                "tooltip": "The buckets' AWS region, e.g. eu-west-1.",
            },
            "endpoint_url": {
                "label": "Endpoint URL",
                "order": 5,
                "required": False,
                "tooltip": "Only for S3-compatible servers, e.g. http://minio.local:9000. Empty means AWS.",
            },
            "read_timeout": {
                "label": "Read timeout (seconds)",
                "order": 6,
                "type": "int",
                "display": "numeric",
                "default_value": 90,
                "required": False,
                "tooltip": "How long to wait for an answer of S3 before the request is retried.",
            },
            "max_attempts": {
                "label": "Maximum attempts per request",
                "order": 7,
                "type": "int",
                "display": "numeric",
                "default_value": 5,
                "required": False,
                "tooltip": "Including the first; throttling and server errors are retried with backoff.",
            },
            **common_fields(first_order=8),
        }

    # -- backend ---------------------------------------------------------------------
    def _backend_settings(self, common: dict[str, Any], problems: list[str]) -> _S3Settings:
        config = self.configuration
        key_id = str(config.get("aws_access_key_id") or "").strip() or None
        secret = str(config.get("aws_secret_access_key") or "").strip() or None
        if bool(key_id) != bool(secret):
            problems.append(
                "aws_access_key_id and aws_secret_access_key: give both, or neither to use the default chain"
            )
        endpoint = read_url(config, "endpoint_url", problems)
        return _S3Settings(
            **common,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region=str(config.get("region") or "").strip() or "us-east-1",
            endpoint_url=endpoint,
            read_timeout=read_int(config, "read_timeout", problems, minimum=1),
            max_attempts=read_int(config, "max_attempts", problems, minimum=1),
        )

    def _backend_connect(self) -> Any:
        import boto3
        from botocore.config import Config

        settings: _S3Settings = self.settings  # type: ignore[assignment]
        session = boto3.session.Session(
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            region_name=settings.region,
        )
        config = Config(
            read_timeout=settings.read_timeout,
            connect_timeout=min(settings.read_timeout, 30),
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"} if settings.endpoint_url else None,
        )
        return session.client("s3", endpoint_url=settings.endpoint_url, config=config)

    def _backend_endpoint(self) -> str:
        settings: _S3Settings = self.settings  # type: ignore[assignment]
        return settings.endpoint_url or f"AWS ({settings.region})"

    def _backend_url(self) -> str:
        settings: _S3Settings = self.settings  # type: ignore[assignment]
        return settings.endpoint_url or f"https://s3.{settings.region}.amazonaws.com"

    def _backend_buckets(self) -> list[str]:
        if self._api.can_paginate("list_buckets"):
            pages = self._api.get_paginator("list_buckets").paginate()
            return [bucket["Name"] for page in pages for bucket in page.get("Buckets", [])]
        return [bucket["Name"] for bucket in self._api.list_buckets().get("Buckets", [])]

    def _backend_check_bucket(self, bucket: str) -> bool:
        try:
            self._api.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except Exception as exc:
            if _error_code(exc) == "NoSuchBucket":
                return False
            raise
        return True

    def _backend_list(
        self, bucket: str, *, prefix: str = "", start_after: str | None = None, delimiter: str | None = None
    ) -> Iterator[StoredObject | str]:
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            request["StartAfter"] = start_after
        if delimiter:
            request["Delimiter"] = delimiter
        pages = self._api.get_paginator("list_objects_v2").paginate(
            **request, PaginationConfig={"PageSize": self.settings.page_size}
        )
        for page in pages:
            for common in page.get("CommonPrefixes", ()):
                yield common["Prefix"]
            for item in page.get("Contents", ()):
                key = item["Key"]
                yield StoredObject(
                    bucket=bucket,
                    key=key,
                    size=item.get("Size"),
                    last_modified=item["LastModified"],
                    etag=(item.get("ETag") or "").strip('"') or None,
                    # Listings carry no content type; the download reports the real one.
                    content_type=mimetypes.guess_type(key)[0],
                    extra={"storage_class": item.get("StorageClass")},
                )

    def _backend_read(self, obj: StoredObject, sink: BinaryIO) -> dict[str, Any] | None:
        try:
            response = self._api.get_object(Bucket=obj.bucket, Key=obj.key)
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        body = response["Body"]
        try:
            for chunk in body.iter_chunks(_CHUNK):
                sink.write(chunk)
        finally:
            body.close()
        content_type = response.get("ContentType")
        return {"content_type": content_type} if content_type and content_type not in _GENERIC_TYPES else {}

    def _backend_classify(self, exc: BaseException) -> tuple[str, str] | None:
        from botocore import exceptions as boto

        if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)):
            return Failure.UNREACHABLE, type(exc).__name__
        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return Failure.CREDENTIALS, "no credentials were found"
        code = _error_code(exc)
        if code is None:
            return None
        if code in _CREDENTIAL_CODES:
            return Failure.CREDENTIALS, code
        if code in ("NoSuchBucket", "404"):
            return Failure.NO_BUCKET, code
        if code in _FORBIDDEN_CODES:
            return Failure.FORBIDDEN, code
        if code in ("SlowDown", "ServiceUnavailable", "InternalError", "503", "500"):
            return Failure.UNREACHABLE, code
        return None


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("Error", {}).get("Code")
