"""Unit tests of the transforms: no Elasticsearch, small fakes at our own module boundary."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import pickle
import time
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError, ConnectionError as ESConnectionError
from hypothesis import given, settings as hypothesis_settings, strategies as st

from sources.driver import SourceDriver, call_lazy, is_async_callable
from sources.errors import ElasticsearchUnavailable
import transforms.digests as transforms_digests
from transforms.dead_letter import DeadLetter, WriteDeadLetters, read_dead_letters
from transforms.es_client import ElasticsearchConnection
from transforms.digests import (IndexDigests, IndexDigestsWriter, UnionSeen, id_digests, mark_seen, new_seen, seen_count,
                                stamp_digest, unseen_mask)
from transforms.normalize import MAX_ID_BYTES, Normalize, document_id, iso_timestamp, json_safe
from transforms.retries import retry_with_backoff
from transforms.write_to_elasticsearch import BulkSettings, _BulkWriteFn


def api_error(status: int) -> ApiError:
    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "localhost", 9200))
    return ApiError(f"status {status}", meta=meta, body={})


# -- retries -------------------------------------------------------------------------------
def test_retry_with_backoff_when_429_then_5xx_then_ok_then_retried_with_growing_jittered_delays():
    outcomes = [api_error(429), api_error(503), ESConnectionError("refused"), "ok"]
    sleeps: list[float] = []

    def call():
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    retries = []
    settings = BulkSettings(initial_backoff=1.0, max_backoff=3.0, max_retries=5)
    assert retry_with_backoff(call, settings, sleep=sleeps.append, on_retry=lambda: retries.append(1)) == "ok"
    assert len(retries) == 3 and len(sleeps) == 3
    # Full jitter: delay n is drawn from [0, cap] with cap = min(max_backoff, initial * 2**n).
    for delay, cap in zip(sleeps, (1.0, 2.0, 3.0)):
        assert 0 <= delay <= cap


def test_retry_with_backoff_when_done_then_what_its_callbacks_refer_to_is_freed_at_once():
    """tenacity's retry state is a reference cycle: a batch the callbacks refer to must not wait in
    it for the cyclic garbage collector (1000 documents per _bulk request)."""
    import gc
    import weakref

    class Batch:
        pass

    def callbacks():  # the batch is reachable only through the callbacks, as in _write_batch
        batch = Batch()
        return weakref.ref(batch), (lambda: batch and "ok"), (lambda: batch)

    freed, call, on_retry = callbacks()
    gc.disable()
    try:
        assert retry_with_backoff(call, BulkSettings(), on_retry=on_retry) == "ok"
        del call, on_retry
        assert freed() is None
    finally:
        gc.enable()


def test_retry_with_backoff_when_failing_past_max_retry_seconds_then_gives_up_in_time_with_the_last_error():
    now = [0.0]
    attempts: list[float] = []

    def call():
        attempts.append(now[0])
        raise ESConnectionError(f"refused at {now[0]:.1f}s")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    settings = BulkSettings(max_retries=1000, max_retry_seconds=10.0, initial_backoff=0.5, max_backoff=4.0)
    with pytest.raises(ElasticsearchUnavailable) as raised:
        retry_with_backoff(call, settings, sleep=sleep, clock=lambda: now[0], what="_bulk index to idx")
    assert len(attempts) > 3 and max(attempts) <= 10.0  # no attempt starts after the deadline
    message = str(raised.value)
    assert message.startswith(f"_bulk index to idx failed after {len(attempts)} attempts in ")
    assert message.endswith(f"refused at {attempts[-1]:.1f}s")  # the last error, not the first


def test_retry_with_backoff_when_error_is_not_retriable_then_raised_at_once():
    calls = []

    def call():
        calls.append(1)
        raise api_error(400)

    with pytest.raises(ApiError):
        retry_with_backoff(call, BulkSettings(), sleep=lambda _: None)
    assert len(calls) == 1


def test_retry_with_backoff_when_retries_run_out_then_elasticsearch_unavailable():
    def call():
        raise api_error(429)

    with pytest.raises(ElasticsearchUnavailable, match="after 3 attempts in 0s: HTTP 429"):
        retry_with_backoff(call, BulkSettings(max_retries=2), sleep=lambda _: None)


class _FakeBulkClient:
    """Answers ``bulk`` from a script of per-item statuses, recording what was sent."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.sent: list[list[str]] = []

    def options(self, **_):
        return self

    def close(self):
        pass

    def bulk(self, operations, index=None, pipeline=None, filter_path=None):
        actions = [json.loads(line) for line in operations.splitlines()[::2]]
        ids = [next(iter(a.values()))["_id"] for a in actions]
        self.sent.append(ids)
        statuses = self.scripts.pop(0)
        items = []
        for doc_id in ids:
            status = statuses.get(doc_id, 201)
            item = {"_index": "idx", "_id": doc_id, "status": status, **({"result": "created"} if status < 300 else {})}
            if status >= 300:
                item["error"] = {"type": "es_rejected_execution_exception" if status == 429 else
                                 "document_parsing_exception", "reason": f"rejected {doc_id}"}
            items.append({"index": item})
        return {"errors": True, "items": items}


