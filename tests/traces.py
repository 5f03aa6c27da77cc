"""What the suite leaves behind, and its removal: the Elasticsearch a user shares, and the temp dir.

Every test cleans up after itself; this is the net under them, run once at the end of the
session (``tests/conftest.py``), which also says what it had to remove, so a leak shows.

The mark of a test's things on Elasticsearch is the ``test-`` prefix of content indices
(:data:`TEST_PREFIX`): on the shared node the sweep removes only what appeared during the
session *and* carries it:

* indices named ``test-*`` and ingest pipelines named ``test-*``;
* connectors whose ``index_name`` is ``test-*``, and jobs whose connector snapshot's
  ``index_name`` is ``test-*`` (or whose connector was removed); progress records of those
  jobs, and of in-process syncs (no job document);
* the protocol's indices and the progress index when the session created them and they are
  empty again.

Anything else that appeared (an index, a pipeline, a connector without the mark) is only
reported: it may be a user's, made while the suite ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TEST_PREFIX", "Snapshot", "sweep"]

#: Content indices (and ingest pipelines) of tests start with it.
TEST_PREFIX = "test-"
_CONNECTORS, _JOBS = ".elastic-connectors", ".elastic-connectors-sync-jobs"
_PROGRESS = "elastic-ingest-progress"
_CLAIMS = "elastic-ingest-index-claims"
_OWNED_WHEN_NEW = (f"{_CONNECTORS}-v1", f"{_JOBS}-v1", _PROGRESS, _CLAIMS)


def _names(es: Any, what: str) -> set[str]:
    try:
        if what == "indices":
            return set(es.indices.get(index="*", expand_wildcards="all", filter_path="*.settings.index.uuid"))
        if what == "pipelines":
            return set(es.ingest.get_pipeline(filter_path="*.description").body or {})
        hits = es.search(index=_CONNECTORS, size=10000, source=False, ignore_unavailable=True)["hits"]["hits"]
        return {hit["_id"] for hit in hits}
    except Exception:  # noqa: BLE001 - nothing there (or not readable): nothing to compare
        return set()


@dataclass
class Snapshot:
    """What the node held when the session started."""

    indices: set[str]
    pipelines: set[str]
    connectors: set[str]
    jobs: set[str]
    progress: set[str]
    claims: set[str]

    @classmethod
    def take(cls, es: Any) -> "Snapshot":
        return cls(_names(es, "indices"), _names(es, "pipelines"), _names(es, "connectors"),
                   set(_ids(es, _JOBS, {"match_all": {}})), set(_ids(es, _PROGRESS, {"match_all": {}})),
                   set(_ids(es, _CLAIMS, {"match_all": {}})))


def _ids(es: Any, index: str, query: dict[str, Any]) -> list[str]:
    try:
        es.indices.refresh(index=index, ignore_unavailable=True)
        hits = es.search(index=index, query=query, size=10000, source=False, ignore_unavailable=True)["hits"]["hits"]
    except Exception:  # noqa: BLE001 - no such index
        return []
    return [hit["_id"] for hit in hits]


def _delete(es: Any, index: str, ids: list[str]) -> None:
    if ids:
        es.bulk(operations=[{"delete": {"_index": index, "_id": doc_id}} for doc_id in ids], refresh=True)


def _orphan_progress(es: Any, before: Snapshot, swept_jobs: set[str]) -> list[str]:
    """Progress records written during the session whose job is swept, or has no job document
    (in-process syncs of tests)."""
    try:
        es.indices.refresh(index=_PROGRESS, ignore_unavailable=True)
        hits = es.search(index=_PROGRESS, size=10000, source=["job_id"], ignore_unavailable=True)["hits"]["hits"]
    except Exception:  # noqa: BLE001 - no progress index
        return []
    new = {hit["_id"]: (hit.get("_source") or {}).get("job_id") for hit in hits if hit["_id"] not in before.progress}
    job_ids = sorted({job for job in new.values() if job and job not in swept_jobs})
    existing = set()
    if job_ids:
        found = es.mget(index=_JOBS, ids=job_ids, source=False)["docs"] if es.indices.exists(index=_JOBS) else []
        existing = {doc["_id"] for doc in found if doc.get("found")}
    return [doc_id for doc_id, job in new.items() if job in swept_jobs or job not in existing]


def sweep(es: Any, before: Snapshot) -> list[str]:
    """Remove the suite's leftovers from ``es`` (see the module docstring); what was removed or is left."""
    report: list[str] = []
    prefix = {"prefix": {"index_name": TEST_PREFIX}}
    connectors = [c for c in _ids(es, _CONNECTORS, prefix) if c not in before.connectors]
    jobs = [j for j in _ids(es, _JOBS, {"bool": {"should": [
        {"prefix": {"connector.index_name": TEST_PREFIX}}, {"terms": {"connector.id": connectors}}]}})
        if j not in before.jobs]
    progress = _orphan_progress(es, before, set(jobs))
    claims = [c for c in _ids(es, _CLAIMS, {"match_all": {}}) if c.startswith(TEST_PREFIX) and c not in before.claims]
    for index, ids, what in ((_CONNECTORS, connectors, "connector"), (_JOBS, jobs, "job"),
                             (_PROGRESS, progress, "progress record"), (_CLAIMS, claims, "index claim")):
        _delete(es, index, ids)
        if ids and index != _CLAIMS:  # claims: the CLI's bookkeeping, left by tests deleting connectors directly
            report.append(f"removed {len(ids)} {what}(s) tests left")
    new_indices = _names(es, "indices") - before.indices
    for name in sorted(new_indices):
        empty = name in _OWNED_WHEN_NEW and not _ids(es, name, {"match_all": {}})
        if name.startswith(TEST_PREFIX) or empty:
            es.indices.delete(index=name, ignore_unavailable=True)
            if not empty:
                report.append(f"removed index {name}")
        elif not name.startswith("."):
            report.append(f"left index {name} (not a test's: no {TEST_PREFIX} prefix)")
    for name in sorted(_names(es, "pipelines") - before.pipelines):
        if name.startswith(TEST_PREFIX):
            es.ingest.delete_pipeline(id=name)
            report.append(f"removed ingest pipeline {name}")
        else:
            report.append(f"left ingest pipeline {name}")
    others = sorted(_names(es, "connectors") - before.connectors)
    if others:
        report.append(f"left connector(s) {', '.join(others)} (their index_name is not {TEST_PREFIX}*)")
    return report
