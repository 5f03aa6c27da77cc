"""WriteVersioned's requests against the real Elasticsearch: external versions through an ingest
pipeline, conflicts counted, deletes that leave tombstones, truncates that keep later writes."""

from __future__ import annotations

import uuid

import orjson
import pytest

from transforms.es_client import ElasticsearchConnection
from transforms.stream_ledger import ledger
from transforms.write_to_elasticsearch import BulkSettings
from transforms.write_versioned import _WriteVersionedFn
from tests.helpers import ES_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def writer(es):
    index, pipeline, job_id = f"test-vw-{uuid.uuid4().hex[:8]}", f"test-vw-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    es.ingest.put_pipeline(id=pipeline, processors=[])  # this node has no ingest-common module
    es.indices.create(index=index, settings={"index": {"gc_deletes": "1h"}})
    fn = _WriteVersionedFn(ElasticsearchConnection(hosts=(ES_URL,)), index, BulkSettings(), pipeline, job_id)
    fn.setup()
    yield fn
    fn.teardown()
    es.indices.delete(index=index)
    es.ingest.delete_pipeline(id=pipeline)


def _item(op, doc_id, position, **fields):
    return op, doc_id, orjson.dumps(fields) if op != "delete" else None, position, None, ledger("none").generation


def test_versioned_writes_when_older_change_replayed_then_refused_and_counted(es, writer):
    book = ledger(writer.job_id)
    for position in (100, 200, 300):
        book.emitted(position)
    assert writer._send([_item("index", "a", 200, name="new"), _item("index", "b", 100, name="b")]) == []
    assert writer._send([_item("index", "a", 100, name="old")]) == []  # a replay of an older change
    doc = es.get(index=writer.index, id="a")
    assert doc["_version"] == 200 and doc["_source"] == {"name": "new"}  # through the pipeline
    assert book.version_conflicts == 1

    writer._send([_item("delete", "b", 300)])
    assert writer._send([_item("index", "b", 100, name="resurrected")]) == []  # older than the delete
    assert not es.exists(index=writer.index, id="b") and book.version_conflicts == 2


def test_versioned_writes_when_truncated_then_older_documents_go_and_later_ones_stay(es, writer):
    writer._send([_item("index", "t1", 100, table="t"), _item("index", "t2", 500, table="t"),
                  _item("index", "u1", 100, table="u")])
    writer._remove(("truncate", None, orjson.dumps({"table": "t"}), 400, None, 0))
    es.indices.refresh(index=writer.index)
    assert not es.exists(index=writer.index, id="t1")
    assert es.exists(index=writer.index, id="t2") and es.exists(index=writer.index, id="u1")
    assert writer._send([_item("index", "t1", 200, table="t")]) == []  # a replay from before the truncate
    assert not es.exists(index=writer.index, id="t1")

    writer._remove(("sweep", None, b"{}", 450, None, 0))  # after a snapshot at 450: what it did not write goes
    es.indices.refresh(index=writer.index)
    assert not es.exists(index=writer.index, id="u1") and es.exists(index=writer.index, id="t2")


def test_versioned_writes_when_a_bundle_ends_then_its_changes_are_sent_and_acknowledged(es, writer):
    # The buffer is sent at max_docs and at the end of every bundle: nothing waits for a timer or
    # for more changes (a stream gone idle still has its last changes written).
    writer.settings = BulkSettings(max_docs=2)
    book = ledger(writer.job_id)
    writer.start_bundle()
    for doc_id, position in (("x1", 10), ("x2", 11), ("x3", 12)):
        book.emitted(position)
        list(writer.process(_item("index", doc_id, position, name=doc_id)))
    assert book.confirmable() == 11 and book.pending() == 1  # the first two went at max_docs
    assert not es.exists(index=writer.index, id="x3")
    assert list(writer.finish_bundle()) == []  # no dead letters
    assert es.exists(index=writer.index, id="x3") and book.confirmable() == 12 and book.pending() == 0
