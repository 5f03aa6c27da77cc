"""Timestamp cursors for incremental syncs: ``{"timestamp": "<ISO 8601 UTC>"}``.

A source that can find rows or documents changed since a moment stores the moment the
previous sync *started* (taken from the backend's clock) and re-reads from a little
before it (``CURSOR_OVERLAP``), so changes committed late or rounded to the second are
sent again rather than missed.

Example usage::

    self._sync_cursor = timestamp_cursor(server_now)
    since = cursor_timestamp(sync_cursor)          # None: read everything
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["CURSOR_OVERLAP", "timestamp_cursor", "cursor_timestamp"]

CURSOR_OVERLAP = timedelta(seconds=5)


def timestamp_cursor(moment: datetime) -> dict[str, str]:
    return {"timestamp": moment.isoformat()}


def cursor_timestamp(cursor: Mapping[str, Any] | None) -> datetime | None:
    """The cursor's moment as an aware UTC datetime; None when absent or unreadable."""
    try:
        value = datetime.fromisoformat(str((cursor or {})["timestamp"]))
    except (KeyError, TypeError, ValueError):
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
