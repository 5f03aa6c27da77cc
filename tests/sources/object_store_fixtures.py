"""What the S3, GCS and Azure source tests share: server handles and one contract all must pass.

The servers are real ones started by the project's scripts::

    scripts/servers/s3 start        # moto on 127.0.0.1:${S3_PORT:-5002}
    scripts/servers/gcs start       # fake-gcs-server on 127.0.0.1:${GCS_PORT:-4443}
    scripts/servers/azurite start   # Azurite's blob service on 127.0.0.1:${AZURITE_PORT:-10000}

A test module provides a module-scoped ``store`` fixture (an :class:`S3Store`, a
:class:`GcsStore` or an :class:`AzureStore`: admin access to the server plus a factory of
sources pointed at it) and subclasses :class:`ObjectStoreContract`, whose tests then run
against that server. Every test works in buckets (Azure: containers) of its own, with
unique names, dropped afterwards; ``store.term`` is the word the source uses for a bucket
(its field ``<term>s``, its documents' field, its rules' key). When a server is not running
the tests are skipped, or fail when ``CI=true``.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from sources.base import Filter
from sources.errors import SourceConfigError, SourceUnavailable, SyncRulesError
from sources.testing import ping, read_all, read_partitions
from tests.helpers import SOURCES, index_docs, run_sync
from tests.test_extract_text import make_pdf

__all__ = ["ObjectStoreContract", "S3Store", "GcsStore", "AzureStore", "server_or_skip", "unused_port_url",
           "AZURITE_KEY"]

SECRET = "s3cr3t-never-printed"
_SCRUBBED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


def server_or_skip(url: str, probe: str, script: str) -> str:
    """``url`` when the server answers ``probe``; else skip (fail when CI=true)."""
    try:
        with urllib.request.urlopen(url + probe, timeout=3):
            return url
    except OSError as exc:
        message = f"no server at {url} ({exc}); start it with `{script} start`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def unused_port_url() -> str:
    """A URL where nothing listens (a port just bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


class _Store:
    """Admin access to a test server, and sources (or their configuration) pointed at it."""

    service_type: str
    term = "bucket"
    #: The secret the sources' configuration holds: never in a message or a repr.
    secret = SECRET

    def config(self, buckets: list[str], **overrides: Any) -> dict[str, Any]:
        raise NotImplementedError

    def source(self, buckets: list[str], **overrides: Any) -> Any:
        from sources.registry import load_source_class

        return load_source_class(SOURCES[self.service_type])(self.config(buckets, **overrides))


class S3Store(_Store):
    """Admin access to the S3 test server, and S3 sources pointed at it."""

    service_type = "s3"

    def __init__(self, url: str):
        import boto3

        self.url = url
        self.client = boto3.client(
            "s3", endpoint_url=url, aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1"
        )

    def create_bucket(self) -> str:
        name = _bucket_name()
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, bucket: str) -> None:
        for key in self.contents(bucket):
            self.client.delete_object(Bucket=bucket, Key=key)
        self.client.delete_bucket(Bucket=bucket)

    def put(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def contents(self, bucket: str) -> dict[str, bytes]:
        keys = [
            item["Key"]
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", ())
        ]
        return {key: self.client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}

    def config(self, buckets: list[str], **overrides: Any) -> dict[str, Any]:
        return {
            "buckets": buckets,
            "endpoint_url": self.url,
            "aws_access_key_id": "test",
            "aws_secret_access_key": SECRET,
            "max_attempts": 1,
            "read_timeout": 5,
            **overrides,
        }

    def unreachable_config(self) -> dict[str, Any]:
        return {"endpoint_url": unused_port_url()}


class GcsStore(_Store):
    """Admin access to the GCS emulator, and GCS sources pointed at it."""

    service_type = "google_cloud_storage"

    def __init__(self, url: str):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.url = url
        self.client = storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
        )

    def create_bucket(self) -> str:
        return self.client.create_bucket(_bucket_name()).name

    def drop_bucket(self, bucket: str) -> None:
        for blob in self.client.list_blobs(bucket):
            blob.delete()
        self.client.bucket(bucket).delete()

    def put(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> None:
        self.client.bucket(bucket).blob(key).upload_from_string(data, content_type=content_type)

    def delete(self, bucket: str, key: str) -> None:
        self.client.bucket(bucket).blob(key).delete()

    def contents(self, bucket: str) -> dict[str, bytes]:
        return {blob.name: blob.download_as_bytes() for blob in self.client.list_blobs(bucket)}

    def config(self, buckets: list[str], **overrides: Any) -> dict[str, Any]:
        return {"buckets": buckets, "endpoint": self.url, "project_id": "test", "retry_timeout": 0, **overrides}

    def unreachable_config(self) -> dict[str, Any]:
        return {"endpoint": unused_port_url()}


#: The Azurite development account's key: public, in Microsoft's documentation.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_ACCOUNT = "devstoreaccount1"


class AzureStore(_Store):
    """Admin access to Azurite's blob service, and Azure Blob Storage sources pointed at it."""

    service_type = "azure_blob_storage"
    term = "container"
    secret = AZURITE_KEY

    def __init__(self, url: str):
        from azure.storage.blob import BlobServiceClient

        self.url = url
        self.client = BlobServiceClient(
            url, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}, retry_total=0
        )

    def create_bucket(self) -> str:
        return self.client.create_container(_bucket_name()).container_name

    def drop_bucket(self, bucket: str) -> None:
        self.client.delete_container(bucket)

    def put(self, bucket: str, key: str, data: bytes, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> None:
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_type=content_type) if content_type else None
        self.client.get_blob_client(bucket, key).upload_blob(data, overwrite=True, content_settings=settings,
                                                            metadata=metadata)

    def delete(self, bucket: str, key: str) -> None:
        self.client.get_blob_client(bucket, key).delete_blob()

    def contents(self, bucket: str) -> dict[str, bytes]:
        container = self.client.get_container_client(bucket)
        return {blob.name: container.download_blob(blob.name).readall() for blob in container.list_blobs()}

    def config(self, buckets: list[str], **overrides: Any) -> dict[str, Any]:
        if "max_partitions_per_bucket" in overrides:  # the contract's name for it
            overrides["max_partitions_per_container"] = overrides.pop("max_partitions_per_bucket")
        return {
            "containers": buckets,
            "account_name": AZURITE_ACCOUNT,
            "account_key": AZURITE_KEY,
            "blob_endpoint": self.url,
            "retry_count": 0,
            **overrides,
        }

    def unreachable_config(self) -> dict[str, Any]:
        return {"blob_endpoint": unused_port_url() + "/" + AZURITE_ACCOUNT}


