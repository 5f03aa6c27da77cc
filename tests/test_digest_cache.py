"""The index digests cache: a full sync skips the scan only of an index nobody wrote to.

Against the real Elasticsearch: ``index_state`` must move with every kind of write, and a
sequence of real syncs (with writes by the sync itself and by someone else between them)
must stay exact whether the digests came from the cache or from a scan.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from sources.testing import MemorySource, make_docs
from tests.helpers import index_docs, run_sync
from tests.test_pipeline import MEMORY, expected
from transforms.digest_cache import MAX_IDLE_DAYS, DigestCache, IndexState, index_state, write_state
from transforms.digests import DIGEST_FILES, IndexDigests, IndexDigestsWriter, id_digests

pytestmark = pytest.mark.integration


def test_index_state_when_anything_is_written_then_it_changes(es, index_name):
    assert index_state(es, index_name) is None  # no index yet
    es.index(index=index_name, id="a", document={"x": 1}, refresh=True)
    first = index_state(es, index_name)
    assert first is not None and index_state(es, index_name) == first  # reading does not change it
    assert first.operations == 1
    es.search(index=index_name, query={"match_all": {}})
    assert index_state(es, index_name) == first

    es.index(index=index_name, id="a", document={"x": 1})  # the same content again: a new version
    second = index_state(es, index_name)
    es.delete(index=index_name, id="a")
    third = index_state(es, index_name)
    assert len({first.key, second.key, third.key}) == 3 and len({first.identity, second.identity, third.identity}) == 1
    assert third.operations - first.operations == 2  # one sequence number per write

    # Deleted and recreated with one document again: same sequence numbers, other UUIDs.
    es.indices.delete(index=index_name)
    es.index(index=index_name, id="a", document={"x": 1}, refresh=True)
    recreated = index_state(es, index_name)
    assert recreated is not None and recreated.identity != first.identity

    # An alias over two indices: a write to either changes it.
    other = f"{index_name}-other"
    es.index(index=other, id="b", document={"x": 2}, refresh=True)
    es.indices.put_alias(index=[index_name, other], name=f"{index_name}-alias")
    both = index_state(es, f"{index_name}-alias")
    es.index(index=other, id="c", document={"x": 3})
    assert index_state(es, f"{index_name}-alias") not in (None, both)
    es.indices.delete(index=other)


def _digests(directory, ids):
    writer = IndexDigestsWriter(directory)
    writer.add(id_digests(ids), np.arange(1, len(ids) + 1, dtype=np.uint64))
    return writer.finish()


def test_digest_cache_when_stored_then_found_only_at_that_state_and_older_entries_go(tmp_path):
    cache = DigestCache(tmp_path / "cache")
    s1, s2, s3 = (IndexState(key=f"{n}" * 64, identity="same", operations=n) for n in (1, 2, 3))
    scanned = _digests(tmp_path / "scan-1", ["a", "b", "c"])
    assert cache.lookup("idx", s1, into=tmp_path / "use-0") is None
    assert cache.store("idx", s1, scanned)
    found = cache.lookup("idx", s1, into=tmp_path / "use-1")
    assert found is not None and found.directory == str(tmp_path / "use-1")
    assert found.ids.tolist() == scanned.ids.tolist() and found.stamps.tolist() == scanned.stamps.tolist()
    assert cache.lookup("idx", s2, into=tmp_path / "use-2") is None  # another state
    assert cache.lookup("other", s1, into=tmp_path / "use-3") is None  # another index

    # A newer state replaces the entry; the sync that linked the old one keeps its files.
    assert cache.store("idx", s2, _digests(tmp_path / "scan-2", ["a"]))
    assert cache.lookup("idx", s1, into=tmp_path / "use-4") is None
    assert len(cache.lookup("idx", s2, into=tmp_path / "use-5")) == 1
    assert found.ids.tolist() == scanned.ids.tolist()
    assert len(list((tmp_path / "cache").iterdir())) == 1

    # Entries of other indices go when unused for MAX_IDLE_DAYS.
    root = tmp_path / "cache"
    before = set(root.iterdir())
    assert cache.store("gone", s1, scanned)
    (gone,) = set(root.iterdir()) - before
    assert cache.store("kept", s1, scanned)
    (kept,) = set(root.iterdir()) - before - {gone}
    idle = time.time() - (MAX_IDLE_DAYS + 1) * 86400
    os.utime(gone / "state.json", (idle, idle))
    assert cache.store("idx", s2, _digests(tmp_path / "scan-3", ["a"]))
    assert not gone.exists() and kept.exists()
    shutil.rmtree(kept)

    # A damaged entry is dropped, not used.
    entry = next((tmp_path / "cache").iterdir())
    (entry / "ids.u64").write_bytes(b"\0" * 3)
    assert cache.lookup("idx", s2, into=tmp_path / "use-6") is None
    assert not entry.exists()
    # Digests kept in memory (remote workers) are not cached; a cache that cannot be written is skipped.
    writer = IndexDigestsWriter(None)
    assert not cache.store("idx", s3, writer.finish())
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    assert not DigestCache(blocked / "cache").store("idx", s1, scanned)
    for path in ("scan-1", "scan-2", "scan-3", "use-1", "use-5"):
        IndexDigests.release(str(tmp_path / path))


class IntrudingSource(MemorySource):
    """A MemorySource during whose read someone else writes a document into the index."""

    document_neutral_fields = MemorySource.document_neutral_fields | {"index"}

    def get_docs(self, filtering=None, partition=None):
        from elasticsearch import Elasticsearch

        from tests.helpers import ES_URL

        with Elasticsearch(ES_URL) as es:
            es.index(index=self.configuration["index"], id="intruder", document={"title": "written mid-sync"})
        yield from super().get_docs(filtering, partition)

    @classmethod
    def get_default_configuration(cls):
        return {**MemorySource.get_default_configuration(),
                "index": {"label": "Index", "type": "str", "required": False, "default_value": ""}}


def test_full_syncs_when_nobody_else_writes_then_no_scan_after_the_first_and_results_exact(es, index_name, tmp_path):
    settings = {"work_dir": str(tmp_path / "work"), "digest_cache_dir": str(tmp_path / "cache")}

    def sync(docs, fqn=MEMORY, **extra):
        outcome = run_sync(index=index_name, fqn=fqn, configuration={"docs": docs, **extra}, **settings)
        assert outcome["status"] == "completed", outcome.get("error")
        if fqn == MEMORY:
            assert index_docs(es, index_name) == expected(docs)
        return (outcome["index_digests_from_cache"], outcome["indexed_document_count"],
                outcome["deleted_document_count"], outcome["unchanged_document_count"],
                outcome.get("index_digests_kept"))

    docs = make_docs(30)
    # The first sync into an empty index keeps what it wrote as the index's digests ...
    assert sync(docs) == (0, 30, 0, 0, True)
    # ... so the next one does not scan; nor does one after changes (3 changed, 4 removed).
    assert sync(docs) == (1, 0, 0, 30, True)
    changed = [{**d, "title": "edited", "_timestamp": "2024-06-01T00:00:00+00:00"} for d in docs[:3]]
    docs = changed + docs[3:26]
    assert sync(docs, partitions=2) == (1, 3, 4, 23, True)
    assert sync(docs) == (1, 0, 0, 26, True)

    # Someone else writes: a document the source does not have, and a changed copy of one it
    # has (same _timestamp). Stale digests would keep both; the index is scanned, both mended.
    es.index(index=index_name, id="intruder", document={"title": "not from the source"})
    es.index(index=index_name, id=docs[5]["_id"], document={"title": "overwritten"}, refresh=True)
    assert sync(docs) == (0, 1, 1, 25, True)
    assert sync(docs) == (1, 0, 0, 26, True)

    # Written by someone else while the sync runs: its digests are not kept, the next sync scans.
    assert sync(docs, fqn="tests.test_digest_cache:IntrudingSource", index=index_name)[4] is False
    assert sync(docs) == (0, 0, 1, 26, True)
    # A dead-lettered document (too big) leaves the index behind the source: not kept either.
    big = {"_id": "big", "title": "x" * 5000, "_timestamp": "2024-01-01T00:00:00+00:00"}
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs + [big]}, max_document_bytes=4096,
                       **settings)
    assert (outcome["status"], outcome["dead_letters"]["count"], outcome.get("index_digests_kept")) == (
        "completed", 1, None)
    assert sync(docs) == (1, 0, 0, 26, True)  # the index did not change: its digests still hold
    # A source that yields an id twice: if nothing was written the digests kept still hold ...
    assert sync(docs + docs[1:2]) == (1, 0, 0, 27, True)
    # ... but what such a read recorded is never kept: after a write, the next sync scans.
    docs = [{**docs[0], "title": "again", "_timestamp": "2024-07-01T00:00:00+00:00"}] + docs[1:]
    assert sync(docs + docs[1:2]) == (1, 1, 0, 26, False)
    assert sync(docs) == (0, 0, 0, 26, True)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one entry per index
    assert list((tmp_path / "work").iterdir()) == []

    # With pipeline.digest_cache off, the index is scanned although its digests are cached.
    outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, digest_cache=False, **settings)
    assert outcome["status"] == "completed" and outcome["index_digests_from_cache"] == 0
    assert sync(docs) == (1, 0, 0, 26, True)


# -- a cache that cannot corrupt ----------------------------------------------------------
def _published(entry) -> dict[str, bytes]:
    return {name: (entry / name).read_bytes() for name in (*DIGEST_FILES, "state.json")}


def test_index_digests_writer_when_its_names_link_to_published_digests_then_those_files_never_change(tmp_path):
    """The old failure: a lookup linked an entry's files into a folder, then a scan wrote into that folder."""
    cache = DigestCache(tmp_path / "cache")
    assert cache.store("idx", IndexState("1" * 64, "same", 1), _digests(tmp_path / "scan", ["a", "b", "c"]))
    (entry,) = (tmp_path / "cache").iterdir()
    published = _published(entry)
    folder = tmp_path / "sync-2"
    folder.mkdir()
    for name in (*DIGEST_FILES, "state.json"):
        os.link(entry / name, folder / name)

    rescanned = _digests(folder, ["x", "y"])
    write_state(folder, "idx", IndexState("2" * 64, "same", 2), rescanned.count)

    assert _published(entry) == published  # the entry (and any sync that mapped it) saw no change
    assert rescanned.ids.tolist() == sorted(id_digests(["x", "y"]).tolist())
    assert all(not (path.stat().st_mode & 0o222) for path in folder.iterdir())  # published read-only
    assert sorted(path.name for path in folder.iterdir()) == sorted((*DIGEST_FILES, "state.json"))
    IndexDigests.release(str(folder))


