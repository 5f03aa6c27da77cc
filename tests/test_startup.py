"""A daemon's start and its Elasticsearch outages, as an operator lives them.

* Elasticsearch down at start: the daemon waits (one line per attempt, with backoff),
  ``/healthz`` says why, and it serves once Elasticsearch answers;
* a URL that reaches another HTTP server, a metrics address in use: one clear error, exit 1;
* an outage later: one line when it starts, a reminder at most every minute, one when it ends.

The "Elasticsearch comes up" case puts a small TCP forwarder of the test's own on the port
the daemon was given, in front of the test node.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import uuid
from urllib.parse import urlparse

import pytest

from launcher.outage import Outage, is_outage
from sources.errors import connection_failure, format_error
from tests.helpers import ES_URL, DaemonProcess, cli, local_http_server, wait_for, write_config
from tests.test_observability import _free_port, _get


class _Forwarder:
    """Accepts on ``port`` and pipes each connection to ``target`` (host, port), until closed."""

    def __init__(self, port: int, target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.server.settimeout(0.2)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        self.server.close()


class _NotElasticsearch(http.server.BaseHTTPRequestHandler):
    """Some other web server: an nginx-like 404 page, or S3-like XML."""

    xml = False
    server_version, sys_version = "nginx/1.22.1", ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>" if self.xml else \
            b"<html><body><h1>404 Not Found</h1></body></html>"
        self.send_response(403 if self.xml else 404)
        self.send_header("Content-Type", "application/xml" if self.xml else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(params=["html", "xml"])
def other_server(request):
    handler = type("Handler", (_NotElasticsearch,), {"xml": request.param == "xml"})
    with local_http_server(handler) as url:
        yield url


# -- unit ---------------------------------------------------------------------------------
def test_outage_when_failures_go_on_then_one_line_a_reminder_a_minute_and_one_at_the_end(caplog):
    now = [0.0]
    outage = Outage(logging.getLogger("test.outage"), "Elasticsearch at http://es:9200", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.outage"):
        for second in range(0, 150, 2):  # a failure every 2 s for 2.5 minutes
            now[0] = float(second)
            outage.failed("ConnectionError: cannot connect to es:9200: Connection refused")
        assert "unreachable since" in outage.not_ready and "(75 failed attempts)" in outage.not_ready
        now[0] = 151.0
        outage.ended()
        outage.ended()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("Elasticsearch at http://es:9200 unreachable: ConnectionError: cannot connect")
    assert lines[1].startswith("Elasticsearch at http://es:9200 still unreachable after 1m 00s (31 failed attempts)")
    assert lines[2].startswith("Elasticsearch at http://es:9200 still unreachable after 2m 00s (61 failed attempts)")
    assert lines[3] == "Elasticsearch at http://es:9200 answers again, after 2m 31s unreachable (75 failed attempts)"
    assert outage.not_ready is None


def test_format_error_when_client_cannot_connect_then_one_plain_reason():
    from elasticsearch import Elasticsearch

    port = _free_port()
    try:
        Elasticsearch(f"http://127.0.0.1:{port}", max_retries=0).info()
    except Exception as exc:  # noqa: BLE001 - the client's own nesting is what is checked
        error = exc
    assert is_outage(error)
    assert connection_failure(error).startswith(f"cannot connect to 127.0.0.1:{port}: ")
    said = format_error(error)
    assert said.startswith("ConnectionError: cannot connect to") and "Connection refused" in said
    assert "caused by" not in said and "NewConnectionError" not in said
    assert connection_failure(ValueError("x")) is None


# -- the CLI and the daemon ----------------------------------------------------------------
def test_cli_and_daemon_when_url_is_another_http_server_then_say_so_and_exit(other_server, tmp_path):
    config = write_config(tmp_path / "c.yml", es_url=other_server)

    for action in ("connectors", "poll"):
        result = cli("--action", action, config=config, timeout=60)

        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"NotElasticsearch: {other_server}: this URL answers, but not as Elasticsearch: "), last
        assert "Server: nginx/1.22.1" in last and "elasticsearch.host" in last and str(config) in last
        assert "Traceback" not in result.stderr


def test_daemon_when_metrics_address_in_use_then_names_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path / "c.yml", service={"metrics_address": address})

        result = cli("--action", "poll", config=config, timeout=60)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ConfigError: service.metrics_address: cannot listen on {address}: Address already in use; another "
        "process (another elastic-ingest?) listens there: stop it, or choose another port")


@pytest.mark.integration
def test_daemon_when_elasticsearch_down_at_start_then_waits_says_why_and_serves_once_it_answers(es, tmp_path):
    port, metrics = _free_port(), _free_port()
    config = write_config(tmp_path / "c.yml", es_url=f"http://127.0.0.1:{port}",
                          service={"metrics_address": f"127.0.0.1:{metrics}",
                                   "connector_ids": [f"nobody-{uuid.uuid4().hex[:8]}"]})
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    forwarder = None
    try:
        wait_for(lambda: "(attempt 3, next in 4s)" in daemon.output(), timeout=60, what="three attempts")
        code, body = _get(f"http://127.0.0.1:{metrics}/healthz")
        assert code == 503 and body.startswith(f"waiting for Elasticsearch at http://127.0.0.1:{port} since "), body
        assert "Connection refused" in body
        assert daemon.process.poll() is None

        es_address = urlparse(ES_URL)
        forwarder = _Forwarder(port, (es_address.hostname, es_address.port))
        wait_for(lambda: _get(f"http://127.0.0.1:{metrics}/healthz") == (200, "ok\n"), timeout=60,
                 what="/healthz ok once Elasticsearch answers")
    finally:
        daemon.stop()
        if forwarder is not None:
            forwarder.close()
    log = daemon.output()
    waits = [line for line in log.splitlines() if "waiting for Elasticsearch" in line]
    assert waits and all("Failed to establish a new connection: [Errno 111] Connection refused" in line
                         for line in waits), log
    assert [f"(attempt {n}," in line for n, line in enumerate(waits, start=1)] == [True] * len(waits)
    assert "answers (after" in log and "Traceback" not in log


@pytest.mark.integration
def test_daemon_when_started_elsewhere_then_relative_paths_are_read_from_its_config_folder(es, tmp_path):
    """As under systemd (working directory /): the folder and the dead letters are the config's."""
    from launcher.indices import CONNECTORS_INDEX
    from tests.helpers import wait_job_final

    home, elsewhere = tmp_path / "etc-ingest", tmp_path / "elsewhere"
    (home / "docs").mkdir(parents=True)
    elsewhere.mkdir()
    (home / "docs" / "a.md").write_text("# alpha", encoding="utf-8")
    connector_id = f"rel-{uuid.uuid4().hex[:8]}"
    config = write_config(home / "config.yml", pipeline={"dead_letters": "dead"},
                          service={"connector_ids": [connector_id]})
    index = f"test-{connector_id}"
    created = cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
                  "--index-name", index, "--set", "directory=docs", config=config, cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    daemon = DaemonProcess(config, tmp_path / "daemon.log", cwd=elsewhere)
    try:
        synced = cli("--action", "sync", "--connector-id", connector_id, "--json", config=config, cwd=elsewhere)
        job = wait_job_final(es, __import__("json").loads(synced.stdout)["job_id"])
    finally:
        daemon.stop()
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
    try:
        assert job["status"] == "completed", (job.get("error"), daemon.output()[-2000:])
        assert job["indexed_document_count"] == 1
        assert job["metadata"]["dead_letters"]["location"].startswith(str(home / "dead")), job["metadata"]
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)
