"""The continuous sync's scenario (issue 20): latency, a sustained rate, and kill -9 under load.

On the project's PostgreSQL (``scripts/servers/postgresql``), one table of ``rows`` rows of
~1 KB streamed by a ``postgresql`` connector with ``continuous_sync`` on, through a real
daemon (the sync on Prism), into an index with the default 1 s refresh:

1. **latency** at ``latency_rate`` changes/s (updates, in transactions of 10 changes every
   50 ms) for ``latency_seconds``: 4 times a second one change carries a fresh marker value;
   from its commit, ``acknowledged`` is when a real-time GET of the document shows it (the
   write Elasticsearch acknowledged) and ``searchable`` when a search for the marker finds
   it (after a refresh). p50/p99 of each.
2. **sustained** ``rate`` changes/s of ~1 KB rows (20% inserts, 70% updates, 10% deletes, in
   transactions every 20 ms) for ``duration`` seconds: the same two latencies of one marker
   a second, over time (is the lag growing?), the job's reported lag, and the whole
   service's PSS (daemon, sync process, Prism, its workers: bench/memory.py) every 5 s.
3. **kill -9** of the sync process ``kill_after`` seconds into ``kill_seconds`` more of the
   same load: when a new job streams again, when the slot's ``confirmed_flush_lsn`` passed
   the WAL position the writer ended at (caught up), and whether the index then equals the
   table row by row (id and an md5 of the row's values).

The writer reports the rate it really reached (the machine may not sustain the target:
Elasticsearch, PostgreSQL, the service and the writer share its cores).

Example usage::

    python -m bench --stream-only --stream-duration 120     # ~5 minutes
    scripts/bench --stream-only                             # 5 minutes of sustained load
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from bench.memory import tree_rss
from bench.ours import INGEST_PIPELINE, Service

__all__ = ["stream_scenario", "stream_markdown", "PG_FQN"]

PG_FQN = "sources.postgresql:PostgreSQLDataSource"
_HOST, _PORT = "127.0.0.1", int(os.environ.get("PG_PORT", "5433"))
_USER, _PASSWORD, _DATABASE = "ingest", "ingest-secret", "ingest_test"
_DSN = f"host={_HOST} port={_PORT} user={_USER} password={_PASSWORD} dbname={_DATABASE}"
#: Inserts, updates, deletes out of 10 changes of the sustained load.
_MIX = (2, 7, 1)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)


def _stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": _percentile(values, 0.5), "p99": _percentile(values, 0.99),
            "max": round(max(values), 3) if values else None}


class _Probe:
    """Commit -> acknowledged (real-time GET) and commit -> searchable (search) of marked changes."""

    def __init__(self, es: Any, index: str, table: str, started: float):
        self.es, self.index, self.table, self.started = es, index, table, started
        self.pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="probe")
        self.samples: list[dict[str, float]] = []
        self.lock = threading.Lock()

    def marked(self, row_id: int, marker: str, committed: float) -> None:
        self.pool.submit(self._watch, row_id, marker, committed)

    def _watch(self, row_id: int, marker: str, committed: float, timeout: float = 120.0) -> None:
        acknowledged = searchable = None
        deadline = committed + timeout
        while time.time() < deadline and (acknowledged is None or searchable is None):
            try:
                if acknowledged is None:
                    found = self.es.options(ignore_status=404).get(index=self.index, id=f"{self.table}_{row_id}",
                                                                    source_includes=["marker"])
                    if found.meta.status == 200 and found["_source"].get("marker") == marker:
                        acknowledged = time.time() - committed
                if searchable is None:
                    hits = self.es.search(index=self.index, size=0, query={"match": {"marker": marker}})
                    if hits["hits"]["total"]["value"]:
                        searchable = time.time() - committed
                        acknowledged = acknowledged if acknowledged is not None else searchable
            except Exception:  # noqa: BLE001 - an index not there yet, a busy node: look again
                pass
            time.sleep(0.025)
        with self.lock:
            self.samples.append({"at": round(committed - self.started, 1), "acknowledged": acknowledged,
                                 "searchable": searchable})

    def take(self) -> list[dict[str, float]]:
        """The samples so far (watchers still running finish later), and forget them."""
        with self.lock:
            out, self.samples = self.samples, []
        return out

    def drain(self) -> list[dict[str, float]]:
        self.pool.shutdown(wait=True)
        return self.take()


class _Writer(threading.Thread):
    """Changes at ``rate``/s in one transaction per ``tick`` seconds; one marked change every ``mark_every`` s."""

    def __init__(self, table: str, ids: list[int], next_id: int, *, rate: float, tick: float, mix: tuple[int, ...],
                 probe: _Probe, mark_every: float, size: int = 1024):
        super().__init__(daemon=True, name="stream-writer")
        self.table, self.ids, self.next_id = table, ids, next_id
        self.marked_ids: set[int] = set()  # never deleted: their probes wait for them
        self.rate, self.tick, self.mix, self.probe, self.mark_every, self.size = rate, tick, mix, probe, mark_every, size
        self.stop_event = threading.Event()
        self.changes = 0
        self.seconds = 0.0
        self.error: str | None = None
        self.random = random.Random(1)

    def _body(self) -> str:
        return os.urandom(self.size // 2).hex()

    def run(self) -> None:
        import psycopg

        per_tick = max(1, round(self.rate * self.tick))
        inserts, updates, deletes = (round(per_tick * part / sum(self.mix)) for part in self.mix)
        updates = max(1, per_tick - inserts - deletes)
        started = time.monotonic()
        next_mark = started
        try:
            with psycopg.connect(_DSN, autocommit=True) as conn:
                tick = 0
                while not self.stop_event.is_set():
                    due = started + tick * self.tick
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    tick += 1
                    marked = None
                    with conn.transaction():
                        if inserts:
                            rows = [(self.next_id + n, None, self._body()) for n in range(inserts)]
                            self.next_id += inserts
                            conn.cursor().executemany(f"INSERT INTO {self.table} VALUES (%s, %s, %s)", rows)
                            self.ids.extend(r[0] for r in rows)
                        chosen = self.random.sample(self.ids, min(updates, len(self.ids)))
                        if chosen:
                            conn.execute(f"UPDATE {self.table} SET body = %s WHERE id = ANY(%s)",
                                         (self._body(), chosen))
                        free = [i for i in chosen if i not in self.marked_ids]
                        if time.monotonic() >= next_mark and free:
                            next_mark += self.mark_every
                            marked = (free[0], f"m{os.urandom(8).hex()}")
                            self.marked_ids.add(free[0])
                            conn.execute(f"UPDATE {self.table} SET marker = %s WHERE id = %s", (marked[1], marked[0]))
                        for _ in range(min(deletes, max(0, len(self.ids) - len(chosen) - 1))):
                            at = self.random.randrange(len(self.ids))
                            gone = self.ids[at]
                            if gone in chosen or gone in self.marked_ids:
                                continue
                            self.ids[at] = self.ids[-1]
                            self.ids.pop()
                            conn.execute(f"DELETE FROM {self.table} WHERE id = %s", (gone,))
                            self.changes += 1
                    if marked is not None:
                        self.probe.marked(marked[0], marked[1], time.time())
                    self.changes += inserts + len(chosen)
        except Exception as exc:  # noqa: BLE001 - reported with the results
            self.error = f"{type(exc).__name__}: {exc}"
        self.seconds = time.monotonic() - started

    def halt(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)

    @property
    def achieved(self) -> float:
        return round(self.changes / self.seconds, 1) if self.seconds else 0.0


def _slot(connector_id: str) -> str:
    from sources.postgresql.stream import stream_name

    return stream_name(connector_id)


def _sync_processes(daemon_pid: int) -> list[psutil.Process]:
    """The daemon's sync processes: its children, and those of its warm process."""
    found = []
    for child in psutil.Process(daemon_pid).children():
        try:
            warm = "pipelines.fork_server" in " ".join(child.cmdline())
            found += child.children() if warm else [child]
        except psutil.Error:
            continue
    return found


