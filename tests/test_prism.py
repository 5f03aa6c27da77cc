"""Syncs on Prism, Beam's portable runner, through a real daemon: the same index as on the in-process runner.

One daemon serves this module's connectors in pairs over the same source: ``local-*`` on
the global runner (FnApiRunner, inside the sync process) and ``prism-*`` on
``PortableRunner`` (a per-connector override, config.yml ``connectors:``), submitted to the
Prism job service ``scripts/prism start`` runs, its DoFns in SDK worker processes of the
worker pool beside it (EXTERNAL environment): outside the daemon and the sync process, as
on Flink or Dataflow. After each sync the two indices are compared document by document,
and the jobs' final counters (Beam metrics, committed through the Fn API) one by one.

Prism and its pool are shared by every test (``scripts/services start`` starts them; locally
the tests skip without them, under CI=true they fail). What Prism 2.77 does with EXTERNAL
workers, which the pipeline must not rely on otherwise: ``DoFn.teardown()`` is not called
(the worker process is stopped at the end of the job, which frees what it held), and a
worker that does not connect within a minute, or dies, fails the job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from sources.testing import make_docs
from tests.helpers import (
    REPO, DaemonProcess, cli, index_docs, require_server, run_sync, skip_or_fail, wait_for, write_config,
)
from tests.test_secrets import captured  # noqa: F401 - a fixture: the pipelines a sync stages, decoded
from transforms.progress import delete_progress

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:6]
SOURCES = {"memory": "sources.testing:MemorySource", "slow": "tests.fixtures_sources.slow:SlowSource"}
SERVICE = {name: f"{name}_{RUN}" for name in SOURCES}  # served by this module's daemon only
SCENARIOS = ("lifecycle", "cancel", "suspend")
JOB_ENDPOINT = f"localhost:{os.environ.get('PRISM_JOB_PORT', '9270')}"
WORKER_ENDPOINT = f"localhost:{os.environ.get('PRISM_WORKER_PORT', '9271')}"
PRISM = {"job_endpoint": JOB_ENDPOINT, "environment_type": "EXTERNAL", "environment_config": WORKER_ENDPOINT}
COUNTERS = ("indexed_document_count", "deleted_document_count", "indexed_document_volume", "total_document_count")
METADATA = ("source_document_count", "unchanged_document_count", "indexed_document_bytes", "index_digests_from_cache")


def prism_id(scenario: str) -> str:
    return f"prism-{RUN}-{scenario}"


def local_id(scenario: str) -> str:
    return f"local-{RUN}-{scenario}"


def index_of(connector_id: str) -> str:
    """The connector's content index (``test-``: the suite's sweep knows it for a test's)."""
    return f"test-{connector_id}"


def _connect(endpoint: str) -> None:
    host, _, port = endpoint.rpartition(":")
    socket.create_connection((host, int(port)), timeout=3).close()


def _pool_workers() -> list[psutil.Process]:
    """The worker pool's child processes, exited ones not yet reaped included (the pool started
    by scripts/prism, found by its port)."""
    home = Path(os.environ.get("PRISM_HOME_DIR", REPO / ".servers" / "prism"))
    pid_file = home / f"worker-pool-{WORKER_ENDPOINT.rpartition(':')[2]}.pid"
    try:
        return psutil.Process(int(pid_file.read_text())).children(recursive=True)
    except (OSError, ValueError, psutil.NoSuchProcess):
        return []


@pytest.fixture(scope="module")
def prism():
    require_server("Prism's job service and worker pool (scripts/prism start)", f"{JOB_ENDPOINT}, {WORKER_ENDPOINT}",
                   lambda: (_connect(JOB_ENDPOINT), _connect(WORKER_ENDPOINT)))
    return PRISM


