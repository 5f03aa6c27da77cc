"""Fuzz: random config files and random BYOC documents never crash anything.

* ``launcher.config.parse_config`` / ``load_config`` on random YAML-like documents and random
  text raise only ``ConfigError`` (and never echo a secret);
* a connector document with random field types: the daemon's poll records an error on that
  connector (or accepts it) and never fails as a whole, so the other connectors are served;
* a job document with random snapshot fields: building the sync raises only our own
  ``ConnectorError`` family, which the supervisor writes to the job as ``Type: message``;
* end to end, a real daemon given hand-made bad connector and job documents marks each in
  error and keeps syncing a good connector.

Examples are small and few (``max_examples`` modest, no deadline) so the module stays
well under a minute.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sources.errors import ConfigError, IngestError
from tests.fixtures_security.own_node import delete_jobs_of

SCRIPTED = "tests.fixtures_security.scripted:ScriptedSource"
SERVICE_TYPE = "scripted_fuzz"

_FAST = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow], database=None)
_SLOW = settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture],
                 database=None)

# -- YAML-like values ------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["${HOME}", "${NOPE_NOT_SET}", "${X:-5}", "http://127.0.0.1:9200", "a:b", "pkg.mod:Cls", "-1",
                     "0", "1e9", "true", "FnApiRunner", "json", "text"]),
)
_keys = st.one_of(st.text(max_size=12), st.sampled_from([
    "host", "username", "password", "api_key", "ca_certs", "verify_certs", "request_timeout", "max_retries",
    "idling", "heartbeat", "max_concurrent_syncs", "max_errors", "job_stale_after", "metrics_address",
    "log_format", "connector_ids", "service_types", "runner", "bulk", "max_docs", "max_bytes", "dead_letters",
    "flink", "dataflow", "direct_num_workers", "extra_options", "max_error_rate", "dir"]), st.integers(-3, 3),
    st.booleans(), st.none())
_values = st.recursive(_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)), max_leaves=12)
_SECTIONS = ["elasticsearch", "service", "sources", "pipeline", "connectors"]
_configs = st.one_of(
    _values,
    st.dictionaries(st.sampled_from(_SECTIONS + ["extra"]), st.one_of(_values, st.dictionaries(_keys, _values,
                                                                                             max_size=5)),
                    max_size=5),
)


@_FAST
@given(raw=_configs)
def test_parse_config_when_document_random_then_only_config_error(raw):
    from launcher.config import Config, parse_config

    try:
        config = parse_config(raw, path="fuzz.yml")
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config)


@_FAST
@given(other=st.dictionaries(_keys, _values, max_size=4), where=st.sampled_from(["password", "api_key"]),
       shape=st.sampled_from(["plain", "list", "dict", "number-like"]))
def test_parse_config_when_secret_given_then_never_echoed_in_errors(other, where, shape):
    from launcher.config import parse_config

    secret = f"s3cret-{uuid.uuid4().hex[:12]}"
    value: Any = {"plain": secret, "list": [secret], "dict": {"k": secret}, "number-like": f"{secret}1e3"}[shape]
    elasticsearch = {**{k: v for k, v in other.items() if k not in ("password", "api_key")}, where: value}
    try:
        parse_config({"elasticsearch": elasticsearch, "service": other}, path="fuzz.yml")
    except ConfigError as exc:
        assert secret not in str(exc)


@_FAST
@given(text=st.text(max_size=200))
def test_load_config_when_file_random_text_then_only_config_error(text, tmp_path_factory):
    from launcher.config import load_config

    path = tmp_path_factory.getbasetemp() / f"fuzz-{uuid.uuid4().hex}.yml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass
    finally:
        path.unlink()


# -- connector documents -------------------------------------------------------------------
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=10), st.sampled_from(["", "error", "connected", "0 * * * * ?", "full", "DEFAULT"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children,
                                                                                max_size=3)),
    max_leaves=8,
)
_CONNECTOR_FIELDS = ["service_type", "index_name", "configuration", "scheduling", "pipeline", "filtering", "status",
                     "features", "last_sync_status", "sync_cursor", "language", "name", "sync_now", "deleted"]


def _field_values(name: str) -> st.SearchStrategy:
    from tests.fixtures_security.scripted import ScriptedSource

    if name == "configuration":
        schema = ScriptedSource.get_default_configuration()
        return st.one_of(_json, st.dictionaries(st.sampled_from(sorted(schema)), st.one_of(
            _json, st.fixed_dictionaries({}, optional={"value": _json, "type": _json, "required": _json,
                                                       "sensitive": _json, "validations": _json, "depends_on": _json,
                                                       "display": _json, "options": _json, "label": _json})),
            max_size=4))
    if name == "service_type":
        return st.one_of(_json, st.just(SERVICE_TYPE))
    if name == "filtering":
        return st.one_of(_json, st.lists(st.fixed_dictionaries({"domain": st.just("DEFAULT")}, optional={
            "draft": _json, "active": _json}), max_size=2))
    if name == "scheduling":
        return st.one_of(_json, st.dictionaries(st.sampled_from(["full", "incremental", "access_control"]), _json,
                                                max_size=3))
    return _json


_connector_changes = st.lists(st.sampled_from(_CONNECTOR_FIELDS), min_size=1, max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: _field_values(n) for n in names}))


def _index_connector(es, connector_id: str, doc: dict[str, Any]) -> bool:
    """Write the document; False when Elasticsearch itself refuses it (a mapped field of the wrong type)."""
    from elasticsearch import BadRequestError

    from launcher.indices import CONNECTORS_INDEX

    try:
        es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
    except BadRequestError:
        return False
    return True


@_SLOW
@given(changes=_connector_changes)
def test_daemon_poll_when_connector_fields_random_then_error_recorded_and_poll_survives(own_es, changes, tmp_path):
    """The real :class:`Daemon` polls the real cluster; only starting syncs is left out (below)."""
    from hypothesis import assume

    from launcher.config import parse_config
    from launcher.daemon import Daemon
    from launcher.indices import CONNECTORS_INDEX
    from launcher.protocol import new_connector

    es = own_es
    connector_id = f"fuzz-{uuid.uuid4().hex[:10]}"
    doc = new_connector(service_type=SERVICE_TYPE, index_name=f"test-{connector_id}", configuration={})
    doc.update(changes)
    assume(_index_connector(es, connector_id, doc))
    config = parse_config({"sources": {SERVICE_TYPE: SCRIPTED}, "service": {"connector_ids": [connector_id]},
                           "pipeline": {"dead_letters": str(tmp_path)}})

    class _NoSyncDaemon(Daemon):
        # A random document may legitimately ask for a sync (sync_now, a schedule): running
        # one is the job tests' business; here only the connector's maintenance matters.
        def claim_jobs(self, connector_ids):
            self.claimable = list(connector_ids)

    daemon = _NoSyncDaemon(config, es)
    failures: list[str] = []
    daemon._count_error = lambda exc: failures.append(f"{type(exc).__name__}: {exc}")  # type: ignore[method-assign]
    try:
        daemon.poll_once()
        assert not failures, f"the poll failed on connector {changes!r}: {failures}"
        after = es.get(index=CONNECTORS_INDEX, id=connector_id)["_source"]
        if after.get("status") == "error":
            assert isinstance(after.get("error"), str) and after["error"], after
    finally:
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        delete_jobs_of(es, [connector_id])


# -- job documents -------------------------------------------------------------------------
_SNAPSHOT_FIELDS = ["configuration", "filtering", "index_name", "pipeline", "service_type", "sync_cursor", "language"]
_objects = st.dictionaries(st.text(max_size=8), _json, max_size=3)


def _snapshot_values(name: str) -> st.SearchStrategy:
    if name == "pipeline":
        return st.one_of(_objects, _json)
    if name in ("configuration", "filtering", "service_type"):
        return _field_values(name)
    return _json


_snapshot_changes = st.lists(st.sampled_from(_SNAPSHOT_FIELDS), min_size=1, max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: _snapshot_values(n) for n in names}))


@_FAST
@given(changes=_snapshot_changes, job_type=st.sampled_from(["full", "incremental", "access_control"]))
def test_build_sync_job_when_snapshot_fields_random_then_only_connector_errors(changes, job_type):
    from launcher.config import parse_config
    from launcher.protocol import Claim, Connector, Job, job_snapshot, new_connector
    from launcher.sync_runner import build_sync_job

    config = parse_config({"sources": {SERVICE_TYPE: SCRIPTED}})
    connector = Connector("fuzz-connector", new_connector(service_type=SERVICE_TYPE, index_name="test-fuzz",
                                                          configuration={}))
    snapshot = {**job_snapshot(connector), **changes}
    job = Job("fuzz-job", {"connector": snapshot, "job_type": job_type, "status": "in_progress"})
    try:
        build_sync_job(config, Claim(job, connector))
    except IngestError as exc:
        assert str(exc)


@pytest.mark.parametrize("field", ["configuration", "pipeline"])
def test_build_sync_job_when_snapshot_configuration_or_pipeline_not_object_then_connector_error(field):
    from launcher.config import parse_config
    from launcher.protocol import Claim, Connector, Job, job_snapshot, new_connector
    from launcher.sync_runner import build_sync_job

    config = parse_config({"sources": {SERVICE_TYPE: SCRIPTED}})
    connector = Connector("fuzz-connector", new_connector(service_type=SERVICE_TYPE, index_name="test-fuzz",
                                                          configuration={}))
    job = Job("fuzz-job", {"connector": {**job_snapshot(connector), field: True}, "job_type": "full",
                           "status": "in_progress"})
    with pytest.raises(IngestError):
        build_sync_job(config, Claim(job, connector))


# -- a real daemon, bad documents next to a good one ----------------------------------------
def test_daemon_when_bad_connector_and_job_documents_then_errors_recorded_and_good_connector_syncs(own_es, tmp_path):
    from launcher.configuration import complete_configuration
    from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices
    from launcher.protocol import create_job, get_connector, new_connector
    from tests.fixtures_security.scripted import ScriptedSource
    from tests.helpers import DaemonProcess, index_docs, wait_for, wait_job_final, write_config

    es = own_es
    ensure_indices(es)
    suffix = uuid.uuid4().hex[:8]
    good, index = f"fuzz-good-{suffix}", f"test-fuzz-good-{suffix}"
    configuration, _ = complete_configuration({"count": {"value": 15}}, ScriptedSource.get_default_configuration())
    bad_connectors = {
        f"fuzz-bad-index-{suffix}": {"index_name": "Not A Valid Index"},
        f"fuzz-bad-config-{suffix}": {"configuration": ["not", "an", "object"]},
        f"fuzz-bad-field-{suffix}": {"configuration": {**configuration, "count": {"value": "many", "type": "int",
                                                                                   "label": "Documents"}}},
        f"fuzz-bad-rules-{suffix}": {"filtering": "everything"},
        f"fuzz-bad-cron-{suffix}": {"scheduling": {"full": {"enabled": True, "interval": "every tuesday"}}},
    }
    ids = [good, *bad_connectors]
    for connector_id in ids:
        # Each its own index (one connector per index); the bad documents may override it.
        doc = new_connector(service_type=SERVICE_TYPE, index_name=index if connector_id == good else
                            f"test-{connector_id}", configuration=configuration)
        doc["status"] = "configured"
        doc.update(bad_connectors.get(connector_id, {}))
        es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
    bad_jobs = {
        "job_type": {"job_type": "weekly"},
        "connector": {"connector": {"name": "no id"}},
        "snapshot rules": {"connector": {"id": good, "filtering": [{"rules": [{"field": 3, "policy": "maybe"}]}]}},
        "snapshot type": {"connector": {"id": good, "service_type": ["dir"]}},
    }
    job_ids = {}
    for name, change in bad_jobs.items():
        job_id = f"fuzz-job-{name.replace(' ', '-')}-{suffix}"
        base = {"connector": {"id": good}, "job_type": "full", "trigger_method": "on_demand", "status": "pending",
                "created_at": "2020-01-01T00:00:00+00:00"}
        es.index(index=JOBS_INDEX, id=job_id, document={**base, **change}, refresh=True)
        job_ids[name] = job_id
    from tests.fixtures_security.own_node import FAULT_ES_URL

    config = write_config(tmp_path / "config.yml", es_url=FAULT_ES_URL, sources={SERVICE_TYPE: SCRIPTED},
                          service={"connector_ids": ids, "max_concurrent_syncs": 1})
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        for connector_id in bad_connectors:
            wait_for(lambda: es.get(index=CONNECTORS_INDEX, id=connector_id)["_source"].get("status") == "error",
                     timeout=60, what=f"{connector_id} to be in error")
            error = es.get(index=CONNECTORS_INDEX, id=connector_id)["_source"]["error"]
            assert isinstance(error, str) and len(error) > 10
        for name in ("snapshot rules", "snapshot type"):
            job = wait_for(lambda: (lambda j: j if j["status"] == "error" else None)(
                es.get(index=JOBS_INDEX, id=job_ids[name])["_source"]), timeout=90, what=f"bad job '{name}' to fail")
            assert job["error"].split(":", 1)[0] in ("SyncRulesError", "UnknownServiceType"), job["error"]
        wait_for(lambda: es.get(index=CONNECTORS_INDEX, id=good)["_source"].get("last_sync_status") != "in_progress",
                 timeout=60, what="the good connector's lock to be released")
        job_id = create_job(es, get_connector(es, good))
        done = wait_job_final(es, job_id, timeout=120)
        assert done["status"] == "completed", done.get("error")
        assert len(index_docs(es, index)) == 15
        assert daemon.process.poll() is None, "the daemon died"
    finally:
        daemon.stop()
        for connector_id in ids:
            es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        delete_jobs_of(es, ids)
        for job_id in job_ids.values():
            es.options(ignore_status=404).delete(index=JOBS_INDEX, id=job_id, refresh=True)
        es.indices.delete(index=index, ignore_unavailable=True)
