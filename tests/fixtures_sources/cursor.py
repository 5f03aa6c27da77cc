"""A memory source whose new cursor can be stored but not read back, for the cursor-read test.

As an incremental read hands over its new cursor, it blocks reads of the progress index
(``index.blocks.read``: writes still pass), so the sync process stores the cursor record
and then fails to read it. The test lifts the block.
"""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch

from sources.testing import MemorySource
from transforms.progress import PROGRESS_INDEX

__all__ = ["CursorReadBlockingSource"]


class CursorReadBlockingSource(MemorySource):
    name = "Memory, cursor read blocked (tests)"
    service_type = "memory_cursor_blocked"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {**super().get_default_configuration(),
                "es_url": {"label": "Elasticsearch to block", "type": "str", "required": False, "default_value": ""}}

    def sync_cursor(self) -> dict[str, Any] | None:
        if self._sync_cursor is not None and self.configuration["es_url"]:
            with Elasticsearch(self.configuration["es_url"]) as es:
                es.indices.put_settings(index=PROGRESS_INDEX, settings={"index.blocks.read": True})
        return super().sync_cursor()
