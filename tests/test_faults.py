"""Faults: Elasticsearch going away, the daemon killed, sources failing, bad documents.

Every scenario ends with the content index equal to the source: nothing lost, nothing
duplicated, nothing wrongly deleted.

The scenarios that stop Elasticsearch or run a daemon use a private node on
``FAULT_ES_PORT`` (default 9220, started with ``scripts/elasticsearch``; it keeps its data
per port), so they never disturb the shared node or other tests' connectors. The others
run a sync in-process (``tests.helpers.run_sync``) against the shared node.

The source is ``tests.fixtures_security.scripted:ScriptedSource``: a configurable number of
documents, an optional delay per document, a failure after N documents, malformed
documents on request.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fixtures_security.own_node import FAULT_ES_URL, delete_jobs_of, es_script, fast_refresh
from tests.helpers import DaemonProcess, child_pids, index_docs, run_sync, wait_for, wait_job_final, write_config

pytestmark = pytest.mark.integration

SCRIPTED = "tests.fixtures_security.scripted:ScriptedSource"
SERVICE_TYPE = "scripted_fault"
ALL_MALFORMED = "unserializable,too_large,bad_field,mapping_conflict"


def _connector(es, connector_id: str, index: str, **values: Any) -> None:
    from launcher.configuration import complete_configuration
    from launcher.indices import CONNECTORS_INDEX, ensure_indices
    from launcher.protocol import new_connector
    from tests.fixtures_security.scripted import ScriptedSource

    ensure_indices(es)
    configuration, _ = complete_configuration({k: {"value": v} for k, v in values.items()},
                                              ScriptedSource.get_default_configuration())
    doc = new_connector(service_type=SERVICE_TYPE, index_name=index, configuration=configuration)
    doc["status"] = "configured"
    es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)


def _start_job(es, connector_id: str) -> str:
    from launcher.protocol import create_job, get_connector

    return create_job(es, get_connector(es, connector_id), job_type="full", trigger_method="on_demand")


def _job(es, job_id: str) -> dict[str, Any]:
    from launcher.indices import JOBS_INDEX

    return es.get(index=JOBS_INDEX, id=job_id)["_source"]


def _daemon_config(tmp_path: Path, connector_id: str, **service: Any) -> Path:
    return write_config(
        tmp_path / "config.yml", es_url=FAULT_ES_URL, sources={SERVICE_TYPE: SCRIPTED},
        elasticsearch={"request_timeout": 10, "max_retries": 1},
        service={"connector_ids": [connector_id], "max_errors": 100000, **service},
        pipeline={"bulk": {"max_docs": 10, "initial_backoff": 0.2, "max_backoff": 2, "max_retries": 30},
                  "read_batch_size": 10},
    )


def _expected_ids(count: int) -> set[str]:
    return {f"doc-{n}" for n in range(count)}


def _cleanup(es, connector_id: str, index: str) -> None:
    from launcher.indices import CONNECTORS_INDEX

    try:
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        delete_jobs_of(es, [connector_id])
        es.indices.delete(index=index, ignore_unavailable=True)
    except Exception:  # noqa: BLE001 - best effort
        pass


# -- Elasticsearch stopped and restarted mid-sync ----------------------------------------
@pytest.fixture(scope="module")
def es_restart(own_es, tmp_path_factory) -> dict[str, Any]:
    """A daemon syncs 150 documents; Elasticsearch stops under it and comes back; then a second sync."""
    tmp = tmp_path_factory.mktemp("es-restart")
    cid, index, count = f"fault-es-{uuid.uuid4().hex[:8]}", f"test-fault-es-{uuid.uuid4().hex[:8]}", 150
    _connector(own_es, cid, index, count=count, delay_ms=50)
    daemon = DaemonProcess(_daemon_config(tmp, cid, job_stale_after=10), tmp / "daemon.log")
    try:
        job_id = _start_job(own_es, cid)
        wait_for(lambda: (_job(own_es, job_id).get("indexed_document_count") or 0) >= 20, timeout=90,
                 what="the sync to index its first documents")
        stopped = es_script("stop")
        assert stopped.returncode == 0, stopped.stderr
        # The outage is logged once, by the service (launcher.outage), whoever meets it first.
        wait_for(lambda: " unreachable: " in daemon.output(), timeout=30,
                 what="the daemon to notice the outage")
        started = es_script("start")
        assert started.returncode == 0, started.stderr
        own_es.cluster.health(wait_for_status="yellow", timeout="60s")
        fast_refresh(own_es)
        first = wait_job_final(own_es, job_id, timeout=150)
        second = wait_job_final(own_es, _start_job(own_es, cid), timeout=120)
        ids = set(index_docs(own_es, index))
    finally:
        daemon.stop()
        log = daemon.log_path.read_text(encoding="utf-8", errors="replace")
        _cleanup(own_es, cid, index)
    return {"first": first, "second": second, "ids": ids, "count": count, "log": log}


def test_sync_when_elasticsearch_restarts_mid_sync_then_next_sync_converges(es_restart):
    second = es_restart["second"]
    assert second["status"] == "completed", (second.get("error"), es_restart["log"][-3000:])
    assert es_restart["ids"] == _expected_ids(es_restart["count"])
    assert second["total_document_count"] == es_restart["count"]


def test_daemon_when_elasticsearch_restarts_then_the_outage_is_logged_when_it_starts_and_ends(es_restart):
    lines = es_restart["log"].splitlines()
    started = [line for line in lines if " unreachable: " in line]
    assert len(started) == 1, "\n".join(started)  # not one line per failed poll or job check
    assert any(" answers again, after " in line for line in lines), es_restart["log"][-3000:]
    assert not [line for line in lines if "cannot check the job document" in line]
    # Not one line per poll: a few may fail otherwise while the node recovers (404s before its indices are back).
    assert len([line for line in lines if "poll failed" in line]) < 5, es_restart["log"][-3000:]


def test_sync_when_elasticsearch_restarts_mid_sync_then_interrupted_job_ends_with_its_own_outcome(es_restart):
    """The supervisor waits for Elasticsearch to write the sync's own outcome, however long the
    outage (here longer than job_stale_after, 10 s): never the reaper's StaleJob."""
    first = es_restart["first"]
    assert first["status"] in ("completed", "error"), first
    if first["status"] == "error":
        assert "Elasticsearch" in first["error"] and not first["error"].startswith("StaleJob"), first["error"]
    assert "reaped job" not in es_restart["log"]


