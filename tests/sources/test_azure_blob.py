"""The Azure Blob Storage source against a real Azurite (scripts/servers/azurite).

Every test of the object-store contract (tests/sources/object_store_fixtures.py) runs here
on Azurite's blob service, with Azure's words (``containers``, documents' ``container``),
then what is Azure's own: the key the service refuses, blob metadata, access tiers,
``startFrom`` listings and an incremental sync through the pipeline.
"""

from __future__ import annotations

import base64
import os

import pytest
from object_store_fixtures import AZURITE_KEY, AzureStore, ObjectStoreContract

from sources.azure_blob import AzureBlobStorageDataSource
from sources.errors import SourceConfigError
from sources.testing import ping, read_all
from tests.helpers import index_docs, run_sync, skip_or_fail

AZURITE_URL = os.environ.get("AZURITE_URL") or (
    f"http://127.0.0.1:{os.environ.get('AZURITE_PORT', '10000')}/devstoreaccount1"
)
#: A well-formed key of the right length that is not the account's.
WRONG_KEY = base64.b64encode(b"not the account's key, 64 bytes long, as Azure's keys are......").decode()


@pytest.fixture(scope="module")
def store():
    store = AzureStore(AZURITE_URL)
    try:
        next(store.client.list_containers(results_per_page=1).by_page(), None)
    except Exception as exc:  # noqa: BLE001 - any failure means no usable server
        skip_or_fail(f"no Azurite at {AZURITE_URL} ({type(exc).__name__}); start it with "
                     "`scripts/servers/azurite start`")
    return store


