"""The daemon's health endpoint and Prometheus metrics, on ``service.metrics_address``.

``GET /healthz`` answers 200 while polls succeed (503 when the last successful poll is
older than three polling intervals plus a minute); ``GET /metrics`` is the Prometheus
exposition. Loopback by default: bind elsewhere only on purpose.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

__all__ = ["serve_metrics", "MetricsServer"]


class MetricsServer:
    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread):
        self.server, self.thread = server, thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _registry(daemon: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    running = Gauge("elastic_ingest_running_syncs", "syncs running in this instance", registry=registry)
    running.set_function(lambda: len(daemon.running))
    polls = Gauge("elastic_ingest_polls", "successful polls since start", registry=registry)
    polls.set_function(lambda: daemon.polls)
    last = Gauge("elastic_ingest_last_successful_poll_timestamp_seconds", "time of the last successful poll",
                 registry=registry)
    last.set_function(lambda: daemon.last_successful_poll or 0)
    jobs = Gauge("elastic_ingest_jobs", "sync jobs by status (whole cluster)", ["status"], registry=registry)
    docs = Gauge("elastic_ingest_indexed_documents", "documents indexed by finished jobs (whole cluster)",
                 registry=registry)

    def collect_jobs() -> None:
        try:
            result = daemon.es.search(index=".elastic-connectors-sync-jobs", size=0, aggs={
                "status": {"terms": {"field": "status", "size": 20}},
                "indexed": {"sum": {"field": "indexed_document_count"}}})
        except Exception:  # noqa: BLE001 - scraped again later
            return
        for bucket in result["aggregations"]["status"]["buckets"]:
            jobs.labels(status=bucket["key"]).set(bucket["doc_count"])
        docs.set(result["aggregations"]["indexed"]["value"] or 0)

    registry.collect_jobs = collect_jobs  # type: ignore[attr-defined]
    return registry


def serve_metrics(address: str, daemon: Any) -> MetricsServer:
    host, _, port = address.rpartition(":")
    registry = _registry(daemon)
    stale_after = 3 * daemon.config.service.idling + 60

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/healthz":
                last = daemon.last_successful_poll
                ok = last is not None and time.time() - last < stale_after
                body = b"ok\n" if ok else b"no successful poll recently\n"
                self._reply(200 if ok else 503, body, "text/plain")
            elif self.path == "/metrics":
                registry.collect_jobs()  # type: ignore[attr-defined]
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
