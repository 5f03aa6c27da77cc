"""Observability: /healthz and Prometheus /metrics of a real daemon; JSON logs with job and connector ids.

The daemon runs against the private node of ``tests.fixtures_security.own_node`` (fast
refreshes, nobody else's jobs), with ``service.metrics_address`` on a free port and
``service.log_format: json``.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

SCRIPTED = "tests.fixtures_security.scripted:ScriptedSource"
SERVICE_TYPE = "scripted_obs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# -- unit: the endpoint and the formatter ---------------------------------------------------
def test_healthz_and_metrics_when_a_continuous_sync_runs_then_its_lag_position_and_counts_are_shown():
    from launcher.metrics import serve_metrics

    state = {"lag_seconds": 0.31, "cursor": {"slot": "s", "lsn": "0/3700000"}, "snapshot": "done",
             "changes_applied": 42, "version_conflicts": 2, "pending_changes": 3,
             "acknowledged_at": "2026-12-05T18:00:00.000+00:00"}
    stream = SimpleNamespace(continuous=True, connector_id="pg-1", job_id="job-1", metadata={"stream": state})
    batch = SimpleNamespace(continuous=False, connector_id="other", job_id="job-2", metadata={})
    daemon = SimpleNamespace(running={"job-1": stream, "job-2": batch}, polls=1, last_successful_poll=time.time(),
                             _errors=[], _done=lambda runner: None,
                             config=SimpleNamespace(service=SimpleNamespace(idling=1.0)),
                             store=SimpleNamespace(job_totals=lambda: ({}, 0)))
    server = serve_metrics("127.0.0.1:0", daemon)
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, text = _get(f"{base}/healthz")
        assert code == 200 and text.splitlines() == [
            "ok", "streaming pg-1: streaming, lag 0.31s, at lsn=0/3700000, last acknowledged "
                  "2026-12-05T18:00:00.000+00:00"]
        samples = _samples(_get(f"{base}/metrics")[1])
        pg = (("connector", "pg-1"),)
        assert samples[("elastic_ingest_streaming_connectors", ())] == 1
        assert samples[("elastic_ingest_stream_lag_seconds", pg)] == 0.31
        assert samples[("elastic_ingest_stream_changes_applied", pg)] == 42
        assert samples[("elastic_ingest_stream_version_conflicts", pg)] == 2
        assert samples[("elastic_ingest_stream_pending_changes", pg)] == 3
        assert samples[("elastic_ingest_stream_last_acknowledged_timestamp_seconds", pg)] == 1796493600.0
        assert not [key for key in samples if ("connector", "other") in key[1]]
        daemon.last_successful_poll = time.time() - 3600  # unhealthy: the reason, then the streams still
        code, text = _get(f"{base}/healthz")
        assert code == 503 and text.splitlines()[1].startswith("streaming pg-1: streaming, lag 0.31s")
    finally:
        server.shutdown()


def test_healthz_when_no_successful_poll_then_503_and_when_recent_then_200():
    from launcher.metrics import serve_metrics

    daemon = SimpleNamespace(running={}, polls=0, last_successful_poll=None, _errors=[], _done=lambda runner: None,
                             config=SimpleNamespace(service=SimpleNamespace(idling=1.0)),
                             es=SimpleNamespace(search=lambda **_: (_ for _ in ()).throw(ConnectionError("down"))))
    server = serve_metrics("127.0.0.1:0", daemon)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(f"{base}/healthz")[0] == 503
        daemon.last_successful_poll, daemon.polls = time.time(), 3
        assert _get(f"{base}/healthz") == (200, "ok\n")
        daemon.last_successful_poll = time.time() - 3600
        assert _get(f"{base}/healthz")[0] == 503
        assert _get(f"{base}/nope")[0] == 404
        code, text = _get(f"{base}/metrics")  # Elasticsearch down: still answers
        assert code == 200
        samples = _samples(text)
        assert samples[("elastic_ingest_polls", ())] == 3
        assert samples[("elastic_ingest_up", ())] == 1
    finally:
        server.shutdown()


def test_job_metrics_when_runs_end_then_each_adds_its_own_counters_and_odd_ones_count_status_only():
    from prometheus_client import CollectorRegistry

    from launcher.counters import Counters
    from launcher.metrics import JobMetrics

    registry = CollectorRegistry()
    metrics = JobMetrics(registry)

    metrics.record("error", None)
    metrics.record("completed", SimpleNamespace(indexed="many", bytes=None))
    metrics.record("completed", Counters(indexed=5, bytes=500, dead_letters=2, bulk_retries=1))
    # A resumed job: its document is cumulative, but this instance adds only what its run wrote.
    carried = Counters.carried({"indexed_document_count": 40, "metadata": {"indexed_document_bytes": 4000, "runs": 1}})
    assert (carried + Counters(indexed=7)).job_fields()["indexed_document_count"] == 47
    # Suspended by another service (no metadata.runs): its counts are not ours to carry.
    assert Counters.carried({"indexed_document_count": 14, "metadata": {}}) == Counters()
    metrics.record("completed", Counters(indexed=7, bytes=700))

    assert registry.get_sample_value("elastic_ingest_jobs_finished_total", {"status": "completed"}) == 3
    assert registry.get_sample_value("elastic_ingest_jobs_finished_total", {"status": "error"}) == 1
    assert registry.get_sample_value("elastic_ingest_documents_indexed_total") == 12
    assert registry.get_sample_value("elastic_ingest_bytes_indexed_total") == 1200
    assert registry.get_sample_value("elastic_ingest_dead_letters_total") == 2
    assert registry.get_sample_value("elastic_ingest_bulk_retries_total") == 1


def test_json_logs_when_logged_from_a_supervisor_thread_then_lines_carry_job_and_connector_ids():
    from launcher.logs import EcsJsonFormatter, _SyncContext

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EcsJsonFormatter())
    handler.addFilter(_SyncContext())
    logger = logging.getLogger("tests.observability.unit")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        thread = threading.Thread(target=lambda: logger.warning("job %s: done", "j-1"), name="sync-j-1")
        thread.job_id, thread.connector_id = "j-1", "c-1"  # as a SyncRunner has them
        thread.start()
        thread.join()
        logger.warning("not about a job")
    finally:
        logger.removeHandler(handler)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["labels.job_id"] == "j-1" and first["labels.connector_id"] == "c-1"
    assert first["message"] == "job j-1: done" and first["log.level"] == "warning"
    assert "labels.job_id" not in second


# -- a real daemon --------------------------------------------------------------------------
@pytest.mark.integration
def test_daemon_when_metrics_and_json_logs_on_then_health_metrics_and_labelled_lines(own_es, tmp_path):
    from launcher.configuration import complete_configuration
    from launcher.indices import CONNECTORS_INDEX
    from launcher.protocol import create_job, get_connector, new_connector
    from tests.fixtures_security.own_node import FAULT_ES_URL, delete_jobs_of
    from tests.fixtures_security.scripted import ScriptedSource
    from tests.helpers import DaemonProcess, wait_for, wait_job_final, write_config

    es = own_es
    cid, index = f"obs-{uuid.uuid4().hex[:8]}", f"test-obs-{uuid.uuid4().hex[:8]}"
    configuration, _ = complete_configuration({"count": {"value": 25}, "malformed": {"value": "bad_field"}},
                                              ScriptedSource.get_default_configuration())
    doc = new_connector(service_type=SERVICE_TYPE, index_name=index, configuration=configuration)
    doc["status"] = "configured"
    es.index(index=CONNECTORS_INDEX, id=cid, document=doc, refresh=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path / "config.yml", es_url=FAULT_ES_URL, sources={SERVICE_TYPE: SCRIPTED},
                          service={"connector_ids": [cid], "metrics_address": f"127.0.0.1:{port}",
                                   "log_format": "json"})
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _get(f"{base}/healthz")[0] == 200 if _port_open(port) else False, timeout=60,
                 what="/healthz to answer 200")
        before = _samples(_get(f"{base}/metrics")[1])
        assert before[("elastic_ingest_polls", ())] >= 1
        assert time.time() - before[("elastic_ingest_last_successful_poll_timestamp_seconds", ())] < 30

        job_id = create_job(es, get_connector(es, cid))
        job = wait_job_final(es, job_id, timeout=120)
        assert job["status"] == "completed", job.get("error")

        def finished():
            samples = _samples(_get(f"{base}/metrics")[1])
            return samples if samples.get(("elastic_ingest_jobs_finished_total", (("status", "completed"),))) else None

        samples = wait_for(finished, timeout=30, what="the finished job to be counted")
        assert samples[("elastic_ingest_jobs_finished_total", (("status", "completed"),))] == 1
        assert samples[("elastic_ingest_documents_indexed_total", ())] == 25
        assert samples[("elastic_ingest_bytes_indexed_total", ())] > 25 * 50
        assert samples[("elastic_ingest_dead_letters_total", ())] == 1
        assert samples[("elastic_ingest_bulk_retries_total", ())] == 0
        assert samples[("elastic_ingest_jobs", (("status", "completed"),))] >= 1
        assert samples[("elastic_ingest_running_syncs", ())] == 0
    finally:
        daemon.stop()
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=cid, refresh=True)
        delete_jobs_of(es, [cid])
        es.indices.delete(index=index, ignore_unavailable=True)

    records, other = [], []
    for line in daemon.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            other.append(line)
    assert records, "no JSON log lines"
    assert len(other) <= len(records) // 10, f"too many non-JSON lines: {other[:5]}"
    daemon_pid = daemon.process.pid
    sync_lines = [r for r in records if r["process.pid"] != daemon_pid]
    assert sync_lines, "the sync process logged nothing"
    for record in sync_lines:
        assert record.get("labels.job_id") == job_id and record.get("labels.connector_id") == cid, record
    supervisor = [r for r in records if r["process.pid"] == daemon_pid and job_id in r["message"]]
    assert supervisor, "the daemon logged nothing about the job"
    for record in supervisor:
        assert record.get("labels.job_id") == job_id and record.get("labels.connector_id") == cid, record


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
