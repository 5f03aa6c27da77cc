"""Every way a job ends, through a real daemon: its counters against the index, its dead letters.

One daemon (``elastic-ingest --action poll``) runs for the module against the shared
Elasticsearch, serving a service type unique to this run (the scripted source of
``tests.fixtures_security.scripted``), with its Prometheus endpoint on a free port. For
each outcome the job document's counters are checked against what the content index
holds: exact for a job that reached its end; for one stopped early, at most the
documents of the ``_bulk`` requests that were in flight when it stopped
(``max_in_flight * max_docs``), and never more than the index holds.
"""

from __future__ import annotations

import json
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from launcher.configuration import complete_configuration
from launcher.indices import CONNECTORS_INDEX, ensure_indices
from launcher.protocol import create_job, get_connector, get_job, new_connector, update_job
from tests.fixtures_security.scripted import ScriptedSource
from tests.helpers import DaemonProcess, cli, wait_for, wait_job_final, write_config

pytestmark = pytest.mark.integration

SERVICE_TYPE = f"scripted_outcomes_{uuid.uuid4().hex[:6]}"
SCRIPTED = "tests.fixtures_security.scripted:ScriptedSource"
MAX_DOCS, MAX_IN_FLIGHT = 20, 4
IN_FLIGHT = MAX_DOCS * MAX_IN_FLIGHT  # documents a stopped job may have sent without an answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """The module's daemon; ``ensure()`` starts it again after a test stopped it."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.starts = tmp, _free_port(), 0
        self.config = write_config(
            tmp / "config.yml", sources={SERVICE_TYPE: SCRIPTED},
            service={"service_types": [SERVICE_TYPE], "metrics_address": f"127.0.0.1:{self.port}"},
            # Relative to the daemon's folder: the job must record where that is, as an absolute path.
            pipeline={"dead_letters": "dead-letters-outcomes", "read_batch_size": 50,
                      "bulk": {"max_docs": MAX_DOCS, "max_in_flight": MAX_IN_FLIGHT}},
        )
        self.daemon: DaemonProcess | None = None
        self.ensure()

    def ensure(self) -> DaemonProcess:
        if self.daemon is None or self.daemon.process.poll() is not None:
            self.starts += 1
            self.daemon = DaemonProcess(self.config, self.tmp / f"daemon-{self.starts}.log", cwd=self.tmp)
        return self.daemon

    def metric(self, name: str) -> float:
        """One unlabelled sample of the daemon's /metrics (0 before the endpoint answers)."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return sample.value
        return 0.0


@pytest.fixture(scope="module")
def service(es, tmp_path_factory):
    ensure_indices(es)
    service = Service(tmp_path_factory.mktemp("outcomes"))
    yield service
    service.daemon.stop(timeout=30)


@pytest.fixture
def connector(es, service):
    """Make a scripted connector (unique id and index); deleted with its index afterwards."""
    made: list[tuple[str, str]] = []

    def make(**values: Any) -> tuple[str, str]:
        connector_id = f"out-{uuid.uuid4().hex[:10]}"
        index = f"test-{connector_id}"
        configuration, _ = complete_configuration({k: {"value": v} for k, v in values.items()},
                                                  ScriptedSource.get_default_configuration())
        doc = new_connector(service_type=SERVICE_TYPE, index_name=index, configuration=configuration)
        doc["status"] = "configured"
        es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
        made.append((connector_id, index))
        return connector_id, index

    yield make
    service.ensure()
    from tests.fixtures_security.own_node import delete_jobs_of

    for connector_id, index in made:
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        es.indices.delete(index=index, ignore_unavailable=True)
    delete_jobs_of(es, [connector_id for connector_id, _ in made])


def _in_index(es, index: str) -> int:
    es.indices.refresh(index=index)
    return es.count(index=index)["count"]


def _indexed_so_far(es, job_id: str, at_least: int) -> dict | None:
    job = get_job(es, job_id)
    return job.doc if job and (job.doc.get("indexed_document_count") or 0) >= at_least else None


def _no_progress_records(es, job_id: str) -> None:
    """The job's progress records go once its end state is written (just after it)."""
    from transforms.progress import PROGRESS_INDEX

    def left() -> int:
        es.indices.refresh(index=PROGRESS_INDEX, ignore_unavailable=True)
        return es.count(index=PROGRESS_INDEX, query={"term": {"job_id": job_id}}, ignore_unavailable=True)["count"]

    wait_for(lambda: left() == 0, timeout=15, what=f"the progress records of job {job_id} to be deleted")


