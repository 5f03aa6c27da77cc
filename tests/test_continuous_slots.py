"""Continuous syncs among a daemon's other work, through a real daemon on Prism, on real folders.

A continuous sync holds one of the daemon's ``service.max_concurrent_syncs`` slots until it
is stopped. When streams hold them all, the jobs left waiting (another connector's full
sync, another connector's stream) must be named, with the setting to raise, in the log and
in ``/healthz``, and ``connectors`` must show a stream not started yet as pending: before,
they waited in silence for as long as the streams ran. And turning a stream off is no change
of what a document holds: the next full sync finds the stream's documents unchanged.

Needs the Prism binary from ``scripts/prism build``; locally the tests skip without it, under
CI=true they fail.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from launcher.indices import CONNECTORS_INDEX, ensure_indices
from tests.continuous_fixtures import SYNC_JOBS, stream_daemon_fixture
from tests.helpers import DIR_SOURCE, cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE = f"dirslots_{uuid.uuid4().hex[:6]}"

daemon = stream_daemon_fixture("continuous-slots", {SERVICE: DIR_SOURCE}, service={"max_concurrent_syncs": 1})


@pytest.fixture
def connectors(es, daemon, tmp_path):
    """``make(name, continuous)``: a dir connector over a folder of its own (one file); all are
    deleted after the test, with their indices."""
    ensure_indices(es)
    made: list[str] = []

    def make(name: str, *, continuous: bool) -> str:
        connector_id = f"test-slots-{uuid.uuid4().hex[:6]}-{name}"
        folder = tmp_path / name
        folder.mkdir()
        (folder / "a.txt").write_text(f"the folder of {name}", encoding="utf-8")
        result = cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", SERVICE,
                     "--index-name", connector_id, "--set", f"directory={folder}",
                     *(["--set", "continuous_sync=true"] if continuous else []), config=daemon["config"])
        assert result.returncode == 0, result.stderr
        made.append(connector_id)
        return connector_id

    yield make
    for connector_id in made:
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        es.options(ignore_status=404).indices.delete(index=connector_id)


def _jobs(es: Any, connector_id: str) -> list[dict[str, Any]]:
    es.indices.refresh(index=SYNC_JOBS)
    hits = es.search(index=SYNC_JOBS, size=20, sort=[{"created_at": "asc"}],
                     query={"term": {"connector.id": connector_id}})["hits"]["hits"]
    return [{"id": h["_id"], **h["_source"]} for h in hits]


def _status(es: Any, connector_id: str, status: str) -> list[dict[str, Any]]:
    return [j for j in _jobs(es, connector_id) if j["status"] == status]


def test_continuous_sync_when_streams_hold_every_slot_then_waiting_jobs_are_named_with_the_setting(
        es, daemon, connectors):
    streaming = connectors("streaming", continuous=True)
    stream_job = wait_for(lambda: _status(es, streaming, "in_progress"), timeout=90, what="the stream running")[0]

    # The only slot is the stream's: a full sync of another connector, and another connector's
    # stream, wait; the daemon says which, why, and what to raise.
    batch = connectors("batch", continuous=False)
    result = cli("--action", "sync", "--connector-id", batch, config=daemon["config"])
    assert result.returncode == 0, result.stderr
    second = connectors("second", continuous=True)
    full_job = wait_for(lambda: _status(es, batch, "pending"), timeout=30, what="the full sync pending")[0]
    waiting = wait_for(lambda: _status(es, second, "pending"), timeout=30, what="the second stream's job")[0]

    def named_in(text: str) -> bool:
        return all(part in text for part in ("raise service.max_concurrent_syncs", full_job["id"], waiting["id"],
                                             streaming))

    log = Path(daemon["folder"]) / "daemon.log"
    wait_for(lambda: named_in(log.read_text(encoding="utf-8", errors="replace")), timeout=30,
             what="the daemon's log naming the waiting jobs and the setting")
    health = urllib.request.urlopen(daemon["metrics"] + "/healthz", timeout=10).read().decode()
    assert named_in(health), health
    shown = cli("--action", "connectors", "--json", config=daemon["config"])
    assert shown.returncode == 0, shown.stderr
    by_id = {c["id"]: c for c in json.loads(shown.stdout)}
    assert by_id[second]["stream"]["status"] == "pending" and by_id[second]["stream"]["job_id"] == waiting["id"]
    assert by_id[streaming]["stream"]["status"] == "in_progress" and by_id[batch]["stream"] is None
    table = cli("--action", "connectors", "--connector-id", second, config=daemon["config"])
    assert "pending (not" in table.stdout, table.stdout
    assert _status(es, batch, "pending")  # still waiting: the stream keeps its slot

    # The stream turned off frees the slot: the waiting jobs run, and the wait is no longer reported.
    result = cli("--action", "update-connector", "--connector-id", streaming, "--set", "continuous_sync=false",
                 config=daemon["config"])
    assert result.returncode == 0, result.stderr
    wait_for(lambda: [j for j in _jobs(es, streaming) if j["id"] == stream_job["id"] and j["status"] == "completed"],
             timeout=60, what="the stream ended")
    wait_for(lambda: _status(es, batch, "completed"), timeout=120, what="the full sync ran")
    wait_for(lambda: _status(es, second, "in_progress"), timeout=120, what="the second stream running")
    wait_for(lambda: "raise service.max_concurrent_syncs" not in urllib.request.urlopen(
        daemon["metrics"] + "/healthz", timeout=10).read().decode(), timeout=30, what="/healthz without the wait")

    # A stream the service stopped (turned off) ends quietly: no error, no traceback in the log.
    text = log.read_text(encoding="utf-8", errors="replace")
    assert f"job {stream_job['id']}: continuous sync ended: continuous_sync was turned off" in text
    noise = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line
             or "could not cancel" in line]
    assert not noise, "\n".join(noise[:10])


def test_continuous_sync_when_turned_off_then_a_full_sync_finds_the_streamed_documents_unchanged(
        es, daemon, connectors):
    streamed = connectors("toggled", continuous=True)
    job = wait_for(lambda: _status(es, streamed, "in_progress"), timeout=90, what="the stream running")[0]
    wait_for(lambda: es.indices.exists(index=streamed) and es.count(index=streamed)["count"] == 1, timeout=60,
             what="the stream's rescan indexed the folder")

    result = cli("--action", "update-connector", "--connector-id", streamed, "--set", "continuous_sync=false",
                 config=daemon["config"])
    assert result.returncode == 0, result.stderr
    wait_for(lambda: [j for j in _jobs(es, streamed) if j["id"] == job["id"] and j["status"] == "completed"],
             timeout=60, what="the stream ended")
    result = cli("--json", "--action", "sync", "--connector-id", streamed, "--wait", config=daemon["config"],
                 timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    full = json.loads(result.stdout)
    assert full["status"] == "completed" and full["job_type"] == "full", full
    assert full["indexed_document_count"] == 0 and "reindex_reason" not in full["metadata"], full["metadata"]