def test_scan_index_when_a_cache_lookup_fails_midway_then_the_scan_writes_a_fresh_folder(es, index_name, tmp_path,
                                                                                        monkeypatch):
    import transforms.digest_cache as digest_cache
    from tests.helpers import ES_URL
    from transforms.es_client import ElasticsearchConnection
    from transforms.scan_index import _DigestIndexFn

    es.bulk(operations=[line for n in range(20) for line in (
        {"index": {"_index": index_name, "_id": f"d{n}"}}, {"_timestamp": "2024-01-01T00:00:00Z"})], refresh=True)
    cache, work = DigestCache(tmp_path / "cache"), tmp_path / "work"
    scan = _DigestIndexFn(ElasticsearchConnection(hosts=(ES_URL,)), index_name, 2, str(work), cache)
    first = next(scan.process(None))  # scanned, and kept: the index did not move
    (entry,) = (tmp_path / "cache").iterdir()
    published = _published(entry)
    held = cache.lookup(index_name, index_state(es, index_name), into=tmp_path / "other-sync")  # another sync's
    assert held is not None

    links = []

    def link_then_fail(source, target):
        if links:
            raise OSError(28, "No space left on device")
        links.append(target)
        os.link(source, target)

    monkeypatch.setattr(digest_cache, "_link_or_copy", link_then_fail)
    second = next(scan.process(None))  # the lookup fails after one link: a scan

    assert links and not links[0].parent.exists()  # the half-linked folder is gone
    assert second.directory not in (first.directory, str(links[0].parent))
    assert sorted(second.ids.tolist()) == sorted(first.ids.tolist()) and len(second) == 20
    assert _published(tmp_path / "other-sync") == published  # what the other sync maps never changed
    for path in (first.directory, second.directory, str(tmp_path / "other-sync")):
        IndexDigests.release(path)


