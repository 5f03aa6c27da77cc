"""A deliberately slow test source: ``count`` documents, ``delay_ms`` apart.

Used by the daemon tests to have a sync still running when they cancel it, SIGTERM or
SIGKILL its daemon. Declared in a test config as ``tests.fixtures_sources.slow:SlowSource``.
"""

from __future__ import annotations

import time
from typing import Any

from sources.base import BaseDataSource
from sources.errors import SourceUnavailable

__all__ = ["SlowSource", "IncrementalSlowSource"]


class SlowSource(BaseDataSource):
    """``count`` small documents with ids ``doc-0``..., one every ``delay_ms`` milliseconds."""

    name = "Slow (tests)"
    service_type = "slow"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            "count": {"label": "Documents", "type": "int", "display": "numeric", "order": 1, "default_value": 10,
                      "validations": [{"type": "greater_than", "constraint": -1}]},
            "delay_ms": {"label": "Delay (ms)", "type": "int", "display": "numeric", "order": 2, "default_value": 0,
                         "required": False},
            "token": {"label": "Token", "type": "str", "order": 3, "sensitive": True, "required": False},
            "fail_ping": {"label": "Fail ping", "type": "bool", "display": "toggle", "order": 4,
                          "default_value": False, "required": False},
        }

    async def ping(self) -> None:
        if self.configuration["fail_ping"] in (True, "true"):
            raise SourceUnavailable("the slow source refuses to answer (fail_ping is on)")

    def get_docs(self, filtering=None, partition=None):
        count = int(self.configuration["count"] or 0)
        delay = int(self.configuration["delay_ms"] or 0) / 1000.0
        for number in range(count):
            if delay:
                time.sleep(delay)
            yield {"_id": f"doc-{number}", "title": f"document {number}",
                   "_timestamp": "2024-01-01T00:00:00+00:00"}, None


class IncrementalSlowSource(SlowSource):
    """The slow source with incremental and document-level-security support (scheduling, access control)."""

    incremental_sync_enabled = True
    dls_enabled = True
    advanced_rules_enabled = True

    def get_docs_incrementally(self, sync_cursor, filtering=None):
        self._sync_cursor = {"seen": int(self.configuration["count"] or 0)}
        for doc, _ in self.get_docs(filtering):
            yield doc, None, "index"

    def get_access_control(self):
        """Two users, as Elastic's connectors shape identities (document-level security)."""
        for user in ("alice", "bob"):
            yield {"_id": user, "identity": {"username": user}, "query": {"template": {"params": {
                "access_control": [user]}}}}

    def validate_advanced_rules(self, advanced_rules: Any) -> list[str]:
        if isinstance(advanced_rules, dict) and "bad" in advanced_rules:
            return ["'bad' is not a known advanced rule"]
        return []
