"""The network drive source against a real Samba server (scripts/servers/samba).

The share's folder is on this machine, so each test writes its files, owners and POSIX ACLs
there directly (as root: Samba's users are its own) and reads them back over SMB, as a
connector would. Each test has a folder of its own in the share.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from sources.base import Filter
from sources.errors import DocumentUnreadable, SourceConfigError, SourceError, SourceUnavailable
from sources.network_drive import NetworkDriveDataSource
from sources.network_drive.security import parse_identity_mappings, readers
from sources.testing import check_source_contract, read_all, read_partitions
from tests.helpers import REPO, TEST_ROOT, index_docs, run_sync, skip_or_fail

SMB_PORT = int(os.environ.get("SMB_PORT", "1445"))
SHARE_DIR = Path(os.environ.get("SMB_HOME_DIR") or REPO / ".servers" / "samba") / "share"
SAMBA = REPO / "scripts" / "servers" / "samba"
ADMIN, ADMIN_PASSWORD = "smbingest", "ingest-secret"
SETTINGS = {"identity_roots": [TEST_ROOT]}


def _server_or_skip() -> None:
    try:
        socket.create_connection(("127.0.0.1", SMB_PORT), timeout=3).close()
    except OSError as exc:
        skip_or_fail(f"no Samba server on 127.0.0.1:{SMB_PORT} ({exc}); start it with scripts/servers/samba start")
    if os.geteuid() != 0:
        pytest.skip("the tests write the share's owners and ACLs as root")


@pytest.fixture
def folder():
    """A fresh folder in the share: (its path on disk, the drive_path naming it)."""
    _server_or_skip()
    name = f"t-{uuid.uuid4().hex[:10]}"
    path = SHARE_DIR / name
    path.mkdir()
    try:
        yield path, f"ingest/{name}"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(drive_path: str, **extra: Any) -> dict[str, Any]:
    return {"username": ADMIN, "password": ADMIN_PASSWORD, "server_ip": "127.0.0.1", "server_port": SMB_PORT,
            "drive_path": drive_path, **extra}


def source(drive_path: str, **extra: Any) -> NetworkDriveDataSource:
    return NetworkDriveDataSource(config(drive_path, **extra), operator_settings=SETTINGS)


def write(path: Path, text: str, *, owner: str = "root", group: str = "root", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    shutil.chown(path, owner, group)
    path.chmod(mode)
    return path


def by_title(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["title"]: doc for doc in docs}


# -- reading -------------------------------------------------------------------------------
@pytest.mark.integration
def test_read_when_files_and_folders_then_elastic_shape_and_content(folder):
    root, drive = folder
    write(root / "readme.txt", "Hello share")
    write(root / "reports" / "q3.md", "# Third quarter")
    write(root / "reports" / "2026" / "page.html", "<html><body><p>Inside</p></body></html>")

    docs = by_title(read_all(source(drive)))

    assert set(docs) == {"readme.txt", "reports", "q3.md", "2026", "page.html"}
    readme = docs["readme.txt"]
    assert readme["body"] == "Hello share" and readme["type"] == "file" and readme["size"] == 11
    assert readme["path"] == f"\\\\127.0.0.1\\ingest\\{root.name}\\readme.txt"
    assert readme["_id"] == str(os.stat(root / "readme.txt").st_ino)
    assert docs["reports"]["type"] == "folder" and "body" not in docs["reports"]
    assert docs["q3.md"]["body"] == "# Third quarter"
    assert "_attachment" in docs["page.html"]  # the pipeline extracts its text, as the dir source's
    assert "_allow_access_control" not in readme  # DLS off


@pytest.mark.integration
def test_contract_when_partitioned_by_folder_then_same_documents_as_one_read(folder):
    root, drive = folder
    for name in ("a", "b", "c"):
        write(root / name / f"{name}.txt", name)
        write(root / name / "deep" / f"{name}-deep.txt", name)
    write(root / "top.txt", "top")

    docs = check_source_contract(NetworkDriveDataSource, config(drive), SETTINGS)

    partitions = source(drive).get_partitions()
    assert [p.key for p in partitions] == ["(top)", "a", "b", "c"]
    assert len(docs) == 1 + 3 * 4 and len(read_partitions(source(drive))) == len(docs)


@pytest.mark.integration
def test_sync_when_files_added_changed_deleted_then_index_follows_and_unchanged_skipped(folder, es):
    root, drive = folder
    index = f"test-smb-{uuid.uuid4().hex[:8]}"
    write(root / "keep.txt", "kept")
    write(root / "change.txt", "before")
    write(root / "gone" / "old.txt", "old")
    try:
        first = run_sync(index=index, configuration=config(drive), service_type="network_drive")
        assert first["status"] == "completed", first.get("error")
        assert {d["title"] for d in index_docs(es, index).values()} == {"keep.txt", "change.txt", "gone", "old.txt"}

        write(root / "change.txt", "after, longer")
        write(root / "new.txt", "new")  # before the removal: a freed inode (the file id) is not reused
        shutil.rmtree(root / "gone")
        second = run_sync(index=index, configuration=config(drive), service_type="network_drive")

        assert second["status"] == "completed", second.get("error")
        indexed = by_title(list(index_docs(es, index).values()))
        assert set(indexed) == {"keep.txt", "change.txt", "new.txt"}
        assert indexed["change.txt"]["body"] == "after, longer"
        assert second["unchanged_document_count"] == 1  # keep.txt: neither downloaded nor sent
        assert second["indexed_document_count"] == 2 and second["deleted_document_count"] == 2
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)


@pytest.mark.integration
def test_advanced_rules_when_pattern_names_a_folder_then_only_below_it(folder):
    root, drive = folder
    write(root / "reports" / "2026" / "q1.txt", "q1")
    write(root / "reports" / "r.txt", "r")
    write(root / "private" / "p.txt", "p")
    below = Filter({"advanced_rules": [{"pattern": f"ingest/{root.name}/reports"}]})
    deeper = Filter({"advanced_rules": [{"pattern": f"ingest/*/reports/**"}]})

    # what lies below a matching folder, as Elastic's connector reads it: not the folder itself
    assert set(by_title(read_all(source(drive), filtering=below))) == {"2026", "q1.txt", "r.txt"}
    # `**` matches folders below `reports` (here `2026`), not `reports`
    assert set(by_title(read_all(source(drive), filtering=deeper))) == {"q1.txt"}
    assert source(drive).validate_advanced_rules([{"pattern": ""}, {"glob": "x"}]) == [
        "advanced rules[0].pattern: expected a non-empty glob, got ''",
        "advanced rules[1]: expected a list like [{\"pattern\": \"Shared/Reports/**\"}], got {'glob': 'x'}"]


# -- what cannot be read -------------------------------------------------------------------
@pytest.mark.integration
def test_read_when_folder_cannot_be_listed_then_read_fails_naming_it(folder):
    root, drive = folder
    write(root / "open.txt", "open")
    private = root / "private"
    private.mkdir()
    write(private / "secret.txt", "secret", owner="smbalice", mode=0o600)
    shutil.chown(private, "smbalice", "smbalice")
    private.chmod(0o700)

    as_bob = NetworkDriveDataSource(config(drive, username="smbbob", password="bob-secret"), operator_settings=SETTINGS)
    with pytest.raises(SourceError, match="cannot list private: .*nothing was deleted"):
        read_all(as_bob)


@pytest.mark.integration
def test_sync_when_file_cannot_be_opened_then_dead_letter_and_the_rest_indexed(folder, es, tmp_path):
    root, drive = folder
    write(root / "open.txt", "open")
    write(root / "alice.txt", "alice only", owner="smbalice", mode=0o600)
    index = f"test-smb-{uuid.uuid4().hex[:8]}"
    bob = config(drive, username="smbbob", password="bob-secret")
    try:
        with pytest.raises(DocumentUnreadable, match="cannot read alice.txt"):
            read_all(NetworkDriveDataSource(bob, operator_settings=SETTINGS))

        outcome = run_sync(index=index, configuration=bob, service_type="network_drive",
                           dead_letters=str(tmp_path / "dead"))

        assert outcome["status"] == "completed", outcome.get("error")
        assert outcome["dead_letters"]["count"] == 1
        assert {d["title"] for d in index_docs(es, index).values()} == {"open.txt"}
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)


@pytest.mark.integration
def test_ping_when_password_wrong_or_share_missing_then_error_names_the_field_not_the_secret(folder):
    _, drive = folder
    wrong = source(drive, password="not-the-password-42")
    with pytest.raises(SourceConfigError, match="refused the username/password") as refused:
        asyncio.run(wrong.ping())
    assert "not-the-password-42" not in str(refused.value)

    with pytest.raises(SourceConfigError, match="drive_path: 127.0.0.1 has no share 'nosuchshare'"):
        asyncio.run(source("nosuchshare/x").ping())
    with pytest.raises(SourceConfigError, match=r"drive_path: .* does not exist"):
        asyncio.run(source(drive + "/missing").ping())


def test_ping_when_nothing_listens_then_unavailable_naming_the_server():
    with socket.socket() as probe:  # a port just bound and released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = NetworkDriveDataSource(config("ingest", server_port=port))
    with pytest.raises(SourceUnavailable, match=f"cannot reach 127.0.0.1:{port} while signing in"):
        asyncio.run(unreachable.ping())


def test_configuration_when_invalid_then_every_problem_named():
    bad = NetworkDriveDataSource({"username": "", "server_ip": "a b", "server_port": 70000, "drive_path": "x/../y",
                                  "use_document_level_security": True})
    with pytest.raises(SourceConfigError) as error:
        _ = bad.settings
    message = str(error.value)
    for expected in ("username: required", "server_port: must be between 1 and 65535", "drive_path: expected",
                     "server_ip: expected a host name", "identity_mappings: required with use_document_level_security"):
        assert expected in message, message


# -- document-level security ---------------------------------------------------------------
def test_readers_when_aces_allow_deny_or_inherit_only_then_only_who_may_read_data():
    aces = [(0, 0, 0x120089, "S-1-22-2-1003"),     # group: read
            (0, 0, 0x0, "S-1-1-0"),                # Everyone: nothing
            (0, 0x08, 0x1F01FF, "S-1-3-0"),        # CREATOR OWNER, inherit only: children only
            (0, 0, 0x1F01FF, "S-1-5-21-1-2-3-1001"),
            (1, 0, 0x1, "S-1-5-21-1-2-3-1002"),    # denied read ...
            (0, 0, 0x1, "S-1-5-21-1-2-3-1002"),    # ... wins over its allow
            (0, 0, 0x80000000, "S-1-5-21-1-2-3-1004")]  # GENERIC_READ

    assert readers(aces) == ["sid:S-1-22-2-1003", "sid:S-1-5-21-1-2-3-1001", "sid:S-1-5-21-1-2-3-1004"]
    assert readers(None) == ["sid:S-1-1-0"]  # no DACL: everyone
    assert readers([]) == ["none"]  # an empty DACL: nobody (never an empty list: that would be public)


def test_identity_mappings_when_malformed_then_line_and_expectation_named():
    users = parse_identity_mappings("# name;sid;groups\nada;S-1-5-21-1-2-3-1001;S-1-22-2-5,S-1-22-2-6\nbo;S-1-22-1-7\n")
    assert [(u.name, u.sid, u.groups) for u in users] == [
        ("ada", "S-1-5-21-1-2-3-1001", ("S-1-22-2-5", "S-1-22-2-6")), ("bo", "S-1-22-1-7", ())]
    with pytest.raises(SourceConfigError, match="line 1: expected a SID such as .* got 'alice'"):
        parse_identity_mappings("alice;alice;")
    with pytest.raises(SourceConfigError, match="line 2: user SID S-1-1-9 is listed twice"):
        parse_identity_mappings("a;S-1-1-9\nb;S-1-1-9\n")


def _identities(path: Path) -> Path:
    listed = subprocess.run([str(SAMBA), "identities"], capture_output=True, text=True, check=True).stdout
    path.write_text(listed, encoding="utf-8")
    return path


def _dls_search(es, index: str, acl: dict[str, Any]) -> set[str]:
    """What Elastic's DLS guide does with a user's access-control document: the role
    descriptor's templated query, rendered (``{{#toJson}}access_control{{/toJson}}`` is its
    one placeholder; this test node has no mustache module), run as the search's filter."""
    template = acl["query"]["template"]
    rendered = template["source"].replace("{{#toJson}}access_control{{/toJson}}",
                                          json.dumps(template["params"]["access_control"]))
    hits = es.search(index=index, size=100, query={"bool": {"filter": [json.loads(rendered)]}})["hits"]["hits"]
    return {hit["_source"]["title"] for hit in hits}