@pytest.mark.integration
class TestAzureBlobStorageSource(ObjectStoreContract):
    def test_read_when_blob_has_metadata_then_doc_has_azure_fields(self, store, bucket):
        store.put(bucket, "2026/q3 report.html", b"<p>hi</p>", content_type="text/html",
                  metadata={"department": "finance"})
        store.put(bucket, "plain.pdf", b"%PDF-1.4")  # no content type given: guessed from the name

        docs = {doc["key"]: doc for doc in read_all(store.source([bucket]))}

        doc = docs["2026/q3 report.html"]
        assert doc["_id"] == f"{bucket}/2026/q3 report.html" and doc["container"] == bucket
        assert doc["content_type"] == "text/html" and doc["metadata"] == {"department": "finance"}
        assert doc["tier"] == "Hot" and doc["blob_type"] == "BlockBlob"
        assert doc["url"] == f"{AZURITE_URL}/{bucket}/2026/q3%20report.html"
        assert doc["created_at"][:10] == doc["_timestamp"][:10] and doc["etag"].startswith("0x")
        assert docs["plain.pdf"]["content_type"] == "application/pdf"

    def test_read_when_blob_archived_then_indexed_without_content(self, store, bucket):
        store.put(bucket, "cold.txt", b"in the archive")
        store.put(bucket, "warm.txt", b"at hand")
        store.client.get_blob_client(bucket, "cold.txt").set_standard_blob_tier("Archive")

        docs = {doc["key"]: doc for doc in read_all(store.source([bucket]))}

        assert docs["cold.txt"]["tier"] == "Archive" and "_attachment" not in docs["cold.txt"]
        assert base64.b64decode(docs["warm.txt"]["_attachment"]) == b"at hand"

    def test_read_when_folder_marker_of_hierarchical_namespace_then_skipped(self, store, bucket):
        store.put(bucket, "folder", b"", metadata={"hdi_isfolder": "true"})
        store.put(bucket, "folder/file.txt", b"x")
        assert [doc["key"] for doc in read_all(store.source([bucket]))] == ["folder/file.txt"]

    def test_list_when_partition_starts_after_a_key_then_server_starts_there(self, store, bucket):
        """The listing of a key range starts at its first key (startFrom), not at the container's start."""
        for key in ("a/1", "b/1", "c/1", "c/2", "d/1"):
            store.put(bucket, key, b"")
        source = store.source([bucket])

        listed = [obj.key for obj in source._backend_list(bucket, start_after="c/")]

        assert listed == ["c/1", "c/2", "d/1"]

    def test_ping_when_key_refused_then_config_error_naming_the_fields_without_the_key(self, store, bucket):
        with pytest.raises(SourceConfigError) as caught:
            ping(store.source([bucket], account_key=WRONG_KEY))

        message = str(caught.value)
        assert "the credentials were rejected (403 AuthorizationFailure)" in message
        assert "`account_name` and `account_key`" in message
        assert WRONG_KEY not in message and AZURITE_KEY not in message

    def test_ping_when_account_unknown_then_credentials_rejected(self, store, bucket):
        with pytest.raises(SourceConfigError, match="the credentials were rejected"):
            ping(store.source([bucket], account_name="nosuchaccount"))

    def test_validate_when_key_not_base64_or_downloads_out_of_range_then_fields_named(self, store, bucket):
        garbled = "not a key!" + AZURITE_KEY[10:]
        with pytest.raises(SourceConfigError) as caught:
            ping(store.source([bucket], account_key=garbled, concurrent_downloads=101, account_name=""))

        message = str(caught.value)
        assert "account_key: not a base64 access key" in message
        assert "concurrent_downloads: must be between 1 and 100, got 101" in message
        assert "account_name: required" in message
        assert garbled not in message and "not a key" not in message

    def test_page_size_when_up_to_5000_then_accepted(self, store, bucket):
        store.put(bucket, "a", b"")
        assert len(read_all(store.source([bucket], page_size=5000))) == 1
        with pytest.raises(SourceConfigError, match="page_size: must be between 1 and 5000"):
            ping(store.source([bucket], page_size=5001))

    @pytest.mark.slow  # three real syncs through the Beam pipeline into Elasticsearch
    def test_sync_when_incremental_then_new_and_changed_indexed_and_full_sync_removes_deleted(
            self, store, bucket, es, index_name):
        for key in ("keep.txt", "change.txt", "remove.txt"):
            store.put(bucket, key, f"{key} v1".encode())
        configuration = store.config([bucket])

        def sync(job_type: str, cursor=None) -> dict:
            outcome = run_sync(index=index_name, configuration=configuration, service_type=store.service_type,
                               job_type=job_type, sync_cursor=cursor)
            assert outcome["status"] == "completed", outcome.get("error")
            return outcome

        def bodies() -> dict[str, str]:
            return {doc["key"]: doc.get("body") for doc in index_docs(es, index_name).values()}

        _next_second()  # listings have one-second precision: the cursor's second holds no change
        cursor = sync("full")["sync_cursor"]
        assert bodies() == {"keep.txt": "keep.txt v1", "change.txt": "change.txt v1", "remove.txt": "remove.txt v1"}

        _next_second()
        store.put(bucket, "change.txt", b"change.txt v2")
        store.put(bucket, "added.txt", b"added.txt v1")
        store.delete(bucket, "remove.txt")
        outcome = sync("incremental", cursor)

        assert outcome["indexed_document_count"] == 2, outcome
        assert bodies() == {"keep.txt": "keep.txt v1", "change.txt": "change.txt v2", "remove.txt": "remove.txt v1",
                            "added.txt": "added.txt v1"}  # deletions wait for the next full sync
        sync("full")
        expected = {key: data.decode() for key, data in store.contents(bucket).items()}
        assert bodies() == expected and "remove.txt" not in expected


def _next_second() -> None:
    import time

    time.sleep(1.02 - (time.time() % 1))


def test_schema_when_listed_then_elastic_fields_and_ours():
    schema = AzureBlobStorageDataSource.get_default_configuration()
    assert list(schema)[:6] == ["account_name", "account_key", "blob_endpoint", "containers", "retry_count",
                                "concurrent_downloads"]  # Elastic's azure_blob_storage fields, in its order
    assert set(schema) - set(list(schema)[:6]) == {"page_size", "max_file_size", "max_partitions_per_container"}
    assert [name for name, spec in schema.items() if spec.get("sensitive")] == ["account_key"]
    assert sorted(spec["order"] for spec in schema.values()) == list(range(1, len(schema) + 1))
    assert AzureBlobStorageDataSource.service_type == "azure_blob_storage"


def test_endpoint_when_not_given_then_the_accounts_azure_endpoint():
    source = AzureBlobStorageDataSource({"account_name": "contosodocs", "account_key": AZURITE_KEY,
                                         "containers": ["reports"]})
    assert source.network_endpoints() == [("contosodocs.blob.core.windows.net", 443)]