class Daemon:
    """The module's daemon; ``ensure()`` starts another after a test stopped it."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.config = write_config(
            tmp / "config.yml",
            service={"service_types": list(SERVICE.values()), "max_concurrent_syncs": 2, "job_progress_interval": 1},
            sources={SERVICE[name]: fqn for name, fqn in SOURCES.items()},
            # Small batches, so a slow source's documents reach the index (and the live counters) as it reads.
            pipeline={"portable": PRISM, "max_document_bytes": 4096, "read_batch_size": 10, "bulk": {"max_docs": 20}},
        )
        raw = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        raw["connectors"] = {prism_id(s): {"runner": "PortableRunner"} for s in SCENARIOS}
        self.config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        self.logs: list[Path] = []
        self.process: DaemonProcess | None = None
        self.ensure()

    def ensure(self) -> DaemonProcess:
        if self.process is None or self.process.process.poll() is not None:
            self.logs.append(self.tmp / f"daemon-{len(self.logs)}.log")
            self.process = DaemonProcess(self.config, self.logs[-1])
        return self.process

    def output(self) -> str:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace") for log in self.logs if log.exists())


@pytest.fixture(scope="module")
def daemon(es, prism, tmp_path_factory):
    daemon = Daemon(tmp_path_factory.mktemp("prism"))
    yield daemon
    assert daemon.ensure().stop(timeout=60) == 0
    ids = [c for scenario in SCENARIOS for c in (prism_id(scenario), local_id(scenario))]
    es.indices.refresh(index=".elastic-connectors-sync-jobs")
    jobs = es.search(index=".elastic-connectors-sync-jobs", query={"terms": {"connector.id": ids}}, size=1000,
                     source=False)["hits"]["hits"]
    for job in jobs:
        es.options(ignore_status=404).delete(index=".elastic-connectors-sync-jobs", id=job["_id"])
        delete_progress(es, job["_id"])  # a canceled or suspended run's records
    for connector_id in ids:
        es.options(ignore_status=404).delete(index=".elastic-connectors", id=connector_id, refresh=True)
        es.options(ignore_status=404).indices.delete(index=index_of(connector_id))
    assert "Traceback" not in daemon.output(), daemon.output()[-5000:]


def _set_args(values: dict) -> list[str]:
    args: list[str] = []
    for name, value in values.items():
        args += ["--set", f"{name}={json.dumps(value) if isinstance(value, list) else value}"]
    return args


def create(daemon: Daemon, connector_id: str, service: str, values: dict) -> None:
    cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", SERVICE[service],
        "--index-name", index_of(connector_id), *_set_args(values), config=daemon.config, check=True)


def update(daemon: Daemon, connector_ids: tuple[str, ...], values: dict) -> None:
    def one(connector_id: str) -> None:
        for _ in range(5):
            result = cli("--action", "update-connector", "--connector-id", connector_id, *_set_args(values),
                         config=daemon.config)
            # The update is conditional on the connector as read; the daemon writes it too (heartbeats,
            # the end of a sync): like Kibana, try again on a conflict.
            if result.returncode == 0 or "ConflictError" not in result.stderr:
                break
        assert result.returncode == 0, result.stderr

    with ThreadPoolExecutor(len(connector_ids)) as pool:
        list(pool.map(one, connector_ids))


def sync(daemon: Daemon, connector_id: str, job_type: str = "full") -> dict:
    result = cli("--json", "--action", "sync", "--connector-id", connector_id, "--job-type", job_type, "--wait",
                 "--timeout", "240", config=daemon.config, timeout=300)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def sync_both(daemon: Daemon, scenario: str, job_type: str = "full") -> tuple[dict, dict]:
    """The same sync on Prism and on the local runner, at the same time (the daemon runs two at once)."""
    with ThreadPoolExecutor(2) as pool:
        jobs = list(pool.map(lambda c: sync(daemon, c, job_type), (prism_id(scenario), local_id(scenario))))
    return jobs[0], jobs[1]


def assert_same(es, scenario: str, on_prism: dict, local: dict) -> None:
    """Both completed, on the runner each was meant for, with equal indices and counters."""
    assert on_prism["status"] == "completed", on_prism.get("error")
    assert local["status"] == "completed", local.get("error")
    assert (on_prism["metadata"]["runner"], local["metadata"]["runner"]) == ("PortableRunner", "FnApiRunner")
    assert index_docs(es, index_of(prism_id(scenario))) == index_docs(es, index_of(local_id(scenario)))
    for name in COUNTERS:
        assert on_prism[name] == local[name], name
    for name in METADATA:
        assert on_prism["metadata"].get(name) == local["metadata"].get(name), name


def _job(es, job_id: str) -> dict:
    return es.get(index=".elastic-connectors-sync-jobs", id=job_id)["_source"]


def _indexing(es, job_id: str) -> dict | None:
    """The job while it runs, once the daemon has written live counters from the workers' progress records."""
    job = _job(es, job_id)
    return job if job["status"] == "in_progress" and job["indexed_document_count"] > 0 else None


def _start(daemon: Daemon, connector_id: str) -> str:
    result = cli("--json", "--action", "sync", "--connector-id", connector_id, config=daemon.config, check=True)
    return json.loads(result.stdout)["job_id"]


