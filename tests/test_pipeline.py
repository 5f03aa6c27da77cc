"""The sync pipeline end to end against the real Elasticsearch, on the local runner.

Each test runs real syncs (``tests.helpers.run_sync``: the same ``pipelines.run.run_sync``
a sync process runs) of :class:`sources.testing.MemorySource` or a source written in the
original connector framework's style, and compares the index with the source by id and
content after every sync.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from sources.base import BaseDataSource
from sources.testing import MemorySource, make_docs
from tests.helpers import index_docs, run_sync
from transforms.dead_letter import read_dead_letters
from transforms.progress import PROGRESS_INDEX, read_progress

pytestmark = pytest.mark.integration

MEMORY = "sources.testing:MemorySource"


def expected(docs: list[dict[str, Any]], **extra: Any) -> dict[str, dict[str, Any]]:
    """What the index must hold for ``docs``: ``_id`` -> ``_source``."""
    return {d["_id"]: {**{k: v for k, v in d.items() if k != "_id"}, "id": d["_id"], **extra} for d in docs}


def versions(es, index: str) -> dict[str, int]:
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=10000, version=True, source=False)["hits"]["hits"]
    return {h["_id"]: h["_version"] for h in hits}


def test_full_sync_when_source_changes_then_index_equals_source_after_each_sync(es, index_name):
    first = make_docs(30)
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": first, "partitions": 3})
    assert outcome["status"] == "completed", outcome.get("error")
    assert index_docs(es, index_name) == expected(first)
    assert outcome["indexed_document_count"] == 30 and outcome["deleted_document_count"] == 0
    # Live counters (progress documents written by the workers) add up to the exact ones.
    es.indices.refresh(index=PROGRESS_INDEX)
    progress = read_progress(es, outcome["job_id"])
    assert progress["indexed_document_count"] == 30

    # 5 removed, 5 changed, 3 added, 20 untouched.
    changed = [{**d, "title": d["title"] + " (edited)", "_timestamp": "2024-06-01T00:00:00+00:00"} for d in first[5:10]]
    second = changed + first[10:] + make_docs(3, prefix="new")
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": second, "partitions": 2})
    assert outcome["status"] == "completed", outcome.get("error")
    assert index_docs(es, index_name) == expected(second)
    assert outcome["indexed_document_count"] == 8
    assert outcome["deleted_document_count"] == 5
    assert outcome["unchanged_document_count"] == 20
    assert outcome["source_document_count"] == 28 and outcome["total_document_count"] == 28


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_full_sync_when_digests_kept_as_files_then_exact_and_work_dir_removed(es, index_name, tmp_path, mode):
    work = tmp_path / "work"
    settings = {"work_dir": str(work), "direct_running_mode": mode, "direct_num_workers": 2 if mode != "in_memory" else 1}
    first = make_docs(40)
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": first}, **settings)["status"] == "completed"
    # 10 removed, 5 changed; read as 3 partitions (in 2 worker processes: their seen bitmaps are ORed)
    changed = [{**d, "title": "edited", "_timestamp": "2024-06-01T00:00:00+00:00"} for d in first[:5]]
    second = changed + first[5:30]
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": second, "partitions": 3}, **settings)
    assert outcome["status"] == "completed", outcome.get("error")
    assert (outcome["indexed_document_count"], outcome["deleted_document_count"],
            outcome["unchanged_document_count"]) == (5, 10, 25)
    assert index_docs(es, index_name) == expected(second)
    assert list(work.iterdir()) == []  # each sync's directory (digest files) is removed

    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": []}, work_dir=str(blocked / "work"))
    assert outcome["status"] == "error" and "pipeline.work_dir" in outcome["error"], outcome.get("error")
    assert index_docs(es, index_name) == expected(second)  # nothing deleted


def test_full_sync_when_nothing_changed_then_nothing_is_written(es, index_name):
    docs = make_docs(25)
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs})["status"] == "completed"
    before = versions(es, index_name)

    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs, "partitions": 2})
    assert outcome["status"] == "completed", outcome.get("error")
    assert outcome["indexed_document_count"] == 0 and outcome["deleted_document_count"] == 0
    assert outcome["unchanged_document_count"] == 25
    assert versions(es, index_name) == before  # not one document rewritten
    assert index_docs(es, index_name) == expected(docs)


def test_full_sync_when_source_fails_midway_then_job_fails_and_nothing_is_deleted(es, index_name):
    docs = make_docs(20)
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs})["status"] == "completed"

    # The source now yields only half of the documents, and then fails: a sync that
    # believed it had read everything would delete the other half.
    outcome = run_sync(index=index_name, fqn=MEMORY,
                       configuration={"docs": docs[:10], "partitions": 2, "fail_after": 3})
    assert outcome["status"] == "error"
    assert outcome["error"].startswith("SourceError: Memory: the backend went away after 3 documents")
    assert index_docs(es, index_name) == expected(docs)


def test_full_sync_when_elasticsearch_rejects_documents_then_they_are_dead_lettered_with_reasons(
        es, index_name, tmp_path):
    dead_letters = str(tmp_path / "dead")
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": [{"_id": "a", "x": 1}]},
                    dead_letters=dead_letters)["status"] == "completed"

    docs = [
        {"_id": "a", "x": 1},
        {"_id": "b", "x": "not a number"},     # mapping conflict: rejected by Elasticsearch
        {"_id": "c", "x": "still text"},
        {"_id": "d", "x": 4},
        {"_id": "e", "big": "y" * 5000},       # over max_document_bytes: rejected by Normalize
        {"title": "no id"},                    # no _id: rejected while reading
    ]
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, dead_letters=dead_letters,
                       max_document_bytes=4096)
    assert outcome["status"] == "completed", outcome.get("error")
    assert outcome["dead_letters"] == {"count": 4, "location": f"{dead_letters}/{outcome['job_id']}"}
    assert set(index_docs(es, index_name)) == {"a", "d"}

    letters = {(r["doc_id"], r["stage"]): r for r in read_dead_letters(dead_letters, outcome["job_id"])}
    assert set(letters) == {("b", "write"), ("c", "write"), ("e", "normalize"), (None, "read")}
    for doc_id in ("b", "c"):
        letter = letters[(doc_id, "write")]
        assert letter["operation"] == "index"
        assert letter["error_type"] == "document_parsing_exception"
        assert "[x]" in letter["error_message"] and "long" in letter["error_message"]
        assert '"x":' in letter["document"] and letter["job_id"] == outcome["job_id"]
    assert "over the limit of 4096" in letters[("e", "normalize")]["error_message"]
    assert letters[(None, "read")]["error_message"] == "the document has no _id"


def test_full_sync_when_rejections_exceed_the_error_rate_then_job_fails(es, index_name, tmp_path):
    docs = [{"_id": "seed", "x": 1}] + [{"_id": f"bad-{i}", "x": f"text {i}"} for i in range(5)]
    run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs[:1]})
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, dead_letters=str(tmp_path),
                       max_error_rate=0.5, min_errors_to_fail=2)
    assert outcome["status"] == "error"
    assert outcome["error"].startswith("TooManyErrors: ")


class UnchangedSource(MemorySource):
    """A source that knows nothing changed since the last sync."""

    async def changed(self):
        return False


def test_full_sync_when_source_reports_no_change_then_nothing_read_or_deleted(es, index_name):
    docs = make_docs(5)
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs})["status"] == "completed"
    outcome = run_sync(index=index_name, fqn=f"{__name__}:UnchangedSource", configuration={"docs": []})
    assert outcome["status"] == "completed", outcome.get("error")
    assert (outcome["source_document_count"], outcome["indexed_document_count"], outcome["deleted_document_count"]) \
        == (0, 0, 0)
    assert index_docs(es, index_name) == expected(docs)


class OriginalStyleSource(BaseDataSource):
    """Written as for Elastic's original connector framework: async, filtering only, lazy content."""

    name = "Original style"
    service_type = "original"

    def __init__(self, configuration):
        super().__init__(configuration=configuration)
        self.prefix = self.configuration["prefix"]

    @classmethod
    def get_default_configuration(cls):
        return {
            "prefix": {"label": "Prefix", "order": 1, "type": "str", "value": "item"},
            "count": {"label": "Count", "order": 2, "type": "int", "value": 3},
        }

    async def ping(self):
        await asyncio.sleep(0)

    async def get_content(self, item, timestamp=None, doit=False):
        if not doit:
            return None
        await asyncio.sleep(0)
        return {"_id": item["_id"], "_timestamp": timestamp, "body": f"content of {item['_id']}"}

    async def get_docs(self, filtering=None):
        for i in range(int(self.configuration["count"])):
            await asyncio.sleep(0)
            doc = {"_id": f"{self.prefix}-{i}", "_timestamp": "2024-02-02T00:00:00+00:00", "n": i}
            yield self.serialize(doc=doc), functools.partial(self.get_content, doc)


