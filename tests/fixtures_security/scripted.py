"""ScriptedSource: a source whose behaviour is set by its configuration, for fault tests.

It yields ``count`` good documents (``_id`` ``doc-0`` ...), sleeping ``delay_ms`` before
each; then, ``malformed_repeat`` times, one document of each kind in ``malformed``:

* ``unserializable``: a value no JSON encoder can represent (dead-lettered by Normalize);
* ``too_large``: a body over ``pipeline.max_document_bytes`` (Normalize);
* ``bad_field``: an empty field name, which Elasticsearch rejects (the bulk item);
* ``mapping_conflict``: ``n`` as text where the index maps it as a number (the bulk item).

With ``fail_after`` >= 0 it raises ``RuntimeError(fail_message)`` after that many documents.
``token`` is a sensitive field: ``ping`` requires it, and it is never put in a document.
"""

from __future__ import annotations

import time
from typing import Any

from sources.base import BaseDataSource

MALFORMED_KINDS = ("unserializable", "too_large", "bad_field", "mapping_conflict")


class _Opaque:
    """Nothing in Normalize knows how to turn this into JSON."""


class ScriptedSource(BaseDataSource):
    name = "Scripted (tests)"
    service_type = "scripted"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            "count": {"label": "Documents", "type": "int", "display": "numeric", "order": 1, "value": 10},
            "delay_ms": {"label": "Delay per document (ms)", "type": "int", "display": "numeric", "order": 2,
                         "value": 0, "required": False},
            "fail_after": {"label": "Fail after", "type": "int", "display": "numeric", "order": 3, "value": -1,
                           "required": False},
            "fail_message": {"label": "Failure message", "type": "str", "order": 4,
                             "value": "scripted source failure", "required": False},
            "malformed": {"label": "Malformed kinds", "type": "str", "order": 5, "value": "", "required": False},
            "malformed_repeat": {"label": "Malformed repeat", "type": "int", "display": "numeric", "order": 6,
                                 "value": 1, "required": False},
            "token": {"label": "API token", "type": "str", "order": 7, "sensitive": True, "required": False,
                      "value": ""},
            "require_token": {"label": "Require token", "type": "bool", "display": "toggle", "order": 8,
                              "value": False, "required": False},
        }

    def _int(self, name: str) -> int:
        value = self.configuration[name]
        return int(value) if value not in (None, "") else 0

    async def ping(self) -> None:
        if self.configuration["require_token"] in (True, "true") and not self.configuration["token"]:
            raise ValueError("Scripted: an API token is required")

    def get_docs(self, filtering=None, partition=None):
        count, delay = self._int("count"), self._int("delay_ms") / 1000
        fail_after = self.configuration["fail_after"]
        fail_after = int(fail_after) if fail_after not in (None, "") else -1
        emitted = 0
        for number in range(count):
            if 0 <= fail_after <= emitted:
                raise RuntimeError(str(self.configuration["fail_message"]))
            if delay:
                time.sleep(delay)
            yield {"_id": f"doc-{number}", "title": f"document {number}", "n": number,
                   "_timestamp": "2024-01-01T00:00:00+00:00"}, None
            emitted += 1
        if 0 <= fail_after <= emitted:
            raise RuntimeError(str(self.configuration["fail_message"]))
        kinds = [k.strip() for k in str(self.configuration["malformed"] or "").split(",") if k.strip()]
        for repeat in range(self._int("malformed_repeat")):
            for kind in kinds:
                doc: dict[str, Any] = {"_id": f"bad-{kind}-{repeat}", "title": kind}
                if kind == "unserializable":
                    doc["value"] = _Opaque()
                elif kind == "too_large":
                    doc["body"] = "x" * 64 * 1024
                elif kind == "bad_field":
                    doc[""] = "an empty field name"
                elif kind == "mapping_conflict":
                    doc["n"] = "not a number"
                else:
                    raise ValueError(f"unknown malformed kind {kind!r}")
                yield doc, None