def _assert_within_in_flight(job: dict[str, Any], in_index: int) -> None:
    counted = job["indexed_document_count"]
    assert in_index - IN_FLIGHT <= counted <= in_index, (counted, in_index)


def test_job_when_canceled_mid_sync_then_counters_are_what_elasticsearch_acknowledged(es, service, connector):
    connector_id, index = connector(count=20000, delay_ms=1)
    before = service.metric("elastic_ingest_documents_indexed_total")
    job_id = create_job(es, get_connector(es, connector_id))
    wait_for(lambda: _indexed_so_far(es, job_id, 400), timeout=120, what="the sync to index 400 documents")
    update_job(es, job_id, {"status": "canceling", "cancelation_requested_at": "2026-01-01T00:00:00Z"})

    job = wait_job_final(es, job_id, timeout=60)

    assert job["status"] == "canceled", job.get("error")
    in_index = _in_index(es, index)
    assert 400 <= in_index < 20000
    _assert_within_in_flight(job, in_index)
    assert job["total_document_count"] == in_index
    assert job["metadata"]["indexed_document_bytes"] > 0 and job["metadata"]["runs"] == 1
    # The connector's last_* fields are written just after the job's end state.
    wait_for(lambda: get_connector(es, connector_id).get("last_indexed_document_count") == job["indexed_document_count"],
             timeout=15, what="the connector's last_indexed_document_count")
    _no_progress_records(es, job_id)
    wait_for(lambda: service.metric("elastic_ingest_documents_indexed_total") - before == job["indexed_document_count"],
             timeout=30, what="the Prometheus counter to add the canceled job's documents")


def test_job_when_suspended_by_sigterm_and_resumed_then_counters_add_up_over_both_runs(es, service, connector):
    count = 4000
    connector_id, index = connector(count=count, delay_ms=1)
    job_id = create_job(es, get_connector(es, connector_id))
    wait_for(lambda: _indexed_so_far(es, job_id, 300), timeout=120, what="the sync to index 300 documents")
    daemon = service.daemon
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=60) == 0

    suspended = get_job(es, job_id).doc
    assert suspended["status"] == "suspended"
    first_run = _in_index(es, index)
    assert 300 <= first_run < count
    _assert_within_in_flight(suspended, first_run)
    _no_progress_records(es, job_id)

    service.ensure()  # the same service comes back and resumes the job
    job = wait_job_final(es, job_id, timeout=120)

    assert job["status"] == "completed", job.get("error")
    assert _in_index(es, index) == count and job["total_document_count"] == count
    # The second run indexed what the first did not; together, every document once
    # (less what the first run had in flight when it stopped).
    assert count - IN_FLIGHT <= job["indexed_document_count"] <= count
    assert job["metadata"]["runs"] == 2
    assert job["metadata"]["unchanged_document_count"] >= first_run - IN_FLIGHT
    _no_progress_records(es, job_id)


def test_job_when_source_fails_mid_sync_then_counters_are_what_was_written_before(es, service, connector):
    connector_id, index = connector(count=3000, delay_ms=1, fail_after=1500, fail_message="backend lost at 1500")
    job_id = create_job(es, get_connector(es, connector_id))

    job = wait_job_final(es, job_id, timeout=120)

    assert job["status"] == "error" and "backend lost at 1500" in job["error"], job.get("error")
    in_index = _in_index(es, index)
    assert 1500 - IN_FLIGHT <= in_index <= 1500
    _assert_within_in_flight(job, in_index)
    assert job["total_document_count"] == in_index
    _no_progress_records(es, job_id)


