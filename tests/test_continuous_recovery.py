"""Continuous sync (issue 20): restart safety with real processes, PostgreSQL, through the daemon.

Each scenario streams a table while a writer inserts, updates and deletes rows (~200 changes/s),
breaks something the hard way, and ends comparing the content index with the tables row by row:

* kill -9 of the sync process while writes go on: a new job resumes from the slot;
* kill -9 of the daemon, more writes while it is down, a new daemon: its sync process and
  Prism stop by themselves, the job is taken back and resumes from the slot;
* Elasticsearch stopped and started while streaming: the stream rides it out (or fails and
  is resumed), nothing lost.

"Resumes from the acknowledged position" is checked twice: the rows nobody touched keep the
``_version`` the first snapshot gave them (a new snapshot would have written them again with
a higher one) and the slot's ``confirmed_flush_lsn`` never goes back.

The daemon runs with the service's shipped ``heartbeat`` (300 s: how often it checks a
connector again) and warm sync processes on (each sync forked from the warm process, not the
daemon's child), as a user's does: a stream killed with -9 was once started again only after
that heartbeat, when the daemon checked the connector its failure had put in ``error``.

These tests stop Elasticsearch, so they use the private node of
:mod:`tests.fixtures_security.own_node` (``FAULT_ES_PORT``, default 9220). They need
PostgreSQL from ``scripts/servers/postgresql`` and Prism from ``scripts/prism build``
(skipped locally without them, failed under CI=true).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from launcher.config import ServiceConfig
from pipelines.options import default_prism_location
from tests.fixtures_security.own_node import FAULT_ES_URL, es_script, fast_refresh
from tests.helpers import DaemonProcess, child_pids, cli, index_docs, skip_or_fail, wait_for, write_config
from tests.test_continuous_sync import SERVICE, Tables, Writer, pg, session  # noqa: F401 - pg: the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Rows of ``items`` before the stream starts; the writer's ids start above.
ROWS = 400
WRITER_START = 10_000


@pytest.fixture(scope="module")
def recovery(own_es, pg, tmp_path_factory):
    if not default_prism_location().is_file():
        skip_or_fail(f"no Prism binary at {default_prism_location()} (scripts/prism build)")
    folder = tmp_path_factory.mktemp("continuous-recovery")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = write_config(
        folder / "config.yml", es_url=FAULT_ES_URL, sources={SERVICE: "sources.postgresql:PostgreSQLDataSource"},
        elasticsearch={"request_timeout": 10, "max_retries": 1},
        service={"idling": 0.5, "heartbeat": ServiceConfig.model_fields["heartbeat"].default,
                 "warm_sync_processes": True, "job_progress_interval": 1, "cancel_check_interval": 0.5,
                 "max_errors": 100000, "metrics_address": f"127.0.0.1:{metrics_port}"},
        pipeline={"bulk": {"initial_backoff": 0.2, "max_backoff": 2, "max_retries": 60}})
    holder = {"process": DaemonProcess(config, folder / "daemon-1.log"), "config": config, "folder": folder,
              "starts": 1, "metrics": f"http://127.0.0.1:{metrics_port}"}
    yield holder
    holder["process"].stop()


@pytest.fixture
def tables(pg, own_es, recovery):
    made = Tables(pg, own_es, recovery["config"])
    pg.execute(f"INSERT INTO {made.items} SELECT i, 'row ' || i, i, NULL FROM generate_series(1, {ROWS}) i")
    pg.execute(f"INSERT INTO {made.tags} SELECT i, 'tag ' || i FROM generate_series(1, 20) i")
    yield made
    made.drop()


def _start_streaming(tables: Tables) -> dict[str, Any]:
    """Create the connector, wait for the snapshot to be in the index and acknowledged (a stream stopped
    before it acknowledged its snapshot takes it again, by design); the running job."""
    tables.create_connector()
    job = wait_for(tables.running, timeout=120, what="the continuous job in_progress")
    tables.assert_equal(timeout=90)

    def acknowledged() -> bool:  # the record is written after the source was acknowledged
        stream = ((tables.running() or {}).get("metadata") or {}).get("stream") or {}
        return stream.get("snapshot") == "done" and stream.get("pending_changes") == 0

    wait_for(acknowledged, timeout=60, what="the snapshot acknowledged")
    return job


def _untouched_versions(tables: Tables) -> dict[str, int]:
    """The ``_version`` of rows the writer never touches (ids 100-199: its updates and deletes
    reach ids from WRITER_START - 7 up)."""
    tables.es.indices.refresh(index=tables.index)
    ids = [f"{tables.items}_{n}" for n in range(100, 200)]
    hits = tables.es.search(index=tables.index, size=200, version=True, query={"ids": {"values": ids}})["hits"]["hits"]
    return {h["_id"]: h["_version"] for h in hits}


def _confirmed_lsn(tables: Tables) -> int:
    from sources.postgresql.stream import parse_lsn

    row = tables.pg.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (f"elastic_ingest_{tables.connector_id.replace('-', '_')}",)).fetchone()
    assert row is not None and row[0], "the connector's replication slot is gone"
    return parse_lsn(row[0])


def _assert_resumed_not_resnapshotted(tables: Tables, versions: dict[str, int], lsn_before: int) -> None:
    assert len(versions) == 100
    assert _untouched_versions(tables) == versions, "rows nobody changed were written again: a new snapshot"
    assert _confirmed_lsn(tables) >= lsn_before


def _writes_while_down(tables: Tables) -> None:
    pg = tables.pg
    pg.execute(f"INSERT INTO {tables.items} SELECT i, 'while down ' || i, i, NULL FROM generate_series(500, 560) i")
    pg.execute(f"UPDATE {tables.items} SET name = 'changed while down' WHERE id BETWEEN 200 AND 240")
    pg.execute(f"DELETE FROM {tables.items} WHERE id BETWEEN 300 AND 320")
    pg.execute(f"UPDATE {tables.tags} SET label = 'changed while down' WHERE id <= 5")


@contextlib.contextmanager
def _under_writes(tables: Tables) -> Iterator[Writer]:
    """A writer busy on ``items`` (300 writes done) for the block; stopped after it."""
    writer = Writer(tables, WRITER_START, session)
    writer.start()
    try:
        wait_for(lambda: writer.writes >= 300, timeout=60, what="writes under way")
        yield writer
    finally:
        writer.halt()


def _sync_processes(daemon: DaemonProcess) -> list[psutil.Process]:
    pids = wait_for(lambda: child_pids(daemon.process.pid), timeout=30, what="the sync process")
    return [psutil.Process(pid) for pid in pids]


def test_continuous_sync_when_sync_process_killed_during_writes_then_resumes_from_the_slot(recovery, tables):
    first = _start_streaming(tables)
    with _under_writes(tables) as writer:
        versions, lsn = _untouched_versions(tables), _confirmed_lsn(tables)
        victims = _sync_processes(recovery["process"])
        assert all("pipelines.fork_server" in " ".join(p.parent().cmdline()) for p in victims), "not forked warm"
        for process in victims:
            process.kill()
        ended = wait_for(lambda: [j for j in tables.jobs() if j["id"] == first["id"] and j["status"] == "error"],
                         timeout=60, what="the killed job ended")[0]
        assert ended["error"].startswith("SyncProcessError: the sync process was killed by SIGKILL"), ended["error"]
        # Well before the heartbeat (300 s): the connector the failure put in error is not waited for.
        second = wait_for(lambda: [j for j in tables.jobs() if j["status"] == "in_progress"
                                   and j["id"] != first["id"]], timeout=90, what="the stream started again")[0]
        assert second["metadata"]["continuous"] is True
        written = writer.writes
        wait_for(lambda: writer.writes >= written + 300, timeout=60, what="writes after the restart")
    tables.assert_equal(timeout=120)
    _assert_resumed_not_resnapshotted(tables, versions, lsn)


def test_continuous_sync_when_daemon_killed_and_rows_change_while_down_then_restart_catches_up(recovery, tables):
    job = _start_streaming(tables)
    with _under_writes(tables):
        daemon = recovery["process"]
        syncs = _sync_processes(daemon)
        family = syncs + [child for process in syncs for child in process.children(recursive=True)]
        assert any("prism" in " ".join(p.cmdline()) for p in family), [p.cmdline() for p in family]
        versions, lsn = _untouched_versions(tables), _confirmed_lsn(tables)
        daemon.signal(signal.SIGKILL)  # the daemon only: what it started must notice and stop by itself
        daemon.process.wait(timeout=30)
        daemon.log.close()
    # Nothing outlives the daemon: not the sync process (it watches its parent), not Prism.
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"still running after the daemon was killed: {[p.cmdline() for p in alive]}"
    _writes_while_down(tables)
    assert [j["status"] for j in tables.jobs() if j["id"] == job["id"]] == ["in_progress"]  # nobody ended it

    recovery["starts"] += 1
    recovery["process"] = DaemonProcess(recovery["config"], recovery["folder"] / f"daemon-{recovery['starts']}.log")
    wait_for(lambda: [j for j in tables.jobs() if j["status"] == "in_progress" and (j.get("metadata") or {})
                      .get("worker_pid") not in (None, *[p.pid for p in syncs])], timeout=120,
             what="the stream running again under the new daemon")
    tables.assert_equal(timeout=120)
    _assert_resumed_not_resnapshotted(tables, versions, lsn)
    docs = index_docs(tables.es, tables.index)
    assert docs[f"{tables.items}_200"]["name"] == "changed while down" and f"{tables.items}_310" not in docs
    assert docs[f"{tables.tags}_1"]["label"] == "changed while down" and f"{tables.items}_560" in docs


def test_continuous_sync_when_elasticsearch_restarts_while_streaming_then_index_ends_equal(recovery, tables):
    _start_streaming(tables)
    with _under_writes(tables) as writer:
        versions, lsn = _untouched_versions(tables), _confirmed_lsn(tables)
        stopped = es_script("stop")
        assert stopped.returncode == 0, stopped.stderr
        written = writer.writes
        wait_for(lambda: writer.writes >= written + 600, timeout=60, what="writes while Elasticsearch is down")
        _writes_while_down(tables)
        started = es_script("start")
        assert started.returncode == 0, started.stderr
        tables.es.cluster.health(wait_for_status="yellow", timeout="60s")
        fast_refresh(tables.es)
        written = writer.writes
        wait_for(lambda: writer.writes >= written + 300, timeout=60, what="writes after the restart")
    tables.assert_equal(timeout=180)
    _assert_resumed_not_resnapshotted(tables, versions, lsn)
    assert [j for j in tables.jobs() if j["status"] == "in_progress"], "no stream runs after the restart"
    assert recovery["process"].process.poll() is None, "the daemon did not ride the outage out"


def test_continuous_sync_when_sigterm_then_suspended_and_resumed_by_next_start(recovery, tables):
    job = _start_streaming(tables)
    versions, lsn = _untouched_versions(tables), _confirmed_lsn(tables)
    daemon = recovery["process"]
    assert daemon.stop() == 0
    assert [j["status"] for j in tables.jobs() if j["id"] == job["id"]] == ["suspended"]
    wait_for(lambda: (tables.slot() or (None, None))[1] is False, timeout=30,
             what="the slot kept, and no longer held by the stopped stream")
    _writes_while_down(tables)
    recovery["starts"] += 1
    recovery["process"] = DaemonProcess(recovery["config"], recovery["folder"] / f"daemon-{recovery['starts']}.log")
    wait_for(lambda: [j for j in tables.jobs() if j["id"] == job["id"] and j["status"] == "in_progress"],
             timeout=120, what="the suspended job resumed")
    tables.assert_equal(timeout=90)
    _assert_resumed_not_resnapshotted(tables, versions, lsn)
    assert len(tables.jobs()) == 1, "the suspended job was resumed, not replaced"



def test_streaming_connector_when_running_then_connectors_jobs_metrics_and_healthz_show_its_lag_and_position(
        recovery, tables):
    job = _start_streaming(tables)
    tables.pg.execute(f"UPDATE {tables.items} SET name = 'observed' WHERE id <= 50")

    def reported():  # the job's record shows the 50 updates acknowledged (their lag measured), nothing pending
        current = tables.running() or {}
        stream = (current.get("metadata") or {}).get("stream") or {}
        # The snapshot's rows count as applied changes too; only streamed changes carry a commit time.
        done = stream.get("lag_seconds") is not None and stream.get("pending_changes") == 0
        return current if done and (stream.get("changes_applied") or 0) >= 50 else None

    try:
        current = wait_for(reported, timeout=60, what="the stream's counts in the job")
    except AssertionError:
        raise AssertionError(f"the job's stream state: {(tables.running() or {}).get('metadata')}") from None
    stream = current["metadata"]["stream"]
    assert stream["acknowledged_at"] and stream["cursor"]["lsn"] and stream["version_conflicts"] == 0

    config = recovery["config"]
    shown = cli("--action", "connectors", "--connector-id", tables.connector_id, config=config)
    assert shown.returncode == 0, shown.stderr
    assert "streaming" in shown.stdout, shown.stdout  # the table folds long cells: --json has the details
    as_json = json.loads(cli("--json", "--action", "connectors", "--connector-id", tables.connector_id,
                             config=config).stdout)
    summary = as_json[0]["stream"]
    assert summary["job_id"] == job["id"] and summary["status"] == "in_progress"
    assert summary["position"].startswith("lsn=") and summary["lag_seconds"] is not None, (summary, stream)
    assert summary["changes_applied"] >= 50 and summary["acknowledged_at"]
    jobs = cli("--action", "jobs", "--connector-id", tables.connector_id, config=config)
    assert "incremental (continuous, lag " in jobs.stdout, jobs.stdout
    jobs_json = json.loads(cli("--json", "--action", "jobs", "--connector-id", tables.connector_id,
                               config=config).stdout)
    assert jobs_json[0]["metadata"]["stream"]["cursor"]["lsn"]

    def metric(text: str, name: str) -> float | None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels.get("connector") == tables.connector_id:
                    return sample.value
        return None

    text = urllib.request.urlopen(recovery["metrics"] + "/metrics", timeout=10).read().decode()
    assert metric(text, "elastic_ingest_stream_changes_applied") >= 50
    assert metric(text, "elastic_ingest_stream_version_conflicts") == 0
    assert metric(text, "elastic_ingest_stream_pending_changes") == 0
    assert metric(text, "elastic_ingest_stream_lag_seconds") is not None
    assert abs(metric(text, "elastic_ingest_stream_last_acknowledged_timestamp_seconds") - time.time()) < 3600
    health = urllib.request.urlopen(recovery["metrics"] + "/healthz", timeout=10).read().decode()
    lines = health.splitlines()
    assert lines[0] == "ok"
    assert f"streaming {tables.connector_id}: streaming, lag " in health and "last acknowledged " in health, health

