"""Beam runner options for a sync, built from config in one place.

* ``FnApiRunner`` (default): Beam's local portable runner, in-process and offline, the
  only local runner that honours ``direct_num_workers`` and ``direct_running_mode``
  (``multi_processing`` runs that many SDK worker processes). ``DirectRunner`` would
  first try to download Prism, which fails offline, so the runner is always named.
* ``PrismRunner``: Beam's own portable runner (Go), started by the sync process from the
  binary ``scripts/prism build`` made (``pipeline.prism.location``); LOOPBACK workers by
  default, EXTERNAL (a worker pool) or PROCESS. Without a binary Beam would download one
  from GitHub: a missing binary is a ConfigError instead.
* ``PortableRunner``: a job service that already runs (``pipeline.portable.job_endpoint``),
  e.g. the Prism and worker pool of ``scripts/prism start``: the path a Flink or Spark job
  server takes, DoFns in SDK worker processes of their own.
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

import ipaddress
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.settings import PipelineConfig, PortableConfig, PrismConfig
from sources.errors import ConfigError

__all__ = ["runner_and_options", "option_args", "validate_runner_settings", "default_flink_job_server_jar",
           "default_prism_location", "streaming_runner_and_options", "streaming_settings", "workers_share_this_disk", "worker_paths"]

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


def default_prism_location() -> Path:
    """Where ``scripts/prism build`` leaves the Prism binary of the installed Beam version."""
    from apache_beam.version import __version__ as beam_version

    home = Path(os.environ.get("PRISM_HOME_DIR", _REPO / ".servers" / "prism"))
    return home / beam_version / "prism"


def _prism_location(settings: PipelineConfig) -> str:
    return settings.prism.location or str(default_prism_location())


def _is_this_machine(endpoint: str | None) -> bool:
    """Whether ``host:port`` (or ``[v6]:port``) names this machine."""
    if not endpoint:
        return False
    host = endpoint.rsplit(":", 1)[0].strip("[]") if ":" in endpoint else endpoint
    if host in ("localhost", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _workers_here(env: PrismConfig | PortableConfig, job_service_here: bool) -> bool:
    """Whether a portable runner's SDK workers run on this machine."""
    if env.environment_type == "LOOPBACK":  # inside the sync process, wherever the job service is
        return True
    if env.environment_type == "PROCESS":  # started by the job service, on its machine
        return job_service_here
    if env.environment_type == "EXTERNAL":  # a worker pool, reached by the job service
        return job_service_here and _is_this_machine(env.environment_config)
    return False  # DOCKER: each container has a file system of its own


def workers_share_this_disk(settings: PipelineConfig) -> bool:
    """Whether every worker of a sync can read this machine's files (``pipeline.workers_share_disk``,
    else decided from the runner's settings).

    When true, a sync keeps its index digests as files of a work directory that every
    worker memory-maps, and each worker checks at start that it does see that directory
    (:func:`transforms.work_dir.check_work_dir`); when false, the digests travel inside
    the side input.
    """
    if settings.workers_share_disk is not None:
        return settings.workers_share_disk
    if settings.runner == "FnApiRunner":
        return True
    if settings.runner == "PrismRunner":
        return _workers_here(settings.prism, job_service_here=True)
    if settings.runner == "PortableRunner":
        return _workers_here(settings.portable, job_service_here=_is_this_machine(settings.portable.job_endpoint))
    if settings.runner == "FlinkRunner":
        return settings.flink.master == "[local]" and settings.flink.environment_type in ("LOOPBACK", "PROCESS")
    return False


def validate_runner_settings(settings: PipelineConfig, *, job_name: str = "elastic-ingest-sync") -> None:
    """Raise ConfigError listing everything the chosen runner still needs (offline: nothing is contacted)."""
    problems: list[str] = []
    if settings.runner == "DataflowRunner":
        problems += _dataflow_problems(settings, job_name)
    if settings.runner == "PrismRunner":
        location = _prism_location(settings)
        if not Path(location).is_file():
            where = "pipeline.prism.location" if settings.prism.location else "pipeline.prism.location (default)"
            problems.append(f"{where}: no Prism binary at {location!r}; run scripts/prism build "
                            "(Beam is never let download one)")
        problems += _environment_problems(settings.prism, "pipeline.prism")
    if settings.runner == "PortableRunner":
        if not settings.portable.job_endpoint:
            problems.append("pipeline.portable.job_endpoint: required by PortableRunner (host:port of a running "
                            "job service, e.g. localhost:9270 from scripts/prism start)")
        problems += _environment_problems(settings.portable, "pipeline.portable")
    if settings.runner == "FlinkRunner":
        f = settings.flink
        if f.job_server_jar and not Path(f.job_server_jar).is_file():
            problems.append(f"pipeline.flink.job_server_jar: no file at {f.job_server_jar!r}; run scripts/flink fetch")
        if f.java_home and not Path(f.java_home, "bin", "java").is_file():
            problems.append(f"pipeline.flink.java_home: no bin/java under {f.java_home!r}")
        if f.master != "[local]" and f.environment_type == "LOOPBACK":
            problems.append("pipeline.flink.environment_type: LOOPBACK workers only reach an embedded Flink "
                            "(master [local]); use PROCESS or DOCKER for a remote Flink cluster")
    for option in settings.extra_options:
        name = option.split("=", 1)[0]
        if name in _OWNED_OPTIONS:
            problems.append(f"pipeline.extra_options: {name} is set from {_OWNED_OPTIONS[name]}")
    if not workers_share_this_disk(settings) and _is_local_path(settings.dead_letters):
        who = ("Dataflow workers" if settings.runner == "DataflowRunner" else
               "workers that do not share this machine's disk (pipeline.workers_share_disk)")
        problems.append(f"pipeline.dead_letters: {who} cannot write to {settings.dead_letters!r}; "
                        "use a folder they all reach, e.g. gs://bucket/dead-letters")
    if problems:
        raise ConfigError("the pipeline runner is not fully configured:", problems)