def _table_row(output: str, first_cell: str) -> dict[str, str]:
    """The row of a Rich table (as the CLI prints it) whose first cell is ``first_cell``, by column."""
    lines = [line for line in output.splitlines() if "│" in line or "┃" in line]
    header = [cell.strip() for cell in lines[0].replace("┃", "│").split("│")]
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 1 and cells[1] == first_cell:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def test_job_when_documents_rejected_then_dead_letters_counted_located_and_shown_from_anywhere(
        es, service, connector, tmp_path):
    import os
    import re

    connector_id, index = connector(count=50, malformed="bad_field,mapping_conflict", malformed_repeat=2)
    es.indices.create(index=index, mappings={"properties": {"n": {"type": "integer"}}})

    waited = cli("--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "120",
                 config=service.config, cwd=tmp_path)

    assert waited.returncode == 0, waited.stderr
    job_id = re.search(r"job (\w+) completed", waited.stdout).group(1)
    assert (f"4 document(s) could not be indexed: elastic-ingest -c {service.config} --action dead-letters "
            f"--job-id {job_id}" in waited.stdout), waited.stdout
    job = get_job(es, job_id).doc
    assert job["indexed_document_count"] == 50 == _in_index(es, index) == job["total_document_count"]
    dead = job["metadata"]["dead_letters"]
    assert dead["count"] == 4
    # pipeline.dead_letters is relative to the daemon's folder; the job says where that was.
    assert os.path.isabs(dead["location"]) and dead["location"] == str(service.tmp / "dead-letters-outcomes" / job_id)

    jobs = cli("--action", "jobs", "--connector-id", connector_id, config=service.config, cwd=tmp_path)
    assert jobs.returncode == 0, jobs.stderr
    assert _table_row(jobs.stdout, job_id)["dead letters"] == "4"

    # Another folder, another config (its own pipeline.dead_letters): the job's are read from where it wrote them.
    elsewhere = write_config(tmp_path / "elsewhere.yml")
    shown = cli("--action", "dead-letters", "--job-id", job_id, config=elsewhere, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}: 4 dead letter(s) in {dead['location']}" in shown.stdout, shown.stdout
    row = _table_row(shown.stdout, "bad-mapping_conflict-0")
    assert row["stage"] == "write" and row["error type"] == "document_parsing_exception", row
    assert "failed to parse field [n] of type [integer]" in row["error"], row  # brackets kept, not read as markup
    assert {d["doc_id"] for d in json.loads(cli("--action", "dead-letters", "--job-id", job_id, "--json",
                                                config=elsewhere, cwd=tmp_path).stdout)} == {
        "bad-bad_field-0", "bad-bad_field-1", "bad-mapping_conflict-0", "bad-mapping_conflict-1"}


def test_job_when_elasticsearch_stops_mid_sync_then_error_within_max_retry_seconds_with_what_was_written(
        own_es, tmp_path):
    """The private node (``FAULT_ES_PORT``) is stopped under a running sync: the sync gives up
    ``bulk.max_retry_seconds`` after its requests started failing (not after stacked client
    and bulk retries), and once Elasticsearch is back the job says what was written before."""
    import time

    from tests.fixtures_security.own_node import FAULT_ES_URL, delete_jobs_of, es_script, fast_refresh
    from tests.helpers import child_pids

    es = own_es
    deadline = 8.0
    connector_id, index = f"out-es-{uuid.uuid4().hex[:8]}", f"test-out-es-{uuid.uuid4().hex[:8]}"
    configuration, _ = complete_configuration({"count": {"value": 100000}, "delay_ms": {"value": 1}},
                                              ScriptedSource.get_default_configuration())
    doc = new_connector(service_type=SERVICE_TYPE, index_name=index, configuration=configuration)
    doc["status"] = "configured"
    es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
    config = write_config(
        tmp_path / "config.yml", es_url=FAULT_ES_URL, sources={SERVICE_TYPE: SCRIPTED},
        service={"connector_ids": [connector_id], "max_errors": 100000},  # polls fail while it is down
        pipeline={"bulk": {"max_docs": MAX_DOCS, "max_in_flight": MAX_IN_FLIGHT, "max_retries": 1000,
                           "max_retry_seconds": deadline, "initial_backoff": 0.2, "max_backoff": 2}})
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        job_id = create_job(es, get_connector(es, connector_id))
        wait_for(lambda: _indexed_so_far(es, job_id, 500), timeout=120, what="the sync to index 500 documents")
        (sync_process,) = child_pids(daemon.process.pid)
        stopped = es_script("stop")
        assert stopped.returncode == 0, stopped.stderr
        down = time.monotonic()
        wait_for(lambda: not _alive(sync_process), timeout=deadline + 60, what="the sync process to give up")
        gave_up_after = time.monotonic() - down
        started = es_script("start")
        assert started.returncode == 0, started.stderr
        es.cluster.health(wait_for_status="yellow", timeout="60s")
        fast_refresh(es)

        job = wait_job_final(es, job_id, timeout=120)

        assert gave_up_after < deadline + 20, gave_up_after  # with stacked retries: hours
        assert job["status"] == "error", job
        assert job["error"].startswith("ElasticsearchUnavailable: _bulk index to"), job["error"]
        in_index = _in_index(es, index)
        assert 500 <= in_index < 100000
        _assert_within_in_flight(job, in_index)
        assert job["total_document_count"] == in_index
    finally:
        daemon.stop()
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        delete_jobs_of(es, [connector_id])
        es.indices.delete(index=index, ignore_unavailable=True)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
