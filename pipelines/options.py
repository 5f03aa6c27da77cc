"""Beam runner options for a sync, built from config in one place.

* ``FnApiRunner`` (default): Beam's local portable runner, in-process and offline, the
  only local runner that honours ``direct_num_workers`` and ``direct_running_mode``
  (``multi_processing`` runs that many SDK worker processes). ``DirectRunner`` would
  first try to download Prism, which fails offline, so the runner is always named.
* ``FlinkRunner``: Beam's Flink job server (its jar fetched by ``scripts/flink fetch``)
  with an embedded Flink by default (``flink.master: "[local]"``) and LOOPBACK workers
  (the Python workers run inside the submitting sync process: no Docker).
* ``DataflowRunner``: project, region, ``gs://`` temp and staging locations, and this
  package shipped to the workers with ``--setup_file`` (the repository's ``setup.py``).
  :func:`validate_runner_settings` checks them with Beam's own validator, offline.

See docs/runners.md for each runner, step by step.

Example usage::

    runner, options = runner_and_options(settings, job_name="sync-abc")
    with beam.Pipeline(runner=runner, options=options) as p: ...
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.settings import PipelineConfig
from sources.errors import ConfigError

__all__ = ["runner_and_options", "option_args", "validate_runner_settings", "default_flink_job_server_jar",
           "workers_share_this_disk"]

_REPO = Path(__file__).resolve().parent.parent
_LOGGER = logging.getLogger(__name__)


def default_flink_job_server_jar(flink_version: str) -> Path:
    """Where ``scripts/flink fetch`` leaves the job-server jar (a link to the versioned file)."""
    home = Path(os.environ.get("FLINK_HOME_DIR", _REPO / ".servers" / "flink"))
    return home / f"beam-runners-flink-{flink_version}-job-server.jar"


def _flink_jar(settings: PipelineConfig) -> str | None:
    if settings.flink.job_server_jar:
        return settings.flink.job_server_jar
    cached = default_flink_job_server_jar(settings.flink.version)
    return str(cached) if cached.is_file() else None


def workers_share_this_disk(settings: PipelineConfig) -> bool:
    """Whether every worker of a sync runs on this machine (and so can read its files)."""
    if settings.runner == "FnApiRunner":
        return True
    if settings.runner == "FlinkRunner":
        return settings.flink.master == "[local]" and settings.flink.environment_type in ("LOOPBACK", "PROCESS")
    return False


def validate_runner_settings(settings: PipelineConfig, *, job_name: str = "elastic-ingest-sync") -> None:
    """Raise ConfigError listing everything the chosen runner still needs (offline: nothing is contacted)."""
    problems: list[str] = []
    if settings.runner == "DataflowRunner":
        problems += _dataflow_problems(settings, job_name)
    if settings.runner == "FlinkRunner":
        f = settings.flink
        if f.job_server_jar and not Path(f.job_server_jar).is_file():
            problems.append(f"pipeline.flink.job_server_jar: no file at {f.job_server_jar!r}; run scripts/flink fetch")
        if f.java_home and not Path(f.java_home, "bin", "java").is_file():
            problems.append(f"pipeline.flink.java_home: no bin/java under {f.java_home!r}")
        if f.master != "[local]" and f.environment_type == "LOOPBACK":
            problems.append("pipeline.flink.environment_type: LOOPBACK workers only reach an embedded Flink "
                            "(master [local]); use PROCESS or DOCKER for a remote Flink cluster")
    if problems:
        raise ConfigError("the pipeline runner is not fully configured:", problems)


def _dataflow_problems(settings: PipelineConfig, job_name: str) -> list[str]:
    d = settings.dataflow
    problems: list[str] = []
    for name in ("project", "region", "temp_location"):
        if not getattr(d, name):
            problems.append(f"pipeline.dataflow.{name}: required by DataflowRunner")
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    paths = GoogleCloudOptions([f"--temp_location={d.temp_location}", f"--staging_location={d.staging_location}"])
    for name in ("temp_location", "staging_location"):
        if getattr(d, name):
            for error in PipelineOptionsValidator(paths, None).validate_gcs_path(paths, name):
                problems.append(f"pipeline.dataflow.{name}: {error} (expected gs://bucket/folder)")
    if d.region and not re.fullmatch(r"[a-z]+-[a-z]+\d+", d.region):
        problems.append(f"pipeline.dataflow.region: expected a region like europe-west1, got {d.region!r}")
    setup = d.setup_file or str(_REPO / "setup.py")
    if not Path(setup).is_file():
        problems.append(f"pipeline.dataflow.setup_file: no file at {setup!r}")
    if not settings.dead_letters.startswith("gs://"):
        problems.append(f"pipeline.dead_letters: Dataflow workers cannot write to {settings.dead_letters!r}; "
                        "use a gs:// folder")
    if problems:
        return problems
    # Beam's own checks, as DataflowRunner runs them at submission. Only with valid gs://
    # paths (Beam would otherwise try to create a default bucket) and dry_run (no GCS call).
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    options = PipelineOptions(option_args(settings, job_name=job_name) + ["--dry_run=true"])
    return [f"pipeline.dataflow: {error}" for error in PipelineOptionsValidator(options, DataflowRunner()).validate()]


def _job_name(job_name: str) -> str:
    """A job name every runner accepts (Dataflow: ``[a-z]([-a-z0-9]*[a-z0-9])?``)."""
    name = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")[:60].strip("-")
    if not name or not name[0].isalpha():
        name = f"sync-{name}".strip("-")
    return name


def option_args(settings: PipelineConfig, *, job_name: str) -> list[str]:
    """The Beam command-line options for the configured runner."""
    args: list[str] = [f"--job_name={_job_name(job_name)}"]
    if settings.runner == "FnApiRunner":
        args += [
            f"--direct_num_workers={settings.direct_num_workers}",
            f"--direct_running_mode={settings.direct_running_mode}",
        ]
    elif settings.runner == "FlinkRunner":
        f = settings.flink
        args += [
            "--runner=FlinkRunner",
            f"--flink_master={f.master}",
            f"--flink_version={f.version}",
            f"--parallelism={f.parallelism}",
            f"--environment_type={f.environment_type}",
        ]
        if f.environment_config:
            args.append(f"--environment_config={f.environment_config}")
        jar = _flink_jar(settings)
        if jar:
            args.append(f"--flink_job_server_jar={jar}")
    elif settings.runner == "DataflowRunner":
        d = settings.dataflow
        args += [
            "--runner=DataflowRunner",
            f"--project={d.project}",
            f"--region={d.region}",
            f"--temp_location={d.temp_location}",
            f"--staging_location={d.staging_location or d.temp_location}",
            f"--setup_file={d.setup_file or _REPO / 'setup.py'}",
        ]
        for name in ("service_account_email", "max_num_workers", "machine_type", "network", "subnetwork",
                     "sdk_container_image"):
            value = getattr(d, name)
            if value:
                args.append(f"--{name}={value}")
    return args + list(settings.extra_options)


def runner_and_options(settings: PipelineConfig, *, job_name: str) -> tuple[Any, PipelineOptions]:
    """The runner object (or name) and the options for one sync pipeline."""
    validate_runner_settings(settings, job_name=job_name)
    options = PipelineOptions(option_args(settings, job_name=job_name))
    if settings.runner == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner(), options
    if settings.runner == "FlinkRunner":
        if settings.flink.java_home:
            os.environ["JAVA_HOME"] = settings.flink.java_home  # Beam starts the job server with $JAVA_HOME/bin/java
        if not _flink_jar(settings):
            _LOGGER.warning("no Flink job-server jar cached (scripts/flink fetch); Beam will try to download it")
    return settings.runner, options