def _user_sid(identities: Path, name: str) -> str:
    return next(u.sid for u in parse_identity_mappings(identities.read_text()) if u.name == name)


@pytest.mark.integration
def test_dls_when_acl_and_group_change_then_each_users_search_follows(folder, es, tmp_path):
    root, drive = folder
    write(root / "public.txt", "for everyone")
    write(root / "sales.txt", "for sales", group="smbsales", mode=0o640)
    write(root / "alice.txt", "alice only", owner="smbalice", mode=0o600)
    write(root / "bob.txt", "bob only", owner="smbbob", mode=0o600)
    identities = _identities(tmp_path / "identities.csv")
    index = f"test-smb-dls-{uuid.uuid4().hex[:8]}"
    acl_index = f".search-acl-filter-{index}"
    dls = config(drive, use_document_level_security=True, identity_mappings=str(identities))

    def sync_both() -> dict[str, set[str]]:
        content = run_sync(index=index, configuration=dls, service_type="network_drive")
        assert content["status"] == "completed", content.get("error")
        access = run_sync(index=acl_index, configuration=dls, service_type="network_drive", job_type="access_control")
        assert access["status"] == "completed", access.get("error")
        acls = index_docs(es, acl_index)
        return {name: _dls_search(es, index, acls[_user_sid(identities, name)]) for name in ("smbalice", "smbbob")}

    try:
        before = sync_both()
        assert before == {"smbalice": {"public.txt", "sales.txt", "alice.txt"}, "smbbob": {"public.txt", "bob.txt"}}
        acls = index_docs(es, acl_index)
        assert set(acls) == {_user_sid(identities, n) for n in ("smbingest", "smbalice", "smbbob")}
        alice = acls[_user_sid(identities, "smbalice")]
        assert alice["identity"] == {"username": "user:smbalice",
                                     "user_id": f"sid:{_user_sid(identities, 'smbalice')}"}
        assert "user:smbalice" in alice["query"]["template"]["params"]["access_control"]

        # the file's ACL (POSIX, as Samba maps it into the NT ACL) and a group membership change
        subprocess.run(["setfacl", "-m", "u:smbbob:r", str(root / "alice.txt")], check=True)
        (root / "public.txt").chmod(0o600)  # now root's only
        subprocess.run(["gpasswd", "-a", "smbbob", "smbsales"], check=True, capture_output=True)
        _identities(identities)

        after = sync_both()
        assert after == {"smbalice": {"sales.txt", "alice.txt"}, "smbbob": {"bob.txt", "alice.txt", "sales.txt"}}
    finally:
        subprocess.run(["gpasswd", "-d", "smbbob", "smbsales"], capture_output=True)
        es.indices.delete(index=index, ignore_unavailable=True)
        es.indices.delete(index=acl_index, ignore_unavailable=True)