class IteratorSource:
    """The smallest source: not even a subclass, a plain generator of bare documents."""

    def __init__(self, configuration):
        self.configuration = configuration

    def get_docs(self):
        for i in range(int(self.configuration["count"] or 0)):
            yield {"_id": i, "square": i * i}


def test_sync_when_source_is_original_framework_style_then_documents_and_content_indexed(es, index_name):
    outcome = run_sync(index=index_name, fqn=f"{__name__}:OriginalStyleSource", configuration={"count": 4})
    assert outcome["status"] == "completed", outcome.get("error")
    assert index_docs(es, index_name) == {
        f"item-{i}": {"n": i, "_timestamp": "2024-02-02T00:00:00+00:00", "body": f"content of item-{i}",
                      "id": f"item-{i}"}
        for i in range(4)
    }


def test_sync_when_source_is_a_plain_iterator_then_documents_indexed(es, index_name):
    outcome = run_sync(index=index_name, fqn=f"{__name__}:IteratorSource", configuration={"count": 5})
    assert outcome["status"] == "completed", outcome.get("error")
    assert index_docs(es, index_name) == {str(i): {"square": i * i, "id": str(i)} for i in range(5)}


def test_sync_when_source_is_partitioned_then_same_index_as_one_partition(es, index_name):
    # (Partitions read by parallel worker processes: tests/test_pipeline_overload.py.)
    docs = make_docs(120)
    single = f"{index_name}-single"
    try:
        one = run_sync(index=single, fqn=MEMORY, configuration={"docs": docs, "lazy": True})
        many = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs, "lazy": True, "partitions": 4},
                        bulk={"max_docs": 25, "max_in_flight": 2}, read_batch_size=10)
        assert one["status"] == "completed", one.get("error")
        assert many["status"] == "completed", many.get("error")
        want = {doc_id: {**doc, "body": f"body of {doc_id}"} for doc_id, doc in expected(docs).items()}
        assert index_docs(es, index_name) == index_docs(es, single) == want
        assert many["indexed_document_count"] == one["indexed_document_count"] == 120
        assert many["source_document_count"] == 120
    finally:
        es.indices.delete(index=single, ignore_unavailable=True)