def test_bulk_write_when_some_items_429_then_only_those_resent_and_others_dead_lettered():
    fn = _BulkWriteFn(ElasticsearchConnection(), "idx", "index", BulkSettings(initial_backoff=0.001), None, None, 1)
    fn.es = _FakeBulkClient([{"b": 429, "c": 400, "d": 429}, {"d": 429}, {}])
    fn.progress = None
    batch = [("index", doc_id, json.dumps({"v": doc_id}).encode()) for doc_id in "abcde"]
    letters, stats = fn._write_batch(batch)
    assert fn.es.sent == [list("abcde"), ["b", "d"], ["d"]]
    assert stats["indexed"] == 4 and stats["item_retries"] == 3
    assert (stats["applied"], stats["not_as_sent"]) == (4, 0)
    assert [(le.doc_id, le.stage, le.error_type, le.error_message) for le in letters] == [
        ("c", "write", "document_parsing_exception", "rejected c")]
    assert json.loads(letters[0].document) == {"v": "c"}


def test_bulk_write_when_batched_then_lists_fill_requests_of_max_docs_in_order():
    """``batched``: elements are lists (Normalize's output in a full sync); requests still hold
    at most ``max_docs`` items, in the order read, across lists."""
    fn = _BulkWriteFn(ElasticsearchConnection(), "idx", "index", BulkSettings(max_docs=2, max_in_flight=1), None,
                      None, 1, batched=True)
    fn.setup()
    try:
        fn.es, fn.progress = _FakeBulkClient([{}, {"c": 400}, {}]), None
        fn.start_bundle()
        out = [*(fn.process([(i, json.dumps({"v": i}).encode()) for i in "abc"]) or ()),
               *(fn.process([("d", b"{}"), ("e", b"{}")]) or ()), *fn.finish_bundle()]
        assert fn.es.sent == [["a", "b"], ["c", "d"], ["e"]]
        assert [letter.value.doc_id for letter in out] == ["c"]  # the rejected one, as a dead letter
    finally:
        fn.teardown()


def test_bulk_write_when_batched_then_the_first_list_is_sent_at_once_and_later_ones_fill_requests():
    """A sync's fixed cost ends at its first write: the first list goes without waiting for
    ``max_docs`` documents; later lists fill requests up to ``max_docs``."""
    fn = _BulkWriteFn(ElasticsearchConnection(), "idx", "index", BulkSettings(max_docs=1000, max_in_flight=4), None,
                      None, 1, batched=True)
    fn.setup()
    try:
        fn.es, fn.progress = _FakeBulkClient([{}, {}]), None
        fn.start_bundle()
        list(fn.process([(i, b"{}") for i in "abc"]))
        assert fn.first_sent_at is not None and not fn.buffer  # sent, before any other list came
        list(fn.process([("d", b"{}")]))
        list(fn.process([("e", b"{}")]))
        list(fn.finish_bundle())
        assert fn.es.sent == [["a", "b", "c"], ["d", "e"]]
    finally:
        fn.teardown()


def test_bulk_write_when_batched_list_spans_many_requests_then_never_more_than_max_in_flight():
    """A list of ten documents with ``max_docs=1`` makes ten requests: each waits for a free
    place, as single documents do, rather than all ten queued at once (whose retries, were
    Elasticsearch down, would run one after another, each with its whole deadline)."""
    fn = _BulkWriteFn(ElasticsearchConnection(), "idx", "index", BulkSettings(max_docs=1, max_in_flight=2), None,
                      None, 1, batched=True)
    fn.setup()
    try:
        fn.es, fn.progress = _FakeBulkClient([{}] * 10), None
        already_in_flight = []
        submit = fn.pool.submit
        fn.pool.submit = lambda *args: (already_in_flight.append(len(fn.in_flight)), submit(*args))[1]
        fn.start_bundle()
        list(fn.process([(str(i), b"{}") for i in range(10)]))
        list(fn.finish_bundle())
        assert len(fn.es.sent) == 10 and max(already_in_flight) < 2, already_in_flight
    finally:
        fn.teardown()


