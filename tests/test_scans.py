"""Scans of the content index are all or nothing, against the real Elasticsearch.

What really yields partial results on this node (checked by hand, and by the tests below):
a shard closed or deleted while a point in time (PIT) is open over it answers
``search_context_missing_exception`` / ``no_shard_available_action_exception``; without
``allow_partial_search_results: false`` the search still answers 200 with the other
shards' hits and ``_shards.failed: 1``. A PIT opened over an unassigned shard (an index
whose allocation filter matches no node) is refused with a 503 unless partial results
are allowed. Each case must stop the sync before it deletes or caches anything.
"""

from __future__ import annotations

import pytest

from sources.errors import PartialScan
from sources.testing import make_docs
from tests.helpers import ES_URL, es_client, index_docs, run_sync
from tests.test_pipeline import MEMORY
from transforms.digest_cache import DigestCache, index_state
from transforms.es_client import ElasticsearchConnection
from transforms.scan_index import scan_pages

pytestmark = pytest.mark.integration


@pytest.fixture
def alias_over_two(es, index_name):
    """``index_name`` as an alias over ``<name>-a`` (its write index) and ``<name>-b``, one shard each."""
    first, second = f"{index_name}-a", f"{index_name}-b"
    for name in (first, second):
        es.indices.create(index=name, settings={"number_of_shards": 1, "number_of_replicas": 0})
    es.indices.update_aliases(actions=[{"add": {"index": first, "alias": index_name, "is_write_index": True}},
                                       {"add": {"index": second, "alias": index_name}}])
    yield first, second
    es.indices.delete(index=f"{first},{second}", ignore_unavailable=True)


def _fill(es, index: str, count: int, prefix: str) -> None:
    es.bulk(operations=[line for n in range(count) for line in (
        {"index": {"_index": index, "_id": f"{prefix}-{n}"}}, {"_timestamp": "2024-01-01T00:00:00Z"})], refresh=True)


def test_scan_pages_when_a_shard_closes_mid_scan_then_partial_scan_raised(es, index_name, alias_over_two):
    first, second = alias_over_two
    _fill(es, first, 20, "a")
    _fill(es, second, 20, "b")
    conn = ElasticsearchConnection(hosts=(ES_URL,))
    assert sum(len(page) for page in scan_pages(conn, index_name, page_size=4)) == 40  # whole, when nothing happens

    pages = scan_pages(conn, index_name, slices=1, page_size=4)
    read = len(next(pages))
    es.indices.close(index=second)
    with pytest.raises(PartialScan, match="did not read the whole index"):
        for page in pages:
            read += len(page)
    assert read < 40


def test_scan_pages_when_a_shard_is_unassigned_then_partial_scan_raised(es, index_name, alias_over_two):
    first, second = alias_over_two
    _fill(es, first, 3, "a")
    es.indices.delete(index=second)
    es.indices.create(index=second, settings={"number_of_shards": 1, "number_of_replicas": 0,
                                              "index.routing.allocation.require._name": "no-such-node"},
                      wait_for_active_shards="0")
    es.indices.update_aliases(actions=[{"add": {"index": second, "alias": index_name}}])
    with pytest.raises(PartialScan, match="missing shards"):
        list(scan_pages(ElasticsearchConnection(hosts=(ES_URL,)), index_name))


def test_scan_pages_when_several_slices_then_they_share_one_point_in_time(es, index_name, monkeypatch):
    from elasticsearch import Elasticsearch

    _fill(es, index_name, 50, "d")
    opened: list[str] = []
    real = Elasticsearch.open_point_in_time

    def spy(self, **kwargs):
        answer = real(self, **kwargs)
        opened.append(answer["id"])
        return answer

    monkeypatch.setattr(Elasticsearch, "open_point_in_time", spy)
    ids = [hit["_id"] for page in scan_pages(ElasticsearchConnection(hosts=(ES_URL,)), index_name, slices=3,
                                             page_size=7) for hit in page]
    assert sorted(ids) == sorted(f"d-{n}" for n in range(50))
    assert len(opened) == 1


def test_full_sync_when_its_scan_is_partial_then_it_fails_deleting_and_caching_nothing(es, index_name, alias_over_two,
                                                                                      tmp_path, monkeypatch):
    """A shard closes right after the sync's scan opened its point in time."""
    from elasticsearch import Elasticsearch

    first, second = alias_over_two
    settings = {"work_dir": str(tmp_path / "work"), "digest_cache_dir": str(tmp_path / "cache")}
    docs = make_docs(30)
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, **settings)["status"] == "completed"
    _fill(es, second, 1, "stale")  # not in the source: the next full sync must delete it
    before = {**index_docs(es, first), **index_docs(es, second)}
    real = Elasticsearch.open_point_in_time

    def close_second_once_open(self, **kwargs):
        answer = real(self, **kwargs)
        monkeypatch.setattr(Elasticsearch, "open_point_in_time", real)
        with es_client() as admin:
            admin.indices.close(index=second)
        return answer

    monkeypatch.setattr(Elasticsearch, "open_point_in_time", close_second_once_open)
    failed = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, **settings)

    assert failed["status"] == "error", failed
    assert failed["error"].startswith("PartialScan:") and "did not read the whole index" in failed["error"]
    assert failed.get("deleted_document_count", 0) == 0 and failed.get("indexed_document_count", 0) == 0
    assert not failed.get("index_digests_kept")
    es.indices.open(index=second, wait_for_active_shards="all")
    assert {**index_docs(es, first), **index_docs(es, second)} == before
    state = index_state(es, index_name)
    assert state is not None and not DigestCache(tmp_path / "cache").holds(index_name, state)
    assert list((tmp_path / "work").iterdir()) == []
