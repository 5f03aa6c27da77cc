"""Security: TLS and authentication through a real proxy; secrets never leak; only config.yml sources load.

The proxy is ``scripts/servers/nginx-tls`` (nginx terminating TLS with its own CA in front
of the test Elasticsearch, requiring basic auth or an API key). Everything is exercised as
a user would: ``elastic-ingest`` processes and a real daemon (``tests.helpers.DaemonProcess``)
whose sync process is a real ``python -m pipelines.run``.

Our connectors use the service type ``scripted_sec`` (a test source,
``tests.fixtures_security.scripted``), which no other test's daemon serves, and the daemon
is narrowed to our connector ids, so tests sharing the cluster do not interfere.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import skip_or_fail, REPO, DaemonProcess, child_pids, cli, cli_in_process, wait_for, write_config

pytestmark = pytest.mark.integration

PROXY_PORT = int(os.environ.get("TLS_PROXY_PORT", "9443"))
OWN_PROXY_PORT = int(os.environ.get("OWN_TLS_PROXY_PORT", "9444"))
PROXY_STATE = REPO / ".servers" / "nginx-tls"
SERVICE_TYPE = "scripted_sec"
SCRIPTED = "tests.fixtures_security.scripted:ScriptedSource"
EVIL = "tests.fixtures_security.evil:Evil"


@dataclass(frozen=True)
class Proxy:
    url: str
    ca: str
    rogue_ca: str
    username: str
    password: str
    api_key: str


def _start_proxy(port: int, upstream: str) -> Proxy:
    result = subprocess.run(
        [str(REPO / "scripts" / "servers" / "nginx-tls"), "start"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TLS_PROXY_PORT": str(port), "TLS_PROXY_UPSTREAM": upstream},
    )
    if result.returncode != 0:
        message = f"scripts/servers/nginx-tls start failed: {result.stderr[-2000:]}"
        skip_or_fail(message)
    return Proxy(
        url=f"https://127.0.0.1:{port}", ca=str(PROXY_STATE / "ca.crt"),
        rogue_ca=str(PROXY_STATE / "rogue-ca.crt"), username=(PROXY_STATE / "username").read_text().strip(),
        password=(PROXY_STATE / "password").read_text().strip(), api_key=(PROXY_STATE / "api_key").read_text().strip(),
    )


@pytest.fixture(scope="module")
def proxy(es) -> Proxy:
    """The nginx TLS proxy in front of the shared test Elasticsearch (started once, left running)."""
    return _start_proxy(PROXY_PORT, es.transport.node_pool.get().base_url)



@pytest.fixture(scope="module")
def own_proxy(own_es) -> Proxy:
    """A second proxy (same CA and credentials) in front of the private node."""
    from tests.fixtures_security.own_node import FAULT_ES_URL

    return _start_proxy(OWN_PROXY_PORT, FAULT_ES_URL)


def _es_config(tmp_path: Path, proxy: Proxy, name: str = "config.yml", **elasticsearch) -> Path:
    return write_config(tmp_path / name, es_url=proxy.url, sources={SERVICE_TYPE: SCRIPTED},
                        elasticsearch={"max_retries": 0, "request_timeout": 20, **elasticsearch})


# -- TLS and authentication -------------------------------------------------------------
@pytest.mark.parametrize("auth", ["password", "api_key"])
def test_cli_connectors_when_tls_verified_and_credentials_right_then_lists(proxy, tmp_path, auth):
    credentials = ({"username": proxy.username, "password": proxy.password} if auth == "password"
                   else {"api_key": proxy.api_key})
    config = _es_config(tmp_path, proxy, ca_certs=proxy.ca, **credentials)

    result = cli("--action", "connectors", "--json", config=config)

    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
    assert proxy.password not in result.stdout + result.stderr
    assert proxy.api_key not in result.stdout + result.stderr


@pytest.mark.parametrize("case, expected", [
    ("wrong_password", "401"),
    ("wrong_api_key", "401"),
    ("no_credentials", "401"),
    ("rogue_ca", "CERTIFICATE_VERIFY_FAILED"),
    ("system_ca", "CERTIFICATE_VERIFY_FAILED"),
])
def test_cli_connectors_when_tls_or_credentials_wrong_then_refused_clearly(proxy, tmp_path, case, expected):
    wrong = f"wrong-{uuid.uuid4().hex}"
    settings = {
        "wrong_password": {"username": proxy.username, "password": wrong, "ca_certs": proxy.ca},
        "wrong_api_key": {"api_key": wrong, "ca_certs": proxy.ca},
        "no_credentials": {"ca_certs": proxy.ca},
        "rogue_ca": {"api_key": proxy.api_key, "ca_certs": proxy.rogue_ca},
        "system_ca": {"api_key": proxy.api_key},
    }[case]
    config = _es_config(tmp_path, proxy, **settings)

    code, out, err = cli_in_process("--action", "connectors", config=config)

    assert code == 1
    last_line = err.strip().splitlines()[-1]
    assert expected in last_line, err
    assert last_line.split(":", 1)[0] in ("AuthenticationException", "UntrustedCertificate"), last_line
    assert "Traceback" not in err
    for secret in (wrong, proxy.password, proxy.api_key):
        assert secret not in out + err


def test_cli_process_when_password_wrong_then_exit_1_and_one_line_error(proxy, tmp_path):
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = _es_config(tmp_path, proxy, username=proxy.username, password=wrong, ca_certs=proxy.ca)

    result = cli("--action", "connectors", config=config)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("AuthenticationException:"), result.stderr
    assert "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr and proxy.password not in result.stdout + result.stderr


def test_cli_when_credentials_wrong_then_message_names_host_and_settings(proxy, tmp_path):
    config = _es_config(tmp_path, proxy, username=proxy.username, password="not-it", ca_certs=proxy.ca)

    _, _, err = cli_in_process("--action", "connectors", config=config)

    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("AuthenticationException: ")
    assert proxy.url in last_line and "username" in last_line and "api_key" in last_line, last_line
    assert "missing or invalid credentials" in last_line  # the server's reason
    assert "not-it" not in err


def test_config_when_ca_certs_missing_then_config_error_without_secret(proxy, tmp_path):
    config = _es_config(tmp_path, proxy, username=proxy.username, password=proxy.password,
                        ca_certs=str(tmp_path / "nope.crt"))
    config.write_text(config.read_text().replace("max_retries: 0", "max_retries: 0\n  unknown_key: 1"))

    code, out, err = cli_in_process("--action", "connectors", config=config)

    assert code == 1
    assert "ConfigError" in err and "ca_certs" in err and "unknown_key" in err
    assert proxy.password not in out + err


# -- a real daemon sync with secrets everywhere -------------------------------------------
@dataclass
class Scenario:
    token: str
    bad_token: str
    proxy: Proxy
    connector_id: str
    bad_connector_id: str
    evil_connector_id: str
    evil_job_id: str
    index: str
    marker: Path
    texts: dict[str, str]
    cmdlines: dict[int, str]
    jobs: list[dict]
    connectors: dict[str, dict]
    sync_returncode: int
    indexed: int


def _cmdline(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


@pytest.fixture(scope="module")
def scenario(own_proxy, own_es, tmp_path_factory) -> Scenario:
    """One daemon, through the proxy with a password, syncing a connector with a sensitive token.

    Also served: a connector whose sensitive value has the wrong type (its validation error
    must not echo it), a connector whose service_type is a module path, and a job whose
    snapshot names that module path. The module leaves a marker file if it is ever imported.
    """
    from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices
    from launcher.protocol import new_connector

    proxy, es = own_proxy, own_es
    tmp = tmp_path_factory.mktemp("security")
    suffix = uuid.uuid4().hex[:10]
    token, bad_token = f"tok-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    cid, bad_cid, evil_cid = f"sec-{suffix}", f"sec-bad-{suffix}", f"sec-evil-{suffix}"
    index = f"test-sec-{suffix}"
    marker = tmp / "evil-imported"
    env = {"EVIL_IMPORT_MARKER": str(marker)}
    config = write_config(
        tmp / "config.yml", es_url=proxy.url, sources={SERVICE_TYPE: SCRIPTED},
        elasticsearch={"username": proxy.username, "password": proxy.password, "ca_certs": proxy.ca},
        service={"connector_ids": [cid, bad_cid, evil_cid]},
    )
    ensure_indices(es)
    texts: dict[str, str] = {}

    def run(name: str, *args: str) -> int:
        code, out, err = cli_in_process(*args, config=config, env=env)
        texts[f"cli {name}"] = out + err
        return code

    created = cli("--action", "create-connector", "--service-type", SERVICE_TYPE,
                  "--index-name", index, "--connector-id", cid, "--set", f"token={token}", "--set", "count=40",
                  "--set", "delay_ms=100", "--set", "require_token=true", config=config, env=env)
    texts["cli create-connector"] = created.stdout + created.stderr
    assert created.returncode == 0, created.stderr
    bad = new_connector(service_type=SERVICE_TYPE, index_name=f"{index}-bad", configuration={
        "token": {"label": "API token", "type": "int", "sensitive": True, "value": bad_token}})
    bad["status"] = "configured"
    es.index(index=CONNECTORS_INDEX, id=bad_cid, document=bad, refresh=True)
    evil = new_connector(service_type=EVIL, index_name=f"{index}-evil", configuration={})
    evil["status"] = "configured"
    es.index(index=CONNECTORS_INDEX, id=evil_cid, document=evil, refresh=True)
    evil_job_id = f"sec-evil-job-{suffix}"

    daemon = DaemonProcess(config, tmp / "daemon.log", env=env)
    cmdlines: dict[int, str] = {daemon.process.pid: _cmdline(daemon.process.pid) or ""}
    try:
        wait_for(lambda: (es.get(index=CONNECTORS_INDEX, id=cid)["_source"].get("status") == "connected"),
                 timeout=90, what="the connector to be connected")
        # A job whose snapshot names a module path as its service type (written whole: no claim race).
        from launcher.protocol import get_connector, job_snapshot, now_iso

        snapshot = {**job_snapshot(get_connector(es, cid)), "service_type": EVIL}
        es.index(index=JOBS_INDEX, id=evil_job_id, refresh=True, document={
            "connector": snapshot, "job_type": "full", "trigger_method": "on_demand", "status": "pending",
            "created_at": now_iso(), "indexed_document_count": 0, "deleted_document_count": 0})
        wait_for(lambda: es.get(index=JOBS_INDEX, id=evil_job_id)["_source"]["status"] == "error", timeout=60,
                 what="the job naming a module path to fail")
        # The real sync, followed by the CLI; meanwhile record every child's command line.
        sync = subprocess.Popen(
            [os.sys.executable, "-m", "launcher.cli", "-c", str(config), "--action", "sync", "--connector-id", cid,
             "--wait", "--timeout", "180"],
            cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        cmdlines[sync.pid] = _cmdline(sync.pid) or ""
        while sync.poll() is None:
            for child in child_pids(daemon.process.pid):
                if child not in cmdlines or cmdlines[child] == cmdlines[daemon.process.pid]:
                    line = _cmdline(child)  # (a child caught between fork and exec still shows the daemon's)
                    if line:
                        cmdlines[child] = line
            time.sleep(0.05)
        out, err = sync.communicate()
        texts["cli sync --wait"] = out + err
        for name, args in {"connectors": ["--action", "connectors"], "connectors json": ["--action", "connectors",
                           "--json"], "jobs": ["--action", "jobs"], "jobs json": ["--action", "jobs", "--json"],
                           "list": ["--action", "list"], "connectors debug": ["--action", "connectors", "--debug"],
                           "jobs debug": ["--action", "jobs", "--json", "--debug"]}.items():
            run(name, *args)
        wait_for(lambda: "Invalid configuration" in str(
            es.get(index=CONNECTORS_INDEX, id=bad_cid)["_source"].get("error")), timeout=30,
            what="the connector with a mistyped sensitive value to be in error")
        wait_for(lambda: es.get(index=CONNECTORS_INDEX, id=evil_cid)["_source"].get("status") == "error",
                 timeout=30, what="the connector naming a module path to be in error")
    finally:
        daemon.stop()
    texts["daemon log"] = daemon.log_path.read_text(encoding="utf-8", errors="replace")
    es.indices.refresh(index=JOBS_INDEX)
    jobs = [hit["_source"] | {"_id": hit["_id"]} for hit in es.search(
        index=JOBS_INDEX, query={"terms": {"connector.id": [cid, bad_cid, evil_cid]}}, size=100)["hits"]["hits"]]
    connectors = {c: es.get(index=CONNECTORS_INDEX, id=c)["_source"] for c in (cid, bad_cid, evil_cid)}
    es.indices.refresh(index=index)
    indexed = es.count(index=index)["count"]
    scenario = Scenario(token, bad_token, proxy, cid, bad_cid, evil_cid, evil_job_id, index, marker, texts,
                        cmdlines, jobs, connectors, sync.returncode, indexed)
    yield scenario
    for job in jobs:
        es.options(ignore_status=404).delete(index=JOBS_INDEX, id=job["_id"])
    for c in (cid, bad_cid, evil_cid):
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=c)
    es.indices.delete(index=index, ignore_unavailable=True)


def test_daemon_sync_through_tls_proxy_with_password_then_completes(scenario):
    assert scenario.sync_returncode == 0, scenario.texts["cli sync --wait"]
    assert scenario.indexed == 40
    assert scenario.connectors[scenario.connector_id]["status"] == "connected"


@pytest.mark.parametrize("where", ["daemon log", "cli create-connector", "cli sync --wait", "cli connectors",
                                   "cli connectors json", "cli jobs", "cli jobs json", "cli list",
                                   "cli connectors debug", "cli jobs debug"])
def test_secrets_when_daemon_syncs_then_absent_from_logs_and_cli_output(scenario, where):
    text = scenario.texts[where]
    assert text, f"no output captured for {where}"
    for secret in (scenario.token, scenario.bad_token, scenario.proxy.password):
        assert secret not in text, f"a secret appears in the {where}"


def test_secrets_when_daemon_syncs_then_absent_from_process_arguments(scenario):
    # A sync process started cold runs pipelines.run; one forked from the warm process shows its arguments.
    sync_processes = [line for line in scenario.cmdlines.values()
                      if "pipelines.run" in line or "pipelines.fork_server" in line]
    assert sync_processes, f"the sync process was not seen: {scenario.cmdlines}"
    for line in scenario.cmdlines.values():
        for secret in (scenario.token, scenario.proxy.password, scenario.proxy.api_key):
            assert secret not in line


def test_secrets_when_value_mistyped_then_connector_error_does_not_echo_it(scenario):
    bad = scenario.connectors[scenario.bad_connector_id]
    assert bad["status"] == "error"
    assert "API token" in bad["error"]
    assert scenario.bad_token not in json.dumps({k: v for k, v in bad.items() if k != "configuration"})


def test_secrets_when_job_fails_then_job_errors_do_not_contain_them(scenario):
    for job in scenario.jobs:
        visible = {k: v for k, v in job.items() if k != "connector"}
        for secret in (scenario.token, scenario.bad_token, scenario.proxy.password):
            assert secret not in json.dumps(visible)


def test_secrets_when_job_created_then_job_document_has_no_sensitive_value(scenario):
    for job in scenario.jobs:
        assert scenario.token not in json.dumps(job)


def test_registry_when_service_type_names_a_module_then_it_is_never_imported(scenario):
    assert not scenario.marker.exists(), scenario.marker.read_text()
    evil = scenario.connectors[scenario.evil_connector_id]
    assert evil["status"] == "error" and "not served here" in evil["error"]
    job = next(j for j in scenario.jobs if j["_id"] == scenario.evil_job_id)
    assert job["status"] == "error" and job["error"].startswith("UnknownServiceType:"), job["error"]


def test_registry_when_cli_given_module_path_then_refused_without_import(proxy, tmp_path):
    marker = tmp_path / "evil-imported"
    config = _es_config(tmp_path, proxy, api_key=proxy.api_key, ca_certs=proxy.ca)

    code, _, err = cli_in_process("--action", "create-connector", "--service-type", EVIL, "--index-name",
                                  "never-created", config=config, env={"EVIL_IMPORT_MARKER": str(marker)})

    assert code == 1
    assert "unknown service type" in err and SERVICE_TYPE in err
    assert not marker.exists()
    assert "tests.fixtures_security.evil" not in __import__("sys").modules


# -- the sync process's own client --------------------------------------------------------
def _sync_through(proxy: Proxy, index: str, **credentials) -> dict:
    """One sync as the sync process runs it (pipelines.run.run_sync), to the proxy."""
    from pipelines.job import SyncJob
    from pipelines.run import run_sync
    from pipelines.settings import PipelineConfig
    from transforms.es_client import ElasticsearchConnection

    job = SyncJob(job_id=f"test-sec-{uuid.uuid4().hex[:12]}", connector_id="sec-connector", job_type="full",
                  index_name=index, service_type=SERVICE_TYPE, source_fqn=SCRIPTED,
                  configuration={"count": {"value": 12}, "token": {"value": "t", "sensitive": True}})
    settings = PipelineConfig.model_validate({"direct_num_workers": 1, "direct_running_mode": "in_memory",
                                              "dead_letters": str(Path(os.environ.get("TMPDIR", "/tmp")) / "dl"),
                                              "bulk": {"max_retries": 0}})
    conn = ElasticsearchConnection(hosts=(proxy.url,), ca_certs=proxy.ca, max_retries=0, **credentials)
    return run_sync(job, settings, conn, progress_interval=1.0)


def test_sync_when_api_key_through_tls_proxy_then_completes(proxy, es, index_name):
    outcome = _sync_through(proxy, index_name, api_key=proxy.api_key)

    assert outcome["status"] == "completed", outcome.get("error")
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == 12


def test_sync_when_api_key_wrong_then_fails_clearly_without_the_key(proxy, index_name):
    wrong = f"wrong-{uuid.uuid4().hex}"

    outcome = _sync_through(proxy, index_name, api_key=wrong)

    assert outcome["status"] == "error"
    assert outcome["error"].startswith("AuthenticationException: "), outcome["error"]
    assert proxy.url in outcome["error"] and "elasticsearch.api_key" in outcome["error"], outcome["error"]
    assert wrong not in json.dumps(outcome) and proxy.api_key not in json.dumps(outcome)


def test_config_and_connection_when_printed_then_secrets_hidden():
    from launcher.config import parse_config

    password, api_key = f"pw-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    with_password = parse_config({"elasticsearch": {"host": "https://es:9200", "username": "u", "password": password}})
    with_key = parse_config({"elasticsearch": {"host": "https://es:9200", "api_key": api_key}})

    for config, secret in ((with_password, password), (with_key, api_key)):
        for text in (repr(config), str(config), config.model_dump_json(), repr(config.elasticsearch.connection()),
                     config.elasticsearch.connection().display):
            assert secret not in text
    assert with_password.elasticsearch.connection().password == password  # still usable