def _job(es: Any, connector_id: str, status: str = "in_progress") -> dict[str, Any] | None:
    jobs = ".elastic-connectors-sync-jobs"
    es.indices.refresh(index=jobs)
    hits = es.search(index=jobs, size=1, sort=[{"created_at": "desc"}], query={"bool": {"filter": [
        {"term": {"connector.id": connector_id}}, {"term": {"status": status}}]}})["hits"]["hits"]
    return {"id": hits[0]["_id"], **hits[0]["_source"]} if hits else None


def _job_by_id(es: Any, job_id: str | None) -> dict[str, Any]:
    found = es.options(ignore_status=404).get(index=".elastic-connectors-sync-jobs", id=job_id) if job_id else None
    return dict(found["_source"]) if found is not None and found.get("found") else {}


def _after(stamp: Any, wall: float) -> float | None:
    """Seconds from the wall-clock time ``wall`` to the ISO 8601 ``stamp`` (None: no stamp)."""
    from datetime import datetime

    try:
        return round(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() - wall, 1)
    except ValueError:
        return None


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _rows_digest(conn: Any, table: str) -> dict[str, str]:
    return {f"{table}_{row[0]}": row[1] for row in conn.execute(
        f"SELECT id, md5(coalesce(marker, '') || '|' || body) FROM {table}")}


