"""The S3 source against a real moto server (scripts/servers/s3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from object_store_fixtures import ObjectStoreContract, S3Store, server_or_skip, unused_port_url

from sources.errors import SourceConfigError
from sources.s3 import S3DataSource
from sources.testing import ping, read_all

S3_URL = os.environ.get("S3_URL") or f"http://127.0.0.1:{os.environ.get('S3_PORT', '5002')}"


@pytest.fixture(scope="module")
def store():
    return S3Store(server_or_skip(S3_URL, "/moto-api/", "scripts/servers/s3"))


@pytest.mark.integration
class TestS3Source(ObjectStoreContract):
    def test_download_when_content_type_set_then_reported(self, store, bucket):
        store.put(bucket, "report", b"%PDF-1.4", content_type="application/pdf")
        (doc,) = read_all(store.source([bucket]))
        assert doc["content_type"] == "application/pdf"
        assert doc["url"] == f"s3://{bucket}/report"

    def test_ping_when_key_without_secret_then_config_error(self, store, bucket):
        with pytest.raises(SourceConfigError, match="give both"):
            ping(store.source([bucket], aws_secret_access_key=""))


@pytest.fixture(scope="module")
def authenticating_s3():
    """A private moto server that checks credentials, with one IAM user allowed s3:*.

    moto checks credentials only when told to, and the setting is server-wide, so this test
    gets its own server rather than switching the shared one (other tests would break).
    """
    url = unused_port_url()
    port = url.rsplit(":", 1)[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"a private moto server did not start at {url}")
        admin = S3Store(url)
        import boto3

        iam = boto3.client(
            "iam", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
        )
        iam.create_user(UserName="reader")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        bucket = admin.create_bucket()
        admin.put(bucket, "a.txt", b"authenticated")
        request = urllib.request.Request(
            url + "/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=5).close()  # from now on, every request is checked
        yield url, bucket, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("which", "code"),
    [("secret", "SignatureDoesNotMatch"), ("key_id", "InvalidAccessKeyId")],
)
def test_ping_when_credentials_wrong_then_config_error_without_secret(authenticating_s3, which, code):
    url, bucket, key_id, secret = authenticating_s3
    good = {"buckets": [bucket], "endpoint_url": url, "max_attempts": 1}
    read = read_all(S3DataSource({**good, "aws_access_key_id": key_id, "aws_secret_access_key": secret}))
    assert [doc["key"] for doc in read] == ["a.txt"]

    wrong_secret = "wrong-" + secret[6:]
    wrong = {"aws_access_key_id": key_id, "aws_secret_access_key": wrong_secret}
    if which == "key_id":
        wrong = {"aws_access_key_id": "AKIAWRONGWRONGWRONG0", "aws_secret_access_key": secret}
    with pytest.raises(SourceConfigError) as caught:
        ping(S3DataSource({**good, **wrong}))

    message = str(caught.value)
    assert f"the credentials were rejected ({code})" in message
    assert "aws_secret_access_key" in message
    assert secret not in message and wrong_secret not in message


def test_schema_when_listed_then_s3_fields():
    schema = S3DataSource.get_default_configuration()
    assert {"buckets", "aws_access_key_id", "aws_secret_access_key", "region", "endpoint_url", "read_timeout",
            "max_attempts", "page_size", "max_file_size", "max_partitions_per_bucket"} == set(schema)
    assert schema["aws_secret_access_key"]["sensitive"] is True
    assert sorted(spec["order"] for spec in schema.values()) == list(range(1, len(schema) + 1))
    assert S3DataSource.service_type == "s3"