def test_bulk_write_when_items_keep_failing_with_429_then_job_fails():
    fn = _BulkWriteFn(ElasticsearchConnection(), "idx", "index",
                      BulkSettings(initial_backoff=0.001, max_retries=2), None, None, 1)
    fn.es = _FakeBulkClient([{"a": 429}] * 3)
    fn.progress = None
    with pytest.raises(ElasticsearchUnavailable, match="after 3 attempts .*1 document.s. still rejected with 429/5xx"):
        fn._write_batch([("index", "a", b"{}")])


def test_bulk_actions_when_mixed_operations_then_in_order_with_update_as_upsert():
    fn = _BulkWriteFn(ElasticsearchConnection(), "idx", "mixed", BulkSettings(), None, None, 1)
    body = fn._actions([("index", "a", b'{"x":1}'), ("update", "b", b'{"y":2}'), ("delete", "a", None)])
    assert body.endswith(b"\n")  # NDJSON: every line ends with a newline
    assert [json.loads(line) for line in body.splitlines()] == [  # the index is in the request's path
        {"index": {"_id": "a"}}, {"x": 1},
        {"update": {"_id": "b"}}, {"doc": {"y": 2}, "doc_as_upsert": True},
        {"delete": {"_id": "a"}},
    ]


# -- normalize -----------------------------------------------------------------------------
def test_document_id_when_long_or_odd_then_string_and_hashed_over_512_bytes():
    assert document_id(7) == "7" and document_id(7.0) == "7" and document_id("é") == "é"
    long_id = "x" * (MAX_ID_BYTES + 1)
    assert len(document_id(long_id)) == 64 and document_id(long_id) == document_id(long_id)
    assert document_id("x" * MAX_ID_BYTES) == "x" * MAX_ID_BYTES
    with pytest.raises(ValueError):
        document_id(None)


def test_json_safe_when_values_are_not_json_then_converted():
    value = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5),
        "day": dt.date(2024, 1, 2),
        "price": decimal.Decimal("1.50"),
        "count": decimal.Decimal("3"),
        "blob": b"\x00\x01",
        "uid": uuid.UUID(int=1),
        "nan": float("nan"),
        "tags": {"b", "a"},
        1: "int key",
    }
    assert json_safe(value) == {
        "when": "2024-01-02T03:04:05+00:00", "day": "2024-01-02", "price": 1.5, "count": 3, "blob": "AAE=",
        "uid": "00000000-0000-0000-0000-000000000001", "nan": None, "tags": ["a", "b"], "1": "int key",
    }
    with pytest.raises(ValueError, match="cannot represent a object value"):
        json_safe(object())


def test_iso_timestamp_when_given_various_forms_then_utc_iso():
    assert iso_timestamp("2024-01-01T01:00:00+01:00") == "2024-01-01T00:00:00+00:00"
    assert iso_timestamp("2024-01-01T00:00:00Z") == "2024-01-01T00:00:00+00:00"
    assert iso_timestamp(0) == "1970-01-01T00:00:00+00:00"
    assert iso_timestamp(None) is None


@pytest.mark.parametrize("batched", [False, True])
def test_normalize_when_documents_flow_then_json_bytes_and_dead_letters(batched):
    """One document per element, or (batched, as a full sync reads) lists of them: the same
    documents and dead letters come out (lists for the writer, dead letters one by one)."""
    docs = [
        {"_id": 1, "_timestamp": dt.datetime(2024, 1, 1), "body": "  a \n b ", "when": dt.date(2024, 5, 6)},
        {"_id": "big", "text": "x" * 3000},
        {"_id": "odd", "thing": object()},
    ]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        elements = p | beam.Create([docs[:2], docs[2:]] if batched else docs)
        good, dead = elements | Normalize({"_reduce_whitespace": True}, max_document_bytes=2048, batched=batched)
        if batched:
            assert_that(good | "Sizes" >> beam.Map(len), equal_to([1]), label="one list with the one good document")
            good = good | beam.FlatMap(lambda normalized: normalized)
        assert_that(good | beam.MapTuple(lambda i, data: (i, json.loads(data))), equal_to([(
            "1", {"_timestamp": "2024-01-01T00:00:00+00:00", "body": "a b", "when": "2024-05-06",
                  "_reduce_whitespace": True, "id": "1"})]), label="good")
        assert_that(dead | beam.Map(lambda le: (le.doc_id, le.stage, le.error_type)),
                    equal_to([("big", "normalize", "ValueError"), ("odd", "normalize", "ValueError")]), label="dead")