def _index_digest(es: Any, index: str) -> dict[str, str]:
    from elasticsearch.helpers import scan

    es.indices.refresh(index=index)
    out = {}
    for hit in scan(es, index=index, query={"query": {"match_all": {}}, "_source": ["marker", "body"]}, size=5000):
        source = hit["_source"]
        out[hit["_id"]] = hashlib.md5(f"{source.get('marker') or ''}|{source.get('body')}".encode()).hexdigest()
    return out


def _compare(conn: Any, es: Any, table: str, index: str) -> dict[str, Any]:
    rows, docs = _rows_digest(conn, table), _index_digest(es, index)
    missing, extra = set(rows) - set(docs), set(docs) - set(rows)
    different = [k for k in rows if k in docs and docs[k] != rows[k]]
    return {"rows": len(rows), "documents": len(docs), "missing": len(missing), "extra": len(extra),
            "different": len(different), "equal": not missing and not extra and not different}


def _trend(series: list[tuple[float, float]]) -> dict[str, Any]:
    """Median of the first and last thirds of a time series, and whether it grew (last > 1.5x first + 0.2 s)."""
    values = [v for _, v in series]
    if len(values) < 3:
        return {"first_third_median": None, "last_third_median": None, "growing": None}
    third = len(values) // 3
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return {"first_third_median": round(first, 3), "last_third_median": round(last, 3),
            "growing": last > 1.5 * first + 0.2}


