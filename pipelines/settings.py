"""The pipeline's settings (config.yml ``pipeline:``), as validated, frozen models.

They live here, below the launcher, because the sync process needs them too; the
launcher's :mod:`launcher.config` composes them into the whole configuration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PipelineConfig", "BulkConfig", "ContentIndexConfig", "FlinkConfig", "DataflowConfig", "PrismConfig",
           "PortableConfig", "RunnerName", "RUNNERS"]

#: The runners a sync can run on (config.yml ``pipeline.runner``, globally or per connector).
RunnerName = Literal["FnApiRunner", "PrismRunner", "PortableRunner", "FlinkRunner", "DataflowRunner"]
RUNNERS: tuple[str, ...] = RunnerName.__args__  # type: ignore[attr-defined]
#: Where a portable runner runs the Python SDK workers (Beam's ``--environment_type``).
EnvironmentType = Literal["LOOPBACK", "EXTERNAL", "PROCESS", "DOCKER"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BulkConfig(_Section):
    """``_bulk`` batching and retries."""

    max_docs: int = Field(1000, ge=1)
    max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_in_flight: int = Field(4, ge=1)
    max_batch_seconds: float = Field(2.0, gt=0, description="send a batch at least this often (slow sources)")
    max_retries: int = Field(8, ge=0)
    max_retry_seconds: float = Field(120.0, gt=0, description="a request still failing this long after its "
                                                               "first attempt fails the job with its last error")
    initial_backoff: float = Field(0.5, gt=0)
    max_backoff: float = Field(30.0, gt=0)


class ContentIndexConfig(_Section):
    """Settings a new content index is created with; unset ones are the cluster's (defaults, templates)."""

    number_of_shards: int | None = Field(None, ge=1)
    number_of_replicas: int | None = Field(None, ge=0)


class FlinkConfig(_Section):
    """FlinkRunner: ``[local]`` is an embedded Flink inside Beam's job server (see docs/runners.md)."""

    master: str = "[local]"
    version: Literal["1.19", "1.20", "2.0", "2.1", "2.2"] = Field(
        "2.2", description="Flink minor version of the job server (Beam 2.77 publishes 1.19 to 2.2)")
    job_server_jar: str | None = Field(None, description="default: the jar scripts/flink fetch cached")
    java_home: str | None = Field(None, description="the JDK the job server runs on (Flink 2.x: 11, 17 or 21)")
    parallelism: int = Field(2, ge=1)
    environment_type: Literal["LOOPBACK", "PROCESS", "DOCKER", "EXTERNAL"] = "LOOPBACK"
    environment_config: str | None = Field(None, description="e.g. the worker command for PROCESS")


class _WorkerEnvironment(_Section):
    environment_type: EnvironmentType = Field(
        "LOOPBACK", description="LOOPBACK: in the sync process; EXTERNAL: a worker pool (environment_config "
                                "host:port, e.g. scripts/prism start's); PROCESS: a command the runner starts")
    environment_config: str | None = Field(None, description="EXTERNAL: the worker pool's host:port; "
                                                             "PROCESS: '{\"command\": \"/path/to/boot\"}'")


class PrismConfig(_WorkerEnvironment):
    """PrismRunner: each sync process starts Prism (Beam's portable runner, Go) from a local binary."""

    location: str | None = Field(None, description="the prism binary (default: the one scripts/prism build "
                                                   "made); Beam is never let download one")


class PortableConfig(_WorkerEnvironment):
    """PortableRunner: a job service that already runs (Prism from scripts/prism start, a Flink job server...)."""

    job_endpoint: str | None = Field(None, description="host:port of the job service (required)")


class DataflowConfig(_Section):
    """DataflowRunner: where the job runs and how the project's code reaches the workers."""

    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    staging_location: str | None = None
    setup_file: str | None = None
    service_account_email: str | None = None
    max_num_workers: int | None = Field(None, ge=1)
    machine_type: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    sdk_container_image: str | None = None
    secret_project: str | None = Field(None, description="the project whose Secret Manager holds a job's secrets "
                                                         "while it runs (default: project)")


class PipelineConfig(_Section):
    """How syncs run: the Beam runner and the pipeline's knobs."""

    runner: RunnerName = "FnApiRunner"
    # One in-process worker: measured fastest and half the memory on a 2-core host that also
    # runs Elasticsearch (docs/benchmarks.md); use multi_processing with more workers on bigger hosts.
    direct_num_workers: int = Field(1, ge=1)
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"
    bulk: BulkConfig = Field(default_factory=BulkConfig)
    content_index: ContentIndexConfig = Field(default_factory=ContentIndexConfig)
    max_error_rate: float = Field(0.05, ge=0, le=1, description="dead letters / documents above which a job fails")
    min_errors_to_fail: int = Field(10, ge=0, description="below this many dead letters a job never fails")
    max_document_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_download_bytes: int = Field(10 * 1024 * 1024, ge=0)
    download_concurrency: int = Field(8, ge=1)
    read_batch_size: int = Field(500, ge=1, description="documents digested and compared with the index at once")
    scan_slices: int = Field(2, ge=1, description="concurrent point-in-time slices when the index is scanned")
    dead_letters: str = "./dead_letters"
    work_dir: str | None = Field(None, description="where a sync keeps its index digests while it runs "
                                                   "(default: the system's temporary directory)")
    secrets_dir: str | None = Field(None, description="where a sync puts the secrets its workers read (a 0600 "
                                                      "file), for workers on other machines sharing this folder "
                                                      "(default: the sync's private work directory)")
    digest_cache: bool = Field(True, description="keep each index's digests between syncs and skip the scan "
                                                 "of an index nobody wrote to since (local runners)")
    digest_cache_dir: str | None = Field(None, description="default: $XDG_CACHE_HOME/elastic-ingest/index-digests")
    digest_cache_max_bytes: int = Field(4 * 1024**3, ge=1, description="the digest cache's size on disk at most "
                                        "(16 bytes per indexed document); least recently used entries go first")
    extract_text: bool = True
    workers_share_disk: bool | None = Field(
        None, description="whether every worker can read this machine's files (the sync's index digests); "
                          "default: decided from the runner's settings, checked by the workers at start")
    prism: PrismConfig = Field(default_factory=PrismConfig)
    portable: PortableConfig = Field(default_factory=PortableConfig)
    flink: FlinkConfig = Field(default_factory=FlinkConfig)
    dataflow: DataflowConfig = Field(default_factory=DataflowConfig)
    extra_options: list[str] = Field(default_factory=list, description="passed to Beam as-is")