def test_normalize_when_document_has_its_own_id_field_then_it_is_kept():
    docs = [{"_id": "orders_7", "id": 7, "name": "seven"}, {"_id": "plain", "name": "no id column"}]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        good, _ = p | beam.Create(docs) | Normalize()
        assert_that(good | beam.MapTuple(lambda i, data: (i, json.loads(data))), equal_to([
            ("orders_7", {"id": 7, "name": "seven"}), ("plain", {"id": "plain", "name": "no id column"})]))


# -- deletions and dead letters ------------------------------------------------------------
@pytest.mark.parametrize("on_disk", [False, True], ids=["in_memory", "on_disk"])
def test_digests_when_same_id_and_timestamp_then_unchanged_and_otherwise_not(tmp_path, on_disk):
    t1, t2 = "2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00"
    writer = IndexDigestsWriter(tmp_path / "digests" if on_disk else None)
    writer.add(id_digests(["b", "a"]), np.array([stamp_digest(t1), stamp_digest(t1)], dtype=np.uint64))
    writer.add(id_digests(["c"]), np.array([0], dtype=np.uint64))
    indexed = writer.finish()
    assert indexed.ids.tolist() == sorted(indexed.ids.tolist()) and len(indexed) == 3
    positions = indexed.positions(id_digests(["a", "b", "c", "new"]))
    assert positions[3] == -1 and sorted(positions[:3].tolist()) == [0, 1, 2]
    # the same instant written differently is the same timestamp; no timestamp is never unchanged
    stamps = np.array([stamp_digest(dt.datetime(2024, 1, 1)), stamp_digest(t2), 0, stamp_digest(t1)],
                      dtype=np.uint64)
    assert indexed.unchanged(positions, stamps).tolist() == [True, False, False, False]
    assert stamp_digest("2024-01-01T01:00:00+01:00") == stamp_digest(t1) != stamp_digest(t2)
    assert stamp_digest(None) == stamp_digest("") == 0
    empty = IndexDigestsWriter(tmp_path / "empty" if on_disk else None).finish()
    assert len(empty) == 0 and empty.positions(id_digests(["a"])).tolist() == [-1]
    if on_disk:  # only the two sorted files are left; the side input is a small handle
        assert sorted(p.name for p in (tmp_path / "digests").iterdir()) == ["ids.u64", "stamps.u64"]
        assert len(pickle.dumps(indexed)) < 300


def test_index_digests_when_written_on_disk_in_pages_then_the_same_as_in_memory_and_readable_elsewhere(tmp_path):
    import subprocess
    import sys

    ids = [f"doc-{i}" for i in range(50_000)]
    stamps = np.arange(1, len(ids) + 1, dtype=np.uint64)
    # on disk through the bucket files (more pairs than it holds in memory), on disk sorted at once, in memory
    writers = [IndexDigestsWriter(tmp_path / "d", spill_records=10_000), IndexDigestsWriter(tmp_path / "held"),
               IndexDigestsWriter(None)]
    for start in range(0, len(ids), 7_000):  # pages of uneven size, as a scan delivers them
        for writer in writers:
            writer.add(id_digests(ids[start:start + 7_000]), stamps[start:start + 7_000])
    assert any((tmp_path / "d").glob(".bucket-*")) and not any((tmp_path / "held").glob(".bucket-*"))
    on_disk, held, in_memory = (writer.finish() for writer in writers)
    for digests in (on_disk, held):
        assert np.array_equal(digests.ids, in_memory.ids) and np.array_equal(digests.stamps, in_memory.stamps)
    assert [writer.duplicates for writer in writers] == [0, 0, 0]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ids.u64", "stamps.u64"]
    # ids added twice are counted, on disk as in memory (equal ids share a bucket)
    twice = [IndexDigestsWriter(tmp_path / "twice", spill_records=500), IndexDigestsWriter(tmp_path / "twice-held"),
             IndexDigestsWriter(None)]
    for writer in twice:
        writer.add(id_digests(ids[:1000]), stamps[:1000])
        writer.add(id_digests(ids[990:1200] + ids[:3]), stamps[:213])
    assert [(len(w.finish()), w.duplicates) for w in twice] == [(1213, 13)] * 3
    assert len(np.unique(on_disk.ids)) == len(ids)
    probe = id_digests(["doc-0", "doc-49999", "absent"])
    assert on_disk.stamps[on_disk.positions(probe)[:2]].tolist() == [1, 50_000]
    # on disk, each lookup searches one block of the mapped ids: the same answers as a plain search,
    # for every id, ids between and beyond the indexed ones, and over many page hand-backs
    every = id_digests(ids + [f"absent-{i}" for i in range(5_000)])
    every = np.concatenate([every, np.array([0, 2**64 - 1], dtype=np.uint64)])
    assert np.array_equal(on_disk.positions(every), in_memory.positions(every))
    assert np.array_equal(in_memory.ids[in_memory.positions(every)[:len(ids)]], every[:len(ids)])
    assert (in_memory.positions(every)[len(ids):] == -1).all()
    # another process (a worker) opens the same files from the pickled handle
    code = ("import pickle, sys; from transforms.digests import id_digests; "
            "d = pickle.loads(sys.stdin.buffer.read()); print(d.positions(id_digests(['doc-42', 'x'])).tolist())")
    other = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(on_disk), capture_output=True,
                           check=True)
    assert other.stdout.decode().strip() == str([int(on_disk.positions(id_digests(["doc-42"]))[0]), -1])
    IndexDigests.release(str(tmp_path))
    assert on_disk.directory not in transforms_digests._MAPPED


