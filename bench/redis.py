"""The redis source's scenario: ``count`` small keys in one database, against the same run's ceiling.

The keys (a mix of types: 70% strings of ~``size`` bytes, 10% each hashes, lists and sets
of a few members) are written to database ``REDIS_BENCH_DB`` (30) of the project's test
server (``scripts/servers/redis``) before the clock starts, then one ``redis`` connector
(the read-only user `ingest`) is synced through the daemon twice: a full sync, and a
resync with nothing changed (Redis keeps no modification time: each key's document is
compared by its content digest, so the resync reads every key and writes none). The
ceiling is the same run's ``_bulk`` ceiling of the ``count`` x 1 KB scenario, as for the
other sources (bench/report.py).

Example usage::

    python -m bench --sizes none --large 0 --dir 0 --many none --no-partitions --no-runners --redis 100k
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.baselines import Dataset
from bench.directory import full_then_unchanged
from bench.ours import INGEST_PIPELINE, Service

__all__ = ["write_keys", "redis_scenario", "REDIS_FQN", "REDIS_BENCH_DB"]

REDIS_FQN = "sources.redis:RedisDataSource"
REDIS_BENCH_DB = 30
_PORT = int(os.environ.get("REDIS_PORT", "6380"))
_ADMIN_PASSWORD = os.environ.get("REDIS_PASSWORD", "redis-secret")


def write_keys(client: Any, *, count: int, size: int = 1024, seed: int = 1) -> int:
    """Empty ``client``'s database and write ``count`` keys (see the module docstring); their value bytes."""
    from sources.synthetic import _text_pool

    client.flushdb()
    pool = _text_pool(seed)
    span = len(pool) - size - 1
    total = 0
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        offset = (i * 2654435761 + seed) % span
        text = pool[offset:offset + size]
        kind = i % 10
        if kind == 7:
            pipe.hset(f"hash:{i:07d}", mapping={"title": text[:64], "body": text[64:]})
        elif kind == 8:
            pipe.rpush(f"list:{i:07d}", *(text[n:n + size // 4] for n in range(0, size, size // 4)))
        elif kind == 9:
            pipe.sadd(f"set:{i:07d}", *text.split()[:16])
        else:
            pipe.set(f"string:{i:07d}", text)
        total += len(text)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return total


def redis_scenario(bench: Any, *, count: int, size: int = 1024) -> dict[str, Any]:
    """A full sync and a no-change resync of ``count`` keys, with the ceiling of as many documents."""
    import redis

    tag = f"redis{count}"
    admin = redis.Redis(port=_PORT, password=_ADMIN_PASSWORD, db=REDIS_BENCH_DB, socket_timeout=30)
    bench.say(f"redis: writing {count} keys of ~{size} bytes to database {REDIS_BENCH_DB}")
    started = time.monotonic()
    total = write_keys(admin, count=count, size=size)
    written_in = round(time.monotonic() - started, 1)
    connector_id, index = f"bench-{tag}-{bench.run_id}", f"bench-ours-{tag}-{bench.run_id}"
    service = Service(bench.es_url, bench.workdir / connector_id, pipeline=bench.pipeline,
                      connector_ids=[connector_id], service=bench.service_overrides,
                      sources={"redis": REDIS_FQN})
    service.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "redis",
                "--index-name", index, "--pipeline", INGEST_PIPELINE, "--json", "--set", "host=127.0.0.1",
                "--set", f"port={_PORT}", "--set", "username=ingest", "--set", "password=ingest-secret",
                "--set", f"database={REDIS_BENCH_DB}")
    out: dict[str, Any] = {"source": "redis", "server": "redis-server (scripts/servers/redis)",
                           "label": f"{Dataset(count, size).label} keys (redis source)", "count": count,
                           "doc_size": size, "value_bytes": total,
                           "upload": {"uploaded": count, "seconds": written_in, "reused": 0}}
    try:
        with service:
            out["results"] = full_then_unchanged(bench, service, connector_id, count=count, data_bytes=total,
                                                 what="keys")
            out["idle"] = service.idle
    finally:
        bench.es.indices.delete(index=index, ignore_unavailable=True)
        service.remove_connector(bench.es, connector_id)
        admin.flushdb()
        admin.close()
    full, same = out["results"]["ours_full"], out["results"]["ours_nochange"]
    bench.say(f"  -> full {full['seconds']} s ({full['docs_per_s']} docs/s, ok={full['ok']}), "
              f"no-change {same['seconds']} s (ok={same['ok']})")
    return out