@pytest.mark.integration
def test_access_control_when_a_user_vanishes_then_identity_deleted(folder, es, tmp_path):
    _, drive = folder
    identities = tmp_path / "identities.csv"
    identities.write_text("ada;S-1-5-21-1-2-3-1001;S-1-22-2-5\nbo;S-1-5-21-1-2-3-1002;\n", encoding="utf-8")
    acl_index = f".search-acl-filter-test-smb-{uuid.uuid4().hex[:8]}"
    dls = config(drive, use_document_level_security=True, identity_mappings=str(identities))
    try:
        first = run_sync(index=acl_index, configuration=dls, service_type="network_drive", job_type="access_control")
        assert first["status"] == "completed", first.get("error")
        assert set(index_docs(es, acl_index)) == {"S-1-5-21-1-2-3-1001", "S-1-5-21-1-2-3-1002"}

        identities.write_text("ada;S-1-5-21-1-2-3-1001;S-1-22-2-5\n", encoding="utf-8")
        second = run_sync(index=acl_index, configuration=dls, service_type="network_drive", job_type="access_control")

        assert second["status"] == "completed", second.get("error")
        assert set(index_docs(es, acl_index)) == {"S-1-5-21-1-2-3-1001"}
    finally:
        es.indices.delete(index=acl_index, ignore_unavailable=True)