def test_id_digests_when_ids_differ_then_distinct_and_stable_across_processes():
    import subprocess
    import sys

    ids = [f"{i:010d}" for i in range(100_000)] + ["é", "a" * 512]
    digests = id_digests(ids)
    assert len(np.unique(digests)) == len(ids)
    assert np.isin(id_digests(["0000000042", "nope"]), digests).tolist() == [True, False]
    # workers on other machines must agree: no per-process hash seed
    other = subprocess.run([sys.executable, "-c", "from transforms.digests import id_digests; "
                            "print(int(id_digests(['0000000042'])[0]))"], capture_output=True, text=True, check=True)
    assert int(other.stdout) == int(digests[42])


def test_union_seen_when_bitmaps_of_bundles_combined_then_their_or():
    size = 1_003  # not a multiple of 8: the padding bits stay clear
    parts = []
    for start in range(0, size, 300):
        seen = new_seen(size)
        mark_seen(seen, np.array([-1, *range(start, min(start + 400, size), 2)]))  # -1: not indexed
        parts.append(seen)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        union = p | beam.Create(parts) | beam.CombineGlobally(UnionSeen())
        # the parts overlap and every start is even: the even positions, each once
        assert_that(union | beam.Map(lambda bits: (seen_count(bits), np.flatnonzero(unseen_mask(bits, size)).tolist())),
                    equal_to([(502, list(range(1, size, 2)))]))
    assert UnionSeen().extract_output(UnionSeen().create_accumulator()).tolist() == []
    assert unseen_mask(np.zeros(0, dtype=np.uint8), 3).tolist() == [True] * 3  # nothing read: all unseen


def test_write_dead_letters_when_written_then_read_back_from_avro(tmp_path):
    letters = [
        DeadLetter.of({"_id": "a", "x": "text"}, doc_id="a", operation="index", stage="write",
                      error="failed to parse field [x]", error_type="document_parsing_exception"),
        DeadLetter.of(b'{"y":1}', doc_id=None, operation="index", stage="read", error=ValueError("no _id")),
    ]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), job_id="job-1")
    records = sorted(read_dead_letters(str(tmp_path), "job-1"), key=lambda r: r["stage"])
    assert [(r["doc_id"], r["stage"], r["error_type"], r["error_message"], r["document"], r["job_id"])
            for r in records] == [
        (None, "read", "ValueError", "no _id", '{"y":1}', "job-1"),
        ("a", "write", "document_parsing_exception", "failed to parse field [x]", '{"_id": "a", "x": "text"}', "job-1"),
    ]
    assert list(read_dead_letters(str(tmp_path), "no-such-job")) == []


# -- the source driver ---------------------------------------------------------------------
def test_source_driver_when_async_generator_left_early_then_closed_on_its_loop():
    closed = []

    async def gen():
        try:
            for i in range(10):
                yield i
        finally:
            closed.append(True)

    driver = SourceDriver(object())
    iterator = driver.iterate(gen())
    assert [next(iterator), next(iterator)] == [0, 1]
    iterator.close()
    assert closed == [True]
    driver.close()


