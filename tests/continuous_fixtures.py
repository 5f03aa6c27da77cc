"""What the SQL continuous-sync tests share (tests/test_continuous_sync.py for PostgreSQL,
tests/test_continuous_sync_mysql.py for MariaDB): one test's tables and connector, the
comparison of the content index with the tables row by row, and a writer thread.

Both servers take the same SQL here (``%s`` parameters, ``INT``/``NUMERIC``/``TEXT``).
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.indices import CONNECTORS_INDEX, ensure_indices
from tests.helpers import cli, index_docs, wait_for
from tests.sources.sql_fixtures import DATABASE, HOST, PASSWORD, USER

__all__ = ["StreamTables", "Writer", "start_stream_daemon"]


def start_stream_daemon(folder: Path, service: str, fqn: str) -> dict[str, Any]:
    """A daemon serving ``service`` (source ``fqn``) with fast polls and its own /metrics port:
    ``{"process", "config", "folder", "metrics"}`` (stop ``holder["process"]`` at the end).
    Skips (fails under CI=true) without the Prism binary."""
    import socket

    from pipelines.options import default_prism_location
    from tests.helpers import DaemonProcess, skip_or_fail, write_config

    if not default_prism_location().is_file():
        skip_or_fail(f"no Prism binary at {default_prism_location()} (scripts/prism build)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = write_config(folder / "config.yml", sources={service: fqn},
                          service={"idling": 0.5, "heartbeat": 2, "job_progress_interval": 1,
                                   "cancel_check_interval": 0.5, "metrics_address": f"127.0.0.1:{metrics_port}"})
    process = DaemonProcess(config, folder / "daemon.log")
    return {"process": process, "config": config, "folder": folder, "metrics": f"http://127.0.0.1:{metrics_port}"}


class StreamTables(abc.ABC):
    """One test's tables (``items``: the busy one; ``tags``: the one truncated) and its connector."""

    prefix = "cs"

    def __init__(self, es: Any, config: Path, *, service: str, port: int):
        self.es, self.config, self.service, self.port = es, config, service, port
        self.suffix = uuid.uuid4().hex[:6]
        self.items, self.tags = f"{self.prefix}_items_{self.suffix}", f"{self.prefix}_tags_{self.suffix}"
        self.connector_id = f"test-{self.prefix}-{self.suffix}"
        self.index = f"test-{self.prefix}-{self.suffix}"

    @abc.abstractmethod
    def fetch(self, sql: str) -> list[tuple]:
        """Every row of a query on the test's database."""

    def create_connector(self) -> None:
        ensure_indices(self.es)
        result = cli("--action", "create-connector", "--connector-id", self.connector_id, "--service-type",
                     self.service, "--index-name", self.index, "--set", f"host={HOST}", "--set", f"port={self.port}",
                     "--set", f"username={USER}", "--set", f"password={PASSWORD}", "--set", f"database={DATABASE}",
                     "--set", f"tables={self.items},{self.tags}", "--set", "continuous_sync=true",
                     config=self.config)
        assert result.returncode == 0, result.stderr

    def rows(self) -> dict[str, dict[str, Any]]:
        out = {}
        for row in self.fetch(f"SELECT id, name, amount, note FROM {self.items}"):
            out[f"{self.items}_{row[0]}"] = {"id": row[0], "name": row[1],
                                             "amount": None if row[2] is None else float(row[2]), "note": row[3]}
        for row in self.fetch(f"SELECT id, label FROM {self.tags}"):
            out[f"{self.tags}_{row[0]}"] = {"id": row[0], "label": row[1]}
        return out

    def indexed(self) -> dict[str, dict[str, Any]]:
        docs = index_docs(self.es, self.index)
        out = {}
        for doc_id, doc in docs.items():
            if doc.get("table") == self.items:
                out[doc_id] = {"id": doc["id"], "name": doc["name"],
                               "amount": None if doc["amount"] is None else float(doc["amount"]), "note": doc["note"]}
            else:
                out[doc_id] = {"id": doc["id"], "label": doc["label"]}
        return out

    def equal(self) -> bool:
        try:
            return self.indexed() == self.rows()
        except Exception:  # noqa: BLE001 - no index yet
            return False

    def assert_equal(self, timeout: float = 60) -> None:
        try:
            wait_for(self.equal, timeout=timeout, what="the index equal to the tables")
        except AssertionError:
            rows, docs = self.rows(), self.indexed()
            missing = sorted(set(rows) - set(docs))[:5]
            extra = sorted(set(docs) - set(rows))[:5]
            wrong = [k for k in rows if k in docs and docs[k] != rows[k]][:5]
            stream = [(j["status"], j.get("error"), (j.get("metadata") or {}).get("stream")) for j in self.jobs()]
            raise AssertionError(f"index differs from the tables: missing {missing}, extra {extra}, different "
                                 f"{[(k, rows[k], docs[k]) for k in wrong]}; jobs {stream}") from None

    def jobs(self) -> list[dict[str, Any]]:
        self.es.indices.refresh(index=".elastic-connectors-sync-jobs")
        hits = self.es.search(index=".elastic-connectors-sync-jobs", size=50, sort=[{"created_at": "asc"}],
                              query={"term": {"connector.id": self.connector_id}})["hits"]["hits"]
        return [{"id": h["_id"], **h["_source"]} for h in hits]

    def running(self) -> dict[str, Any] | None:
        found = [j for j in self.jobs() if j["status"] == "in_progress"]
        return found[0] if found else None

    def streaming(self) -> dict[str, Any] | None:
        """The running job once its snapshot is in Elasticsearch (its position reported)."""
        current = self.running()
        stream = (current or {}).get("metadata", {}).get("stream") or {}
        return current if stream.get("cursor") and stream.get("snapshot") == "done" else None

    def drop_connector(self) -> None:
        self.es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=self.connector_id, refresh=True)
        self.es.options(ignore_status=404).indices.delete(index=self.index)


class Writer(threading.Thread):
    """Inserts, updates and deletes on ``items`` until stopped, through ``session()``: a context
    manager giving something with ``execute(sql, params)`` on a connection of its own."""

    def __init__(self, tables: StreamTables, start: int, session: Callable[[], contextlib.AbstractContextManager]):
        super().__init__(daemon=True)
        self.tables, self.next_id, self.session = tables, start, session
        self.stop_event = threading.Event()
        self.writes = 0

    def run(self) -> None:
        items = self.tables.items
        with self.session() as db:
            while not self.stop_event.is_set():
                n = self.next_id
                db.execute(f"INSERT INTO {items} VALUES (%s, %s, %s, %s)", (n, f"new {n}", n / 4, None))
                db.execute(f"UPDATE {items} SET name = %s, amount = amount + 1 WHERE id = %s", (f"upd {n}", n - 3))
                db.execute(f"DELETE FROM {items} WHERE id = %s", (n - 7,))
                self.next_id += 1
                self.writes += 3
                time.sleep(0.01)

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
