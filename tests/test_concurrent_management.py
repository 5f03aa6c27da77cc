"""Management commands racing each other, as scripted provisioning runs them: real parallel processes.

On the private node (``own_es``: its protocol indices are deleted here, then put back):

* several ``create-connector`` (and a ``connectors``) on a cluster without the protocol's
  indices: every one succeeds (one of them used to fail with a bare ``NotFoundError(404)``
  while another process was creating the indices);
* two ``create-connector`` at once with the same ``--index-name``: exactly one is refused
  (``IndexConflict``), every round, and one connector holds the index.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from launcher.index_claims import CLAIMS_INDEX
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX
from tests.fixtures_security.own_node import FAULT_ES_URL, fast_refresh
from tests.helpers import REPO, SOURCES, write_config

pytestmark = pytest.mark.integration

ROUNDS = 4


@pytest.fixture
def made(own_es):
    """Connector ids and content indices a test made on the private node; removed afterwards."""
    made: dict[str, list[str]] = {"indices": []}
    yield made
    own_es.indices.refresh(index=CONNECTORS_INDEX, ignore_unavailable=True)
    for index in made["indices"]:
        hits = own_es.search(index=CONNECTORS_INDEX, query={"term": {"index_name": index}}, size=100,
                             ignore_unavailable=True)["hits"]["hits"]
        for hit in hits:
            own_es.delete(index=CONNECTORS_INDEX, id=hit["_id"], refresh=True)
        own_es.options(ignore_status=404).delete(index=CLAIMS_INDEX, id=index, refresh=True)
    if made["indices"]:
        own_es.indices.delete(index=",".join(made["indices"]), ignore_unavailable=True)


def _start(config, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "-c", str(config), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _all(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        results.append((process.returncode, out, err))
    return results


def _create(config, index: str, folder) -> subprocess.Popen:
    return _start(config, "--action", "create-connector", "--service-type", "dir", "--index-name", index,
                  "--set", f"directory={folder}")


def test_cli_when_commands_race_the_creation_of_the_protocol_indices_then_all_succeed(own_es, made, tmp_path):
    config = write_config(tmp_path / "config.yml", es_url=FAULT_ES_URL, sources=dict(SOURCES))
    try:
        for round_number in range(ROUNDS):
            for alias in (CONNECTORS_INDEX, JOBS_INDEX):
                own_es.indices.delete(index=f"{alias}-v1", ignore_unavailable=True)
            indices = [f"test-race-{uuid.uuid4().hex[:8]}" for _ in range(2)]
            made["indices"] += indices
            processes = [_create(config, index, tmp_path) for index in indices]
            processes.append(_start(config, "--action", "connectors", "--json"))
            results = _all(processes)
            failed = [(code, err[-1500:]) for code, _, err in results if code != 0]
            assert not failed, f"round {round_number}: {failed}"
            own_es.indices.refresh(index=CONNECTORS_INDEX)
            for index in indices:
                assert own_es.count(index=CONNECTORS_INDEX, query={"term": {"index_name": index}})["count"] == 1
    finally:
        fast_refresh(own_es)


def test_cli_when_two_create_connector_name_the_same_index_at_once_then_exactly_one_is_refused(
        own_es, made, tmp_path):
    config = write_config(tmp_path / "config.yml", es_url=FAULT_ES_URL, sources=dict(SOURCES))
    for round_number in range(ROUNDS):
        index = f"test-same-{uuid.uuid4().hex[:8]}"
        made["indices"].append(index)
        results = _all([_create(config, index, tmp_path), _create(config, index, tmp_path)])
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 1], f"round {round_number}: {[(c, e[-800:]) for c, _, e in results]}"
        refused = next(err for code, _, err in results if code == 1)
        assert refused.strip().splitlines()[-1].startswith("IndexConflict: index "), refused
        assert repr(index) in refused
        own_es.indices.refresh(index=CONNECTORS_INDEX)
        assert own_es.count(index=CONNECTORS_INDEX, query={"term": {"index_name": index}})["count"] == 1


def test_cli_when_a_connector_is_deleted_then_its_index_can_be_claimed_again(own_es, made, tmp_path):
    config = write_config(tmp_path / "config.yml", es_url=FAULT_ES_URL, sources=dict(SOURCES))
    index = f"test-again-{uuid.uuid4().hex[:8]}"
    made["indices"].append(index)
    (code, out, err), = _all([_create(config, index, tmp_path)])
    assert code == 0, err
    first = out.split()[1]
    (code, _, err), = _all([_start(config, "--action", "delete-connector", "--connector-id", first)])
    assert code == 0, err
    assert not own_es.exists(index=CLAIMS_INDEX, id=index)  # released
    (code, _, err), = _all([_create(config, index, tmp_path)])
    assert code == 0, err
