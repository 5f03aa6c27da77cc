"""A source module that starts a thread when imported (see tests/test_sync_processes.py)."""

from __future__ import annotations

import threading
import time

from tests.fixtures_sources.probe import ProbeSource

__all__ = ["ThreadAtImportSource"]

threading.Thread(target=time.sleep, args=(3600,), name="started-at-import", daemon=True).start()


class ThreadAtImportSource(ProbeSource):
    """The probe, from a module whose import leaves a thread running."""
