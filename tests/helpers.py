"""Helpers for tests: run real syncs, read indices, run real daemons.

* :func:`run_sync` runs one sync in-process through the real pipeline (the same
  ``pipelines.run.run_sync`` the sync process runs), on the local runner, against the
  real Elasticsearch: the quickest end-to-end check of a source.
* :class:`DaemonProcess` runs ``elastic-ingest --action poll`` as a real process.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ES_URL = os.environ.get("ES_URL", f"http://127.0.0.1:{os.environ.get('ES_PORT', '9200')}")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

__all__ = [
    "ES_URL", "IN_CI", "REPO", "es_client", "require_server", "skip_or_fail", "run_sync", "index_docs", "write_config",
    "DaemonProcess", "cli_in_process", "wait_for", "wait_job_final", "SOURCES", "TEST_ROOT", "DIR_SOURCE", "source_entry",
]

#: Where tests make their folders (pytest's tmp_path is below it): the directory source's root in tests.
TEST_ROOT = tempfile.gettempdir()
DIR_SOURCE = {"class": "sources.directory:DirectoryDataSource", "allowed_roots": [TEST_ROOT]}
SOURCES: dict[str, Any] = {
    "dir": DIR_SOURCE,
    "mongodb": "sources.mongo:MongoDataSource",
    "s3": "sources.s3:S3DataSource",
    "google_cloud_storage": "sources.gcs:GoogleCloudStorageDataSource",
    "azure_blob_storage": "sources.azure_blob:AzureBlobStorageDataSource",
    "mysql": "sources.mysql:MySqlDataSource",
    "postgresql": "sources.postgresql:PostgreSQLDataSource",
    "redis": "sources.redis:RedisDataSource",
    "network_drive": {"class": "sources.network_drive:NetworkDriveDataSource", "identity_roots": [TEST_ROOT]},
}


def source_entry(service_type: str) -> tuple[str, dict[str, Any]]:
    """``(fqn, operator settings)`` of a built-in source as the tests' config.yml declares it."""
    entry = SOURCES[service_type]
    if isinstance(entry, dict):
        settings = dict(entry)
        return settings.pop("class"), settings
    return entry, {}


def es_client(url: str = ES_URL):
    from transforms.es_client import ElasticsearchConnection

    return ElasticsearchConnection(hosts=(url,), request_timeout=30).client()


def skip_or_fail(message: str) -> None:
    """A missing server: skip locally, fail under CI=true (CI starts every server)."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_server(name: str, where: str, probe) -> None:
    """Skip (locally) or fail (CI=true) when a server the test needs does not answer."""
    try:
        probe()
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"{name} is not reachable at {where} ({type(exc).__name__}: {exc}); start it with scripts/")


def run_sync(
    *,
    index: str,
    configuration: dict[str, Any],
    service_type: str = "dir",
    fqn: str | None = None,
    job_type: str = "full",
    basic_rules: list[dict[str, Any]] | None = None,
    advanced_rules: Any = None,
    sync_cursor: Any = None,
    pipeline_flags: dict[str, bool] | None = None,
    ingest_pipeline: str | None = None,
    es_url: str = ES_URL,
    source_settings: dict[str, Any] | None = None,
    **pipeline_settings: Any,
) -> dict[str, Any]:
    """Run one sync through the real pipeline and return its outcome (status, counters, cursor).

    ``configuration`` maps field -> value (or field objects). ``pipeline_settings`` override
    config.yml ``pipeline:`` keys (e.g. ``direct_running_mode="multi_processing"``).
    ``source_settings``: the operator's settings for the source (default: the tests' config,
    e.g. the directory source may read below ``TEST_ROOT``).
    """
    from pipelines.job import SyncJob
    from pipelines.run import run_sync as _run
    from pipelines.settings import PipelineConfig
    from transforms.es_client import ElasticsearchConnection

    fields = {k: (v if isinstance(v, dict) and "value" in v else {"value": v}) for k, v in configuration.items()}
    default_fqn, default_settings = source_entry(service_type) if service_type in SOURCES else (None, {})
    if fqn is not None and fqn != default_fqn:
        default_settings = {}  # another class under this service type: config.yml's settings are not its own
    job = SyncJob(
        job_id=f"test-{uuid.uuid4().hex[:12]}", connector_id="test-connector", job_type=job_type, index_name=index,
        service_type=service_type, source_fqn=fqn or default_fqn, configuration=fields,
        source_settings=default_settings if source_settings is None else source_settings,
        basic_rules=basic_rules or [], advanced_rules=advanced_rules, pipeline_flags=pipeline_flags or {},
        ingest_pipeline=ingest_pipeline, sync_cursor=sync_cursor,
    )
    defaults: dict[str, Any] = {"direct_num_workers": 1, "direct_running_mode": "in_memory",
                                "dead_letters": str(Path(tempfile.gettempdir()) / "dead-letters")}
    settings = PipelineConfig.model_validate({**defaults, **pipeline_settings})
    outcome = _run(job, settings, ElasticsearchConnection(hosts=(es_url,)))
    outcome["job_id"] = job.job_id
    return outcome


#: What a full sync compares documents by (transforms/digests.py): left out by ``index_docs`` unless asked.
SYNC_DIGEST_FIELDS = ("_shape_digest", "_content_digest")


def index_docs(es, index: str, *, digests: bool = False) -> dict[str, dict[str, Any]]:
    """Every document of ``index`` as ``{_id: _source}`` (after a refresh); ``digests``: with
    the sync's own ``_shape_digest`` and ``_content_digest`` fields (left out by default)."""
    es.indices.refresh(index=index)
    docs: dict[str, dict[str, Any]] = {}
    result = es.search(index=index, size=10000, query={"match_all": {}})
    for hit in result["hits"]["hits"]:
        source = hit["_source"]
        docs[hit["_id"]] = source if digests else {k: v for k, v in source.items() if k not in SYNC_DIGEST_FIELDS}
    assert len(docs) == es.count(index=index)["count"], "index_docs is limited to 10000 documents"
    return docs