def test_source_driver_when_gathering_then_bounded_and_ordered():
    running = []
    peak = []

    async def job(i):
        running.append(i)
        peak.append(len(running))
        await asyncio.sleep(0.01)
        running.remove(i)
        return i * 10

    driver = SourceDriver(object())
    assert driver.gather([job(i) for i in range(6)], limit=2) == [0, 10, 20, 30, 40, 50]
    assert max(peak) == 2
    driver.close()


def test_call_lazy_when_signatures_differ_then_called_with_what_they_accept():
    import functools

    async def content(doc, timestamp=None, doit=False):
        return {"body": doc["_id"], "doit": doit, "timestamp": timestamp}

    lazy = functools.partial(content, {"_id": "a"})
    assert is_async_callable(lazy)
    driver = SourceDriver(object())
    assert driver.download(lazy, {"_timestamp": "t"}) == {"body": "a", "doit": True, "timestamp": "t"}
    assert driver.download(lambda: {"body": "bare"}, {}) == {"body": "bare"}
    assert not is_async_callable(lambda: None)
    assert call_lazy(lambda **kw: kw, {"_timestamp": "t"}) == {"doit": True, "timestamp": "t"}
    driver.close()


def test_call_lazy_when_one_decorator_wraps_downloads_of_different_signatures_then_each_called_as_it_accepts():
    """What a kind of download accepts is remembered by its code; a decorator's wrapper shares
    one code among every function it wraps, so it is inspected each time (its signature is theirs)."""
    import functools

    def logged(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)
        return wrapper

    @logged
    def with_args(doit=False, timestamp=None):
        return {"doit": doit, "timestamp": timestamp}

    @logged
    def bare():
        return {"body": "bare"}

    class Download:
        def __call__(self, doit=False):
            return {"doit": doit}

    for _ in range(2):  # the second round is answered from what the first remembered
        assert call_lazy(with_args, {"_timestamp": "t"}) == {"doit": True, "timestamp": "t"}
        assert call_lazy(bare, {"_timestamp": "t"}) == {"body": "bare"}
        assert call_lazy(Download(), {}) == {"doit": True}
        assert call_lazy(lambda timestamp=None: {"timestamp": timestamp}, {"_timestamp": "u"}) == {"timestamp": "u"}


def test_blocking_downloads_when_one_way_is_faster_then_it_is_used_and_the_other_retried_ever_more_rarely():
    from concurrent.futures import ThreadPoolExecutor

    from transforms.read_from_source import _BlockingDownloads

    pool = ThreadPoolExecutor(4)
    chooser = _BlockingDownloads(pool, 4, explore=2, max_explore=8)
    items = [(n, (lambda n=n: {"n": n}), {}) for n in range(8)]
    chooser.cost = {"pool": 1.0, "inline": 0.001}  # as measured: reading inline is faster
    ways = []
    for _ in range(40):
        ways.append(chooser._way(len(items)))
        if ways[-1] == chooser._exploring:
            chooser.cost[ways[-1]] = 2.0
            chooser._took(ways[-1], time.perf_counter(), 1)
    retried = [n for n, way in enumerate(ways) if way == "pool"]
    assert ways[0] == "inline" and retried == [1, 5, 13, 21, 29, 37]  # after 2, 4, then every 8 windows (the most)
    assert chooser._way(1) == "inline"  # one download: never handed over
    assert sorted(chooser.start(items)()) == [(n, {"n": n}) for n in range(8)]
    pool.shutdown()


# -- reading -------------------------------------------------------------------------------
def test_read_from_source_when_content_over_size_limit_then_document_kept_without_content():
    from sources.base import Partition
    from transforms.read_from_source import ReadFromSource, SourceSpec

    docs = [{"_id": "small"}, {"_id": "declared-big", "size": 1000}, {"_id": "long-name-makes-a-long-body"}]
    spec = SourceSpec("sources.testing:MemorySource", {"docs": {"value": docs}, "lazy": {"value": True},
                                                       "lazy_async": {"value": True}})
    writer = IndexDigestsWriter(None)  # indexed without timestamps: nothing is skipped
    writer.add(id_digests(["small", "gone", "declared-big"]), np.zeros(3, dtype=np.uint64))
    indexed = writer.finish()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        read = p | beam.Create([Partition()]) | ReadFromSource(
            spec, max_download_bytes=20, batch_size=2, skip_unchanged=p | "indexed" >> beam.Create([indexed]),
            track_seen=True)
        assert_that(read.docs | beam.Map(lambda d: (d["_id"], d.get("body"))), equal_to([
            ("small", "body of small"), ("declared-big", None), ("long-name-makes-a-long-body", None)]), label="docs")
        # one bitmap for the bundle: the indexed ids the source yielded ("gone" was not)
        assert_that(read.seen | beam.Map(lambda bits: (~unseen_mask(bits, 3)).tolist()), equal_to(
            [[i in indexed.positions(id_digests(["small", "declared-big"])) for i in range(3)]]), label="seen")