def test_digest_cache_when_over_max_bytes_then_least_recently_used_entries_go(tmp_path):
    state = IndexState("1" * 64, "same", 1)
    cache = DigestCache(tmp_path / "cache")
    for name in ("a", "b", "c"):
        assert cache.store(name, state, _digests(tmp_path / f"scan-{name}", ["x", "y", "z"]))
    entry_bytes = sum(f.stat().st_size for f in cache._entry("a", state).iterdir())  # digests and state.json
    cache = DigestCache(tmp_path / "cache", max_bytes=3 * entry_bytes + entry_bytes // 2)  # room for three
    old = time.time() - 3600
    for name, age in (("a", 0), ("b", 2), ("c", 1)):  # b is the least recently used
        entry = cache._entry(name, state)
        os.utime(entry / "state.json", (old + 600 * (2 - age), old + 600 * (2 - age)))
    assert cache.lookup("a", state, into=tmp_path / "use-a") is not None  # used now

    assert cache.store("d", state, _digests(tmp_path / "scan-d", ["x", "y", "z"]))
    assert [cache.holds(name, state) for name in "abcd"] == [True, False, True, True]
    assert sum(f.stat().st_size for e in (tmp_path / "cache").iterdir() for f in e.iterdir()) <= cache.max_bytes

    # Digests larger than the whole cache are not kept (and nothing is evicted for them).
    assert not cache.store("big", state, _digests(tmp_path / "scan-big", [str(n) for n in range(200)]))
    assert [cache.holds(name, state) for name in "acd"] == [True, True, True]
    for name in ("scan-a", "scan-b", "scan-c", "scan-d", "scan-big", "use-a"):
        IndexDigests.release(str(tmp_path / name))
    with pytest.raises(ValueError, match="max_bytes"):
        DigestCache(tmp_path, max_bytes=0)


def test_full_syncs_when_several_run_at_once_on_one_index_then_all_exact_and_the_kept_digests_true(es, index_name,
                                                                                                   tmp_path):
    """Sync processes of one index at once, sharing the cache: scans, stores and lookups overlap."""
    import json
    import subprocess
    import sys

    from pipelines.job import SyncJob
    from pipelines.run import write_job_file
    from pipelines.settings import PipelineConfig
    from tests.helpers import ES_URL, REPO
    from transforms.es_client import ElasticsearchConnection
    from transforms.scan_index import _DigestIndexFn

    count = 3000
    settings = PipelineConfig.model_validate({"work_dir": str(tmp_path / "work"), "read_batch_size": 200,
                                              "digest_cache_dir": str(tmp_path / "cache"),
                                              "dead_letters": str(tmp_path / "dead")})
    conn = ElasticsearchConnection(hosts=(ES_URL,))

    def start(n: int) -> tuple[subprocess.Popen, Path]:
        folder = tmp_path / f"job-{n}"
        folder.mkdir()
        job = SyncJob(job_id=f"concurrent-{n}", connector_id="test-connector", job_type="full",
                      index_name=index_name, service_type="memory", source_fqn=MEMORY,
                      configuration={"count": {"value": count}, "partitions": {"value": 2}})
        write_job_file(folder / "job.json", job, settings, conn)
        process = subprocess.Popen([sys.executable, "-m", "pipelines.run", str(folder / "job.json"),
                                    str(folder / "result.json")], cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        return process, folder / "result.json"

    want = expected(make_docs(count))
    runs = 0
    for round_ in range(3):  # 0: an empty index; 1: written by someone else (scans); 2: nothing written (lookups)
        if round_ == 1:
            es.index(index=index_name, id="intruder", document={"title": "not from the source"}, refresh=True)
        started = [start(runs + n) for n in range(2)]
        runs += 2
        for process, result in started:
            _, stderr = process.communicate(timeout=300)
            outcome = json.loads(result.read_text())
            assert outcome["status"] == "completed", (outcome.get("error"), stderr[-3000:])
        assert index_docs(es, index_name) == want

    state = index_state(es, index_name)
    cache = DigestCache(tmp_path / "cache")
    assert state is not None and cache.holds(index_name, state)
    kept = cache.lookup(index_name, state, into=tmp_path / "check")
    scanned = next(_DigestIndexFn(conn, index_name, 2, str(tmp_path / "scan"), None).process(None))
    assert kept.ids.tolist() == scanned.ids.tolist() and kept.stamps.tolist() == scanned.stamps.tolist()
    assert list((tmp_path / "work").iterdir()) == []
    for path in (kept.directory, scanned.directory):
        IndexDigests.release(path)


# -- through ingest pipelines -----------------------------------------------------------
@pytest.fixture
def empty_pipeline(es, index_name):
    """An ingest pipeline that changes nothing (this node has no ingest-common processors)."""
    name = f"{index_name}-pipeline"
    es.ingest.put_pipeline(id=name, description="elastic-ingest tests: no processors", processors=[])
    yield name
    es.indices.delete(index=index_name, ignore_unavailable=True)  # it may name the pipeline
    es.ingest.delete_pipeline(id=name)


def test_full_syncs_when_through_ingest_pipelines_that_apply_every_write_then_digests_kept(es, index_name, tmp_path,
                                                                                          empty_pipeline):
    settings = {"work_dir": str(tmp_path / "work"), "digest_cache_dir": str(tmp_path / "cache")}

    def sync(docs, **extra):
        outcome = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, **settings, **extra)
        assert outcome["status"] == "completed", outcome.get("error")
        assert index_docs(es, index_name) == expected(docs)
        return (outcome["index_digests_from_cache"], outcome["indexed_document_count"],
                outcome["deleted_document_count"], outcome.get("index_digests_kept"))

    docs = make_docs(30)
    # Named by the connector, as search-default-ingestion is on every real cluster.
    assert sync(docs, ingest_pipeline=empty_pipeline) == (0, 30, 0, True)
    assert sync(docs, ingest_pipeline=empty_pipeline) == (1, 0, 0, True)
    docs = [{**d, "_timestamp": "2024-06-01T00:00:00+00:00"} for d in docs[:3]] + docs[3:26]
    assert sync(docs, ingest_pipeline=empty_pipeline) == (1, 3, 4, True)
    # The index's own default and final pipelines.
    es.indices.put_settings(index=index_name, settings={"index.default_pipeline": empty_pipeline,
                                                        "index.final_pipeline": empty_pipeline})
    docs = [{**docs[0], "_timestamp": "2024-07-01T00:00:00+00:00"}] + docs[1:]
    assert sync(docs, ingest_pipeline=empty_pipeline) == (1, 1, 0, True)
    assert sync(docs, ingest_pipeline=empty_pipeline) == (1, 0, 0, True)
    # Another pipeline named by the connector: every document is written again, once.
    assert sync(docs) == (1, 26, 0, True)
    assert sync(docs) == (1, 0, 0, True)


def _simulate_pipeline(monkeypatch, *, drop: str | None = None, reroute: tuple[str, str] | None = None) -> None:
    """``_bulk`` as through a pipeline with a ``drop`` or ``reroute`` processor for one document.

    This node has no such processors (the integ-test distribution lacks ingest-common), so
    the client's ``bulk`` does what Elasticsearch does: the dropped document is left out of
    the request and answered as Elasticsearch answers it (``BulkRequestModifier.
    markItemAsDropped``: ``result: noop``, no sequence number); the rerouted one is really
    written to the other index, whose name the real answer then carries.
    """
    import orjson
    from elasticsearch import Elasticsearch

    real = Elasticsearch.bulk

    def bulk(self, *, operations, **kwargs):
        raw = operations.splitlines() if isinstance(operations, bytes) else operations
        lines = [orjson.loads(line) if isinstance(line, (bytes, str)) else line for line in raw if line]
        sent, dropped, position = [], [], 0
        while lines:
            action = lines.pop(0)
            (op, meta), = action.items()
            body = [lines.pop(0)] if op != "delete" else []
            if op == "index" and meta["_id"] == drop:
                dropped.append((position, meta))
            else:
                if op == "index" and reroute and meta["_id"] == reroute[0]:
                    action = {op: {**meta, "_index": reroute[1]}}
                sent += [action, *body]
            position += 1
        items = list(real(self, operations=sent, **kwargs)["items"]) if sent else []
        for at, meta in dropped:
            items.insert(at, {"index": {"_index": meta.get("_index", kwargs.get("index")), "_id": meta["_id"], "_version": -3, "result": "noop",
                                        "_shards": {"total": 0, "successful": 0, "failed": 0}, "status": 200}})
        return {"errors": False, "items": items}

    monkeypatch.setattr(Elasticsearch, "bulk", bulk)


@pytest.mark.parametrize("pipeline", ["drop", "reroute"])
def test_full_sync_when_a_pipeline_drops_or_reroutes_a_document_then_digests_not_kept_and_next_sync_scans(
        es, index_name, tmp_path, monkeypatch, pipeline):
    """Someone else's write during the sync balances the document the pipeline took away:
    sequence numbers and document count agree, only the per-item answers tell."""
    settings = {"work_dir": str(tmp_path / "work"), "digest_cache_dir": str(tmp_path / "cache")}
    docs = make_docs(30)
    elsewhere = f"{index_name}-elsewhere"
    with monkeypatch.context() as patched:
        _simulate_pipeline(patched, drop=docs[3]["_id"] if pipeline == "drop" else None,
                           reroute=(docs[5]["_id"], elsewhere) if pipeline == "reroute" else None)
        first = run_sync(index=index_name, fqn="tests.test_digest_cache:IntrudingSource",
                         configuration={"docs": docs, "index": index_name}, **settings)
    assert first["status"] == "completed", first.get("error")
    assert es.count(index=index_name)["count"] == 30  # 29 of ours and the intruder
    assert first["index_digests_kept"] is False

    again = run_sync(index=index_name, fqn=MEMORY, configuration={"docs": docs}, **settings)
    assert (again["status"], again["index_digests_from_cache"], again["indexed_document_count"],
            again["deleted_document_count"]) == ("completed", 0, 1, 1)
    assert index_docs(es, index_name) == expected(docs)
    es.indices.delete(index=elsewhere, ignore_unavailable=True)
