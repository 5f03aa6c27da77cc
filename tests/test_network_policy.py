"""Network sources reach only the hosts the operator allows (``allowed_hosts`` of a sources: entry).

One mechanism for every source: each lists the hosts its configuration names
(``network_endpoints()``), and ``build_source`` checks them before anything else runs.
Checked here for every built-in network source with a listening socket that must never be
contacted, then on a real daemon: an allowed PostgreSQL syncs, a refused host fails the
connector's check and the job, with the reason, and is never connected to.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from sources.driver import build_source
from sources.errors import ConfigError, SourceConfigError
from sources.network import NetworkPolicy
from sources.registry import load_source_class

PG_PORT = int(os.environ.get("PG_PORT", "5433"))


class Listener:
    """A TCP socket on 127.0.0.2 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener():
    made = Listener()
    yield made
    made.close()


@pytest.mark.parametrize("entry, host, allowed", [
    ("db.example.com", "DB.example.com.", True),
    ("db.example.com", "other.example.com", False),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("::1", "[::1]", True),
    ("127.0.0.0/8", "localhost", True),        # resolved, every address inside
    ("10.0.0.0/8", "localhost", False),        # resolved, outside
    ("10.0.0.0/8", "no-such-host.invalid", False),
])
def test_network_policy_when_host_checked_then_allowed_only_by_a_matching_entry(entry, host, allowed):
    assert (NetworkPolicy.parse([entry]).refusal(host, 5432) is None) is allowed


@pytest.mark.parametrize("entry", ["http://db", "db:5432", "db/path", "*", ""])
def test_config_when_allowed_hosts_entry_malformed_then_path_and_entry_named(entry):
    from launcher.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"sources": {"pg": {"class": "sources.postgresql:PostgreSQLDataSource", "allowed_hosts": [entry]}}})

    assert info.value.problems[0].startswith("sources.pg.allowed_hosts: expected host names"), info.value.problems
    assert repr(entry) in info.value.problems[0]


NETWORK_SOURCES = ["postgresql", "mysql", "mongodb", "s3", "google_cloud_storage", "azure_blob_storage",
                   "redis"]


def _configuration(service_type: str, port: int) -> dict:
    where = f"127.0.0.2:{port}"
    return {
        "postgresql": {"host": "127.0.0.2", "port": port, "username": "u", "password": "p", "database": "d"},
        "mysql": {"host": "127.0.0.2", "port": port, "username": "u", "password": "p", "database": "d"},
        "mongodb": {"host": f"mongodb://user:pw@127.0.0.1:27018,{where}/?replicaSet=rs", "database": "d",
                    "collection": "c"},
        "s3": {"buckets": "b", "endpoint_url": f"http://{where}"},
        "google_cloud_storage": {"buckets": "b", "endpoint": f"http://{where}"},
        "azure_blob_storage": {"containers": "c", "account_name": "a", "account_key": "a2V5",
                               "blob_endpoint": f"http://{where}/a"},
        "redis": {"host": "127.0.0.2", "port": port, "password": "p"},
    }[service_type]


@pytest.mark.parametrize("service_type", NETWORK_SOURCES)
def test_network_sources_when_host_not_allowed_then_refused_before_any_connection(listener, service_type):
    from tests.helpers import SOURCES

    cls = load_source_class(SOURCES[service_type])

    with pytest.raises(SourceConfigError) as info:
        build_source(cls, _configuration(service_type, listener.port), {"allowed_hosts": ["127.0.0.1"]})

    assert "host '127.0.0.2' is refused (not in the allowed networks)" in str(info.value)
    assert "nothing was contacted" in str(info.value)
    assert listener.accepted == 0


@pytest.mark.parametrize("service_type", NETWORK_SOURCES)
def test_network_sources_when_host_allowed_or_no_policy_then_built(listener, service_type):
    from tests.helpers import SOURCES

    cls = load_source_class(SOURCES[service_type])
    configuration = _configuration(service_type, listener.port)

    for settings, allowed in (({"allowed_hosts": ["127.0.0.0/8"]}, ("127.0.0.0/8",)), ({}, None)):
        assert build_source(cls, configuration, settings).operator_settings.allowed_hosts == allowed
    assert listener.accepted == 0  # building connects to nothing


# -- a real daemon ---------------------------------------------------------------------------
@pytest.mark.integration
def test_daemon_when_connector_names_a_refused_host_then_check_and_job_fail_and_it_is_never_contacted(
        es, tmp_path, listener):
    import psycopg

    from launcher.index_store import IndexStore
    from tests.helpers import DaemonProcess, cli, require_server, write_config

    require_server("PostgreSQL", f"127.0.0.1:{PG_PORT}", lambda: socket.create_connection(("127.0.0.1", PG_PORT), 2))
    suffix = uuid.uuid4().hex[:8]
    table, allowed_id, refused_id = f"t_net_{suffix}", f"net-ok-{suffix}", f"net-refused-{suffix}"
    indices = {allowed_id: f"test-{allowed_id}", refused_id: f"test-{refused_id}"}
    config = write_config(tmp_path / "config.yml", service={"connector_ids": list(indices)}, sources={
        "postgresql": {"class": "sources.postgresql:PostgreSQLDataSource", "allowed_hosts": ["127.0.0.1"]}})
    connect = dict(host="127.0.0.1", port=PG_PORT, user="ingest", password="ingest-secret", dbname="ingest_test",
                   autocommit=True)
    with psycopg.connect(**connect) as db:
        db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(20))")
        db.execute(f"INSERT INTO {table} VALUES (1, 'one')")
    store = IndexStore(es)
    env = {"EI_NET_PASSWORD": "ingest-secret"}
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env=env)
    try:
        for cid in (allowed_id, refused_id):
            values = {"host": "127.0.0.1", "port": PG_PORT, "username": "ingest", "password": "ingest-secret",
                      "database": "ingest_test", "tables": table}
            cli("--action", "create-connector", "--connector-id", cid, "--service-type", "postgresql", "--index-name",
                indices[cid], *[a for k, v in values.items() for a in ("--set", f"{k}={v}")], config=config,
                check=True)
        # The CLI refuses the host at once; another client writing the document is checked by the daemon.
        updated = cli("--action", "update-connector", "--connector-id", refused_id, "--set", "host=127.0.0.2",
                      "--set", f"port={listener.port}", config=config)
        assert updated.returncode == 1 and "host '127.0.0.2' is refused" in updated.stderr, updated.stderr
        configuration = store.get_connector(refused_id).get("configuration")
        configuration["host"]["value"], configuration["port"]["value"] = "127.0.0.2", listener.port
        store.update_connector(refused_id, {"configuration": configuration})
        allowed = cli("--action", "sync", "--connector-id", allowed_id, "--wait", "--timeout", "120", "--json",
                      config=config)
        refused = cli("--action", "sync", "--connector-id", refused_id, "--wait", "--timeout", "120", "--json",
                      config=config)
        connector = store.get_connector(refused_id)
    finally:
        daemon.stop()
        for cid in indices:
            store.delete_connector(cid)
        es.indices.delete(index=",".join(indices.values()), ignore_unavailable=True)
        with psycopg.connect(**connect) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr + daemon.output()
    assert refused.returncode == 1
    assert "SourceConfigError: PostgreSQL: host '127.0.0.2' is refused" in refused.stdout, refused.stdout
    assert connector.get("status") == "error" and "is refused" in connector.get("error"), connector.doc
    assert listener.accepted == 0
