"""Sync processes forked from the warm process (launcher/sync_processes.py, pipelines/fork_server.py).

Each sync must still be a process of its own: its own session and process group, its own
environment, nothing left from an earlier sync; a warm process that cannot fork safely
(a thread runs in it) or dies must not cost a sync.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from launcher.sync_processes import UNKNOWN_RETURNCODE, SyncProcesses, WarmProcess
from pipelines.job import SyncJob
from pipelines.run import write_job_file
from pipelines.settings import PipelineConfig
from tests.helpers import ES_URL, REPO, wait_for
from transforms.es_client import ElasticsearchConnection

PROBE = "tests.fixtures_sources.probe:ProbeSource"
THREADED = "tests.fixtures_sources.threaded:ThreadAtImportSource"
SLOW = "tests.fixtures_sources.slow:SlowSource"


def _start(processes: SyncProcesses, folder: Path, index: str, fqn: str, configuration: dict[str, Any],
           env: dict[str, str] | None = None) -> tuple[Any, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    job = SyncJob(job_id=f"warm-{uuid.uuid4().hex[:8]}", connector_id="test-connector", job_type="full",
                  index_name=index, service_type="probe", source_fqn=fqn,
                  configuration={k: {"value": v} for k, v in configuration.items()})
    write_job_file(folder / "job.json", job, PipelineConfig(dead_letters=str(folder / "dead")),
                   ElasticsearchConnection(hosts=(ES_URL,)))
    process = processes.start([str(folder / "job.json"), str(folder / "result.json")],
                              env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, cwd=str(REPO))
    return process, folder / "result.json"


def _synced_probe(es, processes, folder, index, fqn=PROBE, env=None) -> tuple[Any, dict[str, Any]]:
    process, result = _start(processes, folder, index, fqn, {"label": "probe"}, env)
    assert process.wait(timeout=120) == 0, result.read_text() if result.exists() else "no result"
    assert json.loads(result.read_text())["status"] == "completed"
    return process, es.get(index=index, id="probe")["_source"]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_sync_processes_when_warm_then_each_sync_is_a_fresh_fork_in_its_own_group_without_the_last_ones_state(
        es, tmp_path):
    processes = SyncProcesses(warm=True, preload=[PROBE])
    indices = [f"test-warm-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        first, one = _synced_probe(es, processes, tmp_path / "one", indices[0], env={"PROBE_SECRET": "job-one-only"})
        second, two = _synced_probe(es, processes, tmp_path / "two", indices[1])
        warm = processes.warm_pid
        assert warm is not None and _threads(warm) == 1  # it never ran a sync: no thread, no client, no loop
    finally:
        processes.close()
        for index in indices:
            es.indices.delete(index=index, ignore_unavailable=True)
    assert isinstance(first, WarmProcess) and isinstance(second, WarmProcess)
    for process, seen in ((first, one), (second, two)):
        assert seen["pid"] == process.pid
        assert seen["pgid"] == seen["sid"] == process.pid  # its own session and group: killpg stops all of it
        assert seen["ppid"] == warm
    assert one["secret"] == "job-one-only" and two["secret"] is None  # each sync gets its own environment
    assert one["built_before"] == two["built_before"]  # the second process carries nothing of the first


def test_sync_processes_when_the_warm_process_has_a_thread_then_the_sync_starts_cold_and_completes(es, tmp_path):
    processes = SyncProcesses(warm=True, preload=[THREADED])
    index = f"test-warm-{uuid.uuid4().hex[:8]}"
    try:
        process, seen = _synced_probe(es, processes, tmp_path / "cold", index, fqn=THREADED)
    finally:
        processes.close()
        es.indices.delete(index=index, ignore_unavailable=True)
    assert not isinstance(process, WarmProcess)  # a fresh interpreter: a fork would have copied the thread's locks
    assert seen["pid"] == process.pid == seen["pgid"]


def test_sync_processes_when_the_warm_process_dies_then_its_sync_stops_and_the_next_sync_is_warm_again(
        es, tmp_path):
    processes = SyncProcesses(warm=True, preload=[SLOW, PROBE], retry_after=0)
    indices = [f"test-warm-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        slow, result = _start(processes, tmp_path / "slow", indices[0], SLOW, {"count": 100000, "delay_ms": 20})
        assert isinstance(slow, WarmProcess)
        wait_for(lambda: es.indices.exists(index=indices[0]), timeout=60, what="the slow sync to start")
        first_warm = processes.warm_pid
        os.kill(first_warm, signal.SIGKILL)
        started = time.monotonic()
        assert slow.wait(timeout=30) == UNKNOWN_RETURNCODE  # nobody is left to tell how it ended
        assert time.monotonic() - started < 15  # it noticed its parent died and stopped
        assert not result.exists()
        again, seen = _synced_probe(es, processes, tmp_path / "again", indices[1])
    finally:
        processes.close()
        for index in indices:
            es.indices.delete(index=index, ignore_unavailable=True)
    assert isinstance(again, WarmProcess) and seen["ppid"] not in (first_warm, None)


@pytest.mark.parametrize("warm", [True, False])
def test_sync_processes_when_signalled_as_a_group_then_the_sync_stops(es, tmp_path, warm):
    """How the daemon cancels and suspends: SIGTERM to the process group."""
    processes = SyncProcesses(warm=warm, preload=[SLOW])
    index = f"test-warm-{uuid.uuid4().hex[:8]}"
    try:
        process, _ = _start(processes, tmp_path / "slow", index, SLOW, {"count": 100000, "delay_ms": 20})
        wait_for(lambda: es.indices.exists(index=index), timeout=60, what="the slow sync to start")
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM
    finally:
        processes.close()
        es.indices.delete(index=index, ignore_unavailable=True)


def test_daemon_when_it_ran_a_sync_then_it_never_loaded_beam_numpy_or_a_source_driver(es, tmp_path, index_name):
    """The daemon stays small: Beam, numpy and the client's optional extras are loaded only by
    the warm process and the syncs (a shared library that was ever loaded stays in the maps)."""
    from tests.helpers import DaemonProcess, cli, wait_job_final, write_config

    config = write_config(tmp_path / "config.yml", sources={"probe": PROBE})
    connector_id = f"probe-{uuid.uuid4().hex[:8]}"
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "probe",
            "--index-name", index_name, config=config, check=True)
        job_id = json.loads(cli("--action", "sync", "--connector-id", connector_id, "--json", config=config,
                                check=True).stdout)["job_id"]
        job = wait_job_final(es, job_id, timeout=120)
        maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    finally:
        daemon.stop()
    assert job["status"] == "completed", job.get("error")
    for library in ("numpy", "apache_beam", "grpc", "pyarrow", "aiohttp"):
        assert f"/{library}" not in maps, f"the daemon loaded {library}"
