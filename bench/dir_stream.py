"""The directory source's continuous sync, measured: file written -> acknowledged -> searchable.

One daemon (bench.ours.Service, its own config) streams one folder on Prism:

1. ``--files`` files of ~1 KB are written, then the connector is created with
   ``continuous_sync=true``: the first rescan (an empty index: every file) is timed until the
   index holds them all;
2. new files are written at ``--rate`` files/s for ``--seconds`` s (each written whole, then
   closed); a poller asks Elasticsearch every 20 ms for the files not seen yet: a realtime
   ``mget`` (the document is acknowledged by Elasticsearch) and a search (it is searchable:
   the index's refresh, 1 s by default). The stream's own figure (first inotify event ->
   Elasticsearch's acknowledgement, the job's ``metadata.stream.lag_p50/p99_seconds``) is
   reported too;
3. the daemon is stopped (SIGTERM: the job is suspended) and started again: the rescan of the
   unchanged folder against the index is timed (the sync process's log line).

Run it against a node of its own (the test node's port is fine when nothing else runs)::

    PRISM_HOME_DIR=/work/main/.servers/prism .venv/bin/python -m bench.dir_stream \
        --es-url http://127.0.0.1:9232 --files 10000 --rate 100 --seconds 30

Results: printed, and written to ``bench/results/dir-stream-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch

from bench.directory import DIR_FQN, write_folder
from bench.ours import REPO, Service
from sources.directory import file_id

__all__ = ["measure", "main"]


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)


class _Poller(threading.Thread):
    """When each written file's document is acknowledged (realtime mget) and searchable (search)."""

    def __init__(self, es: Elasticsearch, index: str):
        super().__init__(daemon=True)
        self.es, self.index = es, index
        self.written: dict[str, float] = {}  # id -> when the file was closed
        self.acked: dict[str, float] = {}
        self.searchable: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set() or self._pending():
            with self.lock:
                unacked = [i for i in self.written if i not in self.acked][:500]
                unseen = [i for i in self.written if i not in self.searchable][:500]
            if unacked:
                found = self.es.mget(index=self.index, ids=unacked, source=False, realtime=True)["docs"]
                now = time.time()
                for doc in found:
                    if doc.get("found"):
                        self.acked.setdefault(doc["_id"], now)
            if unseen:
                hits = self.es.search(index=self.index, query={"ids": {"values": unseen}}, size=len(unseen),
                                      source=False)["hits"]["hits"]
                now = time.time()
                for hit in hits:
                    self.searchable.setdefault(hit["_id"], now)
            if self.stop_event.is_set() and time.time() - max(self.written.values(), default=0) > 30:
                break  # given up on what never came
            time.sleep(0.02)

    def _pending(self) -> bool:
        with self.lock:
            return len(self.searchable) < len(self.written)

    def latencies(self, seen: dict[str, float]) -> list[float]:
        return [seen[i] - t for i, t in self.written.items() if i in seen]


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _count(es: Elasticsearch, index: str) -> int:
    if not es.indices.exists(index=index):
        return 0
    es.indices.refresh(index=index)
    return int(es.count(index=index)["count"])


def _stream_job(es: Elasticsearch, connector_id: str) -> dict[str, Any] | None:
    es.indices.refresh(index=".elastic-connectors-sync-jobs")
    hits = es.search(index=".elastic-connectors-sync-jobs", size=1, sort=[{"created_at": "desc"}],
                     query={"term": {"connector.id": connector_id}})["hits"]["hits"]
    return hits[0]["_source"] if hits else None


def _rescans(log: Path) -> list[dict[str, Any]]:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    found = re.findall(r"rescan \((\w+)\) of (\d+) file\(s\) in ([\d.]+) s: (\d+) new or changed, (\d+) gone", text)
    return [{"compared_with": kind, "files": int(files), "seconds": float(seconds), "changed": int(changed),
             "gone": int(gone)} for kind, files, seconds, changed, gone in found]