def test_incremental_sync_when_source_reports_changes_then_applied_and_cursor_kept(es, index_name):
    docs = make_docs(5)
    assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs})["status"] == "completed"
    changes = [
        {"op": "update", "doc": {"_id": "doc-1", "rank": 100}},
        {"op": "delete", "doc": {"_id": "doc-2"}},
        {"op": "index", "doc": {"_id": "doc-3", "title": "replaced"}},
        {"op": "index", "doc": {"_id": "doc-9", "title": "new"}},
    ]
    outcome = run_sync(index=index_name, fqn=MEMORY, job_type="incremental", configuration={"changes": changes})
    assert outcome["status"] == "completed", outcome.get("error")
    assert outcome["sync_cursor"] == {"position": 4}
    want = expected(docs)
    want["doc-1"]["rank"] = 100
    del want["doc-2"]
    want["doc-3"] = {"title": "replaced", "id": "doc-3"}
    want["doc-9"] = {"title": "new", "id": "doc-9"}
    assert index_docs(es, index_name) == want

    # From the stored cursor only the new changes are applied, in their order: doc-7 is
    # indexed then deleted (gone), doc-8 deleted then indexed (present).
    changes += [
        {"op": "delete", "doc": {"_id": "doc-9"}},
        {"op": "index", "doc": {"_id": "doc-7", "title": "short-lived"}},
        {"op": "delete", "doc": {"_id": "doc-7"}},
        {"op": "delete", "doc": {"_id": "doc-8"}},
        {"op": "index", "doc": {"_id": "doc-8", "title": "back"}},
    ]
    outcome = run_sync(index=index_name, fqn=MEMORY, job_type="incremental", configuration={"changes": changes},
                       sync_cursor={"position": 4})
    assert outcome["status"] == "completed", outcome.get("error")
    assert outcome["deleted_document_count"] == 2 and outcome["indexed_document_count"] == 2
    assert outcome["sync_cursor"] == {"position": 9}
    del want["doc-9"]
    want["doc-8"] = {"title": "back", "id": "doc-8"}
    assert index_docs(es, index_name) == want