def test_read_from_source_when_batched_then_a_list_per_download_window_never_a_whole_batch_of_large_files(tmp_path):
    """``batched``: documents leave the read as lists, one per download window, so a batch of
    large files is never held whole (2 x download_concurrency MiB per window: two 1.5 MB files)."""
    from sources.base import Partition
    from transforms.read_from_source import ReadFromSource, SourceSpec

    for n in range(6):
        (tmp_path / f"big-{n}.txt").write_bytes(b"x" * 1_500_000)
    (tmp_path / "small.txt").write_text("small")
    spec = SourceSpec("sources.directory:DirectoryDataSource", {"directory": {"value": str(tmp_path)}},
                      operator_settings={"allowed_roots": [str(tmp_path)]})
    with beam.Pipeline(runner=FnApiRunner()) as p:
        read = p | beam.Create([Partition()]) | ReadFromSource(spec, batch_size=500, download_concurrency=1,
                                                               batched=True)
        assert_that(read.docs | beam.Map(lambda docs: sorted(d["file_name"] for d in docs)), equal_to([
            ["big-0.txt", "big-1.txt"], ["big-2.txt", "big-3.txt"], ["big-4.txt", "big-5.txt"], ["small.txt"]]))


def test_normalize_when_attachment_then_text_extracted_unless_connector_says_not_to():
    import base64

    html = base64.b64encode(b"<html><body><p>Hello <b>there</b></p></body></html>").decode()
    doc = {"_id": "h", "file_name": "page.html", "_attachment": html}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        docs = p | beam.Create([doc])
        extracted, _ = docs | "on" >> Normalize({})
        kept, _ = docs | "off" >> Normalize({"_extract_binary_content": False})
        assert_that(extracted | "b1" >> beam.MapTuple(lambda i, data: json.loads(data).get("body", "").split()),
                    equal_to([["Hello", "there"]]), label="extracted")
        assert_that(kept | "b2" >> beam.MapTuple(lambda i, data: json.loads(data)["_attachment"] == html),
                    equal_to([True]), label="kept")


# -- fast paths agree with the slow ones ---------------------------------------------------
@hypothesis_settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2003é")), max_size=30))
def test_reduce_whitespace_when_any_text_then_same_as_split_and_join(text):
    from transforms.normalize import _reduce_whitespace

    assert _reduce_whitespace(text) == " ".join(text.split())


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30))])),
       st.sampled_from(["auto", "seconds", "minutes", "microseconds"]))
def test_iso_timestamp_when_text_already_or_not_canonical_then_same_instant_in_canonical_form(when, spec):
    canonical = when.astimezone(dt.timezone.utc).isoformat()
    text = when.isoformat(timespec=spec)
    expected = dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc).isoformat()
    assert iso_timestamp(text) == expected
    assert iso_timestamp(canonical) == canonical == iso_timestamp(when)


