"""Test sources that report the process they run in, for the warm sync process's tests.

:class:`ProbeSource` yields one document describing its sync process: pid, process group
and session, parent, the value of the ``PROBE_SECRET`` environment variable, and how many
sources this process built before (a module global: a process that ran an earlier sync
would show it). :class:`ThreadAtImportSource` does the same from a module that starts a
thread when imported, which makes a warm process refuse to fork.
"""

from __future__ import annotations

import os
from typing import Any

from sources.base import BaseDataSource

__all__ = ["ProbeSource", "BUILT"]

#: Sources built in this process (a fresh sync process starts at 0).
BUILT = [0]


class ProbeSource(BaseDataSource):
    """One document: what its sync process looks like."""

    name = "Probe (tests)"
    service_type = "probe"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {"label": {"label": "Label", "type": "str", "order": 1, "default_value": "probe", "required": False}}

    def __init__(self, configuration: Any = None, **kwargs: Any):
        super().__init__(configuration=configuration, **kwargs)
        BUILT[0] += 1

    def get_docs(self, filtering=None, partition=None):
        yield {"_id": str(self.configuration["label"]), "pid": os.getpid(), "pgid": os.getpgid(0),
               "sid": os.getsid(0), "ppid": os.getppid(), "secret": os.environ.get("PROBE_SECRET"),
               "built_before": BUILT[0] - 1, "threads_at_start": len(os.listdir("/proc/self/task"))}, None