def test_incremental_sync_when_new_cursor_cannot_be_read_back_then_job_fails_rather_than_keep_the_old(
        es, index_name):
    from tests.helpers import ES_URL

    changes = [{"op": "index", "doc": {"_id": "doc-1", "title": "one"}}]
    try:
        outcome = run_sync(index=index_name, fqn="tests.fixtures_sources.cursor:CursorReadBlockingSource",
                           job_type="incremental", configuration={"changes": changes, "es_url": ES_URL},
                           sync_cursor={"position": 0})
        blocked = es.indices.get_settings(index=PROGRESS_INDEX, name="index.blocks.read", expand_wildcards="all")
    finally:
        es.indices.put_settings(index=PROGRESS_INDEX, settings={"index.blocks.read": None})
    assert blocked[PROGRESS_INDEX]["settings"]["index"]["blocks"]["read"] == "true"  # the test did block it
    assert outcome["status"] == "error"
    assert outcome["error"].startswith("IndexingError: the new sync cursor could not be read back"), outcome["error"]
    assert "sync_cursor" not in outcome  # the connector keeps its cursor; the job says why it failed
    assert set(index_docs(es, index_name)) == {"doc-1"}


def test_scan_index_and_find_deletions_when_index_spans_many_pages_then_exactly_the_unseen_ids(es, index_name,
                                                                                                tmp_path):
    """The digests scan and the deletion rescan over several pages and concurrent slices."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to
    from elasticsearch import helpers as es_helpers

    from tests.helpers import ES_URL
    from transforms.digests import IndexDigests, id_digests, mark_seen, new_seen, shaped, stamp_digest
    from transforms.es_client import ElasticsearchConnection
    from transforms.find_deletions import FindDeletions
    from transforms.scan_index import ScanIndex, scan_pages
    from transforms.work_dir import mark_work_dir

    total = 25_000  # 3 pages of 10,000 over 2 slices
    es_helpers.bulk(es, ({"_index": index_name, "_id": f"d{i}", "_source": {"_timestamp": "2024-01-01T00:00:00Z"}}
                         for i in range(total)), refresh=True)
    conn = ElasticsearchConnection(hosts=(ES_URL,))
    assert sum(len(page) for page in scan_pages(conn, index_name, slices=3)) == total
    assert list(scan_pages(conn, f"{index_name}-missing")) == []

    seen_ids = [f"d{i}" for i in range(total) if i % 1000] + ["only-in-source"]

    def seen_bitmaps(indexed, ids):  # what ReadFromSource emits for a source that yielded ``ids``
        seen = new_seen(len(indexed))
        mark_seen(seen, indexed.positions(id_digests(ids)))
        return seen

    mark_work_dir(tmp_path)  # what the sync process does with its work directory
    with beam.Pipeline(runner=FnApiRunner()) as p:
        indexed = p | ScanIndex(conn, index_name, slices=2, work_dir=str(tmp_path))
        assert_that(indexed | beam.Map(lambda d: (len(d), set(d.stamps.tolist()))),
                    # Documents written by someone else: their timestamp with no shape (transforms/digests.py).
                    equal_to([(total, {int(shaped(np.array([stamp_digest("2024-01-01T00:00:00+00:00")], np.uint64),
                                                  None)[0])})]), label="indexed")
        halves = [seen_ids[: len(seen_ids) // 2], seen_ids[len(seen_ids) // 2:]]  # two bundles' bitmaps
        seen = (p | "seen" >> beam.Create(halves)
                | beam.Map(lambda ids, d: seen_bitmaps(d, ids), d=beam.pvalue.AsSingleton(indexed)))
        stale = p | FindDeletions(conn, index_name, seen=seen, indexed=indexed, slices=2)
        assert_that(stale, equal_to([f"d{i}" for i in range(0, total, 1000)]), label="stale")

    # every indexed id seen: no second scan, nothing to delete (digests in memory this time)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        indexed = p | ScanIndex(conn, index_name)
        everything = (p | "seen" >> beam.Create([[f"d{i}" for i in range(total)]])
                      | beam.Map(lambda ids, d: seen_bitmaps(d, ids), d=beam.pvalue.AsSingleton(indexed)))
        assert_that(p | FindDeletions(conn, index_name, seen=everything, indexed=indexed), equal_to([]))
    IndexDigests.release(str(tmp_path))


def test_content_index_when_created_then_shards_and_replicas_are_the_clusters_unless_configured(es, index_name):
    # An index template stands for the cluster's defaults: the sync must not override it.
    template = f"defaults-{index_name}"
    es.indices.put_index_template(name=template, index_patterns=[f"{index_name}*"], priority=1000,
                                  template={"settings": {"number_of_replicas": 2}})
    sized = f"{index_name}-sized"
    try:
        docs = make_docs(3)
        assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs})["status"] == "completed"
        assert run_sync(index=sized, fqn=MEMORY, configuration={"docs": docs},
                        content_index={"number_of_shards": 2})["status"] == "completed"
        created = es.indices.get_settings(index=f"{index_name},{sized}")
        assert created[index_name]["settings"]["index"]["number_of_replicas"] == "2"
        assert created[index_name]["settings"]["index"]["number_of_shards"] == "1"
        assert created[sized]["settings"]["index"]["number_of_shards"] == "2"
        assert created[sized]["settings"]["index"]["number_of_replicas"] == "2"
        # The progress index too is created with the cluster's replicas, not 0.
        es.indices.delete(index=PROGRESS_INDEX, ignore_unavailable=True)
        assert run_sync(index=index_name, fqn=MEMORY, configuration={"docs": make_docs(4)})["status"] == "completed"
        progress = es.indices.get_settings(index=PROGRESS_INDEX, expand_wildcards="all")[PROGRESS_INDEX]
        assert progress["settings"]["index"]["number_of_replicas"] == "1"
        assert progress["settings"]["index"]["hidden"] == "true"
    finally:
        es.indices.delete_index_template(name=template)
        es.indices.delete(index=sized, ignore_unavailable=True)


def test_sync_when_source_is_slow_then_first_documents_searchable_before_it_ends(es, index_name):
    """Neither the read batch (500) nor the bulk batch (1000) waits for more documents than
    ``bulk.max_batch_seconds``: a slow source's first documents are in the index while it reads on."""
    import threading

    from tests.helpers import wait_for

    outcome: dict[str, Any] = {}
    sync = threading.Thread(target=lambda: outcome.update(run_sync(
        index=index_name, fqn="tests.fixtures_sources.slow:SlowSource", configuration={"count": 4, "delay_ms": 3000},
        bulk={"max_batch_seconds": 0.5})))
    sync.start()

    def searchable() -> int | None:
        if not es.indices.exists(index=index_name):
            return None
        es.indices.refresh(index=index_name)
        return es.count(index=index_name)["count"] or None

    try:
        first = wait_for(searchable, timeout=60, what="the first documents to be searchable")
    finally:
        sync.join(timeout=120)
    # One document every 3 s: the first ones were searchable with the source still reading.
    assert 1 <= first < 4, first
    assert outcome["status"] == "completed" and outcome["indexed_document_count"] == 4, outcome