def write_config(path: Path, *, es_url: str = ES_URL, service: dict | None = None, pipeline: dict | None = None,
                 sources: dict | None = None, elasticsearch: dict | None = None) -> Path:
    """A config.yml for a test daemon: fast polling, in-memory runner, given overrides."""
    config = {
        "elasticsearch": {"host": es_url, **(elasticsearch or {})},
        "service": {"idling": 0.5, "heartbeat": 5, "job_progress_interval": 1, "cancel_check_interval": 0.5,
                    **(service or {})},
        "sources": sources or dict(SOURCES),
        "pipeline": {"direct_num_workers": 1, "direct_running_mode": "in_memory",
                     "dead_letters": str(path.parent / "dead_letters"), **(pipeline or {})},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli(*args: str, config: Path | None = None, check: bool = False, timeout: float = 120,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``elastic-ingest`` as a user would (in ``cwd``, default the repository); returns the completed process."""
    command = [sys.executable, "-m", "launcher.cli", *args]
    if config is not None:
        command[3:3] = ["-c", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                            env=_env(env, cwd))
    if check and result.returncode != 0:
        raise AssertionError(f"elastic-ingest {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def cli_in_process(*args: str, config: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``elastic-ingest ARGS`` run in this process (the same click command, ~5 s faster than a process)."""
    import logging

    from click.testing import CliRunner

    from launcher.cli import _command

    root = logging.getLogger()
    handlers = root.handlers[:]
    levels = {name: logging.getLogger(name).level for name in ("", "elastic_transport", "urllib3", "apache_beam")}
    try:
        result = CliRunner().invoke(_command, ["-c", str(config), *args], env=env, catch_exceptions=False)
    finally:
        root.handlers[:] = handlers
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return result.exit_code, result.stdout, result.stderr


def _env(env: dict[str, str] | None, cwd: Path | None) -> dict[str, str]:
    """The environment of a process the tests start; outside the repository it still imports ``tests.``."""
    merged = {**os.environ, **(env or {})}
    if cwd is not None:
        merged["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), merged.get("PYTHONPATH")) if p)
    return merged


class DaemonProcess:
    """``elastic-ingest --action poll`` as a real process (its log in ``log_path``; run in ``cwd``,
    default the repository)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.config, self.log_path = config, log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "-c", str(config), "--action", "poll"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd or REPO, env=_env(env, cwd),
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def kill_tree(self) -> None:
        """SIGKILL the daemon and its sync processes, as a crash or OOM kill would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            return -9
        finally:
            self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def child_pids(pid: int) -> list[int]:
    """The pids of a daemon's sync processes: its children, and those of its warm process
    (launcher/sync_processes.py), which are forked from it."""
    import psutil

    pids = []
    try:
        for child in psutil.Process(pid).children():
            try:
                warm = "pipelines.fork_server" in " ".join(child.cmdline())
                pids += [grandchild.pid for grandchild in child.children()] if warm else [child.pid]
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return []
    return pids


def wait_for(predicate, *, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_job_final(es, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Wait until the sync job ``job_id`` (in ``JOBS_INDEX``) is completed, error or canceled; return its source."""
    from launcher.indices import JOBS_INDEX

    def final():
        try:
            job = es.get(index=JOBS_INDEX, id=job_id)["_source"]
        except Exception:  # noqa: BLE001 - Elasticsearch may still be coming back
            return None
        return job if job["status"] in ("completed", "error", "canceled") else None

    return wait_for(final, timeout=timeout, interval=0.5, what=f"job {job_id} to end")


@contextlib.contextmanager
def local_http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free local port in a thread; yields ``http://127.0.0.1:<port>``.

    For the edge cases a real server cannot play (a URL that is not Elasticsearch, a token
    endpoint that refuses a key); shut down when the block ends.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
