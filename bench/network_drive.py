"""The network drive source's scenario: the directory scenario's files on the Samba share.

:func:`bench.directory.folder_scenario` with :class:`ShareTarget`: ``count`` files of ~1 KB
written into a folder of the share of ``scripts/servers/samba`` (on this machine: the files
are written to its folder on disk before the clock starts), read over SMB (127.0.0.1:1445)
by one ``network_drive`` connector through the daemon: a full sync, then a no-change
resync. The source also indexes each folder as a document (as Elastic's connector does), so
a sync indexes ``count + subfolders`` documents; docs/s counts the files.

Example usage::

    from bench.directory import folder_scenario
    result = folder_scenario(bench, count=100_000, target=ShareTarget())
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from bench.ours import INGEST_PIPELINE, REPO, Service

__all__ = ["ShareTarget", "FQN"]

FQN = "sources.network_drive:NetworkDriveDataSource"
_SAMBA = REPO / "scripts" / "servers" / "samba"


class ShareTarget:
    """Files in a folder of the Samba test share, read by the ``network_drive`` source."""

    source, tag = "network_drive", "smb"

    def __init__(self) -> None:
        self.port = int(os.environ.get("SMB_PORT", "1445"))
        self.share = Path(os.environ.get("SMB_HOME_DIR") or REPO / ".servers" / "samba") / "share"

    def folder(self, bench: Any, tag: str) -> Path:
        subprocess.run([str(_SAMBA), "start"], check=True, stdout=subprocess.DEVNULL)  # idempotent
        return self.share / f"bench-{tag}-{uuid.uuid4().hex[:8]}"

    def service(self, bench: Any, workdir: Path, root: Path, connector_ids: list[str]) -> Service:
        return Service(bench.es_url, workdir, pipeline=bench.pipeline, connector_ids=connector_ids,
                       service=bench.service_overrides, sources={"network_drive": {"class": FQN}})

    def create_connector(self, service: Service, connector_id: str, index: str, root: Path) -> None:
        service.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "network_drive",
                    "--index-name", index, "--pipeline", INGEST_PIPELINE, "--json",
                    "--set", "server_ip=127.0.0.1", "--set", f"server_port={self.port}",
                    "--set", "username=smbingest", "--set", "password=ingest-secret",
                    "--set", f"drive_path=ingest/{root.name}")

    def folder_documents(self, subfolders: int) -> int:
        return subfolders  # each folder is a document too

    def clean(self, root: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)
