"""The continuous sync's benchmark scenario (bench/stream.py) at a tiny size: it runs end to end and
reports what it measured. No timing is asserted; the figures come from ``scripts/bench --stream``."""

from __future__ import annotations

import sys
import uuid
from types import SimpleNamespace

import pytest

from pipelines.options import default_prism_location
from tests.helpers import ES_URL, es_client, skip_or_fail

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stream_scenario_when_tiny_then_measures_latency_lag_and_memory_and_index_ends_equal(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    from bench.ours import ensure_ingest_pipeline
    from bench.stream import _DSN, stream_markdown, stream_scenario

    if not default_prism_location().is_file():
        skip_or_fail(f"no Prism binary at {default_prism_location()} (scripts/prism build)")
    try:
        psycopg.connect(_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        skip_or_fail(f"PostgreSQL not available (scripts/servers/postgresql start): {exc}")
    es = es_client()
    ensure_ingest_pipeline(es)
    bench = SimpleNamespace(es=es, es_url=ES_URL, run_id=uuid.uuid4().hex[:6], workdir=tmp_path, pipeline={},
                            service_overrides={}, say=lambda message: print(message, file=sys.stderr))
    # The bench's daemon has the shipped heartbeat (300 s) and warm sync processes: the stream killed
    # with -9 must be started again without waiting for that heartbeat (it once took ~280 s).
    result = stream_scenario(bench, rows=300, latency_rate=40, latency_seconds=3, rate=200, duration=5, kill=True,
                             kill_seconds=8, kill_after=3)

    latency, sustained = result["latency"], result["sustained"]
    assert latency["writer_error"] is None and sustained["writer_error"] is None
    assert latency["acknowledged"]["n"] >= 5 and latency["searchable"]["n"] >= 5 and latency["lost_markers"] == 0
    assert latency["acknowledged"]["p50"] <= latency["searchable"]["p50"]  # a search sees it after a GET does
    assert sustained["changes"] > 0 and sustained["pss_mb"]["max"] > 50  # the whole service, Prism included
    kill = result["kill"]
    assert kill["writer_error"] is None and kill["killed_pids"] and kill["killed_job"]["status"] == "error"
    assert kill["killed_job"]["error"].startswith("SyncProcessError: the sync process was killed by SIGKILL")
    assert kill["comparison"]["equal"] and kill["comparison"]["rows"] > 300
    assert "commit -> searchable" in stream_markdown(result)
    assert not es.indices.exists(index=f"bench-ours-stream-{bench.run_id}")  # it leaves nothing behind