def stream_scenario(bench: Any, *, rows: int = 20_000, size: int = 1024, latency_rate: float = 200,
                    latency_seconds: float = 30, rate: float = 2000, duration: float = 300, kill: bool = True,
                    kill_seconds: float = 40, kill_after: float = 10) -> dict[str, Any]:
    """The three phases of the module docstring; what each measured."""
    import psycopg

    tag = f"stream-{bench.run_id}"
    table, connector_id, index = f"bench_stream_{bench.run_id}", f"bench-{tag}", f"bench-ours-{tag}"
    admin = psycopg.connect(_DSN, autocommit=True)
    out: dict[str, Any] = {"source": "postgresql", "server": "PostgreSQL (scripts/servers/postgresql)",
                           "rows": rows, "doc_size": size, "mix_insert_update_delete": list(_MIX)}
    bench.say(f"stream: table {table} of {rows} rows of ~{size} bytes")
    admin.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, marker TEXT, body TEXT NOT NULL)")
    admin.execute(f"INSERT INTO {table} SELECT i, NULL, substr(repeat(md5(i::text), {size // 32 + 1}), 1, {size}) "
                  f"FROM generate_series(1, {rows}) i")
    service = Service(bench.es_url, bench.workdir / connector_id, pipeline=bench.pipeline,
                      connector_ids=[connector_id], service=bench.service_overrides, sources={"postgresql": PG_FQN})
    ids = list(range(1, rows + 1))
    next_id = [rows + 1]
    try:
        with service:
            assert service.process is not None
            started = time.monotonic()
            service.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type",
                        "postgresql", "--index-name", index, "--pipeline", INGEST_PIPELINE, "--json",
                        "--set", f"host={_HOST}", "--set", f"port={_PORT}", "--set", f"username={_USER}",
                        "--set", f"password={_PASSWORD}", "--set", f"database={_DATABASE}",
                        "--set", f"tables={table}", "--set", "continuous_sync=true")

            def snapshot_done() -> dict[str, Any] | None:
                job = _job(bench.es, connector_id)
                stream = ((job or {}).get("metadata") or {}).get("stream") or {}
                return job if stream.get("snapshot") == "done" and stream.get("pending_changes") == 0 else None

            _wait(snapshot_done, 600, "the snapshot indexed")
            snapshot_seconds = time.monotonic() - started
            out["snapshot"] = {"seconds_from_create": round(snapshot_seconds, 1),
                               "rows_per_s": round(rows / snapshot_seconds, 1)}
            bench.say(f"  snapshot of {rows} rows streaming after {snapshot_seconds:.1f} s")

            def phase(name: str, writer_rate: float, seconds: float, tick: float, mix: tuple[int, ...],
                      mark_every: float, watch: Any = None) -> tuple[_Writer, _Probe]:
                probe = _Probe(bench.es, index, table, time.time())
                writer = _Writer(table, ids, next_id[0], rate=writer_rate, tick=tick, mix=mix, probe=probe,
                                 mark_every=mark_every, size=size)
                bench.say(f"  {name}: {writer_rate:.0f} changes/s for {seconds:.0f} s")
                writer.start()
                end = time.monotonic() + seconds
                while time.monotonic() < end and writer.is_alive():
                    if watch is not None:
                        watch(writer)
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                writer.halt()
                next_id[0] = writer.next_id
                return writer, probe

            # 1. latency at a low rate (updates only)
            writer, probe = phase("latency", latency_rate, latency_seconds, 0.05, (0, 1, 0), 0.25)
            samples = probe.drain()
            out["latency"] = {"rate_target": latency_rate, "rate_achieved": writer.achieved, "writer_error": writer.error,
                              "acknowledged": _stats([s["acknowledged"] for s in samples if s["acknowledged"]]),
                              "searchable": _stats([s["searchable"] for s in samples if s["searchable"]]),
                              "lost_markers": sum(1 for s in samples if s["searchable"] is None)}
            bench.say(f"  -> acknowledged {out['latency']['acknowledged']}, searchable {out['latency']['searchable']}")

            # 2. sustained rate: lag and memory over time
            series: dict[str, list] = {"pss_mb": [], "job_lag_seconds": [], "pending_changes": []}
            clock = time.monotonic()
            last_sample = [0.0]

            def watch(_: _Writer) -> None:
                now = time.monotonic()
                if now - last_sample[0] < 5.0:
                    return
                last_sample[0] = now
                at = round(now - clock, 1)
                try:
                    series["pss_mb"].append((at, round(tree_rss(service.process.pid, pss=True)[0] / (1 << 20), 1)))
                    stream = ((_job(bench.es, connector_id) or {}).get("metadata") or {}).get("stream") or {}
                    series["job_lag_seconds"].append((at, stream.get("lag_seconds")))
                    series["pending_changes"].append((at, stream.get("pending_changes")))
                except Exception:  # noqa: BLE001 - a missed sample
                    pass

            writer, probe = phase("sustained", rate, duration, 0.02, _MIX, 1.0, watch)
            samples = probe.drain()
            acknowledged = [(s["at"], s["acknowledged"]) for s in samples if s["acknowledged"] is not None]
            searchable = [(s["at"], s["searchable"]) for s in samples if s["searchable"] is not None]
            pss = [mb for _, mb in series["pss_mb"]]
            out["sustained"] = {
                "seconds": round(writer.seconds, 1), "rate_target": rate, "rate_achieved": writer.achieved,
                "changes": writer.changes, "writer_error": writer.error,
                "acknowledged": {**_stats([v for _, v in acknowledged]), **_trend(sorted(acknowledged))},
                "searchable": {**_stats([v for _, v in searchable]), **_trend(sorted(searchable))},
                "lost_markers": sum(1 for s in samples if s["searchable"] is None),
                "pss_mb": {"first": pss[0] if pss else None, "last": pss[-1] if pss else None,
                           "max": max(pss) if pss else None, **_trend(series["pss_mb"])},
                "series": {"acknowledged": sorted(acknowledged), **series}}
            bench.say(f"  -> {writer.achieved} changes/s reached; acknowledged {out['sustained']['acknowledged']}; "
                      f"PSS {out['sustained']['pss_mb']}")

            # 3. kill -9 of the sync process under the same load
            if kill:
                killed: dict[str, Any] = {}

                def killer(_: _Writer) -> None:
                    if not killed and time.monotonic() - kill_clock >= kill_after:
                        victims = _sync_processes(service.process.pid)
                        old = _job(bench.es, connector_id)
                        for victim in victims:
                            victim.kill()
                        killed.update(at=time.monotonic(), wall=time.time(), pids=[v.pid for v in victims],
                                      job=(old or {}).get("id"))

                kill_clock = time.monotonic()
                writer, probe = phase("kill -9 under load", rate, kill_seconds, 0.02, _MIX, 1.0, killer)
                stopped = time.monotonic()
                probe.drain()
                stop_lsn = admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]

                def restarted() -> dict[str, Any] | None:
                    job = _job(bench.es, connector_id)
                    return job if job and job["id"] != killed.get("job") else None

                def caught_up() -> bool:
                    row = admin.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                                        "WHERE slot_name = %s", (_slot(connector_id),)).fetchone()
                    return bool(row and row[0] is not None and row[0] >= stop_lsn)

                if not killed:
                    raise RuntimeError(f"the sync process was not killed (the writer: {writer.error or 'ended early'})")
                new_job = _wait(restarted, 180, "a new continuous job after the kill")
                old_job = _job_by_id(bench.es, killed["job"])
                _wait(caught_up, 600, "the slot confirmed up to where the writer stopped", interval=0.1)
                done = time.monotonic()
                comparison = _wait(lambda: (c := _compare(admin, bench.es, table, index))["equal"] and c, 120,
                                   "the index equal to the table", interval=2.0)
                out["kill"] = {"rate_achieved": writer.achieved, "writer_error": writer.error,
                               "killed_pids": killed.get("pids"),
                               # From the job documents' stamps (the load goes on meanwhile, so waiting
                               # for the new job starts only after it): when the killed job ended, and
                               # when the new one was claimed (in_progress).
                               "killed_job": {"status": old_job.get("status"), "error": old_job.get("error")},
                               "killed_job_ended_after_kill_seconds": _after(old_job.get("completed_at"),
                                                                             killed["wall"]),
                               "new_job_after_kill_seconds": _after(new_job.get("started_at"), killed["wall"]),
                               "caught_up_after_kill_seconds": round(done - killed["at"], 1),
                               "caught_up_after_writes_stopped_seconds": round(done - stopped, 1),
                               "comparison": comparison}
                bench.say(f"  -> kill -9: the job ended after {out['kill']['killed_job_ended_after_kill_seconds']} s, "
                          f"a new job after {out['kill']['new_job_after_kill_seconds']} s, caught up "
                          f"{out['kill']['caught_up_after_writes_stopped_seconds']} s after the writes stopped; "
                          f"index equal to the table: {comparison['equal']} ({comparison['rows']} rows)")
            else:
                out["comparison"] = _wait(lambda: (c := _compare(admin, bench.es, table, index))["equal"] and c, 300,
                                          "the index equal to the table", interval=2.0)
    finally:
        _cleanup(bench, service, admin, table, index, connector_id)
    return out


