"""Re-indexing on demand and after a change of what shapes documents (issue 23, item 1).

A real daemon serves a PostgreSQL connector (the server of ``scripts/servers/postgresql``)
whose rows keep their ``timestamp_column``: unchanged rows are skipped. Changing a
pipeline flag with ``update-connector`` must make the next full sync write every document
again with the new flag, and say why in the job; ``sync --reindex`` (the job's
``metadata.reindex``) must write every document again too; a resync after either writes
nothing.
"""

from __future__ import annotations

import json
import os
import uuid

import psycopg
import pytest

from tests.helpers import DaemonProcess, cli, index_docs, require_server, write_config

pytestmark = pytest.mark.integration

PORT = int(os.environ.get("PG_PORT", "5433"))
HOST, USER, PASSWORD, DATABASE = "127.0.0.1", "ingest", "ingest-secret", "ingest_test"
ROWS = 12


@pytest.fixture
def table():
    def connect():
        return psycopg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DATABASE, autocommit=True)

    require_server("PostgreSQL", f"{HOST}:{PORT}", lambda: connect().close())
    name = f"t_{uuid.uuid4().hex[:12]}"
    with connect() as conn:
        conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, body TEXT, updated_at TIMESTAMP)")
        for i in range(ROWS):
            conn.execute(f"INSERT INTO {name} VALUES (%s, %s, '2020-01-01')", (i, f"row  {i}\n  with   spaces"))
        yield name
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def daemon(es, tmp_path):
    from launcher.indices import ensure_indices

    ensure_indices(es)  # before the daemon, which creates them too (two creations racing are issue 23's item 3)
    config = write_config(tmp_path / "config.yml", pipeline={"digest_cache": False})
    process = DaemonProcess(config, tmp_path / "daemon.log")
    yield config, process
    assert process.stop() == 0, process.output()[-3000:]


def _sync(config, connector_id, *extra):
    result = cli("--json", "--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "180", *extra,
                 config=config, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed", job.get("error")
    return job


def test_sync_when_pipeline_flag_changes_or_reindex_requested_then_every_document_written_and_job_says_why(
        es, tmp_path, daemon, index_name, table):
    config, process = daemon
    connector_id = f"pg-{uuid.uuid4().hex[:8]}"
    cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "postgresql",
        "--index-name", index_name, "--set", f"host={HOST}", "--set", f"port={PORT}", "--set", f"username={USER}",
        "--set", f"password={PASSWORD}", "--set", f"database={DATABASE}", "--set", f"tables={table}",
        "--set", "timestamp_column=updated_at",
        config=config, check=True)

    first = _sync(config, connector_id)
    assert first["indexed_document_count"] == ROWS and "reindex_reason" not in first["metadata"]
    assert {d["body"] for d in index_docs(es, index_name).values()} == {f"row {i} with spaces" for i in range(ROWS)}
    unchanged = _sync(config, connector_id)
    assert unchanged["indexed_document_count"] == 0, "unchanged rows are skipped"

    cli("--action", "update-connector", "--connector-id", connector_id, "--pipeline-flag", "reduce_whitespace=false",
        config=config, check=True)
    reshaped = _sync(config, connector_id)

    assert reshaped["indexed_document_count"] == ROWS and reshaped["deleted_document_count"] == 0
    assert "pipeline flags" in reshaped["metadata"]["reindex_reason"], reshaped["metadata"]
    docs = index_docs(es, index_name).values()
    assert {d["body"] for d in docs} == {f"row  {i}\n  with   spaces" for i in range(ROWS)}
    assert {d["_reduce_whitespace"] for d in docs} == {False}
    assert _sync(config, connector_id)["indexed_document_count"] == 0

    # The new --reindex flag, and how a plain-text --wait says why.
    text = cli("--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "180", "--reindex",
               config=config, timeout=240)
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"{ROWS:,} documents indexed" in text.stdout and "Re-indexed: requested" in text.stdout, text.stdout
    jobs = json.loads(cli("--json", "--action", "jobs", "--connector-id", connector_id, config=config,
                          check=True).stdout)
    requested = jobs[0]
    assert requested["indexed_document_count"] == ROWS
    assert requested["metadata"]["reindex"] is True and requested["metadata"]["reindex_reason"].startswith("requested")
    assert _sync(config, connector_id)["indexed_document_count"] == 0
    assert "Traceback" not in process.output()


def test_sync_when_reindex_with_incremental_job_then_refused(tmp_path):
    config = write_config(tmp_path / "config.yml")

    refused = cli("--action", "sync", "--connector-id", "any", "--job-type", "incremental", "--reindex", config=config)

    assert refused.returncode == 2 and "--reindex re-writes every document of a full sync" in refused.stderr, \
        refused.stderr
