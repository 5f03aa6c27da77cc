"""The Google Cloud Storage source against a real fake-gcs-server (scripts/servers/gcs)."""

from __future__ import annotations

import http.server
import json
import os

import pytest
from object_store_fixtures import ObjectStoreContract, GcsStore, server_or_skip

from sources.errors import SourceConfigError
from sources.gcs import GoogleCloudStorageDataSource
from sources.testing import ping, read_all
from tests.helpers import local_http_server

GCS_URL = os.environ.get("GCS_URL") or f"http://127.0.0.1:{os.environ.get('GCS_PORT', '4443')}"


@pytest.fixture(scope="module")
def store():
    return GcsStore(server_or_skip(GCS_URL, "/storage/v1/b", "scripts/servers/gcs"))


@pytest.mark.integration
class TestGoogleCloudStorageSource(ObjectStoreContract):
    def test_read_when_content_type_and_md5_known_then_in_doc(self, store, bucket):
        store.put(bucket, "page", b"<html></html>", content_type="text/html")
        (doc,) = read_all(store.source([bucket]))
        assert doc["content_type"] == "text/html"
        assert doc["md5_hash"] and doc["url"] == f"gs://{bucket}/page"

    def test_read_when_emulator_env_var_set_then_used(self, store, bucket, monkeypatch):
        store.put(bucket, "a", b"via env")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", store.url.removeprefix("http://"))
        source = GoogleCloudStorageDataSource({"buckets": [bucket], "retry_timeout": 0})
        assert [doc["key"] for doc in read_all(source)] == ["a"]

    def test_ping_when_credentials_not_a_service_account_key_then_config_error(self, store, bucket):
        for raw in ("{not json", json.dumps({"type": "authorized_user", "private_key": "SECRETKEY"})):
            with pytest.raises(SourceConfigError, match="service_account_credentials") as caught:
                ping(store.source([bucket], service_account_credentials=raw))
            assert "SECRETKEY" not in str(caught.value) and "not json" not in str(caught.value)

    def test_ping_when_token_endpoint_rejects_key_then_config_error_without_secret(
        self, store, bucket, rejecting_token_endpoint
    ):
        """fake-gcs-server accepts any token, so the rejection comes from the token endpoint.

        A service account key names its token endpoint (``token_uri``); here it is a local
        one answering as Google's does for a revoked key. The storage calls still go to
        the emulator, which never sees a request: the client fails to get a token first.
        """
        key = _service_account_key(rejecting_token_endpoint)
        source = store.source([bucket], service_account_credentials=json.dumps(key))

        with pytest.raises(SourceConfigError) as caught:
            ping(source)

        message = str(caught.value)
        assert "the credentials were rejected (invalid_grant" in message
        assert "`service_account_credentials`" in message
        assert "PRIVATE KEY" not in message and key["private_key_id"] not in message


def test_schema_when_listed_then_gcs_fields():
    schema = GoogleCloudStorageDataSource.get_default_configuration()
    assert {"buckets", "service_account_credentials", "project_id", "endpoint", "timeout", "retry_timeout",
            "page_size", "max_file_size", "max_partitions_per_bucket"} == set(schema)
    assert schema["service_account_credentials"]["sensitive"] is True
    assert sorted(spec["order"] for spec in schema.values()) == list(range(1, len(schema) + 1))
    assert GoogleCloudStorageDataSource.service_type == "google_cloud_storage"


@pytest.fixture
def rejecting_token_endpoint():
    """A local OAuth token endpoint that answers every request as Google does for a revoked key."""

    class Reject(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with local_http_server(Reject) as url:
        yield f"{url}/token"


def _service_account_key(token_uri: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": "reader@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
