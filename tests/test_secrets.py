"""Secrets out of the pipeline graph (transforms/secrets.py).

What a runner stages is the pipeline's proto, DoFns pickled in it: the one the sync process
builds is captured (``pipelines.run.build_sync_pipeline``, wrapped) and searched, pickles
decoded, for the Elasticsearch password, the API key and a sensitive source field. The
workers then must find them where the sync put them: a real sync through the TLS proxy
(which requires the password) with worker processes of their own proves they do.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import os
import stat
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.job import SyncJob
from pipelines.settings import PipelineConfig
from transforms.es_client import ElasticsearchConnection

SCRIPTED = "tests.fixtures_security.scripted:ScriptedSource"
VISIBLE = f"visible-{uuid.uuid4().hex}"  # a value that is no secret: it must be found (the search works)


def _decoded(data: bytes) -> Iterator[bytes]:
    """``data``, and what Beam's pickler made of it (base64 of zlib- or bz2-compressed pickles)."""
    yield data
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return
    for decompress in (zlib.decompress, bz2.decompress):
        try:
            yield decompress(raw)
        except Exception:  # noqa: BLE001 - not that kind
            continue


def _staged(pipeline: Any) -> list[bytes]:
    """Every payload of the pipeline's proto, decoded: what a runner stages and ships to workers."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    proto = pipeline.to_runner_api()
    payloads = [proto.SerializeToString()]
    for transform in proto.components.transforms.values():
        payloads.append(transform.spec.payload)
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            par_do = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            payloads.append(par_do.do_fn.payload)
            payloads += [side.view_fn.payload for side in par_do.side_inputs.values()]
    return [decoded for payload in payloads for decoded in _decoded(payload)]


def _job(job_type: str = "full", fqn: str = SCRIPTED, **values: Any) -> SyncJob:
    configuration = {"count": {"value": 12}, "fail_message": {"value": VISIBLE}, **values}
    return SyncJob(job_id=f"sec-{uuid.uuid4().hex[:12]}", connector_id="sec-connector", job_type=job_type,
                   index_name=f"test-sec-{uuid.uuid4().hex[:8]}", service_type="scripted", source_fqn=fqn,
                   configuration=configuration, sync_cursor={"at": 0} if job_type == "incremental" else None)


def _settings(tmp_path: Path, **overrides: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({"direct_num_workers": 1, "direct_running_mode": "in_memory",
                                          "dead_letters": str(tmp_path / "dead_letters"), **overrides})


@pytest.fixture
def captured(monkeypatch) -> list[dict[str, Any]]:
    """What the sync process stages: each pipeline it builds, its payloads decoded, and its secrets file."""
    import pipelines.run as run

    seen: list[dict[str, Any]] = []
    build = run.build_sync_pipeline

    def capture(*args: Any, **kwargs: Any) -> Any:
        pipeline = build(*args, **kwargs)
        ref = kwargs.get("secrets")
        path = ref.uri.removeprefix("file://") if ref is not None else None
        seen.append({"staged": _staged(pipeline), "secrets_file": path,
                     "mode": stat.S_IMODE(os.stat(path).st_mode) if path else None})
        return pipeline

    monkeypatch.setattr(run, "build_sync_pipeline", capture)
    return seen


@pytest.mark.integration
def test_sync_when_run_then_the_pipeline_it_stages_holds_no_secret(es, index_name, captured, tmp_path):
    from pipelines.run import run_sync
    from tests.helpers import ES_URL

    password, api_key, token = (f"{kind}-{uuid.uuid4().hex}" for kind in ("pw", "key", "tok"))
    # The test node has no security and ignores credentials: what matters is where they travel.
    conn = ElasticsearchConnection(hosts=(ES_URL,), username="ingest", password=password, api_key=api_key)
    job = _job(token={"value": token})  # sensitive in ScriptedSource's schema
    job.index_name = index_name
    outcome = run_sync(job, _settings(tmp_path), conn)
    changes = _job("incremental", fqn="tests.fixtures_sources.slow:IncrementalSlowSource", token={"value": token},
                   delay_ms={"value": 0})
    changes.index_name = index_name
    incremental = run_sync(changes, _settings(tmp_path),
                           ElasticsearchConnection(hosts=(ES_URL,), username="ingest", password=password))

    assert outcome["status"] == "completed", outcome.get("error")
    assert incremental["status"] == "completed", incremental.get("error")
    assert len(captured) == 2
    for pipeline in captured:
        staged = pipeline["staged"]
        assert any(VISIBLE.encode() in data for data in staged), "the search must see the configuration"
        for secret in (password, api_key, token):
            assert not any(secret.encode() in data for data in staged), f"{secret[:3]}... is in the pipeline"
        assert pipeline["mode"] == 0o600, oct(pipeline["mode"] or 0)
        assert not os.path.exists(pipeline["secrets_file"])  # removed when the sync ended


@pytest.mark.integration
def test_sync_when_workers_are_processes_of_their_own_then_they_read_the_password_from_the_secrets_file(
        es, index_name, captured, tmp_path):
    from pipelines.run import run_sync
    from tests.test_security import PROXY_PORT, _start_proxy

    proxy = _start_proxy(PROXY_PORT, es.transport.node_pool.get().base_url)  # requires the password
    conn = ElasticsearchConnection(hosts=(proxy.url,), ca_certs=proxy.ca, username=proxy.username,
                                   password=proxy.password, max_retries=0)
    job = _job(token={"value": f"tok-{uuid.uuid4().hex}"})
    job.index_name = index_name

    outcome = run_sync(job, _settings(tmp_path, direct_running_mode="multi_processing", direct_num_workers=2,
                                      bulk={"max_retries": 0}), conn)

    assert outcome["status"] == "completed", outcome.get("error")
    es.indices.refresh(index=index_name)
    assert es.count(index=index_name)["count"] == 12
    (pipeline,) = captured
    assert not any(proxy.password.encode() in data for data in pipeline["staged"])


def test_worker_secrets_when_dataflow_then_a_secret_manager_secret_named_in_the_graph_while_the_sync_runs(
        monkeypatch, tmp_path):
    import transforms.secrets as secrets
    from pipelines.sync import build_sync_pipeline, source_spec

    calls: list[tuple[str, dict[str, Any]]] = []

    class _SecretManager:  # the calls the sync process makes, recorded (Dataflow cannot run here)
        def create_secret(self, request):
            calls.append(("create", request))
            return SimpleNamespace(name=f"{request['parent']}/secrets/{request['secret_id']}")

        def add_secret_version(self, request):
            calls.append(("add", request))
            return SimpleNamespace(name=f"{request['parent']}/versions/1")

        def delete_secret(self, request):
            calls.append(("delete", request))

    monkeypatch.setattr(secrets, "_secret_manager_client", _SecretManager)
    settings = _settings(tmp_path, runner="DataflowRunner", dead_letters="gs://acme/dead-letters",
                         dataflow={"project": "acme-search", "region": "europe-west1",
                                   "temp_location": "gs://acme/tmp"})
    password, token = f"pw-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    conn = ElasticsearchConnection(hosts=("https://es.example.com:9200",), username="ingest", password=password)
    job = _job(token={"value": token})

    values = {"elasticsearch": conn.secret_values(), "source": source_spec(job).secret_values()}
    with secrets.worker_secrets(values, settings, work_dir=None, job_id=job.job_id) as ref:
        staged = _staged(build_sync_pipeline(job, settings, conn, secrets=ref))
        assert [kind for kind, _ in calls] == ["create", "add"]

    name = f"projects/acme-search/secrets/elastic-ingest-{job.job_id}"
    assert ref.uri == f"gcp-secret-manager:{name}/versions/1"
    assert any(ref.uri.encode() in data for data in staged)  # the workers' only lead to the secrets
    assert not any(password.encode() in data or token.encode() in data for data in staged)
    assert password.encode() in calls[1][1]["payload"]["data"] and token.encode() in calls[1][1]["payload"]["data"]
    assert calls[2] == ("delete", {"name": name})  # gone when the sync ends


def test_worker_secrets_when_workers_elsewhere_without_a_shared_folder_then_config_error_naming_it(tmp_path):
    from sources.errors import ConfigError
    from transforms.secrets import worker_secrets

    remote_flink = _settings(tmp_path, runner="FlinkRunner", flink={"master": "flink:8081",
                                                                    "environment_type": "PROCESS"})
    with pytest.raises(ConfigError, match="pipeline.secrets_dir"):
        with worker_secrets({"elasticsearch": {"password": "x"}}, remote_flink, work_dir=None, job_id="j"):
            pass
    shared = _settings(tmp_path, runner="FlinkRunner", secrets_dir=str(tmp_path),
                       flink={"master": "flink:8081", "environment_type": "PROCESS"})
    with worker_secrets({"elasticsearch": {"password": "x"}}, shared, work_dir=None, job_id="j") as ref:
        assert ref.uri.startswith(f"file://{tmp_path}/") and ref.section("elasticsearch") == {"password": "x"}
    assert list(tmp_path.glob("secrets-*")) == []