def measure(es_url: str, *, files: int, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    """The three measurements of the module docstring, as a dict."""
    es = Elasticsearch(es_url, request_timeout=60)
    run = datetime.now(timezone.utc).strftime("%H%M%S")
    connector_id, index = f"bench-dirstream-{run}", f"bench-dirstream-{run}"
    root = workdir / "folder"
    write_folder(root, count=files, subfolders=10)
    service = Service(es_url, workdir / "service", pipeline={}, connector_ids=[connector_id],
                      service={"job_progress_interval": 1, "heartbeat": 2, "warm_sync_processes": False},
                      sources={"dir": {"class": DIR_FQN, "allowed_roots": [str(workdir)]}})
    out: dict[str, Any] = {"files": files, "rate_per_s": rate, "seconds": seconds}
    try:
        with service:
            started = time.monotonic()
            service.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
                        "--index-name", index, "--set", f"directory={root}", "--set", "continuous_sync=true")
            _wait(lambda: _count(es, index) >= files, 1800, "the first rescan indexed")
            out["first_rescan_seconds"] = round(time.monotonic() - started, 1)  # Prism's start included

            poller = _Poller(es, index)
            poller.start()
            live = root / "live"
            live.mkdir()
            interval, begin = 1.0 / rate, time.monotonic()
            n = 0
            while time.monotonic() - begin < seconds:
                relative = f"live/new-{n:06d}.txt"
                (root / relative).write_text(f"written live {n} " + "x" * 1000, encoding="utf-8")
                with poller.lock:
                    poller.written[file_id(relative)] = time.time()
                n += 1
                time.sleep(max(0.0, begin + n * interval - time.monotonic()))
            out["written"] = n
            out["achieved_rate_per_s"] = round(n / (time.monotonic() - begin), 1)
            poller.stop_event.set()
            poller.join(timeout=120)
            acked, searchable = poller.latencies(poller.acked), poller.latencies(poller.searchable)
            out["write_to_acknowledged"] = {"count": len(acked), "p50": _percentile(acked, 0.5),
                                            "p99": _percentile(acked, 0.99), "max": _percentile(acked, 1.0)}
            out["write_to_searchable"] = {"count": len(searchable), "p50": _percentile(searchable, 0.5),
                                          "p99": _percentile(searchable, 0.99), "max": _percentile(searchable, 1.0)}
            time.sleep(2)  # the job's next progress report
            stream = ((_stream_job(es, connector_id) or {}).get("metadata") or {}).get("stream") or {}
            out["stream_reported"] = {k: stream.get(k) for k in ("lag_p50_seconds", "lag_p99_seconds",
                                                                 "version_conflicts", "pending_changes", "rescans")}
            out["peak_pss_mb"] = service.sampler.phase_peak_pss_mb if service.sampler else None
        # Stopped (suspended); started again: the rescan of an unchanged folder against the index.
        before = len(_rescans(service.log_path))
        out["rescans_while_running"] = _rescans(service.log_path)
        with service:
            _wait(lambda: len(_rescans(service.log_path)) > before, 600, "the rescan after the restart")
            out["restart_rescan"] = _rescans(service.log_path)[before]
            out["index_count_end"] = _count(es, index)
        out["ok"] = (out["write_to_acknowledged"]["count"] == n and out["index_count_end"] == files + n
                     and out["restart_rescan"]["changed"] == 0)
    finally:
        try:
            service.remove_connector(es, connector_id)
        except Exception:  # noqa: BLE001 - best effort
            pass
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--es-url", default="http://127.0.0.1:9210")
    parser.add_argument("--files", type=int, default=10_000, help="files in the folder before the stream starts")
    parser.add_argument("--rate", type=float, default=100.0, help="new files per second during the load")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--keep-workdir", action="store_true", help="keep the folder, the config and the logs")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dirstream-"))
    try:
        result = measure(args.es_url, files=args.files, rate=args.rate, seconds=args.seconds, workdir=workdir)
    finally:
        if args.keep_workdir:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dir-stream-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json").write_text(text + "\n")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
