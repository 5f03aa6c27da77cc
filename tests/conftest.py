"""Shared fixtures: a real Elasticsearch (started by scripts/elasticsearch), clean env.

Integration tests need the servers that ``.ci/run`` starts. Run locally without them and
they are skipped; with ``CI=true`` a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import ES_URL, es_client, require_server

_SCRUBBED = ("ES_USERNAME", "ES_PASSWORD", "ES_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
             "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Scrub variables our code or its clients read, so a developer's shell cannot leak in."""
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    yield


@pytest.fixture(scope="session")
def es():
    """A client for the test Elasticsearch."""
    client = es_client()
    require_server("Elasticsearch", ES_URL, lambda: client.cluster.health(wait_for_status="yellow", timeout="10s"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def own_es():
    """A client for the private node of ``tests.fixtures_security.own_node`` (started if needed,
    left running for the next run): for tests that stop Elasticsearch or need fast refreshes."""
    from tests.fixtures_security.own_node import start_own_node

    client = start_own_node()
    yield client
    client.close()


@pytest.fixture
def index_name(es):
    """A fresh content index name, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "es" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
