"""The BYOC protocol against a real Elasticsearch: documents, claims, life-cycle, reaper.

These tests call the launcher's functions (and a :class:`~launcher.daemon.Daemon` polled
in-process, serving only the test's own connector ids) directly; the BYOC indices are
shared with other tests, so every test creates its own connectors and filters by them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from launcher.config import load_config
from launcher.daemon import Daemon, ErrorBudgetExceeded
from launcher.index_store import IndexStore
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices
from launcher.protocol import (
    Claim, Connector, claim_job, create_job, finish_job, get_connector, get_job, new_connector, update_connector,
    update_job,
)
from launcher.sync_runner import build_sync_job
from sources.errors import SyncRulesError
from tests.helpers import SOURCES, wait_for, write_config

SLOW = "tests.fixtures_sources.slow:SlowSource"
INCREMENTAL = "tests.fixtures_sources.slow:IncrementalSlowSource"
pytestmark = pytest.mark.integration


@pytest.fixture
def byoc_indices(es):
    ensure_indices(es)
    return es


@pytest.fixture
def make_connector(byoc_indices):
    """Index a connector document (Kibana's shape, then ``overrides``) with a unique id."""
    created: list[str] = []

    def make(service_type: str = "slow", configuration: dict | None = None, **overrides) -> Connector:
        connector_id = f"proto-{uuid.uuid4().hex[:10]}"
        doc = new_connector(service_type=service_type, index_name=f"test-idx-{connector_id}")
        doc["configuration"] = configuration if configuration is not None else {}
        doc.update(overrides)
        byoc_indices.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
        created.append(connector_id)
        return get_connector(byoc_indices, connector_id)

    yield make
    from tests.fixtures_security.own_node import delete_jobs_of

    for connector_id in created:
        byoc_indices.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
    if created:
        delete_jobs_of(byoc_indices, created)


def _daemon(tmp_path: Path, es, connector_ids, **service) -> Daemon:
    config = load_config(write_config(
        tmp_path / f"config-{uuid.uuid4().hex[:6]}.yml",
        service={"connector_ids": list(connector_ids), "heartbeat": 300, **service},
        sources={**SOURCES, "slow": SLOW, "incremental_slow": INCREMENTAL},
    ))
    return Daemon(config, es)


def _jobs(es, connector_id: str) -> list[dict]:
    es.indices.refresh(index=JOBS_INDEX)
    hits = es.search(index=JOBS_INDEX, query={"term": {"connector.id": connector_id}}, size=1000)["hits"]["hits"]
    return [{"id": h["_id"], **h["_source"]} for h in hits]


def _configured(**values) -> dict:
    from launcher.configuration import complete_configuration
    from tests.fixtures_sources.slow import SlowSource

    configuration, _ = complete_configuration({}, SlowSource.get_default_configuration())
    for key, value in values.items():
        configuration[key]["value"] = value
    return configuration


# -- indices -----------------------------------------------------------------------------------
def test_ensure_indices_when_called_twice_then_aliases_over_v1_indices(es):
    ensure_indices(es)
    ensure_indices(es)
    for alias in (CONNECTORS_INDEX, JOBS_INDEX):
        assert list(es.indices.get_alias(name=alias)) == [f"{alias}-v1"]


# -- claiming ----------------------------------------------------------------------------------
def test_claim_job_when_pending_then_connector_locked_and_job_in_progress(es, make_connector):
    connector = make_connector(configuration=_configured(count=1), status="connected")
    job_id = create_job(es, connector)
    claim = claim_job(es, job_id, "host-a")
    assert isinstance(claim, Claim)
    job = get_job(es, job_id).doc
    assert job["status"] == "in_progress" and job["worker_hostname"] == "host-a"
    assert job["started_at"] and job["last_seen"]
    doc = get_connector(es, connector.id).doc
    assert doc["last_sync_status"] == "in_progress" and doc["status"] == "connected" and doc["error"] is None
    # The lock holds: a second job of the same connector waits.
    second = create_job(es, connector)
    assert claim_job(es, second, "host-b") is None
    assert get_job(es, second).status == "pending"


def test_claim_job_when_many_instances_race_then_exactly_one_wins(es, make_connector):
    connector = make_connector(configuration=_configured(count=1), status="connected")
    job_ids = [create_job(es, connector) for _ in range(3)]
    results: list[tuple[str, str, Claim | None]] = []
    barrier = threading.Barrier(6)

    def race(host: str, job_id: str) -> None:
        client = Elasticsearch(es.transport.node_pool.get().base_url)
        barrier.wait()
        results.append((host, job_id, claim_job(client, job_id, host)))

    threads = [threading.Thread(target=race, args=(f"host-{i}", job_ids[i % 3])) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [r for r in results if r[2] is not None]
    assert len(results) == 6 and len(winners) == 1
    in_progress = [j for j in _jobs(es, connector.id) if j["status"] == "in_progress"]
    assert [j["id"] for j in in_progress] == [winners[0][1]]
    assert in_progress[0]["worker_hostname"] == winners[0][0]


def test_claim_job_when_job_canceled_meanwhile_then_lock_given_back(es, make_connector):
    connector = make_connector(configuration=_configured(count=1), status="connected", last_sync_status="completed")
    job_id = create_job(es, connector)
    update_job(es, job_id, {"status": "canceled"})
    assert claim_job(es, job_id, "host-a") is None
    assert get_connector(es, connector.id).get("last_sync_status") == "completed"


# -- finishing ---------------------------------------------------------------------------------
def test_finish_job_when_completed_then_connector_last_fields_and_cursor_replaced(es, make_connector):
    connector = make_connector(configuration=_configured(count=1), status="connected",
                               sync_cursor={"old_key": 1, "shared": "old"})
    job_id = create_job(es, connector, job_type="incremental")
    claim_job(es, job_id, "host-a")
    counters = {"indexed_document_count": 7, "indexed_document_volume": 1, "deleted_document_count": 2,
                "total_document_count": 5}
    finish_job(es, job_id, connector.id, "completed", counters=counters, sync_cursor={"shared": "new"},
               job_type="incremental")
    job = get_job(es, job_id).doc
    assert job["status"] == "completed" and job["completed_at"] and job["error"] is None
    assert {k: job[k] for k in counters} == counters
    doc = get_connector(es, connector.id).doc
    assert doc["last_sync_status"] == "completed" and doc["last_sync_error"] is None and doc["last_synced"]
    assert doc["last_indexed_document_count"] == 7 and doc["last_deleted_document_count"] == 2
    assert doc["status"] == "connected" and doc["error"] is None
    assert doc["sync_cursor"] == {"shared": "new"}  # replaced, not merged


def test_replace_connector_object_when_read_meanwhile_then_the_old_or_the_new_cursor_never_none(es, make_connector):
    """A continuous sync stores its acknowledged position as the connector's sync_cursor every
    second; the next job (after a kill -9) starts from whatever it reads there. The field was
    cleared, then written: a read in between, or after a failed second write, found no cursor,
    and a MariaDB stream took a new snapshot instead of resuming from its binlog position."""
    connector = make_connector(configuration=_configured(count=1), status="connected",
                               sync_cursor={"pos": 0, "old_key": True})
    store = IndexStore(es)
    seen: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(es.get(index=CONNECTORS_INDEX, id=connector.id)["_source"].get("sync_cursor"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for position in range(1, 101):
            store.replace_connector_object(connector.id, "sync_cursor", {"pos": position})
    finally:
        stop.set()
        reader.join(timeout=30)
    assert len(seen) > 10 and [c for c in seen if not c] == []
    assert [c for c in seen if c["pos"] and "old_key" in c] == []  # replaced, never merged
    assert get_connector(es, connector.id).get("sync_cursor") == {"pos": 100}


def test_finish_job_when_error_or_canceled_then_cursor_kept_and_status_set(es, make_connector):
    connector = make_connector(configuration=_configured(count=1), status="connected", sync_cursor={"keep": True})
    job_id = create_job(es, connector)
    claim_job(es, job_id, "host-a")
    finish_job(es, job_id, connector.id, "error", error="SourceUnavailable: down", sync_cursor={"new": 1})
    doc = get_connector(es, connector.id).doc
    assert doc["status"] == "error" and doc["error"] == "SourceUnavailable: down"
    assert doc["last_sync_status"] == "error" and doc["last_sync_error"] == "SourceUnavailable: down"
    assert doc["sync_cursor"] == {"keep": True}
    job_id = create_job(es, connector)
    claim_job(es, job_id, "host-a")
    finish_job(es, job_id, connector.id, "canceled", counters={"indexed_document_count": 3})
    job = get_job(es, job_id).doc
    assert job["status"] == "canceled" and job["canceled_at"] and job["completed_at"]
    assert job["indexed_document_count"] == 3


# -- job snapshot as Kibana writes it ----------------------------------------------------------
def _claim_for(doc_connector: dict, filtering) -> Claim:
    from launcher.protocol import Job

    job = Job("job-x", {"job_type": "full", "connector": {"id": "c", "service_type": "slow", "index_name": "i",
                                                          "configuration": {}, "pipeline": {}, "filtering": filtering}})
    return Claim(job, Connector("c", doc_connector))


def test_build_sync_job_when_kibana_filtering_object_then_rules_and_snippet_used(tmp_path):
    config = load_config(write_config(tmp_path / "c.yml", sources={"slow": SLOW}))
    rule = {"id": "r1", "policy": "exclude", "field": "title", "rule": "equals", "value": "x", "order": 1}
    default = {"id": "DEFAULT", "policy": "include", "field": "_", "rule": "regex", "value": ".*", "order": 2}
    kibana = {"rules": [rule, default], "advanced_snippet": {"value": {"q": 1}},
              "validation": {"state": "valid", "errors": []}}
    for filtering in (kibana, [{"domain": "DEFAULT", **kibana}], [{"domain": "DEFAULT", "active": kibana}]):
        job = build_sync_job(config, _claim_for({}, filtering))
        assert job.basic_rules == [rule, default] and job.advanced_rules == {"q": 1}


def test_build_sync_job_when_rules_invalid_then_sync_rules_error_with_reasons(tmp_path):
    config = load_config(write_config(tmp_path / "c.yml", sources={"slow": SLOW}))
    bad = {"rules": [{"id": "r1", "policy": "maybe", "field": "title", "rule": "equals", "value": "x", "order": 1}]}
    with pytest.raises(SyncRulesError, match="policy must be one of"):
        build_sync_job(config, _claim_for({}, bad))
    marked = {"rules": [], "validation": {"state": "invalid", "errors": [{"ids": ["r9"], "messages": ["r9 is bad"]}]}}
    with pytest.raises(SyncRulesError, match="r9 is bad"):
        build_sync_job(config, _claim_for({}, marked))


# -- the connector life-cycle (a Daemon polled in-process) -------------------------------------
def test_poll_when_configuration_empty_then_schema_written_and_needs_configuration(es, make_connector, tmp_path):
    connector = make_connector(configuration={}, status="created", features={"filtering_rules": True})
    daemon = _daemon(tmp_path, es, [connector.id])
    daemon.poll_once()
    doc = get_connector(es, connector.id).doc
    assert doc["status"] == "needs_configuration"
    assert set(doc["configuration"]) == {"count", "delay_ms", "token", "fail_ping"}
    assert doc["configuration"]["token"]["sensitive"] is True and doc["configuration"]["count"]["label"] == "Documents"
    assert doc["last_seen"]  # heartbeat at start
    daemon.poll_once()
    assert get_connector(es, connector.id).get("status") == "needs_configuration"  # waits for the user
    # The user fills a value and marks it configured (as Kibana does): connected, features written.
    configuration = doc["configuration"]
    configuration["count"]["value"] = 3
    update_connector(es, connector.id, {"configuration": configuration, "status": "configured"})
    daemon.poll_once()
    doc = get_connector(es, connector.id).doc
    assert doc["status"] == "connected" and doc["error"] is None
    assert doc["features"]["incremental_sync"] == {"enabled": False}
    assert doc["features"]["sync_rules"]["basic"] == {"enabled": True}
    assert doc["features"]["filtering_rules"] is True  # Kibana's own keys are left alone


def test_poll_when_fields_or_properties_missing_then_added(es, make_connector, tmp_path):
    connector = make_connector(configuration={"count": {"value": 2}}, status="configured")
    _daemon(tmp_path, es, [connector.id]).poll_once()
    configuration = get_connector(es, connector.id).get("configuration")
    assert set(configuration) == {"count", "delay_ms", "token", "fail_ping"}
    assert configuration["count"]["value"] == 2 and configuration["count"]["label"] == "Documents"
    assert configuration["count"]["type"] == "int" and configuration["count"]["required"] is True


def test_poll_when_values_invalid_or_ping_fails_then_error_by_label(es, make_connector, tmp_path):
    bad_values = make_connector(configuration=_configured(count="many", token="s3cr3t-value"), status="configured")
    failing = make_connector(configuration=_configured(count=1, fail_ping=True), status="configured")
    daemon = _daemon(tmp_path, es, [bad_values.id, failing.id])
    daemon.poll_once()
    doc = get_connector(es, bad_values.id).doc
    assert doc["status"] == "error"
    assert "Documents: expected an integer" in doc["error"] and "s3cr3t-value" not in doc["error"]
    doc = get_connector(es, failing.id).doc
    assert doc["status"] == "error" and "fail_ping is on" in doc["error"]
    # Fixed by the user: connected at the next check.
    update_connector(es, failing.id, {"configuration": _configured(count=1, fail_ping=False)})
    daemon.poll_once()
    assert get_connector(es, failing.id).get("status") == "connected"


def test_poll_when_documents_are_wrong_then_error_on_each_and_others_served(es, make_connector, tmp_path):
    good = make_connector(configuration=_configured(count=1), status="configured")
    wrong_types = make_connector(configuration="not an object", status="configured", scheduling=[1, 2])
    unknown = make_connector(service_type="no_such_type", configuration=_configured(count=1), status="configured")
    bad_cron = make_connector(configuration=_configured(count=1), status="configured",
                              scheduling={"full": {"enabled": True, "interval": "every hour please"}})
    no_index = make_connector(configuration=_configured(count=1), status="configured", index_name="Bad Name")
    ids = [good.id, wrong_types.id, unknown.id, bad_cron.id, no_index.id]
    bad_job = create_job(es, good, job_type="full")
    update_job(es, bad_job, {"job_type": "weekly"})
    bad_snapshot = create_job(es, good, job_type="full")
    update_job(es, bad_snapshot, {"connector": {"configuration": "oops", "pipeline": [1]}})
    daemon = _daemon(tmp_path, es, ids, max_concurrent_syncs=1)
    daemon.claim_jobs = lambda connector_ids: Daemon.claim_jobs(daemon, [])  # no syncs here
    daemon.poll_once()
    daemon.poll_once()
    errors = {i: get_connector(es, i).doc for i in ids}
    assert errors[good.id]["status"] == "connected"
    assert "configuration: expected an object, got str" in errors[wrong_types.id]["error"]
    assert "scheduling: expected an object, got list" in errors[wrong_types.id]["error"]
    assert "'no_such_type' is not served here" in errors[unknown.id]["error"]
    assert "scheduling.full.interval: invalid cron expression 'every hour please'" in errors[bad_cron.id]["error"]
    assert "index_name: 'Bad Name' contains space" in errors[no_index.id]["error"]
    assert all(errors[i]["status"] == "error" for i in ids[1:])
    # A job with a wrong job_type fails with a clear error, without being run.
    Daemon.claim_jobs(daemon, [good.id])
    job = get_job(es, bad_job).doc
    assert job["status"] == "error" and "job_type: expected full, incremental or access_control" in job["error"]
    job = get_job(es, bad_snapshot).doc
    assert job["status"] == "error" and job["error"] == (
        "InvalidJob: connector.configuration: expected an object, got str; "
        "connector.pipeline: expected an object, got list")
    # The cron fixed: the connector is checked again at once.
    update_connector(es, bad_cron.id, {"scheduling": {"full": {"enabled": True, "interval": "0 0 0 * * ?"}}})
    daemon.poll_once()
    assert get_connector(es, bad_cron.id).get("status") == "connected"
    assert daemon.polls == 3


def test_poll_when_sync_now_seen_by_two_instances_then_one_on_demand_job(es, make_connector, tmp_path):
    connector = make_connector(configuration=_configured(count=1), status="connected", sync_now=True)
    daemons = [_daemon(tmp_path, es, [connector.id]) for _ in range(2)]
    for daemon in daemons:
        daemon.claim_jobs = lambda ids: None
    fresh = [get_connector(es, connector.id) for _ in daemons]  # both read sync_now: true
    for daemon, copy in zip(daemons, fresh):
        try:
            daemon.maintain_connector(copy)
        except Exception:  # noqa: BLE001 - the loser gets a conflict, as in poll_once
            pass
    jobs = _jobs(es, connector.id)
    assert [(j["job_type"], j["trigger_method"], j["status"]) for j in jobs] == [("full", "on_demand", "pending")]
    assert get_connector(es, connector.id).get("sync_now") is False


def test_schedule_when_two_instances_race_then_each_fire_time_yields_one_job(es, make_connector, tmp_path):
    every_second = {"enabled": True, "interval": "* * * * * ?"}
    connector = make_connector(configuration=_configured(count=1), status="connected",
                               scheduling={"full": every_second, "incremental": every_second,
                                           "access_control": {"enabled": False, "interval": "* * * * * ?"}})
    # Heartbeats on every round: unconditional writes interleaved with the conditional ones
    # (an instance must never act on a stale copy whose _seq_no a heartbeat moved on).
    daemons = [_daemon(tmp_path, es, [connector.id], idling=0.1, heartbeat=0.01) for _ in range(4)]
    stop = time.monotonic() + 4

    def loop(daemon: Daemon) -> None:
        while time.monotonic() < stop:
            copies = daemon.served_connectors()
            daemon.heartbeat(copies)
            for copy in copies:
                try:
                    daemon.maintain_connector(copy)
                except Exception:  # noqa: BLE001 - conflicts, as in poll_once
                    pass
            time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(d,)) for d in daemons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    jobs = _jobs(es, connector.id)
    fire_times = [j["metadata"]["scheduled_at"] for j in jobs]
    assert len(jobs) >= 3, "a fire time every second for 4 s"
    assert len(fire_times) == len(set(fire_times)), "a fire time produced two jobs"
    assert {j["job_type"] for j in jobs} == {"full"}  # SlowSource has no incremental syncs
    assert all(j["trigger_method"] == "scheduled" and j["status"] == "pending" for j in jobs)
    assert get_connector(es, connector.id).get("last_sync_scheduled_at") == max(fire_times)


def test_schedule_when_source_supports_incremental_and_dls_then_all_three_types(es, make_connector, tmp_path):
    every_second = {"enabled": True, "interval": "* * * * * ?"}
    connector = make_connector(service_type="incremental_slow", configuration=_configured(count=1),
                               status="connected", last_sync_scheduled_at="2020-01-01T00:00:00Z",
                               last_incremental_sync_scheduled_at="2020-01-01T00:00:00Z",
                               last_access_control_sync_scheduled_at="2020-01-01T00:00:00Z",
                               scheduling={"full": every_second, "incremental": every_second,
                                           "access_control": every_second})
    _daemon(tmp_path, es, [connector.id]).maintain_connector(get_connector(es, connector.id))
    assert sorted(j["job_type"] for j in _jobs(es, connector.id)) == ["access_control", "full", "incremental"]


def test_poll_when_draft_edited_then_validated_and_valid_one_activated(es, make_connector, tmp_path):
    from launcher.cli import _draft_rules

    good_rule = {"id": "r1", "policy": "exclude", "field": "title", "rule": "equals", "value": "document 1"}
    valid = make_connector(configuration=_configured(count=1), status="connected")
    valid.doc["filtering"] = _draft_rules(valid, __import__("json").dumps([good_rule]))
    update_connector(es, valid.id, {"filtering": valid.doc["filtering"]})
    invalid = make_connector(configuration=_configured(count=1), status="connected")
    broken = [good_rule, {**good_rule, "id": "r2"}, {"id": "r3", "policy": "include", "field": "x", "rule": "regex",
                                                     "value": ".*"}]
    invalid.doc["filtering"] = _draft_rules(invalid, __import__("json").dumps({"rules": broken,
                                                                                "advanced_snippet": {"q": 1}}))
    update_connector(es, invalid.id, {"filtering": invalid.doc["filtering"]})
    _daemon(tmp_path, es, [valid.id, invalid.id]).poll_once()
    entry = get_connector(es, valid.id).get("filtering")[0]
    assert entry["draft"]["validation"] == {"state": "valid", "errors": []}
    assert [r["id"] for r in entry["active"]["rules"]] == ["r1", "DEFAULT"]
    entry = get_connector(es, invalid.id).get("filtering")[0]
    assert entry["draft"]["validation"]["state"] == "invalid"
    messages = " ".join(m for e in entry["draft"]["validation"]["errors"] for m in e["messages"])
    assert "same field, rule and value" in messages and "match-all regex" in messages
    assert "does not support advanced sync rules" in messages
    assert [r["id"] for r in entry["active"]["rules"]] == ["DEFAULT"]  # active untouched
    # The job snapshot carries the active rules (Kibana's shape: one object).
    job = get_job(es, create_job(es, get_connector(es, valid.id))).doc
    assert [r["id"] for r in job["connector"]["filtering"]["rules"]] == ["r1", "DEFAULT"]


def test_cron_problems_when_enabled_schedule_is_invalid_then_named_and_disabled_ones_ignored(make_connector):
    from launcher.scheduled_jobs import cron_problems

    connector = make_connector(scheduling={"full": {"enabled": True, "interval": "every hour"},
                                           "incremental": {"enabled": False, "interval": "nonsense"},
                                           "access_control": {"enabled": True, "interval": "0 0 * * * ?"}})
    problems = cron_problems(connector)
    assert len(problems) == 1 and problems[0].startswith("scheduling.full.interval: "), problems


def test_create_due_jobs_when_another_instance_took_the_fire_time_then_none_from_the_stale_copy(es, make_connector):
    from launcher.scheduled_jobs import create_due_jobs
    from tests.fixtures_sources.slow import SlowSource

    connector = make_connector(configuration=_configured(count=1), status="connected",
                               last_sync_scheduled_at="2020-01-01T00:00:00Z",
                               scheduling={"full": {"enabled": True, "interval": "0 * * * * ?"}})
    winner, stale = get_connector(es, connector.id), get_connector(es, connector.id)
    store = IndexStore(es)
    created = create_due_jobs(store, winner, SlowSource, created_grace=timedelta(seconds=60))
    assert len(created) == 1
    # The stale copy's conditional write conflicts; re-read, the fire time is taken: no second job.
    assert create_due_jobs(store, stale, SlowSource, created_grace=timedelta(seconds=60)) == []
    assert stale.get("last_sync_scheduled_at") == winner.get("last_sync_scheduled_at")
    assert [j["id"] for j in _jobs(es, connector.id)] == created


def test_reaper_when_stale_job_runs_here_then_left_alone(es, make_connector, tmp_path):
    connector = make_connector(configuration=_configured(count=1), status="connected")
    job_id = create_job(es, connector)
    claim_job(es, job_id, "this-host")
    update_job(es, job_id, {"last_seen": (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat()})
    daemon = _daemon(tmp_path, es, [connector.id], job_stale_after=30)
    daemon.reaper.reap(running={job_id})  # this instance runs it: a heartbeat is merely late
    assert get_job(es, job_id).status == "in_progress"
    daemon.reaper.reap(running=set())
    assert get_job(es, job_id).doc["error"] == "StaleJob: the job has not seen any update for some time"


# -- reaper, lock, concurrency, budget ---------------------------------------------------------
def test_reap_when_job_stale_or_connector_gone_then_error_and_lock_released(es, make_connector, tmp_path):
    stale = make_connector(configuration=_configured(count=1), status="connected")
    fresh = make_connector(configuration=_configured(count=1), status="connected")
    orphan = make_connector(configuration=_configured(count=1), status="connected")
    ids = {}
    for name, connector in (("stale", stale), ("fresh", fresh), ("orphan", orphan)):
        ids[name] = create_job(es, connector)
        claim_job(es, ids[name], "dead-host")
    old = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat()
    update_job(es, ids["stale"], {"last_seen": old})
    pending_orphan = create_job(es, orphan)
    es.delete(index=CONNECTORS_INDEX, id=orphan.id, refresh=True)
    daemon = _daemon(tmp_path, es, [stale.id, fresh.id, orphan.id], job_stale_after=30)
    daemon.claim_jobs = lambda connector_ids: None
    daemon.poll_once()
    job = get_job(es, ids["stale"]).doc
    assert job["status"] == "error" and job["error"] == "StaleJob: the job has not seen any update for some time"
    doc = get_connector(es, stale.id).doc
    assert doc["last_sync_status"] == "error" and doc["status"] == "error"
    assert get_job(es, ids["fresh"]).status == "in_progress"
    assert get_connector(es, fresh.id).get("last_sync_status") == "in_progress"
    for job_id in (ids["orphan"], pending_orphan):
        job = get_job(es, job_id).doc
        assert job["status"] == "error" and "connector no longer exists" in job["error"]


def test_take_back_own_jobs_when_ours_and_orphaned_then_suspended_or_canceled_and_no_other(es, make_connector):
    """Only jobs this service claimed on this host, whose daemon and sync process are gone."""
    import subprocess
    import sys

    from launcher.recovery import OwnJobs, ServiceIdentity

    me = ServiceIdentity(service_id="svc-a", hostname="host-1", daemon_pid=424242, instance="this-run")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    jobs: dict[str, tuple[str, str]] = {}

    def claimed(name: str, *, service_id: str = "svc-a", instance: str = "earlier-run", worker: int | None = None,
                status: str = "in_progress") -> str:
        connector = make_connector(configuration=_configured(count=1), status="connected")
        job_id = create_job(es, connector)
        claim_job(es, job_id, "host-1")
        update_job(es, job_id, {"status": status, "metadata": {
            "service_id": service_id, "daemon_pid": gone.pid, "daemon_instance": instance,
            "worker_pid": worker or gone.pid}})
        jobs[name] = (job_id, connector.id)
        return job_id

    claimed("orphan")
    claimed("canceling", status="canceling")
    claimed("another service", service_id="svc-b")
    claimed("this run", instance="this-run")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", claimed("sync alive")])
    try:
        alive_job = jobs["sync alive"][0]
        es.update(index=JOBS_INDEX, id=alive_job, doc={"metadata": {"worker_pid": alive.pid}}, refresh=True)
        ours = OwnJobs(IndexStore(es), me)
        ids = [connector_id for _, connector_id in jobs.values()]

        taken = ours.take_back(running=set(), connector_ids=ids, service_types=None)

        assert sorted(taken) == sorted([jobs["orphan"][0], jobs["canceling"][0]])
        status = {name: get_job(es, job_id).status for name, (job_id, _) in jobs.items()}
        assert status == {"orphan": "suspended", "canceling": "canceled", "another service": "in_progress",
                          "this run": "in_progress", "sync alive": "in_progress"}
        assert get_connector(es, jobs["orphan"][1]).get("last_sync_status") == "suspended"  # unlocked
        assert get_connector(es, jobs["another service"][1]).get("last_sync_status") == "in_progress"
        # The sync process that was winding down has stopped: the next poll takes its job back.
        alive.kill()
        alive.wait()
        assert ours.take_back(running=set(), connector_ids=ids, service_types=None) == [alive_job]
        assert ours.take_back(running=set(), connector_ids=ids, service_types=None) == []  # nothing left: no query
    finally:
        alive.kill()
        alive.wait()


def test_remove_stale_job_folders_when_job_ended_and_unused_then_removed_and_no_other(es, make_connector, tmp_path):
    """The folder (job file with secrets, result) a daemon killed after its sync ended leaves behind."""
    import subprocess
    import sys

    from launcher.recovery import remove_stale_job_folders

    connector = make_connector(configuration=_configured(count=1), status="connected")
    jobs = {name: create_job(es, connector) for name in ("ended", "running", "in use")}
    for name in ("ended", "in use"):
        update_job(es, jobs[name], {"status": "completed"})
    update_job(es, jobs["running"], {"status": "in_progress"})
    folders = {}
    for name, job_id in [*jobs.items(), ("gone", uuid.uuid4().hex), ("not a job", "bench")]:
        folders[name] = tmp_path / f"elastic-ingest-{job_id}-abcd1234"
        folders[name].mkdir()
        (folders[name] / "job.json").write_text("{}")
    user = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folders["in use"] / "job.json")])
    try:
        removed = remove_stale_job_folders(IndexStore(es), tmp_path)
    finally:
        user.kill()
        user.wait()
    assert removed == [folders["ended"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        folders[name].name for name in ("running", "in use", "gone", "not a job"))  # a missing job: after a day


def test_service_identity_when_not_configured_then_host_and_config_path(tmp_path):
    from launcher.recovery import ServiceIdentity

    first = load_config(write_config(tmp_path / "a.yml"))
    second = load_config(write_config(tmp_path / "b.yml"))
    named = load_config(write_config(tmp_path / "c.yml", service={"id": "ingest-1", "hostname": "box"}))
    assert ServiceIdentity.of(first).service_id == ServiceIdentity.of(first).service_id  # stable across restarts
    assert ServiceIdentity.of(first).service_id != ServiceIdentity.of(second).service_id
    assert ServiceIdentity.of(first).instance != ServiceIdentity.of(first).instance  # but each run is its own
    assert (ServiceIdentity.of(named).service_id, ServiceIdentity.of(named).hostname) == ("ingest-1", "box")


def test_release_orphan_locks_when_lock_held_by_no_job_then_released_after_threshold(es, make_connector, tmp_path):
    connector = make_connector(configuration=_configured(count=1), status="connected", last_sync_status="in_progress")
    daemon = _daemon(tmp_path, es, [connector.id], job_stale_after=1)
    daemon.claim_jobs = lambda connector_ids: None
    daemon.poll_once()
    assert get_connector(es, connector.id).get("last_sync_status") == "in_progress"  # not yet
    def released():
        daemon.poll_once()
        return get_connector(es, connector.id).get("last_sync_status") == "error"

    wait_for(released, timeout=20, what="the lock to be released after job_stale_after (1 s)")


def test_claim_jobs_when_concurrency_limit_reached_then_jobs_left_pending(es, make_connector, tmp_path):
    connector = make_connector(configuration=_configured(count=1), status="connected")
    job_id = create_job(es, connector)
    daemon = _daemon(tmp_path, es, [connector.id], max_concurrent_syncs=1)
    daemon.running["someone"] = object()  # one sync already running
    daemon.claim_jobs([connector.id])
    assert get_job(es, job_id).status == "pending"


def test_daemon_when_a_sync_ends_then_a_job_waiting_for_its_slot_is_claimed_before_the_next_poll(
        es, make_connector, tmp_path):
    """One slot, two connectors requested together, a poll every 10 minutes: the second job is
    claimed when the first sync ends, not at the next poll."""
    connectors = [make_connector(configuration=_configured(count=1), status="connected") for _ in range(2)]
    jobs = [create_job(es, connector) for connector in connectors]
    daemon = _daemon(tmp_path, es, [c.id for c in connectors], max_concurrent_syncs=1, idling=600,
                     warm_sync_processes=False)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for(lambda: all(get_job(es, job_id).status == "completed" for job_id in jobs), timeout=60,
                 what="both jobs completed, one after the other")
        assert daemon.polls == 1  # the first poll claimed one; the freed slot took the other
    finally:
        daemon.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()


def test_daemon_when_a_sync_is_requested_between_polls_then_it_is_claimed_within_the_job_check_interval(
        es, make_connector, tmp_path):
    """A poll every 10 minutes: a job requested after the first poll starts within about
    ``job_check_interval`` (0.25 s), not at the next poll; the connectors' maintenance stays one per poll."""
    connector = make_connector(configuration=_configured(count=1), status="connected")
    daemon = _daemon(tmp_path, es, [connector.id], idling=600, warm_sync_processes=False)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for(lambda: daemon.polls == 1, timeout=60, what="the first poll")
        requested = time.monotonic()
        job_id = create_job(es, connector)
        wait_for(lambda: get_job(es, job_id).status != "pending", timeout=10, what="the job claimed between polls")
        claimed_after = time.monotonic() - requested
        wait_for(lambda: get_job(es, job_id).status == "completed", timeout=60, what="the job completed")
        assert daemon.polls == 1, "claimed by the check between polls, not by a second poll"
        assert claimed_after < 5, claimed_after  # the next poll would have come after 600 s
    finally:
        daemon.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()


def test_poll_when_heartbeat_then_at_start_and_at_most_every_interval(es, make_connector, tmp_path):
    connector = make_connector(configuration=_configured(count=1), status="connected")
    daemon = _daemon(tmp_path, es, [connector.id], heartbeat=300)
    daemon.claim_jobs = lambda connector_ids: None
    daemon.poll_once()
    first = get_connector(es, connector.id).get("last_seen")
    assert first
    daemon.poll_once()
    assert get_connector(es, connector.id).get("last_seen") == first


def test_poll_when_polls_keep_failing_then_error_budget_stops_daemon(es, tmp_path):
    config = load_config(write_config(tmp_path / "c.yml", service={"max_errors": 2, "max_errors_span": 60,
                                                                   "idling": 0.05}))
    daemon = Daemon(config, es)
    daemon.served_connectors = lambda: (_ for _ in ()).throw(RuntimeError("a bug"))  # a failure no retry fixes
    with pytest.raises(ErrorBudgetExceeded, match=r"3 polls failed within 60s .*max_errors is 2.*RuntimeError: a bug"):
        daemon.run()


def test_poll_when_elasticsearch_unreachable_then_daemon_waits_and_logs_the_outage_once(tmp_path, caplog):
    config = load_config(write_config(tmp_path / "c.yml", es_url="http://127.0.0.1:9",
                                      service={"max_errors": 2, "max_errors_span": 60, "idling": 0.05}))
    daemon = Daemon(config, Elasticsearch("http://127.0.0.1:9", max_retries=0, request_timeout=2))
    runner = threading.Thread(target=daemon.run)
    with caplog.at_level(logging.INFO, logger="launcher.daemon"):
        runner.start()
        try:
            wait_for(lambda: daemon.outage.failures >= 10, timeout=30, what="ten failed polls")
            assert runner.is_alive()  # far over max_errors: an outage is waited out, not counted
            assert "Elasticsearch at http://127.0.0.1:9 unreachable since" in daemon.not_ready
        finally:
            daemon.stop()
            runner.join(timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.name == "launcher.daemon" and "unreachable" in r.getMessage()]
    assert len(lines) == 1, lines  # the reminder comes after a minute
    assert "cannot connect to 127.0.0.1:9: " in lines[0] and "Connection refused" in lines[0], lines


def test_poll_when_advanced_snippet_edited_then_source_validates_it(es, make_connector, tmp_path):
    from launcher.cli import _draft_rules

    bad = make_connector(service_type="incremental_slow", configuration=_configured(count=1), status="connected")
    good = make_connector(service_type="incremental_slow", configuration=_configured(count=1), status="connected")
    for connector, snippet in ((bad, {"bad": 1}), (good, {"query": {"title": "x"}})):
        filtering = _draft_rules(connector, __import__("json").dumps({"rules": [], "advanced_snippet": snippet}))
        update_connector(es, connector.id, {"filtering": filtering})
    _daemon(tmp_path, es, [bad.id, good.id]).poll_once()
    entry = get_connector(es, bad.id).get("filtering")[0]
    assert entry["draft"]["validation"] == {
        "state": "invalid",
        "errors": [{"ids": ["advanced_snippet"], "messages": ["'bad' is not a known advanced rule"]}]}
    entry = get_connector(es, good.id).get("filtering")[0]
    assert entry["draft"]["validation"]["state"] == "valid"
    assert entry["active"]["advanced_snippet"]["value"] == {"query": {"title": "x"}}
    job = get_job(es, create_job(es, get_connector(es, good.id))).doc
    assert job["connector"]["filtering"]["advanced_snippet"]["value"] == {"query": {"title": "x"}}


def test_finish_job_when_access_control_then_own_fields_and_lock_given_back(es, make_connector):
    connector = make_connector(configuration=_configured(count=1), status="connected", last_sync_status="completed",
                               last_indexed_document_count=42)
    job_id = create_job(es, connector, job_type="access_control")
    claim = claim_job(es, job_id, "host-a")
    assert get_connector(es, connector.id).get("last_sync_status") == "in_progress"  # the lock
    finish_job(es, job_id, connector.id, "error", error="SourceError: no groups", job_type="access_control",
               previous_sync_status=claim.connector.get("last_sync_status"))
    doc = get_connector(es, connector.id).doc
    assert doc["last_access_control_sync_status"] == "error"
    assert doc["last_access_control_sync_error"] == "SourceError: no groups"
    assert doc["last_sync_status"] == "completed" and doc["last_indexed_document_count"] == 42
    assert doc["status"] == "error"


# -- configuration values (no server needed) ---------------------------------------------------
def test_validate_configuration_when_values_wrong_then_every_problem_by_label_and_no_secret():
    from launcher.configuration import redact, validate_configuration

    configuration = {
        "use_ssl": {"type": "bool", "value": "true", "label": "SSL"},
        "ca": {"type": "str", "value": "", "label": "CA", "depends_on": [{"field": "use_ssl", "value": True}]},
        "proxy": {"type": "str", "value": "", "label": "Proxy", "depends_on": [{"field": "use_ssl", "value": False}]},
        "port": {"type": "int", "value": "99999", "label": "Port",
                 "validations": [{"type": "less_than", "constraint": 65536}]},
        "mode": {"type": "str", "value": "x", "label": "Mode",
                 "validations": [{"type": "included_in", "constraint": ["a", "b"]}]},
        "tags": {"type": "list", "value": "a,b", "label": "Tags",
                 "validations": [{"type": "list_type", "constraint": "int"}]},
        "name": {"type": "str", "value": "abc", "label": "Name",
                 "validations": [{"type": "regex", "constraint": r"\d+"}]},
        "secret": {"type": "int", "value": "hunter2", "sensitive": True, "label": "Secret"},
        "optional": {"type": "str", "value": None, "required": False, "label": "Optional"},
        "kind": {"type": "float", "value": 1, "label": "Kind"},
    }
    problems = validate_configuration(configuration)
    assert problems == [
        "CA: a value is required", "Port: must be less than 65536, got 99999", "Mode: x not one of a, b",
        "Tags: every item must be int", r"Name: does not match \d+", "Secret: expected a value of type int",
        "Kind: unknown type 'float' (expected one of bool, int, list, str)",
    ]
    assert "hunter2" not in " ".join(problems)
    assert redact(configuration)["secret"]["value"] == "****" and redact(configuration)["port"]["value"] == "99999"


def test_job_snapshot_when_sensitive_values_then_left_out_and_read_back_from_the_connector(es, make_connector,
                                                                                           tmp_path):
    import json

    connector = make_connector(configuration=_configured(count=2, token="very-secret"), status="connected")
    job_id = create_job(es, connector)
    job = get_job(es, job_id)
    assert "very-secret" not in json.dumps(job.doc)
    assert job.doc["connector"]["configuration"]["count"]["value"] == 2
    config = load_config(write_config(tmp_path / "c.yml", sources={"slow": SLOW}))
    sync_job = build_sync_job(config, claim_job(es, job_id, "host-a"))
    assert sync_job.configuration["token"]["value"] == "very-secret"
    assert sync_job.configuration["count"]["value"] == 2


def test_claim_job_when_incremental_with_a_cursor_then_the_snapshot_keeps_rules_and_pipeline(es, make_connector,
                                                                                          tmp_path):
    # The claim records the cursor in the job's connector snapshot; the claimed job must still carry
    # the rest of the snapshot (a continuous stream restarted after a full sync ran without its
    # basic rules and indexed excluded files: issue 20).
    rule = {"id": "r1", "policy": "exclude", "field": "title", "rule": "equals", "value": "x", "order": 1}
    default = {"id": "DEFAULT", "policy": "include", "field": "_", "rule": "regex", "value": ".*", "order": 2}
    active = {"rules": [rule, default], "advanced_snippet": {"value": {}},
              "validation": {"state": "valid", "errors": []}}
    connector = make_connector(service_type="incremental_slow", configuration=_configured(count=1),
                               status="connected", sync_cursor={"position": 42},
                               pipeline={"name": "test-my-pipeline", "extract_binary_content": False,
                                         "reduce_whitespace": True, "run_ml_inference": True},
                               filtering=[{"domain": "DEFAULT", "active": active, "draft": active}])
    job_id = create_job(es, connector, job_type="incremental")
    claim = claim_job(es, job_id, "host-a")
    assert claim is not None
    stored = get_job(es, job_id).doc["connector"]
    assert stored["sync_cursor"] == {"position": 42} and stored["filtering"]["rules"] == [rule, default]
    assert claim.job.doc["connector"] == stored  # what the service runs is what the job document says
    config = load_config(write_config(tmp_path / "c.yml", sources={"incremental_slow": INCREMENTAL}))
    sync_job = build_sync_job(config, claim)
    assert sync_job.basic_rules == [rule, default] and sync_job.sync_cursor == {"position": 42}
    assert sync_job.ingest_pipeline == "test-my-pipeline"
    assert sync_job.pipeline_flags == {"_extract_binary_content": False, "_reduce_whitespace": True,
                                       "_run_ml_inference": True}


def test_ensure_continuous_job_when_connector_in_error_then_only_its_own_job_failure_starts_a_stream(
        es, make_connector):
    # A stream's failure puts the connector in error (the job's error); waiting for the service's next
    # check of the connector (service.heartbeat, 300 s) to start it again was the 280 s seen after a
    # kill -9 (issue 20). A connector whose own check failed gets no stream.
    from launcher.continuous_jobs import ensure_continuous_job
    from launcher.protocol import now_iso
    from sources.directory import DirectoryDataSource

    def ago(seconds: float) -> str:
        return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat()

    def connector_with(newest: dict, **fields) -> Connector:
        connector = make_connector(service_type="dir", configuration={"continuous_sync": {"value": True}},
                                   status="error", **fields)
        job_id = create_job(es, connector, job_type="incremental", metadata={"continuous": True})
        update_job(es, job_id, {"status": "error", **newest})
        return get_connector(es, connector.id)

    store = IndexStore(es)
    killed = "SyncProcessError: the sync process was killed by SIGKILL (signal 9: ...)"
    long_run = {"error": killed, "started_at": ago(600), "completed_at": now_iso()}
    assert ensure_continuous_job(store, connector_with(long_run, error=killed), DirectoryDataSource, retry_after=30)
    assert ensure_continuous_job(store, connector_with(long_run, error="Invalid configuration: Directory: ..."),
                                 DirectoryDataSource, retry_after=30) is None
    # One that failed soon after it started (its source down) waits retry_after after its end.
    short_run = {"error": killed, "started_at": ago(3), "completed_at": ago(1)}
    assert ensure_continuous_job(store, connector_with(short_run, error=killed), DirectoryDataSource,
                                 retry_after=30) is None
    short_run = {"error": killed, "started_at": ago(45), "completed_at": ago(40)}
    assert ensure_continuous_job(store, connector_with(short_run, error=killed), DirectoryDataSource, retry_after=30)


def test_ensure_continuous_job_when_stream_keeps_failing_then_waits_longer_and_a_refused_configuration_waits(
        es, make_connector):
    # A stream refused by its source's configuration check was started again every 5 s, each attempt a
    # new job failing the same way (issue 20, seen with a timestamp_column no table has).
    from launcher.continuous_jobs import configuration_fingerprint, ensure_continuous_job
    from sources.directory import DirectoryDataSource

    def ago(seconds: float) -> str:
        return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat()

    configuration = {"continuous_sync": {"value": True}}
    fingerprint = configuration_fingerprint(configuration)
    store = IndexStore(es)

    def failed_jobs(*failures: tuple[str, float]) -> Connector:
        """A connector whose continuous jobs failed (error, ended seconds ago), oldest first, each after 1 s."""
        connector = make_connector(service_type="dir", configuration=configuration, status="error")
        for error, ended in failures:
            job_id = create_job(es, connector, job_type="incremental",
                                metadata={"continuous": True, "config_fingerprint": fingerprint})
            update_job(es, job_id, {"status": "error", "error": error, "created_at": ago(ended + 1),
                                    "started_at": ago(ended + 1), "completed_at": ago(ended)})
        update_connector(es, connector.id, {"error": failures[-1][0]})
        return get_connector(es, connector.id)

    refused = "SourceConfigError: timestamp_column: no synced table has a column `updated_at`"
    assert ensure_continuous_job(store, failed_jobs((refused, 3600)), DirectoryDataSource, retry_after=30) is None
    down = "SourceUnavailable: connection refused"
    assert ensure_continuous_job(store, failed_jobs((down, 40)), DirectoryDataSource, retry_after=30)
    # Three quick failures in a row: the next attempt waits 30 * 2**2 = 120 s after the last.
    assert ensure_continuous_job(store, failed_jobs((down, 500), (down, 300), (down, 100)), DirectoryDataSource,
                                 retry_after=30) is None
    assert ensure_continuous_job(store, failed_jobs((down, 500), (down, 300), (down, 130)), DirectoryDataSource,
                                 retry_after=30)


def test_build_sync_job_when_snapshot_pipeline_not_an_object_then_connector_error(tmp_path):
    from sources.errors import ConnectorError

    config = load_config(write_config(tmp_path / "c.yml", sources={"slow": SLOW}))
    claim = _claim_for({}, None)
    claim.job.doc["connector"]["pipeline"] = True
    with pytest.raises(ConnectorError, match="connector.pipeline: expected an object, got bool"):
        build_sync_job(config, claim)


# -- jobs that cannot run ----------------------------------------------------------------------
def _poll_and_settle(daemon: Daemon) -> None:
    daemon.poll_once()
    assert daemon.wait_idle(60), "the job's supervisor did not end"


def test_poll_when_served_connector_cannot_run_then_its_job_ends_error_within_one_poll(es, make_connector, tmp_path):
    bad_index = make_connector(configuration=_configured(count=1), status="connected", index_name="Bad Name")
    unknown = make_connector(service_type="not_in_config", configuration=_configured(count=1), status="connected")
    jobs = {c.id: create_job(es, c) for c in (bad_index, unknown)}

    _poll_and_settle(_daemon(tmp_path, es, list(jobs)))

    bad = get_job(es, jobs[bad_index.id]).doc
    assert bad["status"] == "error" and "'Bad Name' contains space" in bad["error"], bad
    other = get_job(es, jobs[unknown.id]).doc
    assert other["status"] == "error" and "'not_in_config' is not in config.yml sources" in other["error"], other
    assert get_connector(es, bad_index.id).get("last_sync_status") == "error"


def test_poll_when_access_control_job_and_source_without_dls_then_error_and_no_index_touched(
        es, make_connector, tmp_path):
    connector = make_connector(configuration=_configured(count=2), status="connected", last_sync_status="completed")
    job_id = create_job(es, connector, job_type="access_control")

    _poll_and_settle(_daemon(tmp_path, es, [connector.id]))

    job = get_job(es, job_id).doc
    assert job["status"] == "error" and "do not support document-level security" in job["error"], job
    assert not es.indices.exists(index=connector.index_name)
    assert not es.indices.exists(index=f".search-acl-filter-{connector.index_name}")
    doc = get_connector(es, connector.id).doc
    assert doc["last_access_control_sync_status"] == "error" and doc["last_sync_status"] == "completed"


def test_poll_when_access_control_job_and_source_with_dls_then_identities_indexed_content_untouched(
        es, make_connector, tmp_path):
    connector = make_connector(service_type="incremental_slow", configuration=_configured(count=2),
                               status="connected")
    job_id = create_job(es, connector, job_type="access_control")
    acl_index = f".search-acl-filter-{connector.index_name}"
    try:
        daemon = _daemon(tmp_path, es, [connector.id])
        deadline = time.monotonic() + 120
        while get_job(es, job_id).status not in ("completed", "error") and time.monotonic() < deadline:
            _poll_and_settle(daemon)

        job = get_job(es, job_id).doc
        assert job["status"] == "completed", job.get("error")
        es.indices.refresh(index=acl_index)
        identities = {h["_id"]: h["_source"] for h in es.search(index=acl_index)["hits"]["hits"]}
        assert set(identities) == {"alice", "bob"} and identities["bob"]["identity"] == {"username": "bob"}
        assert not es.indices.exists(index=connector.index_name)
        assert get_connector(es, connector.id).get("last_access_control_sync_status") == "completed"
    finally:
        es.indices.delete(index=acl_index, ignore_unavailable=True)


def test_poll_when_connector_of_a_service_type_nobody_here_serves_then_logged_once(es, make_connector, tmp_path,
                                                                                   caplog):
    import logging

    unserved = make_connector(service_type=f"unserved_{uuid.uuid4().hex[:6]}")
    config = load_config(write_config(tmp_path / "types.yml", service={"service_types": ["slow"], "heartbeat": 300},
                                      sources={**SOURCES, "slow": SLOW}))
    daemon = Daemon(config, es)

    with caplog.at_level(logging.INFO, logger="launcher.daemon"):
        daemon.poll_once()
        daemon.poll_once()

    notes = [r.getMessage() for r in caplog.records if "not served here" in r.getMessage()]
    assert len(notes) == 1 and f"{unserved.service_type} (1: {unserved.id})" in notes[0], notes
    assert get_connector(es, unserved.id).get("status") == "created"  # left for the service that serves it


def test_job_sync_cursor_when_snapshot_dotted_key_or_connector_then_that_order():
    from launcher.protocol import job_sync_cursor

    connector = Connector("c", {"sync_cursor": {"from": "connector"}})
    assert job_sync_cursor({"connector": {"sync_cursor": {"from": "job"}}}, connector) == {"from": "job"}
    # Elastic's claim writes the literal dotted key; Elastic's CLI writes no cursor at all.
    assert job_sync_cursor({"connector": {}, "connector.sync_cursor": {"from": "claim"}}, connector) == {
        "from": "claim"}
    assert job_sync_cursor({"connector": {"sync_cursor": None}, "connector.sync_cursor": None}, connector) == {
        "from": "connector"}
    assert job_sync_cursor({"connector": {}}, None) is None
