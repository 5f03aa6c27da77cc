"""PrismRunner and PortableRunner settings: built from config, checked before anything starts, never a download.

Also what a sync assumes about its workers, made explicit: whether they share this
machine's disk (the index digests as files, local dead letters), and the check each
worker makes of that at start.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, PrismRunnerOptions

from launcher.config import parse_config
from pipelines.options import (
    default_prism_location, option_args, runner_and_options, validate_runner_settings, worker_paths,
    workers_share_this_disk,
)
from pipelines.settings import RUNNERS, PipelineConfig
from sources.errors import ConfigError
from transforms.work_dir import check_work_dir, mark_work_dir

POOL = {"runner": "PortableRunner", "dead_letters": "gs://acme/dead",
        "portable": {"job_endpoint": "localhost:9270", "environment_type": "EXTERNAL",
                     "environment_config": "localhost:9271"}}


@pytest.fixture
def prism_binary(tmp_path, monkeypatch) -> Path:
    """A file where scripts/prism build leaves the binary (PRISM_HOME_DIR pointed at tmp_path)."""
    monkeypatch.setenv("PRISM_HOME_DIR", str(tmp_path))
    binary = default_prism_location()
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    return binary


def test_prism_options_when_binary_built_then_beam_given_it_and_resolves_it_without_download(prism_binary):
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    settings = PipelineConfig.model_validate({"runner": "PrismRunner"})
    runner, options = runner_and_options(settings, job_name="sync-1")
    assert runner == "PrismRunner"
    assert options.view_as(PrismRunnerOptions).prism_location == str(prism_binary)
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"
    # Beam's own resolution of that option: the local file as it is, nothing fetched.
    assert PrismJobServer(options)._get_executable_path() == str(prism_binary)


def test_prism_options_when_binary_missing_then_config_error_says_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_HOME_DIR", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as error:
        runner_and_options(PipelineConfig.model_validate({"runner": "PrismRunner"}), job_name="j")
    assert "pipeline.prism.location (default): no Prism binary at" in str(error.value)
    assert "run scripts/prism build (Beam is never let download one)" in str(error.value)
    elsewhere = PipelineConfig.model_validate({"runner": "PrismRunner", "prism": {"location": "/nowhere/prism"}})
    with pytest.raises(ConfigError, match=r"pipeline.prism.location: no Prism binary at '/nowhere/prism'"):
        validate_runner_settings(elsewhere)


@pytest.mark.parametrize("option", ["--prism_location=https://github.com/apache/beam/releases/tag/v2.77.0",
                                    "--runner=DirectRunner", "--job_endpoint=elsewhere:1"])
def test_prism_options_when_extra_options_would_override_runner_or_binary_then_config_error(prism_binary, option):
    settings = PipelineConfig.model_validate({"runner": "PrismRunner", "extra_options": [option]})
    with pytest.raises(ConfigError, match=f"pipeline.extra_options: {option.split('=')[0]} is set from pipeline"):
        validate_runner_settings(settings)


def test_portable_options_when_job_service_and_pool_given_then_external_workers():
    options = PipelineOptions(option_args(PipelineConfig.model_validate(POOL), job_name="j")).view_as(PortableOptions)
    assert (options.job_endpoint, options.environment_type, options.environment_config) == (
        "localhost:9270", "EXTERNAL", "localhost:9271")


def test_portable_options_when_endpoint_or_pool_missing_then_every_problem_named():
    settings = PipelineConfig.model_validate({"runner": "PortableRunner", "dead_letters": "gs://acme/dead",
                                              "portable": {"environment_type": "EXTERNAL"}})
    with pytest.raises(ConfigError) as error:
        validate_runner_settings(settings)
    assert error.value.problems == [
        "pipeline.portable.job_endpoint: required by PortableRunner (host:port of a running job service, "
        "e.g. localhost:9270 from scripts/prism start)",
        "pipeline.portable.environment_config: EXTERNAL workers need the worker pool's host:port "
        "(e.g. localhost:9271 from scripts/prism start)",
    ]


@pytest.mark.parametrize(("settings", "shared"), [
    ({}, True),
    ({"runner": "PrismRunner"}, True),  # LOOPBACK: in the sync process
    ({"runner": "PrismRunner", "prism": {"environment_type": "EXTERNAL", "environment_config": "127.0.0.1:9271"}},
     True),
    ({"runner": "PrismRunner", "prism": {"environment_type": "EXTERNAL", "environment_config": "pool.corp:9271"}},
     False),
    ({"runner": "PrismRunner", "prism": {"environment_type": "DOCKER"}}, False),
    (POOL, True),
    ({**POOL, "portable": {**POOL["portable"], "job_endpoint": "flink-jobs.corp:8099"}}, False),
    ({**POOL, "portable": {**POOL["portable"], "environment_type": "PROCESS", "environment_config": "{}"}}, True),
    ({**POOL, "portable": {"job_endpoint": "flink-jobs.corp:8099", "environment_type": "LOOPBACK"}}, True),
    ({**POOL, "workers_share_disk": False}, False),
    ({"runner": "FlinkRunner", "flink": {"master": "flink:8081", "environment_type": "PROCESS"}}, False),
    ({"runner": "FlinkRunner", "flink": {"master": "flink:8081"}, "workers_share_disk": True}, True),
    ({"runner": "DataflowRunner"}, False),
])
def test_workers_share_this_disk_when_runner_configured_then_decided_from_where_workers_run(settings, shared):
    assert workers_share_this_disk(PipelineConfig.model_validate(settings)) is shared


def test_runner_settings_when_workers_elsewhere_and_dead_letters_local_then_config_error():
    remote = {**POOL, "dead_letters": "./dead_letters", "portable": {**POOL["portable"], "job_endpoint": "jobs:8099"}}
    with pytest.raises(ConfigError, match=r"pipeline.dead_letters: workers that do not share this machine's disk "
                                          r"\(pipeline.workers_share_disk\) cannot write to './dead_letters'"):
        validate_runner_settings(PipelineConfig.model_validate(remote))
    validate_runner_settings(PipelineConfig.model_validate({**remote, "dead_letters": "gs://acme/dead"}))


def test_worker_paths_when_relative_then_absolute_from_the_sync_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = worker_paths(PipelineConfig.model_validate({"dead_letters": "./dl", "work_dir": "work"}))
    assert (settings.dead_letters, settings.work_dir) == (str(tmp_path / "dl"), str(tmp_path / "work"))
    assert worker_paths(PipelineConfig.model_validate({"dead_letters": "gs://b/dl"})).dead_letters == "gs://b/dl"


def test_work_dir_when_worker_does_not_see_the_mark_then_config_error_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline.workers_share_disk: a worker on .* does not see the sync's "
                                          r"work directory .*; set pipeline.workers_share_disk: false"):
        check_work_dir(tmp_path)
    mark_work_dir(tmp_path)
    check_work_dir(tmp_path)
    assert os.listdir(tmp_path) == [".elastic-ingest-work-dir"]


@pytest.mark.parametrize("runner", ["PrismRunner", "PortableRunner"])
def test_config_when_connector_runs_on_a_portable_runner_then_override_applies(runner):
    config = parse_config({"pipeline": {"portable": POOL["portable"]}, "connectors": {"big": {"runner": runner}}})
    assert config.pipeline_for("big").runner == runner
    assert config.pipeline_for("big").portable.job_endpoint == "localhost:9270"
    assert config.pipeline_for("other").runner == "FnApiRunner"


def test_config_when_runner_unknown_then_allowed_ones_listed():
    with pytest.raises(ConfigError) as error:
        parse_config({"pipeline": {"runner": "DaskRunner"}})
    assert "pipeline.runner: input should be " in str(error.value)
    for runner in RUNNERS:
        assert runner in str(error.value)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_portable_runner_when_job_service_or_pool_does_not_answer_then_config_error_before_submitting():
    import socket

    silent = f"localhost:{_free_port()}"
    nobody = {**POOL, "portable": {**POOL["portable"], "job_endpoint": silent}}
    with pytest.raises(ConfigError, match=f"pipeline.portable.job_endpoint: no job service answers at {silent}"):
        runner_and_options(PipelineConfig.model_validate(nobody), job_name="j")
    # A job service that answers, but no worker pool: Prism 2.77 would crash on it, for every job.
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        answering = f"localhost:{listening.getsockname()[1]}"
        no_pool = {**POOL, "portable": {**POOL["portable"], "job_endpoint": answering, "environment_config": silent}}
        with pytest.raises(ConfigError, match=f"pipeline.portable.environment_config: no worker pool answers at "
                                              f"{silent}"):
            runner_and_options(PipelineConfig.model_validate(no_pool), job_name="j")