# -- the daemon SIGKILLed mid-sync ----------------------------------------------------------
def _alive(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _unlocked(es, connector_id: str) -> dict[str, Any] | None:
    from launcher.indices import CONNECTORS_INDEX

    doc = es.get(index=CONNECTORS_INDEX, id=connector_id)["_source"]
    return doc if doc.get("last_sync_status") != "in_progress" else None


@pytest.fixture(scope="module")
def daemon_killed(own_es, tmp_path_factory) -> dict[str, Any]:
    """SIGKILL the daemon (its process group) mid-sync, restart the same daemon (same config), sync again.

    ``job_stale_after`` is the default 300 s: nothing may wait for the reaper.
    """
    from launcher.indices import CONNECTORS_INDEX

    tmp = tmp_path_factory.mktemp("daemon-killed")
    cid, index, count = f"fault-kill-{uuid.uuid4().hex[:8]}", f"test-fault-kill-{uuid.uuid4().hex[:8]}", 200
    _connector(own_es, cid, index, count=count, delay_ms=30)
    config = _daemon_config(tmp, cid, job_stale_after=300)
    daemon = DaemonProcess(config, tmp / "daemon-1.log")
    restarted, workers = None, []
    try:
        job_id = _start_job(own_es, cid)
        wait_for(lambda: (_job(own_es, job_id).get("indexed_document_count") or 0) >= 10, timeout=90,
                 what="the sync to index its first documents")
        workers = child_pids(daemon.process.pid)
        before_kill = _job(own_es, job_id)
        daemon.kill_tree()
        status_after_kill = _job(own_es, job_id)["status"]
        deadline = time.monotonic() + 8
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphans = [pid for pid in workers if _alive(pid)]
        leftover_files = [str(p) for p in Path(tempfile.gettempdir()).glob(f"elastic-ingest-{job_id}-*")]

        restarted = DaemonProcess(config, tmp / "daemon-2.log")
        restarted_at = time.monotonic()
        resumed = wait_job_final(own_es, job_id, timeout=120)
        resumed_after = time.monotonic() - restarted_at
        connector = wait_for(lambda: _unlocked(own_es, cid), timeout=15, what="the lock to be released")
        second = wait_job_final(own_es, _start_job(own_es, cid), timeout=90)
        ids = set(index_docs(own_es, index))
        total = own_es.count(index=index)["count"]
        log = restarted.output()
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        daemon.stop()
        if restarted is not None:
            restarted.stop()
        _cleanup(own_es, cid, index)
    return {"status_after_kill": status_after_kill, "orphans": orphans, "leftover_files": leftover_files,
            "workers": workers, "before_kill": before_kill, "resumed": resumed, "resumed_after": resumed_after,
            "log": log, "connector": connector, "second": second, "ids": ids, "total": total, "count": count}


def test_daemon_when_sigkilled_and_restarted_then_it_takes_back_its_job_at_once_and_resumes_it(daemon_killed):
    assert daemon_killed["workers"], "the sync process was not found"
    assert daemon_killed["status_after_kill"] == "in_progress"
    owner = daemon_killed["before_kill"]["metadata"]
    assert owner["service_id"] and owner["daemon_pid"] and owner["worker_pid"]  # who claimed it, to recognize it
    resumed = daemon_killed["resumed"]
    assert resumed["status"] == "completed", (resumed.get("error"), daemon_killed["log"][-3000:])
    assert daemon_killed["resumed_after"] < 90, "the restarted daemon waited for the reaper (300 s)"
    assert "taken back after a restart" in daemon_killed["log"] and "suspended" in daemon_killed["log"]
    assert daemon_killed["connector"]["last_sync_status"] == "completed"
    # Counted over both runs: what the killed run's workers acknowledged, then the rest (a request in
    # flight when it died may have been applied unacknowledged: the resumed run finds it unchanged).
    in_flight = 4 * 10  # pipeline.bulk max_in_flight x max_docs
    assert daemon_killed["count"] - in_flight <= resumed["indexed_document_count"] <= daemon_killed["count"]
    assert resumed["metadata"]["runs"] == 2
    assert daemon_killed["second"]["status"] == "completed", daemon_killed["second"].get("error")
    assert daemon_killed["ids"] == _expected_ids(daemon_killed["count"])
    assert daemon_killed["total"] == daemon_killed["count"]


def test_daemon_when_sigkilled_then_its_sync_process_does_not_outlive_it(daemon_killed):
    assert daemon_killed["workers"]
    assert not daemon_killed["orphans"], f"sync process(es) {daemon_killed['orphans']} still ran 8 s after the daemon died"
    assert not daemon_killed["leftover_files"], "the killed sync's job file (it holds secrets) was left behind"


def test_sync_process_when_its_daemon_died_before_it_started_then_it_stops_and_deletes_its_job_file(es, index_name,
                                                                                                       tmp_path):
    """The daemon is killed while its sync process is still importing Python and Beam."""
    import subprocess
    import sys

    from pipelines.job import SyncJob
    from pipelines.run import write_job_file
    from pipelines.settings import PipelineConfig
    from tests.helpers import ES_URL, REPO
    from transforms.es_client import ElasticsearchConnection

    folder = tmp_path / "elastic-ingest-job-1-private"
    folder.mkdir()
    job = SyncJob(job_id="orphan-1", connector_id="test-connector", job_type="full", index_name=index_name,
                  service_type="memory", source_fqn="sources.testing:MemorySource",
                  configuration={"count": {"value": 20}})
    write_job_file(folder / "job.json", job, PipelineConfig(dead_letters=str(tmp_path / "dead")),
                   ElasticsearchConnection(hosts=(ES_URL,)))
    # A "daemon" (the shell) that starts the sync process and dies at once.
    subprocess.run(["sh", "-c", f'ELASTIC_INGEST_DAEMON_PID=$$ "{sys.executable}" -m pipelines.run job.json result.json '
                                f'>sync.log 2>&1 &'], cwd=folder, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    wait_for(lambda: not (folder / "job.json").exists(), timeout=60, what="the orphaned sync to delete its job file")
    assert not (folder / "result.json").exists()
    assert not es.indices.exists(index=index_name)  # it never synced


# -- the source fails -----------------------------------------------------------------------
def test_sync_when_source_raises_after_n_documents_then_job_fails_with_its_message_and_deletes_nothing(es, index_name):
    first = run_sync(index=index_name, configuration={"count": 30}, service_type=SERVICE_TYPE, fqn=SCRIPTED)
    assert first["status"] == "completed"
    before = index_docs(es, index_name)

    failed = run_sync(index=index_name, configuration={"count": 30, "fail_after": 10,
                                                       "fail_message": "backend went away at row 10"},
                      service_type=SERVICE_TYPE, fqn=SCRIPTED)

    assert failed["status"] == "error"
    assert failed["error"].startswith("SourceError:") and "backend went away at row 10" in failed["error"]
    assert failed.get("deleted_document_count", 0) == 0
    assert index_docs(es, index_name) == before
    # The deletion path works when the source really shrank: the test above is not vacuous.
    shrunk = run_sync(index=index_name, configuration={"count": 20}, service_type=SERVICE_TYPE, fqn=SCRIPTED)
    assert shrunk["status"] == "completed" and shrunk["deleted_document_count"] == 10
    assert set(index_docs(es, index_name)) == _expected_ids(20)


# -- malformed documents --------------------------------------------------------------------
def _dead_letters(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    from transforms.dead_letter import read_dead_letters

    location = str(Path(outcome["dead_letters"]["location"]).parent)
    return list(read_dead_letters(location, outcome["job_id"]))


def test_sync_when_malformed_documents_mixed_in_then_each_dead_lettered_with_reason_and_good_ones_land(es, index_name):
    es.indices.create(index=index_name, mappings={"properties": {"n": {"type": "integer"}}})

    outcome = run_sync(index=index_name, configuration={"count": 100, "malformed": ALL_MALFORMED},
                       service_type=SERVICE_TYPE, fqn=SCRIPTED, max_document_bytes=4096)

    assert outcome["status"] == "completed", outcome.get("error")
    assert set(index_docs(es, index_name)) == _expected_ids(100)
    assert outcome["indexed_document_count"] == 100
    assert outcome["dead_letters"]["count"] == 4
    letters = {d["doc_id"]: d for d in _dead_letters(outcome)}
    assert set(letters) == {f"bad-{kind}-0" for kind in ALL_MALFORMED.split(",")}
    assert letters["bad-unserializable-0"]["stage"] == "normalize"
    assert "JSON" in letters["bad-unserializable-0"]["error_message"]
    assert letters["bad-too_large-0"]["stage"] == "normalize"
    assert "max_document_bytes" in letters["bad-too_large-0"]["error_message"]
    assert letters["bad-bad_field-0"]["stage"] == "write"
    assert "empty" in letters["bad-bad_field-0"]["error_message"]
    assert letters["bad-mapping_conflict-0"]["stage"] == "write"
    assert "[n]" in letters["bad-mapping_conflict-0"]["error_message"]
    for letter in letters.values():
        assert letter["error_type"] and letter["job_id"] == outcome["job_id"]


def test_sync_when_dead_letters_exceed_error_rate_then_job_fails_and_good_documents_stay(es, index_name):
    es.indices.create(index=index_name, mappings={"properties": {"n": {"type": "integer"}}})

    outcome = run_sync(index=index_name, configuration={"count": 20, "malformed": ALL_MALFORMED,
                                                        "malformed_repeat": 5},
                       service_type=SERVICE_TYPE, fqn=SCRIPTED, max_document_bytes=4096)

    assert outcome["status"] == "error"
    assert outcome["error"].startswith("TooManyErrors:"), outcome["error"]
    assert "max_error_rate" in outcome["error"]
    assert set(index_docs(es, index_name)) == _expected_ids(20)
    assert outcome["dead_letters"]["location"].endswith(outcome["job_id"])


def test_sync_when_dead_letters_exceed_error_rate_then_they_are_all_written(es, index_name):
    es.indices.create(index=index_name, mappings={"properties": {"n": {"type": "integer"}}})

    outcome = run_sync(index=index_name, configuration={"count": 20, "malformed": ALL_MALFORMED,
                                                        "malformed_repeat": 5},
                       service_type=SERVICE_TYPE, fqn=SCRIPTED, max_document_bytes=4096)

    assert outcome["status"] == "error"
    assert len(_dead_letters(outcome)) == 20
    assert outcome["dead_letters"]["count"] == 20
