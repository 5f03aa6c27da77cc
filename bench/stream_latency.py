"""Continuous-sync latency of the ``mysql`` source: commit -> acknowledged and -> searchable.

One ``mysql`` connector with ``continuous_sync`` on follows a table of the project's MariaDB
(``scripts/servers/mysql``, MYSQL_PORT; row-based binlog) through the daemon, on Prism.
After its snapshot (``--rows`` rows), one writer commits ``--rate`` changes per second for
``--seconds`` seconds (half inserts, half updates, each its own autocommit transaction,
each with a unique value). A poller notes, for every change:

* acknowledged: the first realtime ``_mget`` that returns the change's value (Elasticsearch
  answers a realtime get from the indexing buffer: the ``_bulk`` that wrote it was acknowledged);
* searchable: the first ``_search`` that finds it (the index's default 1 s refresh).

An update of a row whose previous change was not seen yet replaces it (``superseded_untimed``:
the earlier one is not timed); ``not_acknowledged``: changes never seen within 60 s of the end.

Both are measured from the moment the writer's commit returned, at 20 ms resolution (the
poller's period). Prints p50/p95/p99/max as JSON.

Example usage (alone, or as a ``scripts/bench`` scenario: its JSON's ``stream_latency``)::

    MYSQL_PORT=3317 python -m bench.stream_latency --es-url http://127.0.0.1:9231 --rate 200 --seconds 30
    scripts/bench --sizes none --large 0 --dir 0 --many none --redis 0 --no-partitions --no-runners \
        --mysql-stream 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["measure", "main"]

_HOST, _USER, _PASSWORD, _DATABASE = "127.0.0.1", "ingest", "ingest-secret", "ingest_test"
_PERIOD = 0.02  # seconds between two polls


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(values), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(values), 3)}


def measure(es_url: str, *, port: int, rate: float, seconds: float, rows: int) -> dict[str, Any]:
    import pymysql
    from elasticsearch import Elasticsearch

    from bench.ours import Service

    suffix = uuid.uuid4().hex[:6]
    table, connector, index = f"lat_{suffix}", f"bench-lat-{suffix}", f"bench-lat-{suffix}"
    db = pymysql.connect(host=_HOST, port=port, user=_USER, password=_PASSWORD, database=_DATABASE, autocommit=True)
    es = Elasticsearch(es_url, request_timeout=30)
    with db.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(64), body TEXT)")
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", [(i, "initial", "x" * 200) for i in range(rows)])
    workdir = Path(tempfile.mkdtemp(prefix="stream-latency-"))
    service = Service(es_url, workdir, pipeline={}, connector_ids=[connector],
                      sources={"mysql": "sources.mysql:MySqlDataSource"},
                      service={"job_progress_interval": 1, "heartbeat": 5})
    pending: dict[str, tuple[str, float]] = {}  # doc id -> (value, commit time): not acknowledged yet
    unsearched: dict[str, tuple[str, float]] = {}
    acked: list[float] = []
    searchable: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or pending or unsearched:
            with lock:
                waiting = dict(list(pending.items())[:500])
                hidden = dict(list(unsearched.items())[:500])
            now = time.monotonic()
            if waiting:
                found = es.mget(index=index, ids=list(waiting), realtime=True, source_includes=["name"])["docs"]
                now = time.monotonic()
                with lock:
                    for doc in found:
                        value, at = waiting[doc["_id"]]
                        if doc.get("found") and doc["_source"].get("name") == value:
                            acked.append(now - at)
                            pending.pop(doc["_id"], None)
            if hidden:
                hits = es.search(index=index, size=len(hidden), source_includes=["name"],
                                 query={"terms": {"name": sorted({v for v, _ in hidden.values()})}})["hits"]["hits"]
                now = time.monotonic()
                with lock:
                    for hit in hits:
                        entry = hidden.get(hit["_id"])
                        if entry and hit["_source"].get("name") == entry[0]:
                            searchable.append(now - entry[1])
                            unsearched.pop(hit["_id"], None)
            if stop.is_set() and time.monotonic() > stop_deadline[0]:
                return
            time.sleep(_PERIOD)

    stop_deadline = [float("inf")]
    try:
        service.start()
        service.cli("--action", "create-connector", "--connector-id", connector, "--service-type", "mysql",
                    "--index-name", index, "--set", f"host={_HOST}", "--set", f"port={port}",
                    "--set", f"username={_USER}", "--set", f"password={_PASSWORD}", "--set", f"database={_DATABASE}",
                    "--set", f"tables={table}", "--set", "continuous_sync=true")
        started = time.monotonic()
        while True:  # the snapshot is in: every row is searchable
            try:
                if es.count(index=index)["count"] >= rows:
                    break
            except Exception:  # noqa: BLE001 - no index yet
                pass
            if time.monotonic() - started > 300:
                raise RuntimeError(f"the snapshot did not arrive in 300 s; see {service.log_path}")
            time.sleep(0.2)
        snapshot_seconds = time.monotonic() - started
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        writes, superseded, next_id, begin = 0, 0, rows, time.monotonic()
        with db.cursor() as cur:
            while time.monotonic() - begin < seconds:
                delay = begin + writes / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                value = f"v{writes}"
                if writes % 2:
                    doc_id = writes // 2 % rows
                    cur.execute(f"UPDATE {table} SET name = %s WHERE id = %s", (value, doc_id))
                else:
                    doc_id = next_id
                    next_id += 1
                    cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (doc_id, value, "y" * 200))
                now = time.monotonic()
                with lock:
                    key = f"{table}_{doc_id}"
                    superseded += key in pending  # its earlier change is not timed (a later one replaced it)
                    pending[key] = unsearched[key] = (value, now)
                writes += 1
        elapsed = time.monotonic() - begin
        stop_deadline[0] = time.monotonic() + 60
        stop.set()
        poller.join(timeout=90)
        return {"source": "mysql (MariaDB binlog)", "rate_target": rate, "rate_achieved": round(writes / elapsed, 1),
                "changes": writes, "seconds": round(elapsed, 1), "snapshot_rows": rows,
                "snapshot_seconds": round(snapshot_seconds, 1), "not_acknowledged": len(pending),
                "superseded_untimed": superseded,
                "commit_to_acknowledged_s": _percentiles(acked), "commit_to_searchable_s": _percentiles(searchable)}
    finally:
        stop.set()
        try:
            service.cli("--action", "update-connector", "--connector-id", connector, "--set", "continuous_sync=false")
            time.sleep(2)
            service.remove_connector(es, connector)
        except Exception:  # noqa: BLE001 - cleaning up
            pass
        service.stop()
        es.options(ignore_status=404).indices.delete(index=index)
        with db.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--es-url", default=f"http://127.0.0.1:{os.environ.get('ES_PORT', '9200')}")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MYSQL_PORT", "3307")))
    parser.add_argument("--rate", type=float, default=200.0, help="changes committed per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the table before the stream starts")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.es_url, port=args.port, rate=args.rate, seconds=args.seconds, rows=args.rows),
                     indent=2))


if __name__ == "__main__":
    main()
