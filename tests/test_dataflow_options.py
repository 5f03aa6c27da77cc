"""DataflowRunner (and the other runners') options, built from config and validated offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions, StandardOptions

from pipelines.options import option_args, runner_and_options, validate_runner_settings
from pipelines.settings import PipelineConfig
from sources.errors import ConfigError
from tests.helpers import REPO

DATAFLOW = {
    "runner": "DataflowRunner",
    "dead_letters": "gs://acme-ingest/dead-letters",
    "dataflow": {
        "project": "acme-search",
        "region": "europe-west1",
        "temp_location": "gs://acme-ingest/tmp",
        "staging_location": "gs://acme-ingest/staging",
        "max_num_workers": 4,
        "service_account_email": "ingest@acme-search.iam.gserviceaccount.com",
    },
}


def test_dataflow_options_when_configured_then_built_and_valid():
    settings = PipelineConfig.model_validate(DATAFLOW)
    runner, options = runner_and_options(settings, job_name="sync-Job_42")
    assert runner == "DataflowRunner"
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location, cloud.staging_location, cloud.job_name) == (
        "acme-search", "europe-west1", "gs://acme-ingest/tmp", "gs://acme-ingest/staging", "sync-job-42")
    assert cloud.service_account_email == "ingest@acme-search.iam.gserviceaccount.com"
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(SetupOptions).setup_file == str(REPO / "setup.py")
    assert options.get_all_options()["max_num_workers"] == 4


@pytest.mark.parametrize(("change", "problem"), [
    ({"project": None}, "pipeline.dataflow.project: required by DataflowRunner"),
    ({"temp_location": "/tmp/beam"}, "pipeline.dataflow.temp_location: Invalid GCS path (/tmp/beam)"),
    ({"temp_location": "gs://x/tmp"}, "pipeline.dataflow.temp_location: Invalid GCS bucket (gs://x/tmp)"),
    ({"region": "Europe"}, "pipeline.dataflow.region: expected a region like europe-west1"),
    ({"project": "123456"}, "Invalid Project ID (123456)"),
    ({"setup_file": "/nowhere/setup.py"}, "pipeline.dataflow.setup_file: no file at '/nowhere/setup.py'"),
])
def test_dataflow_options_when_a_value_is_wrong_then_config_error_names_it(change, problem):
    settings = PipelineConfig.model_validate({**DATAFLOW, "dataflow": {**DATAFLOW["dataflow"], **change}})
    with pytest.raises(ConfigError) as error:
        validate_runner_settings(settings)
    assert problem in str(error.value)


def test_dataflow_options_when_dead_letters_are_local_then_config_error():
    settings = PipelineConfig.model_validate({**DATAFLOW, "dead_letters": "./dead_letters"})
    with pytest.raises(ConfigError, match="pipeline.dead_letters: Dataflow workers cannot write"):
        validate_runner_settings(settings)


def test_setup_file_when_built_then_describes_this_project():
    result = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "elasticsearch-connectors"


def test_local_and_flink_options_when_configured_then_runner_named_explicitly(tmp_path):
    local = option_args(PipelineConfig.model_validate({"direct_num_workers": 3, "direct_running_mode": "multi_processing"}), job_name="j")
    assert local == ["--job_name=j", "--direct_num_workers=3", "--direct_running_mode=multi_processing"]
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"")
    flink = PipelineConfig.model_validate({"runner": "FlinkRunner", "flink": {"job_server_jar": str(jar)}})
    options = PipelineOptions(option_args(flink, job_name="j")).get_all_options()
    assert (options["runner"], options["flink_master"], options["environment_type"], options["flink_job_server_jar"],
            options["flink_version"]) == ("FlinkRunner", "[local]", "LOOPBACK", str(jar), "2.2")
    remote = PipelineConfig.model_validate({"runner": "FlinkRunner", "flink": {"master": "flink:8081"}})
    with pytest.raises(ConfigError, match="LOOPBACK workers only reach an embedded Flink"):
        validate_runner_settings(remote)