# Options this module sets from config, which extra_options may not override: the runner is
# always named, and Prism always given the local binary (else Beam downloads one from GitHub).
_OWNED_OPTIONS = {"--runner": "pipeline.runner", "--prism_location": "pipeline.prism.location",
                  "--prism_beam_version_override": "pipeline.prism.location", "--job_endpoint":
                  "pipeline.portable.job_endpoint"}


def _is_local_path(path: str) -> bool:
    return "://" not in path


def worker_paths(settings: PipelineConfig) -> PipelineConfig:
    """The settings with the local paths workers use made absolute.

    A worker's working directory is not the sync process's (a worker pool's is wherever
    the pool was started), so ``./dead_letters`` would name two different folders.
    """
    from transforms.dead_letter_files import dead_letter_location

    update = {"dead_letters": dead_letter_location(settings.dead_letters)}
    if settings.work_dir:
        update["work_dir"] = os.path.abspath(os.path.expanduser(settings.work_dir))
    return settings.model_copy(update=update)


def _environment_problems(env: PrismConfig | PortableConfig, path: str) -> list[str]:
    if env.environment_type == "EXTERNAL" and not env.environment_config:
        return [f"{path}.environment_config: EXTERNAL workers need the worker pool's host:port "
                "(e.g. localhost:9271 from scripts/prism start)"]
    if env.environment_type == "PROCESS" and not env.environment_config:
        return [f"{path}.environment_config: PROCESS workers need '{{\"command\": \"/path/to/boot\"}}'"]
    return []


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
    elif settings.runner == "PrismRunner":
        # The binary always given: without --prism_location Beam downloads Prism from GitHub.
        args += ["--runner=PrismRunner", f"--prism_location={_prism_location(settings)}", "--prism_log_level=warn",
                 *_environment_args(settings.prism)]
    elif settings.runner == "PortableRunner":
        args += ["--runner=PortableRunner", f"--job_endpoint={settings.portable.job_endpoint}",
                 *_environment_args(settings.portable)]
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


def _environment_args(env: PrismConfig | PortableConfig) -> list[str]:
    # Beam runs `pip freeze` at every submission to a non-local runner (1.5 s and a process
    # here), for a list of the submitter's packages that container workers compare theirs
    # with; these workers run from the same installation.
    args = [f"--environment_type={env.environment_type}", "--experiments=disable_logging_submission_environment"]
    if env.environment_config:
        args.append(f"--environment_config={env.environment_config}")
    return args


def _answers(endpoint: str, timeout: float = 3.0) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _unreachable(settings: PipelineConfig) -> list[str]:
    """A portable runner's job service and worker pool that do not answer, checked before submitting.

    Only what this machine sees as the job service sees it: the job endpoint, and a worker
    pool when the job service runs here. Prism 2.77 panics (and stops serving every job)
    when it cannot reach an EXTERNAL worker pool, so a pool that does not answer must
    never be submitted to.
    """
    problems: list[str] = []
    if settings.runner == "PortableRunner":
        env, path = settings.portable, "pipeline.portable"
        job_endpoint = settings.portable.job_endpoint or ""
        if job_endpoint != "embed" and not _answers(job_endpoint):
            problems.append(f"pipeline.portable.job_endpoint: no job service answers at {job_endpoint} "
                            "(scripts/prism start runs Prism on localhost:9270)")
            return problems
        job_service_here = job_endpoint == "embed" or _is_this_machine(job_endpoint)
    elif settings.runner == "PrismRunner":
        env, path, job_service_here = settings.prism, "pipeline.prism", True
    else:
        return problems
    if env.environment_type == "EXTERNAL" and job_service_here and not _answers(env.environment_config or ""):
        problems.append(f"{path}.environment_config: no worker pool answers at {env.environment_config} "
                        "(scripts/prism start runs one on localhost:9271)")
    return problems


def streaming_settings(settings: PipelineConfig) -> PipelineConfig:
    """``settings`` as a continuous sync runs them: Prism with LOOPBACK workers."""
    prism = settings.prism.model_copy(update={"environment_type": "LOOPBACK", "environment_config": None})
    return settings.model_copy(update={"runner": "PrismRunner", "prism": prism})


def streaming_runner_and_options(settings: PipelineConfig, *, job_name: str) -> tuple[Any, PipelineOptions]:
    """The runner and options of a continuous sync: always Prism (``pipeline.prism``), with
    LOOPBACK workers, in streaming mode, whatever ``pipeline.runner`` says for batch syncs.

    FnApiRunner runs pipelines in batch mode and the Python BundleBasedDirectRunner fails on
    splittable DoFns (Beam 2.77, docs/runners.md); the stream's reader and writer meet in
    the sync process (:mod:`transforms.stream_ledger`), hence LOOPBACK.
    """
    streaming = streaming_settings(settings)
    validate_runner_settings(streaming, job_name=job_name)
    return "PrismRunner", PipelineOptions(option_args(streaming, job_name=job_name) + ["--streaming"])


def runner_and_options(settings: PipelineConfig, *, job_name: str) -> tuple[Any, PipelineOptions]:
    """The runner object (or name) and the options for one sync pipeline.

    Raises ConfigError for settings that cannot work (:func:`validate_runner_settings`) and
    for a portable runner's job service or worker pool that does not answer.
    """
    validate_runner_settings(settings, job_name=job_name)
    unreachable = _unreachable(settings)
    if unreachable:
        raise ConfigError("the pipeline runner cannot be reached:", unreachable)
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
