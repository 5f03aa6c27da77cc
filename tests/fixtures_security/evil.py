"""A module that must never be imported by the service: importing it leaves a marker file.

Connector and job documents may name it (``tests.fixtures_security.evil:Evil``) as their
``service_type``; only FQNs listed in config.yml may be imported, so the marker must
never appear.
"""

import os
from pathlib import Path

_marker = os.environ.get("EVIL_IMPORT_MARKER")
if _marker:
    Path(_marker).write_text(f"imported by pid {os.getpid()}\n", encoding="utf-8")


class Evil:
    def get_docs(self, *args, **kwargs):
        yield {"_id": "pwned"}, None