def _cleanup(bench: Any, service: Service, admin: Any, table: str, index: str, connector_id: str) -> None:
    """Drop the table, the slot and publication, the index, the connector and its jobs."""
    name = _slot(connector_id)
    for _ in range(50):
        row = admin.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
        if row is None:
            break
        if row[0] is None:
            admin.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            break
        admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        time.sleep(0.2)
    admin.execute(f'DROP PUBLICATION IF EXISTS "{name}"')
    admin.execute(f"DROP TABLE IF EXISTS {table}")
    admin.close()
    bench.es.indices.delete(index=index, ignore_unavailable=True)
    try:
        service.remove_connector(bench.es, connector_id)
    except Exception as exc:  # noqa: BLE001 - reported, the results stand
        bench.say(f"  could not remove connector {connector_id}: {exc}")


def stream_markdown(result: dict[str, Any] | None) -> str:
    """The scenario's figures as a Markdown section (empty without a result)."""
    if not result:
        return ""
    lines = ["", "## Continuous sync (PostgreSQL, Prism)", "",
             "| phase | rate target | rate reached | commit -> acknowledged p50 / p99 | commit -> searchable p50 / p99 |",
             "|---|---|---|---|---|"]
    for name in ("latency", "sustained"):
        phase = result.get(name) or {}
        if phase:
            ack, found = phase["acknowledged"], phase["searchable"]
            lines.append(f"| {name} | {phase['rate_target']:.0f}/s | {phase['rate_achieved']:.0f}/s | "
                         f"{ack['p50']} / {ack['p99']} s | {found['p50']} / {found['p99']} s |")
    sustained = result.get("sustained") or {}
    if sustained:
        ack, pss = sustained["acknowledged"], sustained["pss_mb"]
        lines += ["", f"Sustained {sustained['seconds']:.0f} s: commit -> acknowledged median "
                      f"{ack['first_third_median']} s in the first third, {ack['last_third_median']} s in the last "
                      f"(growing: {ack['growing']}); the service's PSS {pss['first']} MB at the start, {pss['last']} MB "
                      f"at the end, {pss['max']} MB at most (growing: {pss['growing']})."]
    kill = result.get("kill") or {}
    if kill:
        comparison = kill["comparison"]
        lines += ["", f"kill -9 of the sync process at {kill['rate_achieved']:.0f} changes/s: the killed job ended "
                      f"{kill.get('killed_job_ended_after_kill_seconds')} s after the kill, a new job ran after "
                      f"{kill['new_job_after_kill_seconds']} s, caught up {kill['caught_up_after_kill_seconds']} s "
                      f"after the kill ({kill['caught_up_after_writes_stopped_seconds']} s after the writes stopped); "
                      f"the index equal to the table row by row: {comparison['equal']} ({comparison['rows']} rows)."]
    snapshot = result.get("snapshot") or {}
    if snapshot:
        lines += ["", f"First snapshot of {result['rows']} rows: streaming {snapshot['seconds_from_create']} s after "
                      f"the connector was created ({snapshot['rows_per_s']} rows/s, daemon claim and Prism start "
                      "included)."]
    return "\n".join(lines) + "\n"