def _by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [doc["_id"] for doc in docs]
    assert len(ids) == len(set(ids)), f"duplicate ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    return {doc["_id"]: doc for doc in docs}


def _content(doc: dict[str, Any]) -> bytes:
    return base64.b64decode(doc["_attachment"])


def _wait_for_next_second() -> None:
    """Listings have one-second precision: start the next step in a new second."""
    time.sleep(1.02 - (time.time() % 1))


class ObjectStoreContract:
    """Tests every object-store source passes; a subclass provides the ``store`` fixture."""

    @pytest.fixture(autouse=True)
    def _clean_environ(self, monkeypatch):
        for name in _SCRUBBED_ENV:
            monkeypatch.delenv(name, raising=False)

    @pytest.fixture
    def bucket(self, store):
        name = store.create_bucket()
        yield name
        store.drop_bucket(name)

    # -- reading ---------------------------------------------------------------------
    def test_read_when_objects_then_one_doc_each_with_content(self, store, bucket):
        objects = {
            "root.txt": b"at the root",
            "docs/guide.md": b"# Guide",
            "docs/deep/er/note.txt": "caf\u00e9".encode(),
            "img/logo.bin": bytes(range(256)),
            "empty": b"",
        }
        for key, data in objects.items():
            store.put(bucket, key, data, content_type="text/plain" if key.endswith(".txt") else None)

        docs = _by_id(read_all(store.source([bucket])))

        assert set(docs) == {f"{bucket}/{key}" for key in objects}
        for key, data in objects.items():
            doc = docs[f"{bucket}/{key}"]
            assert _content(doc) == data
            assert (doc[store.term], doc["key"], doc["size_in_bytes"]) == (bucket, key, len(data))
            assert doc["filename"] == key.rsplit("/", 1)[-1]
            moment = datetime.fromisoformat(doc["_timestamp"])
            assert moment.utcoffset().total_seconds() == 0
            assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 300
        assert docs[f"{bucket}/root.txt"]["content_type"] == "text/plain"

    def test_read_when_objects_change_then_docs_equal_bucket(self, store, bucket):
        for i in range(4):
            store.put(bucket, f"dir/{i}.txt", f"version 1 of {i}".encode())
        assert len(read_all(store.source([bucket]))) == 4

        store.put(bucket, "dir/1.txt", b"version 2 of 1")
        store.delete(bucket, "dir/2.txt")
        store.put(bucket, "new.txt", b"brand new")
        docs = _by_id(read_all(store.source([bucket])))

        expected = store.contents(bucket)
        assert {doc["key"]: _content(doc) for doc in docs.values()} == expected
        assert expected["dir/1.txt"] == b"version 2 of 1" and "dir/2.txt" not in expected

    def test_read_when_object_rewritten_then_compared_by_etag_not_only_by_the_second(self, store, bucket):
        from transforms.digests import document_stamp

        store.put(bucket, "same.txt", b"version 1")
        [first] = read_all(store.source([bucket]), download=False)
        [again] = read_all(store.source([bucket]), download=False)
        store.put(bucket, "same.txt", b"version 2")  # often within the second: listings give whole seconds
        [second] = read_all(store.source([bucket]), download=False)

        assert document_stamp(again) == document_stamp(first)  # unchanged: skipped by the next full sync
        assert first["etag"] != second["etag"]
        # Even when both versions list the same second, the full sync sees the change.
        assert document_stamp(second) != document_stamp(first)
        assert document_stamp({**second, "_timestamp": first["_timestamp"]}) != document_stamp(first)

    def test_read_when_more_objects_than_a_page_then_all_read(self, store, bucket):
        keys = [f"p/{i:02d}" for i in range(7)] + [f"{i}.txt" for i in range(4)]
        for key in keys:
            store.put(bucket, key, key.encode())

        docs = read_all(store.source([bucket], page_size=2))

        assert sorted(doc["key"] for doc in docs) == sorted(keys)
        assert len(read_partitions(store.source([bucket], page_size=2))) == len(keys)

    def test_read_when_lazy_download_not_wanted_then_none(self, store, bucket):
        store.put(bucket, "a.txt", b"a")
        docs = read_all(store.source([bucket]), download=False)
        assert "_attachment" not in docs[0]
        ((doc, lazy),) = list(store.source([bucket]).get_docs())
        assert lazy(doit=False) is None
        assert _content(lazy(doit=True, timestamp=doc["_timestamp"])) == b"a"

    def test_read_when_object_over_max_file_size_then_no_content(self, store, bucket):
        store.put(bucket, "small.txt", b"x" * 10)
        store.put(bucket, "big.txt", b"x" * 11)

        docs = {doc["key"]: doc for doc in read_all(store.source([bucket], max_file_size=10))}

        assert _content(docs["small.txt"]) == b"x" * 10
        assert "_attachment" not in docs["big.txt"]
        assert docs["big.txt"]["size_in_bytes"] == 11

    def test_read_when_object_grew_over_max_file_size_after_listing_then_no_content(self, store, bucket):
        store.put(bucket, "grows.txt", b"x" * 10)
        ((doc, lazy),) = list(store.source([bucket], max_file_size=10).get_docs())
        store.put(bucket, "grows.txt", b"x" * (3 * 1024 * 1024))
        assert doc["size_in_bytes"] == 10
        assert lazy(doit=True, timestamp=doc["_timestamp"]) is None

    def test_read_when_object_deleted_after_listing_then_no_content(self, store, bucket):
        store.put(bucket, "gone.txt", b"soon gone")
        ((doc, lazy),) = list(store.source([bucket]).get_docs())
        store.delete(bucket, "gone.txt")
        assert lazy(doit=True, timestamp=doc["_timestamp"]) is None

    def test_read_when_several_buckets_then_all_read(self, store, bucket):
        other = store.create_bucket()
        try:
            store.put(bucket, "a", b"1")
            store.put(other, "a", b"2")
            docs = _by_id(read_partitions(store.source([bucket, other])))
            assert {doc_id: _content(doc) for doc_id, doc in docs.items()} == {
                f"{bucket}/a": b"1",
                f"{other}/a": b"2",
            }
        finally:
            store.drop_bucket(other)

    # -- partitions ------------------------------------------------------------------
    def test_partitions_when_read_then_same_docs_as_single_read(self, store, bucket):
        keys = ["a.txt", "b/1", "b/2", "b/", "c/x/y", "c/z", "d", "e/1", "f/1", "g/1", "z.txt", "/lead"]
        for key in keys:
            store.put(bucket, key, key.encode())
        source = store.source([bucket], page_size=2, max_partitions_per_bucket=4)

        partitions = list(source.get_partitions())
        by_partition = [
            read_all(source, partition=partition, close=False, download=False) for partition in partitions
        ]
        whole = read_all(store.source([bucket]))

        assert 1 < len(partitions) <= 4
        assert all(p.params["bucket"] == bucket for p in partitions)
        flat = [doc["_id"] for docs in by_partition for doc in docs]
        assert sorted(flat) == sorted(doc["_id"] for doc in whole)  # each object exactly once
        assert _by_id(read_partitions(store.source([bucket], max_partitions_per_bucket=100))) == _by_id(whole)

    def test_partitions_when_one_per_bucket_then_whole_buckets(self, store, bucket):
        store.put(bucket, "a/b", b"")
        partitions = list(store.source([bucket], max_partitions_per_bucket=1).get_partitions())
        assert [p.params for p in partitions] == [{"bucket": bucket, "after": None, "until": None}]

    def test_partitions_when_all_buckets_then_include_ours(self, store, bucket):
        store.put(bucket, "k/v", b"")
        partitions = store.source(["*"]).get_partitions()
        assert bucket in {p.params["bucket"] for p in partitions}

    # -- errors ----------------------------------------------------------------------
    def test_ping_when_bucket_missing_then_message_lists_buckets(self, store, bucket):
        missing = f"missing-{uuid.uuid4().hex[:8]}"
        source = store.source([bucket, missing])

        with pytest.raises(SourceConfigError) as caught:
            ping(source)

        message = str(caught.value)
        term = store.term
        assert f"{term} `{missing}` does not exist; {term}s are: " in message
        assert bucket in message.split(f"{term}s are: ", 1)[1]
        with pytest.raises(SourceConfigError, match=f"{term} `{missing}` does not exist"):
            read_all(store.source([missing]))

    def test_ping_when_bucket_exists_then_ok(self, store, bucket):
        ping(store.source([bucket]))
        ping(store.source(["*"]))

    def test_ping_when_endpoint_unreachable_then_clear_error(self, store, bucket):
        config = store.unreachable_config()
        source = store.source([bucket], **config)
        started = time.monotonic()

        with pytest.raises(SourceUnavailable) as caught:
            ping(source)

        message = str(caught.value)
        assert next(iter(config.values())) in message
        assert f"`{source.endpoint_field}`" in message and "running" in message
        assert store.secret not in message
        assert time.monotonic() - started < 10

    def test_validate_config_when_values_invalid_then_every_problem_listed(self, store):
        source = store.source([], page_size=0, max_file_size="ten")

        with pytest.raises(SourceConfigError) as caught:
            ping(source)

        message = str(caught.value)
        for name in (f"{store.term}s", "page_size", "max_file_size"):
            assert name in message
        assert store.secret not in message

    def test_secrets_when_printed_then_hidden(self, store, bucket):
        source = store.source([bucket])
        assert store.secret not in repr(source.settings)
        assert store.secret not in repr(source.configuration)
        schema = type(source).get_default_configuration()
        assert [name for name, spec in schema.items() if spec.get("sensitive")], "a secret field is declared"
        for spec in schema.values():
            assert spec["type"] in ("str", "int", "bool", "list") if "type" in spec else True
            assert {"label", "order"} <= set(spec)

    # -- advanced rules --------------------------------------------------------------
    def test_advanced_rules_when_prefix_and_extension_then_only_matches(self, store, bucket):
        keys = ["docs/a.pdf", "docs/a.txt", "docs/sub/b.PDF", "docsx/c.pdf", "other/d.pdf", "e.pdf", "notes/n.md"]
        for key in keys:
            store.put(bucket, key, b"x")
        rules = [
            {store.term: bucket, "prefix": "docs/", "extension": [".pdf"]},
            {store.term: bucket, "prefix": "docs/sub/"},
            {store.term: bucket, "prefix": "notes/", "extension": ["md"]},
        ]
        filtering = Filter(advanced_rules=rules)
        source = store.source([bucket], max_partitions_per_bucket=3)

        assert source.validate_advanced_rules(rules) == []
        docs = read_all(source, filtering=filtering)
        partitioned = read_partitions(store.source([bucket], max_partitions_per_bucket=3), filtering=filtering)

        expected = ["docs/a.pdf", "docs/sub/b.PDF", "notes/n.md"]
        assert sorted(doc["key"] for doc in docs) == expected
        assert sorted(doc["key"] for doc in partitioned) == expected
        wrapped = read_all(store.source([bucket]), filtering=Filter(advanced_rules={"value": rules[:1]}))
        assert sorted(doc["key"] for doc in wrapped) == ["docs/a.pdf", "docs/sub/b.PDF"]

    def test_advanced_rules_when_invalid_then_problems_listed(self, store, bucket):
        source = store.source([bucket])

        problems = source.validate_advanced_rules(
            [{"prefix": "x"}, {store.term: "elsewhere"}, {store.term: bucket, "extension": 3, "glob": "*"}, "no"]
        )

        assert len(problems) == 5, problems
        assert any(f"`{store.term}` must be" in p for p in problems)
        assert any(f"`elsewhere` is not one of the configured {store.term}s" in p for p in problems)
        assert any("glob" in p for p in problems) and any("extension" in p for p in problems)
        assert source.validate_advanced_rules({store.term: bucket}) != []
        with pytest.raises(SyncRulesError):
            read_all(source, filtering=Filter(advanced_rules=[{"prefix": "x"}]))

    # -- incremental -----------------------------------------------------------------
    def test_incremental_when_objects_change_then_only_new_and_changed(self, store, bucket):
        for key in ("keep.txt", "change.txt", "remove.txt"):
            store.put(bucket, key, b"v1")
        _wait_for_next_second()
        planner = store.source([bucket])
        planner.get_partitions()
        cursor = planner.sync_cursor()
        assert set(cursor) == {"modified_since"}

        store.put(bucket, "change.txt", b"v2")
        store.put(bucket, "added.txt", b"new")
        store.delete(bucket, "remove.txt")
        source = store.source([bucket])
        changes = list(source.get_docs_incrementally(sync_cursor=cursor))

        assert sorted((doc["key"], op) for doc, _, op in changes) == [("added.txt", "index"), ("change.txt", "index")]
        contents = {doc["key"]: _content(lazy(doit=True)) for doc, lazy, _ in changes}
        assert contents == {"added.txt": b"new", "change.txt": b"v2"}
        assert datetime.fromisoformat(source.sync_cursor()["modified_since"]) >= datetime.fromisoformat(
            cursor["modified_since"]
        )
        everything = list(store.source([bucket]).get_docs_incrementally(sync_cursor=None))
        assert sorted(doc["key"] for doc, _, _ in everything) == ["added.txt", "change.txt", "keep.txt"]

    def test_features_when_asked_then_rules_and_incremental_enabled(self, store):
        features = type(store.source(["b"])).features()
        assert features["incremental_sync"]["enabled"] and features["sync_rules"]["advanced"]["enabled"]

    # -- lifecycle -------------------------------------------------------------------
    def test_close_when_read_then_client_released(self, store, bucket):
        store.put(bucket, "a", b"a")
        source = store.source([bucket])
        read_all(source, close=False)
        assert source._client is not None
        read_all(source)  # closes
        assert source._client is None

    # -- end to end ------------------------------------------------------------------
    @pytest.mark.slow  # two real syncs through the Beam pipeline into Elasticsearch
    def test_sync_when_objects_change_and_are_deleted_then_index_matches_bucket(self, store, bucket, es, index_name):
        objects = {
            "docs/report.pdf": make_pdf("Quarterly numbers are up"),
            "notes/a.txt": b"alpha",
            "notes/b.txt": b"beta",
            "c.txt": b"gamma",
            "img/blob.bin": bytes(range(256)) * 4,
        }
        for key, data in objects.items():
            store.put(bucket, key, data)
        configuration = store.config([bucket], page_size=2, max_partitions_per_bucket=3)

        def sync() -> None:
            outcome = run_sync(index=index_name, configuration=configuration, service_type=store.service_type)
            assert outcome["status"] == "completed", outcome.get("error")

        def assert_index_matches_bucket() -> dict[str, Any]:
            indexed = index_docs(es, index_name)
            expected = store.contents(bucket)
            assert {doc["key"]: doc["size_in_bytes"] for doc in indexed.values()} == {
                key: len(data) for key, data in expected.items()
            }
            assert set(indexed) == {f"{bucket}/{key}" for key in expected}
            for key, data in expected.items():
                if key.endswith(".txt"):
                    assert indexed[f"{bucket}/{key}"]["body"] == data.decode()
            return indexed

        sync()
        indexed = assert_index_matches_bucket()
        assert "Quarterly numbers are up" in indexed[f"{bucket}/docs/report.pdf"]["body"]
        assert indexed[f"{bucket}/img/blob.bin"].get("body") is None

        store.put(bucket, "notes/a.txt", b"alpha, second version")
        store.delete(bucket, "notes/b.txt")
        store.put(bucket, "new/d.txt", b"delta")
        sync()

        indexed = assert_index_matches_bucket()
        assert indexed[f"{bucket}/notes/a.txt"]["body"] == "alpha, second version"
        assert len(indexed) == 5