# -- full and incremental syncs, dead letters ---------------------------------------------------------
MALFORMED = [{"_id": "bad-rank", "rank": "not a number"},  # the index maps rank as an integer: stage write
             {"_id": "too-large", "text": "x" * 5000}]        # over max_document_bytes: stage normalize


def test_prism_when_source_changes_between_syncs_then_same_index_counters_and_dead_letters_as_local_runner(
        es, daemon):
    docs = make_docs(40)
    pair = (prism_id("lifecycle"), local_id("lifecycle"))
    for connector_id in pair:
        es.indices.create(index=index_of(connector_id), mappings={"properties": {"rank": {"type": "integer"}}})
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: create(daemon, c, "memory", {"docs": docs + MALFORMED, "partitions": 3,
                                                             "lazy": True}), pair))

    first = sync_both(daemon, "lifecycle")
    assert_same(es, "lifecycle", *first)
    assert first[0]["indexed_document_count"] == 40 and first[0]["total_document_count"] == 40
    letters = []
    for job in first:
        assert job["metadata"]["dead_letters"]["count"] == 2
        result = cli("--json", "--action", "dead-letters", "--job-id", job["id"], config=daemon.config, check=True)
        letters.append(sorted((d["doc_id"], d["stage"], d["error_type"]) for d in json.loads(result.stdout)))
    assert letters[0] == letters[1]
    assert [(doc_id, stage) for doc_id, stage, _ in letters[0]] == [("bad-rank", "write"), ("too-large", "normalize")]

    unchanged = sync_both(daemon, "lifecycle")
    assert_same(es, "lifecycle", *unchanged)
    assert (unchanged[0]["indexed_document_count"], unchanged[0]["deleted_document_count"]) == (0, 0)
    assert unchanged[0]["metadata"]["unchanged_document_count"] == 40

    # 5 changed, 5 removed, 3 added.
    edited = [{**d, "title": "edited", "_timestamp": "2024-09-09T00:00:00+00:00"} for d in docs[:5]]
    update(daemon, pair, {"docs": edited + docs[10:] + make_docs(3, prefix="new")})
    changed = sync_both(daemon, "lifecycle")
    assert_same(es, "lifecycle", *changed)
    assert (changed[0]["indexed_document_count"], changed[0]["deleted_document_count"]) == (8, 5)
    assert changed[0]["total_document_count"] == 38

    # Incremental: the source's index/update/delete operations, applied in order, from the cursor.
    changes = [{"op": "index", "doc": {"_id": "late-1", "title": "late", "_timestamp": "2024-10-01T00:00:00+00:00"}},
               {"op": "update", "doc": {"_id": "doc-11", "title": "updated"}},
               {"op": "delete", "doc": {"_id": "doc-12"}}]
    update(daemon, pair, {"changes": changes})
    incremental = sync_both(daemon, "lifecycle", "incremental")
    assert_same(es, "lifecycle", *incremental)
    assert incremental[0]["deleted_document_count"] == 1 and incremental[0]["total_document_count"] == 38
    cursors = [es.get(index=".elastic-connectors", id=c)["_source"]["sync_cursor"] for c in pair]
    assert cursors[0] == cursors[1] == {"position": 3}
    indexed = index_docs(es, index_of(pair[0]))
    assert "doc-12" not in indexed and indexed["doc-11"]["title"] == "updated" and "late-1" in indexed
    # teardown() is never called on these workers: each job's worker process ends with the job
    # instead, and is reaped (no defunct process left).
    wait_for(lambda: not _pool_workers(), timeout=30, what="the jobs' SDK workers to exit")


# -- cancel, suspend -------------------------------------------------------------------------------
def test_prism_when_job_canceled_mid_sync_then_canceled_within_seconds_and_workers_stop_writing(es, daemon):
    connector_id = prism_id("cancel")
    create(daemon, connector_id, "slow", {"count": 400, "delay_ms": 50})
    job_id = _start(daemon, connector_id)
    running = wait_for(lambda: _indexing(es, job_id), timeout=120, what="live counters from the Prism workers")
    assert running["indexed_document_count"] < 400

    requested = time.monotonic()
    cli("--action", "cancel", "--job-id", job_id, config=daemon.config, check=True)
    job = wait_for(lambda: (j := _job(es, job_id))["status"] == "canceled" and j, timeout=30, what="the cancel")
    assert time.monotonic() - requested < 15
    assert job["canceled_at"] and job["error"] is None
    # The Prism job is cancelled with the sync process: its worker is stopped, nothing more is written.
    wait_for(lambda: not _pool_workers(), timeout=30, what="the job's SDK worker to stop")
    in_index = len(index_docs(es, index_of(connector_id)))
    assert 0 < in_index < 400
    # Counted as the job was canceled: what was indexed by then, give or take the requests in flight.
    in_flight = 4 * 20  # bulk.max_in_flight x bulk.max_docs
    assert in_index - in_flight <= job["total_document_count"] <= in_index
    assert 0 < job["indexed_document_count"] <= in_index


