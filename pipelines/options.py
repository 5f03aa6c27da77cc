"""Beam runner options for a sync, built from config in one place.

* ``FnApiRunner`` (default): Beam's local portable runner, in-process and offline, the
  only local runner that honours ``direct_num_workers`` and ``direct_running_mode``.
  (``DirectRunner`` would first try to download Prism, which fails offline.)
* ``FlinkRunner``: Beam's Flink job server (its jar fetched by ``scripts/flink``) with
  an embedded Flink by default (``flink_master: "[local]"``) and LOOPBACK workers.
* ``DataflowRunner``: project, region, ``gs://`` temp and staging locations, and this
  package shipped to the workers with ``--setup_file``.

Example usage::

    runner, options = runner_and_options(settings, job_name="sync-abc")
    with beam.Pipeline(runner=runner, options=options) as p: ...
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.settings import PipelineConfig
from sources.errors import ConfigError

__all__ = ["runner_and_options", "option_args", "validate_runner_settings"]

_REPO = Path(__file__).resolve().parent.parent


def validate_runner_settings(settings: PipelineConfig) -> None:
    """Raise ConfigError listing what the chosen runner still needs."""
    problems: list[str] = []
    if settings.runner == "DataflowRunner":
        d = settings.dataflow
        for name in ("project", "region", "temp_location"):
            if not getattr(d, name):
                problems.append(f"pipeline.dataflow.{name}: required by DataflowRunner")
        for name in ("temp_location", "staging_location"):
            value = getattr(d, name)
            if value and not value.startswith("gs://"):
                problems.append(f"pipeline.dataflow.{name}: expected a gs:// path, got {value!r}")
        if d.region and not re.fullmatch(r"[a-z]+-[a-z]+\d+", d.region):
            problems.append(f"pipeline.dataflow.region: expected a region like europe-west1, got {d.region!r}")
        setup = d.setup_file or str(_REPO / "setup.py")
        if not Path(setup).is_file():
            problems.append(f"pipeline.dataflow.setup_file: no file at {setup!r}")
    if settings.runner == "FlinkRunner":
        jar = settings.flink.job_server_jar
        if jar and not Path(jar).is_file():
            problems.append(f"pipeline.flink.job_server_jar: no file at {jar!r}; run scripts/flink fetch")
    if problems:
        raise ConfigError("the pipeline runner is not fully configured:", problems)


def option_args(settings: PipelineConfig, *, job_name: str) -> list[str]:
    """The Beam command-line options for the configured runner."""
    safe_name = re.sub(r"[^a-z0-9-]", "-", job_name.lower())[:60].strip("-") or "elastic-ingest-sync"
    args: list[str] = [f"--job_name={safe_name}"]
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
            f"--parallelism={f.parallelism}",
            f"--environment_type={f.environment_type}",
        ]
        if f.job_server_jar:
            args.append(f"--flink_job_server_jar={f.job_server_jar}")
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
        if d.service_account_email:
            args.append(f"--service_account_email={d.service_account_email}")
        if d.max_num_workers:
            args.append(f"--max_num_workers={d.max_num_workers}")
        if d.machine_type:
            args.append(f"--machine_type={d.machine_type}")
    return args + list(settings.extra_options)


def runner_and_options(settings: PipelineConfig, *, job_name: str) -> tuple[Any, PipelineOptions]:
    """The runner object (or name) and the options for one sync pipeline."""
    validate_runner_settings(settings)
    options = PipelineOptions(option_args(settings, job_name=job_name))
    if settings.runner == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner(), options
    return settings.runner, options
