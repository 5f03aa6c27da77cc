"""Real service processes sharing one cluster: exactly-once claims, cancel, SIGTERM, SIGKILL.

Two daemons (``daemon-a``, ``daemon-b``) run for the whole module, serving service types
unique to this run (so no other test's documents are touched, and no other service
touches ours). A test that stops a daemon gets it back from the ``pool`` fixture.
Syncs use ``tests.fixtures_sources.slow:SlowSource`` (slow enough to interrupt) and the
directory source (to check that the index converges to the source).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest

from launcher.configuration import complete_configuration
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices
from launcher.protocol import create_job, get_connector, get_job, new_connector, update_connector, update_job
from sources.directory import DirectoryDataSource
from tests.fixtures_sources.slow import SlowSource
from tests.helpers import DIR_SOURCE, REPO, DaemonProcess, child_pids, index_docs, wait_for, write_config

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
SLOW = f"slow_{RUN}"
DIR = f"dir_{RUN}"
STALE_AFTER = 8


class Pool:
    """The module's daemons, by name; ``ensure()`` restarts the ones a test stopped."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.daemons: dict[str, DaemonProcess] = {}
        self.configs: dict[str, Path] = {}
        for name in ("daemon-a", "daemon-b"):
            self.configs[name] = write_config(
                tmp / f"{name}.yml",
                service={"hostname": name, "idling": 0.5, "heartbeat": 5, "job_progress_interval": 1,
                         "cancel_check_interval": 0.5, "job_stale_after": STALE_AFTER, "max_concurrent_syncs": 2},
                sources={SLOW: "tests.fixtures_sources.slow:SlowSource", DIR: DIR_SOURCE},
                pipeline={"bulk": {"max_docs": 5}, "direct_num_workers": 1, "direct_running_mode": "in_memory"},
            )
        self.ensure()

    def ensure(self) -> None:
        for name, config in self.configs.items():
            daemon = self.daemons.get(name)
            if daemon is None or daemon.process.poll() is not None:
                self.daemons[name] = DaemonProcess(config, self.tmp / f"{name}.log")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def logs(self) -> str:
        return "\n".join(self.log(name) for name in self.configs)

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop(timeout=30)


@pytest.fixture(scope="module")
def pool(es, tmp_path_factory):
    ensure_indices(es)
    pool = Pool(tmp_path_factory.mktemp("daemons"))
    yield pool
    pool.stop()
    assert "Traceback" not in pool.logs(), pool.logs()[-5000:]


@pytest.fixture
def daemons(pool):
    pool.ensure()
    yield pool
    pool.ensure()


@pytest.fixture
def connectors(es):
    """Make connectors (Kibana's shape) with unique ids; delete them and their indices afterwards."""
    made: list[tuple[str, str]] = []

    def make(service_type: str = SLOW, *, values: dict | None = None, **overrides) -> str:
        connector_id = f"dmn-{uuid.uuid4().hex[:10]}"
        index = f"test-{connector_id}"
        schema = (SlowSource if service_type == SLOW else DirectoryDataSource).get_default_configuration()
        configuration, _ = complete_configuration({}, schema)
        for key, value in (values or {}).items():
            configuration[key]["value"] = value
        doc = new_connector(service_type=service_type, index_name=index, configuration=configuration)
        doc["status"] = "connected"
        doc.update(overrides)
        es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
        made.append((connector_id, index))
        return connector_id

    yield make
    for connector_id, index in made:
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        es.options(ignore_status=404).indices.delete(index=index)


def _job(es, job_id: str) -> dict:
    job = get_job(es, job_id)
    return job.doc if job else {}


def _connector(es, connector_id: str) -> dict:
    return get_connector(es, connector_id).doc


def _connector_once(es, connector_id: str, last_sync_status: str) -> dict | None:
    """The connector document once its ``last_sync_status`` is the given one (one read)."""
    doc = _connector(es, connector_id)
    return doc if doc["last_sync_status"] == last_sync_status else None


def _jobs(es, connector_id: str) -> list[dict]:
    es.indices.refresh(index=JOBS_INDEX)
    hits = es.search(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}}, size=500)["hits"]["hits"]
    return [{"id": h["_id"], **h["_source"]} for h in hits]


def _indexed(es, job_id: str) -> int:
    return int(_job(es, job_id).get("indexed_document_count") or 0)


def _ended(es, job_id: str, statuses=("completed", "error", "canceled")):
    job = _job(es, job_id)
    return job if job.get("status") in statuses else None