# -- content digests and document shapes (issue 23) ----------------------------------------
def test_content_digest_when_same_document_in_another_process_then_same_digest_and_any_change_another():
    import subprocess
    import sys

    from transforms.digests import content_digest

    doc = {"_id": "t_1", "tags": {"b", "a", "c"}, "price": decimal.Decimal("1.25"), "at": dt.datetime(2024, 1, 1),
           "raw": b"\x00\xff", "nested": {"z": 1, "a": [1, "1"]}}
    here = content_digest(doc)
    # Another interpreter has another hash seed: a set's order changes, its digest must not.
    code = ("import datetime as dt, decimal; from transforms.digests import content_digest; print(content_digest("
            "{'nested': {'a': [1, '1'], 'z': 1}, 'raw': b'\\x00\\xff', 'at': dt.datetime(2024, 1, 1), "
            "'price': decimal.Decimal('1.25'), 'tags': {'c', 'a', 'b'}, '_id': 't_1'}))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=".").stdout.strip()
    assert int(there) == here
    for changed in ({**doc, "price": decimal.Decimal("1.26")}, {**doc, "nested": {"z": 1, "a": [1, 1]}},
                    {**doc, "extra": None}, {k: v for k, v in doc.items() if k != "raw"}):
        assert content_digest(changed) != here


def test_indexed_stamp_when_read_back_then_equal_to_the_read_only_with_the_same_shape():
    from transforms.digests import CONTENT_FIELD, content_digest, indexed_stamp, shaped, stamp_digest
    from transforms.document_shape import SHAPE_FIELD, describe_reshape, document_shape

    def shape(**change):
        settings = dict(ingest_pipeline="search-default-ingestion", pipeline_flags={"_reduce_whitespace": True},
                        extract_text=True, max_download_bytes=1 << 20, service_type="postgresql",
                        configuration={"tables": "*"})
        return document_shape(**{**settings, **change})

    now, other = shape(), shape(pipeline_flags={"_reduce_whitespace": False})
    row = {"_id": "t_1", "name": "x"}
    digest = content_digest(row)
    read = shaped(np.array([digest, stamp_digest("2024-01-01T00:00:00Z"), 0], dtype=np.uint64), now)
    assert read[2] == 0  # neither timestamp nor content: always sent
    assert indexed_stamp({CONTENT_FIELD: f"{digest:016x}", SHAPE_FIELD: now}) == read[0]
    assert indexed_stamp({"_timestamp": "2024-01-01T00:00:00+00:00", SHAPE_FIELD: now}) == read[1]
    assert indexed_stamp({CONTENT_FIELD: f"{digest:016x}", SHAPE_FIELD: other}) != read[0]
    assert indexed_stamp({"_timestamp": "2024-01-01T00:00:00+00:00"}) != read[1]  # written before shapes
    assert indexed_stamp({CONTENT_FIELD: "not hex at all!"}) == 0
    assert len({now, other, shape(ingest_pipeline=None), shape(configuration={"tables": "a"})}) == 4
    assert shape(configuration={"tables": "*"}) == now
    assert "pipeline flags" in describe_reshape(3, other, now)
    assert "ingest pipeline" in describe_reshape(3, shape(ingest_pipeline=None), now)
    assert "source configuration" in describe_reshape(3, shape(configuration={"tables": "a"}), now)
    assert "earlier release" in describe_reshape(3, None, now)


def test_client_when_bulk_body_already_encoded_then_sent_as_it_is_and_other_bodies_as_before():
    """The writer's NDJSON body goes out as the very bytes object it built (no copies); a list of
    actions (as other callers give) is still encoded by elasticsearch-py's rules."""
    es = ElasticsearchConnection().client()
    ndjson = es.transport.serializers.serializers
    body = b'{"index":{"_id":"a"}}\n{"v":1}\n'
    for mimetype in ("application/x-ndjson", "application/vnd.elasticsearch+x-ndjson"):
        assert ndjson[mimetype].dumps(body) is body
        assert ndjson[mimetype].dumps([{"index": {"_id": "a"}}, {"v": 1}]) == body
        assert ndjson[mimetype].dumps(b'{"v":1}') == b'{"v":1}\n'  # no final newline: added, as before
    es.close()


def test_is_canonical_when_fuzzed_timestamps_then_same_answer_as_parsing_each_whole():
    """The canonical-timestamp check (its date and time checked once per second seen) answers as
    parsing the whole text would, on real instants and on one-character corruptions of them."""
    import random

    from transforms.normalize import _is_canonical

    def parsed(text: str) -> bool:  # the definition: what iso_timestamp returns for a UTC instant
        if len(text) not in (25, 32) or not text.endswith("+00:00") or text[19] not in "+." or not text.isascii():
            return False
        if len(text) == 32 and text[20:26] == "000000":
            return False
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            return False
        return value.isoformat() == text

    rng = random.Random(5)
    instants = [dt.datetime.fromtimestamp(rng.uniform(-1e10, 4e10), tz=dt.timezone.utc).isoformat()
                for _ in range(5000)]
    corrupted = []
    for text in instants[:2000]:
        for _ in range(3):
            chars = list(text)
            chars[rng.randrange(len(chars))] = rng.choice("0123456789-:T.+Z x\u0663\u00b2")
            corrupted.append("".join(chars))
    cases = instants + corrupted + ["2024-02-30T00:00:00+00:00", "2024-01-01T00:00:00.000000+00:00",
                                    "2024-01-01T00:00:00+01:00", "2024-01-01 00:00:00+00:00"]
    assert sum(map(_is_canonical, cases)) > 5000  # the instants, and corruptions that stay valid
    wrong = [text for text in cases for _ in range(2) if _is_canonical(text) != parsed(text)]
    assert not wrong, wrong[:5]
