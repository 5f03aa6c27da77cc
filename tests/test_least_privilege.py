"""Least privilege, proven on a secured Elasticsearch.

A private node with security enabled (``tests.fixtures_security.secure_node``) holds a
user whose role is exactly ``launcher.privileges.role_descriptor`` (what docs/security.md
lists). A real daemon, with that user's credentials, runs a full sync, a resync with
deletions and a cancel; nothing it does is refused. Users whose role lacks one privilege
show that each is needed, and that its absence is reported clearly: the daemon refuses to
start naming it, or the job fails naming it before anything is written.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from launcher.indices import JOBS_INDEX
from launcher.privileges import CLUSTER, CONTENT_INDEX, SERVICE_INDICES, role_descriptor
from tests.helpers import DIR_SOURCE, DaemonProcess, cli, wait_for, wait_job_final, write_config

pytestmark = pytest.mark.integration

CONTENT = "test-lp-*"
SLOW = "tests.fixtures_sources.slow:SlowSource"


def _without(role: dict, names: tuple[str, ...] | None, privilege: str) -> dict:
    """``role`` without ``privilege`` (on the index entry ``names``; None: the cluster)."""
    if names is None:
        return {**role, "cluster": [p for p in role["cluster"] if p != privilege]}
    indices = [{**entry, "privileges": [p for p in entry["privileges"] if p != privilege]}
               if entry["names"] == list(names) else entry for entry in role["indices"]]
    return {**role, "indices": indices}


# Every listed privilege, one case each: (index pattern or None for the cluster, privilege).
ALL_CASES = ([(None, p) for p in CLUSTER] + [(n, p) for n, privileges in SERVICE_INDICES.items() for p in privileges]
             + [((CONTENT,), p) for p in CONTENT_INDEX])
JOBS = next(names for names in SERVICE_INDICES if names[0] == JOBS_INDEX)


def _case_id(names: tuple[str, ...] | None, privilege: str) -> str:
    return f"{names[0] if names else 'cluster'}-{privilege}"


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """The secured node, with the service's user and one user per missing privilege.

    The connector and job indices are created by the administrator first, as on a cluster
    where Kibana ran (creating them is the one thing the service's role does not cover).
    """
    from launcher.indices import ensure_indices
    from tests.fixtures_security.secure_node import set_file_users, start_secure_node

    admin = start_secure_node()
    ensure_indices(admin)
    full = role_descriptor([CONTENT])
    roles = {"ingest_service": full}
    users = {"ingest": (f"pw-{uuid.uuid4().hex}", "ingest_service")}
    for number, (names, privilege) in enumerate(ALL_CASES):
        role = f"lacks_{number}"
        roles[role] = _without(full, names, privilege)
        users[f"lacks-{_case_id(names, privilege)}"] = (f"pw-{uuid.uuid4().hex}", role)
    set_file_users(users, roles)
    yield admin, users
    admin.close()


def _config(tmp: Path, users: dict, user: str, **service) -> Path:
    from tests.fixtures_security.secure_node import SECURE_ES_URL

    return write_config(tmp / f"{user}.yml", es_url=SECURE_ES_URL,
                        elasticsearch={"username": user, "password": users[user][0], "max_retries": 0},
                        sources={"dir": DIR_SOURCE, "slow": SLOW}, service=service)


def test_least_privilege_when_daemon_syncs_resyncs_and_cancels_then_nothing_is_refused(secure, tmp_path):
    from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX

    admin, users = secure
    suffix = uuid.uuid4().hex[:8]
    dir_id, slow_id = f"lp-dir-{suffix}", f"lp-slow-{suffix}"
    dir_index, slow_index = f"test-lp-{suffix}", f"test-lp-slow-{suffix}"
    config = _config(tmp_path, users, "ingest", connector_ids=[dir_id, slow_id])
    folder = tmp_path / "docs"
    folder.mkdir()
    for number in range(6):
        (folder / f"doc-{number}.txt").write_text(f"document {number}", encoding="utf-8")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        cli("--action", "create-connector", "--connector-id", dir_id, "--service-type", "dir", "--index-name",
            dir_index, "--set", f"directory={folder}", config=config, check=True)
        cli("--action", "create-connector", "--connector-id", slow_id, "--service-type", "slow", "--index-name",
            slow_index, "--set", "count=3000", "--set", "delay_ms=20", config=config, check=True)

        full = cli("--action", "sync", "--connector-id", dir_id, "--wait", "--timeout", "180", "--json",
                   config=config)
        assert full.returncode == 0, full.stdout + full.stderr + daemon.output()
        admin.indices.refresh(index=dir_index)
        assert admin.count(index=dir_index)["count"] == 6

        for number in (0, 1):
            (folder / f"doc-{number}.txt").unlink()
        (folder / "doc-new.txt").write_text("a new document", encoding="utf-8")
        resync = cli("--action", "sync", "--connector-id", dir_id, "--wait", "--timeout", "180", "--json",
                     config=config)
        assert resync.returncode == 0, resync.stdout + resync.stderr + daemon.output()
        assert '"deleted_document_count": 2' in resync.stdout, resync.stdout
        admin.indices.refresh(index=dir_index)
        assert admin.count(index=dir_index)["count"] == 5

        started = cli("--action", "sync", "--connector-id", slow_id, "--json", config=config, check=True)
        job_id = started.stdout.split('"job_id": "', 1)[1].split('"', 1)[0]
        wait_for(lambda: (admin.get(index=JOBS_INDEX, id=job_id)["_source"].get("indexed_document_count") or 0) > 0,
                 timeout=120, what="the slow sync to index documents")
        cli("--action", "cancel", "--job-id", job_id, config=config, check=True)
        job = wait_job_final(admin, job_id, timeout=60)
        assert job["status"] == "canceled", job
    finally:
        daemon.stop()
        for connector_id in (dir_id, slow_id):
            admin.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        admin.indices.delete(index=f"{dir_index},{slow_index}", ignore_unavailable=True)
    log = daemon.output()
    assert "AuthorizationException" not in log and "security_exception" not in log, log[-3000:]
    assert "poll failed" not in log, log[-3000:]


@pytest.mark.parametrize("names, privilege", ALL_CASES, ids=[_case_id(*case) for case in ALL_CASES])
def test_least_privilege_when_one_privilege_missing_then_exactly_it_is_reported(secure, names, privilege):
    """Each listed privilege is needed: no other one in the list grants what it grants."""
    from launcher.privileges import missing_privileges
    from tests.fixtures_security.secure_node import user_client

    _, users = secure
    user = f"lacks-{_case_id(names, privilege)}"
    lacking = user_client(user, users[user][0])
    content = "test-lp-anything" if names == (CONTENT,) else None
    where = "cluster" if names is None else content or names[0]

    assert missing_privileges(lacking, content) == [f"{where}: {privilege}"]


def test_least_privilege_when_service_privilege_missing_then_daemon_refuses_to_start_naming_it(secure, tmp_path):
    _, users = secure
    config = _config(tmp_path, users, f"lacks-{_case_id(JOBS, 'write')}")

    result = cli("--action", "poll", config=config, timeout=120)

    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("InsufficientPrivileges: the credentials in "), result.stderr
    assert f"{JOBS_INDEX}: write" in last and "docs/security.md" in last, last


def test_least_privilege_when_content_index_not_granted_then_every_content_privilege_missing(secure):
    from launcher.privileges import missing_privileges
    from tests.fixtures_security.secure_node import user_client

    _, users = secure
    service = user_client("ingest", users["ingest"][0])

    assert missing_privileges(service) == [] and missing_privileges(service, "test-lp-anything") == []
    assert sorted(missing_privileges(service, "elsewhere")) == sorted(f"elsewhere: {p}" for p in CONTENT_INDEX)


def test_least_privilege_when_content_privilege_missing_then_job_fails_before_writing(secure, tmp_path):
    from launcher.indices import CONNECTORS_INDEX

    admin, users = secure
    user = f"lacks-{_case_id((CONTENT,), 'write')}"
    suffix = uuid.uuid4().hex[:8]
    connector_id, index = f"lp-nowrite-{suffix}", f"test-lp-nowrite-{suffix}"
    config = _config(tmp_path, users, user, connector_ids=[connector_id])
    cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "slow", "--index-name",
        index, "--set", "count=5", config=config, check=True)
    # The CLI creates the content index with the connector (as Kibana does); the job must create nothing.
    admin.indices.delete(index=index, ignore_unavailable=True)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        result = cli("--action", "sync", "--connector-id", connector_id, "--wait", "--timeout", "120", "--json",
                     config=config)
    finally:
        daemon.stop()
        admin.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
    assert result.returncode == 1, result.stdout + daemon.output()
    assert f"InsufficientPrivileges: the service's credentials" in result.stdout, result.stdout
    assert f"{index}: write" in result.stdout, result.stdout
    assert not admin.indices.exists(index=index)  # nothing was created, nothing written


def test_security_doc_when_read_then_its_role_is_the_services():
    """docs/security.md shows the role the service checks and this module grants."""
    import json
    import re

    from tests.helpers import REPO

    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```json\n(.*?)```", text, flags=re.S)

    assert json.loads(block) == role_descriptor(["search-*"])