@pytest.mark.integration
def test_access_control_when_dls_off_or_file_outside_roots_then_refused_before_writing(folder, tmp_path):
    _, drive = folder
    with pytest.raises(SourceConfigError, match="use_document_level_security: access-control syncs need it on"):
        list(source(drive).get_access_control())
    outside = NetworkDriveDataSource(
        config(drive, use_document_level_security=True, identity_mappings="/etc/passwd"), operator_settings=SETTINGS)
    with pytest.raises(SourceConfigError, match="identity_mappings: /etc/passwd is outside the folders"):
        list(outside.get_access_control())


@pytest.mark.integration
def test_cli_when_access_control_job_requested_then_daemon_writes_the_identities(folder, es, tmp_path):
    """The whole path: create-connector, a content sync and `sync --job-type access_control`
    through a real daemon (connector snapshot, job claim, `.search-acl-filter-<index>`)."""
    from launcher.indices import CONNECTORS_INDEX, ensure_indices
    from tests.helpers import DaemonProcess, cli, write_config

    root, drive = folder
    write(root / "alice.txt", "alice only", owner="smbalice", mode=0o600)
    identities = _identities(tmp_path / "identities.csv")
    connector_id = f"smb-dls-{uuid.uuid4().hex[:8]}"
    index = f"test-{connector_id}"
    ensure_indices(es)
    config_path = write_config(tmp_path / "config.yml", service={"connector_ids": [connector_id]})
    daemon = DaemonProcess(config_path, tmp_path / "daemon.log")
    try:
        sets = [arg for key, value in config(drive, use_document_level_security="true",
                                             identity_mappings=str(identities)).items()
                for arg in ("--set", f"{key}={value}")]
        created = cli("--action", "create-connector", "--connector-id", connector_id, "--service-type",
                      "network_drive", "--index-name", index, *sets, config=config_path)
        assert created.returncode == 0, created.stderr
        for job_type in ("full", "access_control"):
            synced = cli("--action", "sync", "--connector-id", connector_id, "--job-type", job_type, "--wait",
                         config=config_path, timeout=300)
            assert synced.returncode == 0, synced.stdout + synced.stderr

        (alice_file,) = index_docs(es, index).values()
        alice = _user_sid(identities, "smbalice")
        assert alice_file["_allow_access_control"] == [f"sid:{alice}"]
        acls = index_docs(es, f".search-acl-filter-{index}")
        assert acls[alice]["identity"]["username"] == "user:smbalice"
        assert _dls_search(es, index, acls[alice]) == {"alice.txt"}
        assert _dls_search(es, index, acls[_user_sid(identities, "smbbob")]) == set()
    finally:
        daemon.stop()
        es.options(ignore_status=404).delete(index=CONNECTORS_INDEX, id=connector_id, refresh=True)
        for name in (index, f".search-acl-filter-{index}"):
            es.indices.delete(index=name, ignore_unavailable=True)
