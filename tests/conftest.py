"""Shared fixtures: a real Elasticsearch (started by scripts/elasticsearch), clean env.

Integration tests need the servers that ``.ci/run`` starts. Run locally without them and
they are skipped; with ``CI=true`` a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pytest

from tests.helpers import ES_URL, es_client, require_server

_SCRUBBED = ("ES_USERNAME", "ES_PASSWORD", "ES_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
             "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Scrub variables our code or its clients read, so a developer's shell cannot leak in."""
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    yield


@pytest.fixture(scope="session", autouse=True)
def leaves_no_trace(tmp_path_factory, request):
    """The suite leaves nothing behind (see ``tests/traces.py``).

    Everything that goes to "the temp dir" (job files of the daemons' syncs, work dirs,
    Beam's own temp dirs, dead letters) and the digest cache ($XDG_CACHE_HOME) go to a
    folder of this session, removed at its end; our own leftovers found there are
    reported. The shared Elasticsearch is swept of what tests left (``test-`` prefix).
    """
    from tests.traces import Snapshot, sweep

    scratch = tmp_path_factory.mktemp("tmp")
    saved = {name: os.environ.get(name) for name in ("TMPDIR", "XDG_CACHE_HOME")}
    os.environ.update(TMPDIR=str(scratch), XDG_CACHE_HOME=str(scratch / "cache"))
    tempfile.tempdir = str(scratch)
    client = es_client()
    try:
        client.options(request_timeout=3).cluster.health()
        before = Snapshot.take(client)
    except Exception:  # noqa: BLE001 - no Elasticsearch: nothing to keep clean there
        before = None
    report: list[str] = []
    request.config.stash[_TRACES] = report
    yield
    ours = sorted(path.name for path in scratch.iterdir() if path.name.startswith("elastic-ingest-"))
    if ours:
        report.append(f"removed {len(ours)} job or work folder(s) syncs left in the temp dir: {', '.join(ours[:5])}")
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tempfile.tempdir = None
    shutil.rmtree(scratch, ignore_errors=True)
    if before is not None:
        try:
            report.extend(sweep(client, before))
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the tests themselves are done
            report.append(f"could not sweep Elasticsearch: {type(exc).__name__}: {exc}")
    client.close()


_TRACES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    report = config.stash.get(_TRACES, None)
    if report:
        terminalreporter.section("traces the tests left (removed unless said otherwise)")
        for line in report:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def es():
    """A client for the test Elasticsearch."""
    client = es_client()
    require_server("Elasticsearch", ES_URL, lambda: client.cluster.health(wait_for_status="yellow", timeout="10s"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def own_es():
    """A client for the private node of ``tests.fixtures_security.own_node`` (started if needed,
    left running for the next run): for tests that stop Elasticsearch or need fast refreshes."""
    from tests.fixtures_security.own_node import start_own_node

    client = start_own_node()
    yield client
    client.close()


@pytest.fixture
def index_name(es):
    """A fresh content index name, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "es" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