def test_prism_when_daemon_stopped_mid_sync_then_job_suspended_and_resumed_by_the_next(es, daemon):
    pair = (prism_id("suspend"), local_id("suspend"))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: create(daemon, c, "slow", {"count": 80, "delay_ms": 100}), pair))
    job_id = _start(daemon, pair[0])
    wait_for(lambda: _indexing(es, job_id), timeout=120, what="the Prism sync to index")

    stopping = daemon.ensure()
    stopping.signal(signal.SIGTERM)
    assert stopping.process.wait(timeout=40) == 0
    assert f"job {job_id}: suspended" in daemon.output()
    suspended = _job(es, job_id)
    assert suspended["status"] == "suspended"
    wait_for(lambda: not _pool_workers(), timeout=30, what="the suspended job's SDK worker to stop")
    before = len(index_docs(es, index_of(pair[0])))
    assert 0 < before < 80, "suspended mid-sync"
    # The suspended run's counters: the Prism workers' progress records (up to the requests in flight).
    assert 0 < suspended["indexed_document_count"] <= before

    daemon.ensure()  # the next instance takes the suspended job up again, on Prism again
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(sync, daemon, pair[1])  # meanwhile, the same sync on the local runner
        resumed = wait_for(lambda: (j := _job(es, job_id))["status"] in ("completed", "error") and j, timeout=180,
                           what="the resumed job")
        local = local.result()
    assert resumed["status"] == "completed", resumed["error"]
    assert resumed["metadata"]["runner"] == "PortableRunner" and local["status"] == "completed"
    assert index_docs(es, index_of(pair[0])) == index_docs(es, index_of(pair[1]))
    assert resumed["total_document_count"] == local["total_document_count"] == 80
    # What the suspended run indexed is unchanged in the source: the resumed run skips it, and the
    # job's counters add both runs'.
    assert resumed["metadata"]["unchanged_document_count"] == before
    assert resumed["indexed_document_count"] == suspended["indexed_document_count"] + 80 - before


# -- the sync process's own Prism, digests inside the pipeline ------------------------------------
def _orphan_prisms() -> set[int]:
    """Prism processes Beam started (``--log_kind``) whose parent is gone."""
    return {p.pid for p in psutil.process_iter(["name", "ppid", "cmdline"])
            if p.info["name"] == "prism" and p.info["ppid"] == 1 and "--log_kind" in (p.info["cmdline"] or [])}


def _in_sync_process(tmp_path: Path, index: str, configuration: dict, **pipeline: Any) -> dict:
    """One sync in a sync process (``python -m pipelines.run``), as the daemon runs it."""
    from pipelines.job import SyncJob
    from pipelines.run import write_job_file
    from pipelines.settings import PipelineConfig
    from tests.helpers import ES_URL
    from transforms.es_client import ElasticsearchConnection

    job = SyncJob(job_id=f"test-{uuid.uuid4().hex[:12]}", connector_id="test-connector", job_type="full",
                  index_name=index, service_type="memory", source_fqn="sources.testing:MemorySource",
                  configuration={k: {"value": v} for k, v in configuration.items()})
    folder = tmp_path / job.job_id
    folder.mkdir()
    write_job_file(folder / "job.json", job, PipelineConfig.model_validate(
        {"dead_letters": str(tmp_path / "dead_letters"), **pipeline}), ElasticsearchConnection(hosts=(ES_URL,)))
    subprocess.run([sys.executable, "-m", "pipelines.run", str(folder / "job.json"), str(folder / "result.json")],
                   cwd=REPO, timeout=300, check=False, capture_output=True)
    return {"job_id": job.job_id, **json.loads((folder / "result.json").read_text(encoding="utf-8"))}


