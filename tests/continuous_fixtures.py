"""What the continuous-sync tests share: one connector's jobs, and its index compared with its source.

A test's helper subclasses :class:`StreamedConnector` with ``es``, ``connector_id`` and
``index`` set, and says what the source holds (:meth:`StreamedConnector.expected`) and what the
index holds (:meth:`StreamedConnector.indexed`), both as ``{document id: comparable value}``.

Example usage::

    class Folder(StreamedConnector):
        def expected(self): ...   # {id: (path, size, text)} of the files
        def indexed(self): ...    # the same, from the index

    folder.assert_equal()         # waits until equal; else says what is missing, extra or different
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from pipelines.options import default_prism_location
from tests.helpers import DaemonProcess, skip_or_fail, wait_for, write_config

__all__ = ["StreamedConnector", "SYNC_JOBS", "stream_daemon"]

SYNC_JOBS = ".elastic-connectors-sync-jobs"


def stream_daemon(folder: Path, sources: dict[str, Any]) -> dict[str, Any]:
    """A daemon for continuous syncs (fast polls, 1 s progress, its /metrics on a free port), as a
    holder: ``process`` (:class:`~tests.helpers.DaemonProcess`: stop it), ``config``, ``folder``,
    ``metrics`` (the URL). Skipped (failed under CI=true) without the Prism binary."""
    if not default_prism_location().is_file():
        skip_or_fail(f"no Prism binary at {default_prism_location()} (scripts/prism build)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = write_config(folder / "config.yml", sources=sources,
                          service={"idling": 0.5, "heartbeat": 2, "job_progress_interval": 1,
                                   "cancel_check_interval": 0.5, "metrics_address": f"127.0.0.1:{metrics_port}"})
    process = DaemonProcess(config, folder / "daemon.log")
    return {"process": process, "config": config, "folder": folder, "metrics": f"http://127.0.0.1:{metrics_port}"}


class StreamedConnector:
    """A continuous-sync test's connector: its jobs, and its index compared with the source."""

    what = "the source"

    def __init__(self, es: Any, config: Path, prefix: str):
        """``prefix``-<6 hex digits> names the connector and its index; ``config``: the daemon's."""
        self.es, self.config = es, config
        self.suffix = uuid.uuid4().hex[:6]
        self.connector_id = self.index = f"{prefix}-{self.suffix}"

    def expected(self) -> dict[str, Any]:
        """``{document id: value}`` of what the source holds now."""
        raise NotImplementedError

    def indexed(self) -> dict[str, Any]:
        """``{document id: value}`` of what the index holds now (same values as :meth:`expected`)."""
        raise NotImplementedError

    def equal(self) -> bool:
        try:
            return self.indexed() == self.expected()
        except Exception:  # noqa: BLE001 - no index yet
            return False

    def assert_equal(self, timeout: float = 60) -> None:
        """Wait until the index equals the source; else fail saying how they differ."""
        try:
            wait_for(self.equal, timeout=timeout, what=f"the index equal to {self.what}")
        except AssertionError:
            want, docs = self.expected(), self.indexed()
            missing = sorted(set(want) - set(docs))[:5]
            extra = sorted(set(docs) - set(want))[:5]
            wrong = [(k, want[k], docs[k]) for k in want if k in docs and docs[k] != want[k]][:5]
            jobs = [(j["status"], (j.get("metadata") or {}).get("stream"), j.get("error")) for j in self.jobs()]
            raise AssertionError(f"index differs from {self.what}: missing {missing}, extra {extra}, different "
                                 f"{wrong}; jobs {jobs}") from None

    def jobs(self) -> list[dict[str, Any]]:
        """The connector's jobs, oldest first."""
        self.es.indices.refresh(index=SYNC_JOBS)
        hits = self.es.search(index=SYNC_JOBS, size=50, sort=[{"created_at": "asc"}],
                              query={"term": {"connector.id": self.connector_id}})["hits"]["hits"]
        return [{"id": h["_id"], **h["_source"]} for h in hits]

    def running(self) -> dict[str, Any] | None:
        """The connector's job in progress, if any."""
        found = [j for j in self.jobs() if j["status"] == "in_progress"]
        return found[0] if found else None
