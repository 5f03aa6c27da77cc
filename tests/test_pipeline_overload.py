"""Writes against an overloaded Elasticsearch: 429s are retried until every document lands.

A second node is started for this module with one write thread and a write queue of one
(``scripts/elasticsearch`` with ``ES_PORT=$OVERLOAD_ES_PORT``, default 9201, and ``ES_SETTINGS``), and stopped at the
end. Several ``_bulk`` requests in flight make it reject work with 429 (whole requests or
single items); the sync must retry exactly those and end with every document indexed and
exact counters. The sync runs on the local runner's ``multi_processing`` mode (two SDK
worker processes reading three partitions), so counters summed across processes are
checked too.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from sources.testing import make_docs
from tests.helpers import skip_or_fail, REPO, es_client, index_docs, run_sync

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = os.environ.get("OVERLOAD_ES_PORT", "9201")
URL = f"http://127.0.0.1:{PORT}"


def _script(action: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / "elasticsearch"), action], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "ES_PORT": PORT, **env})


@pytest.fixture(scope="module")
def overloaded_es():
    """An Elasticsearch node whose write pool has one thread and a queue of one."""
    already = _script("status").returncode == 0
    if not already:
        started = _script("start", ES_HEAP="512m",
                          ES_SETTINGS="thread_pool.write.queue_size=1 thread_pool.write.size=1")
        if started.returncode != 0:
            message = f"could not start the overloaded Elasticsearch on {PORT}: {started.stderr[-2000:]}"
            skip_or_fail(message)
    client = es_client(URL)
    nodes = client.nodes.info(metric="thread_pool")["nodes"]
    pool = next(iter(nodes.values()))["thread_pool"]["write"]
    if (pool.get("size"), pool.get("queue_size")) != (1, 1):
        client.close()
        message = f"the Elasticsearch on port {PORT} has write pool {pool}, not a tiny one; stop it first"
        skip_or_fail(message)
    yield client
    client.close()
    if not already:
        _script("stop")


def test_sync_when_elasticsearch_answers_429_on_parallel_workers_then_retried_until_every_document_lands(overloaded_es):
    index = "test-overload"
    overloaded_es.indices.delete(index=index, ignore_unavailable=True)
    overloaded_es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0})
    docs = make_docs(300)
    try:
        outcome = run_sync(index=index, fqn="sources.testing:MemorySource",
                           configuration={"docs": docs, "partitions": 3}, es_url=URL,
                           direct_running_mode="multi_processing", direct_num_workers=2,
                           bulk={"max_docs": 25, "max_in_flight": 3, "initial_backoff": 0.05, "max_backoff": 0.5,
                                 "max_retries": 30})
        assert outcome["status"] == "completed", outcome.get("error")
        assert outcome["bulk_retries"] > 0, "the node never pushed back: the test proves nothing"
        assert outcome["indexed_document_count"] == 300
        assert outcome["dead_letters"]["count"] == 0
        indexed = index_docs(overloaded_es, index)
        assert len(indexed) == 300
        assert indexed["doc-299"] == {"title": "document 299 v0", "rank": 299,
                                      "_timestamp": "2024-01-01T00:00:00+00:00", "id": "doc-299"}
    finally:
        overloaded_es.indices.delete(index=index, ignore_unavailable=True)