def _kibana_job(es, connector_id: str) -> str:
    """A pending on-demand job written exactly the way Kibana writes it."""
    doc = _connector(es, connector_id)
    filtering = doc["filtering"][0]["active"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    job = {
        "cancelation_requested_at": None, "canceled_at": None, "completed_at": None,
        "connector": {"configuration": doc["configuration"], "filtering": filtering, "id": connector_id,
                      "index_name": doc["index_name"], "language": None, "pipeline": doc["pipeline"],
                      "service_type": doc["service_type"]},
        "created_at": stamp, "deleted_document_count": 0, "error": None, "indexed_document_count": 0,
        "indexed_document_volume": 0, "job_type": "full", "last_seen": None, "metadata": {}, "started_at": None,
        "status": "pending", "total_document_count": None, "trigger_method": "on_demand", "worker_hostname": None,
    }
    return es.index(index=JOBS_INDEX, document=job, refresh=True)["_id"]


def _started_in_logs(pool: Pool, job_id: str) -> int:
    return sum(line.count(f"job {job_id}: ") for line in pool.logs().splitlines() if " sync of connector " in line)


def _cli(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "-c", str(config), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- many instances -------------------------------------------------------------------------------
def test_daemons_when_two_share_the_work_then_each_job_runs_once_and_each_fire_time_yields_one_job(
        es, daemons, connectors, tmp_path):
    # A directory connector created the way Kibana does it: empty configuration, status created.
    folder = tmp_path / "docs"
    folder.mkdir()
    for number in range(5):
        (folder / f"note-{number}.txt").write_text(f"note {number}   with   spaces", encoding="utf-8")
    pipeline = f"dmn-pipeline-{RUN}"
    es.ingest.put_pipeline(id=pipeline, processors=[])
    kibana = connectors(DIR, status="created", configuration={},
                        pipeline={"name": pipeline, "extract_binary_content": True, "reduce_whitespace": True,
                                  "run_ml_inference": False}, api_key_secret_id=None, custom_scheduling={})
    configuration = wait_for(lambda: _connector(es, kibana).get("configuration"), timeout=60,
                             what="the service writing the directory schema")
    assert _connector(es, kibana)["status"] == "needs_configuration"
    configuration["directory"]["value"] = str(folder)
    update_connector(es, kibana, {"configuration": configuration, "status": "configured"})
    wait_for(lambda: _connector(es, kibana).get("status") == "connected", timeout=30, what="connected")

    slow = [connectors(values={"count": 3}) for _ in range(3)]
    scheduled = connectors(values={"count": 1},
                           scheduling={"full": {"enabled": True, "interval": "*/3 * * * * ?"}})
    broken = connectors(configuration="oops", scheduling={"full": {"enabled": True, "interval": "bad cron"}})
    jobs = [create_job(es, get_connector(es, c)) for c in slow[:2]] + [create_job(es, get_connector(es, slow[2]))]
    invalid_rules = create_job(es, get_connector(es, slow[0]))
    update_job(es, invalid_rules, {"connector": {"filtering": {
        "rules": [{"id": "r1", "policy": "include", "field": "x", "rule": "sounds_like", "value": "y", "order": 1}]}}})
    kibana_job = _kibana_job(es, kibana)
    failing = connectors(values={"count": 1, "fail_ping": True})
    wait_ok = _cli(daemons.configs["daemon-a"], "--action", "sync", "--connector-id", slow[2], "--wait",
                   "--timeout", "150")
    wait_failing = _cli(daemons.configs["daemon-b"], "--action", "sync", "--connector-id", failing, "--wait",
                        "--timeout", "150")

    # A few fire times of the schedule (each yields one job, whichever daemon takes it), then it is turned off.
    wait_for(lambda: len([j for j in _jobs(es, scheduled) if j["trigger_method"] == "scheduled"]) >= 2,
             timeout=60, what="two fire times of the schedule")
    update_connector(es, scheduled, {"scheduling": {"full": {"enabled": False, "interval": "*/3 * * * * ?"}}})

    def settled_fire_jobs():  # every fire time taken has its job (a fire time is taken, then its job written)
        found = [j for j in _jobs(es, scheduled) if j["trigger_method"] == "scheduled"]
        last = _connector(es, scheduled)["last_sync_scheduled_at"]
        return found if last == max(j["metadata"]["scheduled_at"] for j in found) else None

    fire_jobs = wait_for(settled_fire_jobs, timeout=30, what="each fire time's job to be written")
    fire_times = [j["metadata"]["scheduled_at"] for j in fire_jobs]
    assert len(fire_times) >= 2 and len(fire_times) == len(set(fire_times)), fire_times
    assert _connector(es, scheduled)["last_sync_scheduled_at"] == max(fire_times)
    # Those still waiting behind the connector's lock are canceled, as a user would (saves time).
    scheduled_runs = []
    for fire_job in fire_jobs:
        current = get_job(es, fire_job["id"])
        if current.status == "pending":
            try:
                stamp = datetime.now(timezone.utc).isoformat()
                update_job(es, current.id, {"status": "canceled", "canceled_at": stamp, "completed_at": stamp},
                           if_seq_no=current.seq_no, if_primary_term=current.primary_term)
                continue
            except Exception:  # noqa: BLE001 - claimed meanwhile: it runs
                pass
        scheduled_runs.append(current.id)

    everything = jobs + [kibana_job] + scheduled_runs
    for job_id in everything:
        wait_for(lambda: _ended(es, job_id), timeout=180, what=f"job {job_id} to end")
    assert wait_ok.wait(60) == 0, wait_ok.stderr.read()
    assert wait_failing.wait(60) == 1
    out, err = wait_failing.communicate()
    assert "error" in out and "fail_ping is on" in out

    for job_id in everything:
        job = _job(es, job_id)
        assert job["status"] == "completed", job
        assert job["worker_hostname"] in ("daemon-a", "daemon-b")
        assert _started_in_logs(daemons, job_id) == 1, f"job {job_id} started {_started_in_logs(daemons, job_id)}x"
    # The invalid rules fail that job with the reasons; the broken connector says what is wrong.
    job = wait_for(lambda: _ended(es, invalid_rules), timeout=60, what="the invalid-rules job")
    assert job["status"] == "error" and job["error"].startswith("SyncRulesError: sync rules are invalid")
    assert "sounds_like" in job["error"]
    doc = _connector(es, broken)
    assert doc["status"] == "error" and "configuration: expected an object, got str" in doc["error"]
    # The connector-level results, as Kibana reads them.
    doc = _connector(es, kibana)
    assert doc["last_sync_status"] == "completed" and doc["status"] == "connected" and doc["last_synced"]
    assert doc["last_indexed_document_count"] == 5 and doc["features"]["incremental_sync"] == {"enabled": False}
    job = _job(es, kibana_job)
    assert job["indexed_document_count"] == 5 and job["total_document_count"] == 5 and job["completed_at"]
    # Pipeline settings: the named (existing) pipeline was used, the flags are on every document.
    docs = index_docs(es, doc["index_name"])
    assert len(docs) == 5
    assert all(d["_reduce_whitespace"] is True and d["_run_ml_inference"] is False for d in docs.values())
    stats = es.nodes.stats(metric="ingest", filter_path=f"nodes.*.ingest.pipelines.{pipeline}")
    # (a pipeline without processors counts no documents, but the bytes that went through it)
    assert sum(n["ingest"]["pipelines"][pipeline]["ingested_as_first_pipeline_in_bytes"]
               for n in stats["nodes"].values()) > 0
    # A missing pipeline (the default name) does not stop a sync.
    assert len(index_docs(es, _connector(es, slow[0])["index_name"])) == 3
    es.ingest.delete_pipeline(id=pipeline)


# -- cancel, SIGTERM, SIGKILL -----------------------------------------------------------------
def _running(es, job_id: str):
    job = _job(es, job_id)
    return job if job.get("status") == "in_progress" else None


def test_daemons_when_long_sync_canceled_or_its_connector_deleted_then_job_ends_within_seconds(
        es, daemons, connectors):
    connector = connectors(values={"count": 400, "delay_ms": 100})
    doomed = connectors(values={"count": 400, "delay_ms": 100})
    job_id = create_job(es, get_connector(es, connector))
    doomed_job = create_job(es, get_connector(es, doomed))
    wait_for(lambda: all(_indexed(es, job) >= 5 for job in (job_id, doomed_job)), timeout=90,
             what="both syncs to index their first documents")
    requested = time.monotonic()
    update_job(es, job_id, {"status": "canceling", "cancelation_requested_at": datetime.now(timezone.utc).isoformat()})
    es.delete(index=CONNECTORS_INDEX, id=doomed, refresh=True)
    job = wait_for(lambda: _ended(es, job_id), timeout=30, what="the job to be canceled")
    assert time.monotonic() - requested < 10
    assert job["status"] == "canceled" and job["canceled_at"] and job["completed_at"] and job["error"] is None, job
    index = _connector(es, connector)["index_name"]
    in_index = len(index_docs(es, index)) if es.indices.exists(index=index) else 0
    assert in_index < 400
    counters = (job["indexed_document_count"], job["total_document_count"])
    assert counters == (in_index, in_index), (counters, in_index)
    doc = wait_for(lambda: _connector_once(es, connector, "canceled"), timeout=10, what="the connector's last_sync_status")
    assert doc["last_indexed_document_count"] == in_index
    job = wait_for(lambda: _ended(es, doomed_job), timeout=30, what="the orphaned job to end")
    # Its owner notices (JobGone), or another instance's reaper is first (StaleJob): both end it.
    assert job["status"] == "error"
    assert job["error"] in ("JobGone: the connector was deleted while the job ran",
                            "StaleJob: the job's connector no longer exists")


def test_daemons_when_sigterm_mid_sync_then_suspended_and_finished_by_the_other(es, daemons, connectors):
    connector = connectors(values={"count": 40, "delay_ms": 100})
    job_id = create_job(es, get_connector(es, connector))
    owner = wait_for(lambda: (_running(es, job_id) or {}).get("worker_hostname"), timeout=90, what="a claim")
    wait_for(lambda: _indexed(es, job_id) >= 3, timeout=60, what="the sync to index its first documents")
    stopped = time.monotonic()
    daemons.daemons[owner].signal(signal.SIGTERM)
    assert daemons.daemons[owner].process.wait(timeout=40) == 0
    assert time.monotonic() - stopped < 30
    assert f"job {job_id}: suspended" in daemons.log(owner)
    assert "1 job(s) suspended" in daemons.log(owner)
    job = wait_for(lambda: _ended(es, job_id), timeout=150, what="the other daemon to finish the job")
    other = "daemon-b" if owner == "daemon-a" else "daemon-a"
    assert job["status"] == "completed" and job["worker_hostname"] == other
    docs = index_docs(es, _connector(es, connector)["index_name"])
    assert sorted(docs) == sorted(f"doc-{n}" for n in range(40))
    assert job["total_document_count"] == 40


def test_daemons_when_sync_process_killed_mid_sync_then_error_saying_so_at_once_and_counters_exact(
        es, daemons, connectors):
    from transforms.progress import PROGRESS_INDEX, read_progress

    connector = connectors(values={"count": 400, "delay_ms": 50})
    job_id = create_job(es, get_connector(es, connector))
    owner = wait_for(lambda: (_running(es, job_id) or {}).get("worker_hostname"), timeout=90, what="a claim")
    wait_for(lambda: _indexed(es, job_id) >= 10, timeout=60, what="the sync to index its first documents")
    daemon = daemons.daemons[owner]
    [pid] = wait_for(lambda: child_pids(daemon.process.pid), timeout=30, what="the sync process")
    assert "pipelines.fork_server" in " ".join(psutil.Process(pid).parent().cmdline())  # forked warm, not the daemon's
    index = _connector(es, connector)["index_name"]

    def frozen_between_bulks() -> int | None:
        """Stopped (SIGSTOP) while no ``_bulk`` is in flight: the index holds what its workers reported."""
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)  # a request already sent completes meanwhile
        es.indices.refresh(index=f"{index},{PROGRESS_INDEX}")
        held, reported = es.count(index=index)["count"], read_progress(es, job_id)["indexed_document_count"]
        if held == reported:
            return held
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
        return None

    held = wait_for(frozen_between_bulks, timeout=60, what="a moment without a _bulk in flight")
    os.kill(pid, signal.SIGKILL)
    job = wait_for(lambda: _ended(es, job_id), timeout=30, what="the killed job ended")
    assert job["status"] == "error", job
    assert job["error"].startswith("SyncProcessError: the sync process was killed by SIGKILL (signal 9"), job["error"]
    assert 10 <= held < 400 and es.count(index=index)["count"] == held
    assert (job["indexed_document_count"], job["total_document_count"]) == (held, held), (job, held)
    doc = wait_for(lambda: _connector_once(es, connector, "error"), timeout=10, what="the lock released")
    assert doc["last_sync_error"] == job["error"] and doc["last_indexed_document_count"] == held


def test_daemons_when_sigkill_mid_sync_then_reaped_and_next_sync_converges(es, daemons, connectors):
    # Long enough (~9 s) that the kill lands mid-sync even when a warm sync process starts at once.
    connector = connectors(values={"count": 30, "delay_ms": 300})
    job_id = create_job(es, get_connector(es, connector))
    owner = wait_for(lambda: (_running(es, job_id) or {}).get("worker_hostname"), timeout=90, what="a claim")
    wait_for(lambda: _indexed(es, job_id) >= 3, timeout=60, what="the sync to index its first documents")
    daemons.daemons[owner].kill_tree()
    killed = time.monotonic()
    job = wait_for(lambda: _ended(es, job_id), timeout=STALE_AFTER + 40, what="the reaper")
    assert time.monotonic() - killed >= STALE_AFTER - 2
    assert job["status"] == "error" and job["error"] == "StaleJob: the job has not seen any update for some time"
    doc = wait_for(lambda: _connector_once(es, connector, "error"), timeout=10, what="the lock to be released")
    assert doc["last_sync_error"].startswith("StaleJob")
    # The lock is released: the next sync runs, and the index matches the source.
    next_job = create_job(es, get_connector(es, connector))
    job = wait_for(lambda: _ended(es, next_job), timeout=150, what="the next sync")
    assert job["status"] == "completed"
    assert sorted(index_docs(es, doc["index_name"])) == sorted(f"doc-{n}" for n in range(30))
    assert _connector(es, connector)["status"] == "connected"
