"""A private Elasticsearch node for tests that stop it or want fast refreshes.

``scripts/elasticsearch`` on ``FAULT_ES_PORT`` (default 9220; data kept per port). The
BYOC indices of this node refresh every 100 ms, so the service's ``refresh=wait_for``
writes return quickly; the shared node is never touched.
"""

from __future__ import annotations

import os
import subprocess


from tests.helpers import skip_or_fail, REPO, es_client

FAULT_ES_PORT = int(os.environ.get("FAULT_ES_PORT", "9220"))
FAULT_ES_URL = f"http://127.0.0.1:{FAULT_ES_PORT}"


def es_script(action: str) -> subprocess.CompletedProcess:
    """``scripts/elasticsearch ACTION`` for the private node."""
    return subprocess.run([str(REPO / "scripts" / "elasticsearch"), action], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ES_PORT": str(FAULT_ES_PORT),
                                            "ES_HEAP": os.environ.get("FAULT_ES_HEAP", "512m")})


def fast_refresh(es) -> None:
    from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX, ensure_indices

    ensure_indices(es)
    es.indices.put_settings(index=f"{CONNECTORS_INDEX}-v1,{JOBS_INDEX}-v1",
                            settings={"index": {"refresh_interval": "100ms"}})


def start_own_node():
    """A client for the private node, started if needed (skip locally / fail in CI when it cannot start)."""
    result = es_script("start")
    if result.returncode != 0:
        message = f"cannot start a private Elasticsearch on port {FAULT_ES_PORT}: {result.stderr[-2000:]}"
        skip_or_fail(message)
    client = es_client(FAULT_ES_URL)
    client.cluster.health(wait_for_status="yellow", timeout="60s")
    fast_refresh(client)
    return client


def delete_jobs_of(es, connector_ids: list[str]) -> None:
    """Delete the jobs of these connectors (the test distribution has no _delete_by_query)."""
    from launcher.indices import JOBS_INDEX

    es.indices.refresh(index=JOBS_INDEX)
    hits = es.search(index=JOBS_INDEX, query={"terms": {"connector.id": connector_ids}}, size=1000,
                     source=False)["hits"]["hits"]
    if hits:
        es.bulk(operations=[{"delete": {"_index": JOBS_INDEX, "_id": h["_id"]}} for h in hits], refresh=True)