def test_prism_runner_when_sync_process_starts_prism_then_same_index_as_local_runner(es, index_name, tmp_path):
    """``runner: PrismRunner``: the sync process starts Prism from the built binary (LOOPBACK workers),
    and stops it when it ends."""
    from pipelines.options import default_prism_location

    if not default_prism_location().is_file():
        skip_or_fail(f"no Prism binary at {default_prism_location()} (scripts/prism build)")
    docs = make_docs(30)
    changed = [{**d, "title": "edited", "_timestamp": "2024-09-09T00:00:00+00:00"} for d in docs[:5]]
    local_index, outcomes = f"{index_name}-local", []
    orphans = _orphan_prisms()
    try:
        for configuration in ({"docs": docs[:20], "partitions": 2}, {"docs": changed + docs[10:], "partitions": 2}):
            local = run_sync(index=local_index, fqn="sources.testing:MemorySource", configuration=configuration)
            on_prism = _in_sync_process(tmp_path, index_name, configuration, runner="PrismRunner")
            outcomes += [local, on_prism]
            assert on_prism["status"] == "completed", on_prism.get("error")
            assert on_prism["runner"] == "PrismRunner"
            assert index_docs(es, index_name) == index_docs(es, local_index)
            for name in ("indexed_document_count", "deleted_document_count", "unchanged_document_count"):
                assert on_prism[name] == local[name], name
        assert (on_prism["indexed_document_count"], on_prism["deleted_document_count"]) == (15, 5)
        assert _orphan_prisms() <= orphans, "the Prism a sync process started outlived it"
    finally:
        es.indices.delete(index=local_index, ignore_unavailable=True)
        for outcome in outcomes:
            delete_progress(es, outcome["job_id"])


def test_prism_when_workers_do_not_share_the_disk_then_digests_travel_in_the_pipeline(es, index_name, prism):
    """``workers_share_disk: false`` (Dataflow's case): no work directory, the index digests are the side input."""
    docs = make_docs(30)
    remote = {"runner": "PortableRunner", "portable": prism, "workers_share_disk": False,
              # Workers elsewhere cannot write a local folder; nothing is dead-lettered here, so nothing is written.
              "dead_letters": "gs://elastic-ingest-tests/dead-letters"}
    local_index, outcomes = f"{index_name}-local", []
    try:
        for configuration in ({"docs": docs[:20]}, {"docs": docs[5:], "partitions": 3}):
            local = run_sync(index=local_index, fqn="sources.testing:MemorySource", configuration=configuration)
            on_prism = run_sync(index=index_name, fqn="sources.testing:MemorySource", configuration=configuration,
                                **remote)
            outcomes += [local, on_prism]
            assert on_prism["status"] == "completed", on_prism.get("error")
            assert index_docs(es, index_name) == index_docs(es, local_index)
        assert (on_prism["indexed_document_count"], on_prism["deleted_document_count"]) == (10, 5)
        assert on_prism["unchanged_document_count"] == local["unchanged_document_count"] == 15
        assert not on_prism.get("index_digests_kept")  # the cache needs the digests as files
    finally:
        es.indices.delete(index=local_index, ignore_unavailable=True)
        for outcome in outcomes:
            delete_progress(es, outcome["job_id"])


def test_prism_when_elasticsearch_needs_a_password_then_pool_workers_read_it_from_the_secrets_file(
        es, index_name, prism, captured, tmp_path):
    """Secrets out of the graph, on EXTERNAL workers: Prism is handed a pipeline without the password, and
    the pool's SDK worker (a process started for the job by a pool that has run since before the sync, with
    an environment of its own) reads it from the sync's 0600 file, through a TLS proxy that requires it."""
    from pipelines.run import run_sync as run
    from pipelines.settings import PipelineConfig
    from tests.test_secrets import _job
    from tests.test_security import PROXY_PORT, _start_proxy
    from transforms.es_client import ElasticsearchConnection

    proxy = _start_proxy(PROXY_PORT, es.transport.node_pool.get().base_url)
    conn = ElasticsearchConnection(hosts=(proxy.url,), ca_certs=proxy.ca, username=proxy.username,
                                   password=proxy.password, max_retries=0)
    token = f"tok-{uuid.uuid4().hex}"
    job = _job(token={"value": token})  # a sensitive field of the source's configuration
    job.index_name = index_name
    settings = PipelineConfig.model_validate({"runner": "PortableRunner", "portable": prism,
                                              "dead_letters": str(tmp_path / "dead_letters"),
                                              "bulk": {"max_retries": 0}})

    outcome = run(job, settings, conn)
    delete_progress(es, job.job_id)

    assert outcome["status"] == "completed", outcome.get("error")
    assert es.count(index=index_name)["count"] == 12
    (pipeline,) = captured
    for secret in (proxy.password, token):
        assert not any(secret.encode() in data for data in pipeline["staged"])
    assert pipeline["mode"] == 0o600 and not os.path.exists(pipeline["secrets_file"])
