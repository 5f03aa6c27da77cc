"""Documents written by Elastic's own CLI and connector service, for compatibility tests.

``tests/fixtures_elastic/`` holds them byte for byte as shared/fixtures/elastic-framework
has them (its README says who wrote each). Tests use them as they are, replacing only
what must be unique or real here: the ``{directory}`` placeholder, the connector id and
the content index name (the BYOC indices are shared by every test).

:data:`CONNECTOR_FIELDS` and :data:`JOB_FIELDS` are PROTOCOL.md sections 2 and 3 as data:
every field, and the JSON types its type allows. :func:`protocol_type_problems` checks a
document against them.

Example usage::

    doc = elastic_document("connector-created-by-elastic-cli.json", directory=str(folder))
    insert_connector(es, connector_id, doc, index_name="test-x")
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["FIXTURES", "elastic_document", "insert_connector", "insert_job", "CONNECTOR_FIELDS", "JOB_FIELDS",
           "protocol_type_problems", "poll_until_job_final"]

FIXTURES = Path(__file__).resolve().parent / "fixtures_elastic"
_DATE, _KEYWORD, _NULL = "date", "keyword", type(None)

# PROTOCOL.md section 2: field -> allowed types ("date" is an ISO 8601 string or null).
CONNECTOR_FIELDS: dict[str, tuple[Any, ...]] = {
    "service_type": (str,), "index_name": (str,), "name": (str,), "description": (str, _NULL),
    "language": (str, _NULL), "is_native": (bool,), "api_key_id": (str, _NULL), "configuration": (dict,),
    "status": (str,), "error": (str, _NULL), "last_seen": (_DATE,), "last_sync_status": (str, _NULL),
    "last_sync_error": (str, _NULL), "last_synced": (_DATE,), "last_sync_scheduled_at": (_DATE,),
    "last_incremental_sync_scheduled_at": (_DATE,), "last_access_control_sync_scheduled_at": (_DATE,),
    "last_indexed_document_count": (int,), "last_deleted_document_count": (int,), "scheduling": (dict,),
    "pipeline": (dict,), "filtering": (list,), "features": (dict,), "sync_cursor": (dict, _NULL),
    "sync_now": (bool,), "deleted": (bool,),
}
# PROTOCOL.md section 3.
JOB_FIELDS: dict[str, tuple[Any, ...]] = {
    "connector": (dict,), "job_type": (str,), "trigger_method": (str,), "status": (str,), "error": (str, _NULL),
    "created_at": (_DATE,), "started_at": (_DATE,), "completed_at": (_DATE,), "canceled_at": (_DATE,),
    "cancelation_requested_at": (_DATE,), "last_seen": (_DATE,), "indexed_document_count": (int,),
    "indexed_document_volume": (int,), "deleted_document_count": (int,), "total_document_count": (int,),
    "worker_hostname": (str, _NULL), "metadata": (dict,),
}
_SNAPSHOT_FIELDS = ("id", "configuration", "filtering", "index_name", "language", "pipeline", "service_type")


def elastic_document(name: str, *, directory: str | None = None) -> dict[str, Any]:
    """A fixture document as written by Elastic's software (``{directory}`` replaced when given)."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    if directory is not None:
        text = text.replace("{directory}", directory.replace("\\", "\\\\"))
    return json.loads(text)


def insert_connector(es: Any, connector_id: str, doc: dict[str, Any], *, index_name: str) -> dict[str, Any]:
    """Index ``doc`` as connector ``connector_id`` for content index ``index_name`` (as Elastic's CLI would)."""
    from launcher.indices import CONNECTORS_INDEX

    doc = copy.deepcopy(doc)
    doc["index_name"] = index_name
    doc["name"] = connector_id
    es.index(index=CONNECTORS_INDEX, id=connector_id, document=doc, refresh=True)
    return doc


def insert_job(es: Any, doc: dict[str, Any], *, connector_id: str, index_name: str, **fields: Any) -> str:
    """Index ``doc`` as a job of ``connector_id`` (its snapshot's id and index changed, ``fields`` set)."""
    from launcher.indices import JOBS_INDEX

    doc = copy.deepcopy(doc)
    doc["connector"]["id"] = connector_id
    doc["connector"]["index_name"] = index_name
    doc.update(fields)
    return es.index(index=JOBS_INDEX, document=doc, refresh=True)["_id"]


def _type_ok(value: Any, kinds: tuple[Any, ...]) -> bool:
    for kind in kinds:
        if kind == _DATE:
            if value is None:
                return True
            if isinstance(value, str):
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                    return True
                except ValueError:
                    return False
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        elif kind is not int and isinstance(value, kind):
            return True
    return False


def protocol_type_problems(doc: dict[str, Any], fields: dict[str, tuple[Any, ...]]) -> list[str]:
    """Every protocol field missing from ``doc`` or of another type (empty: the document is whole)."""
    problems = [f"{name}: missing" for name in fields if name not in doc]
    problems += [f"{name}: {doc[name]!r} is not of type {'/'.join(getattr(k, '__name__', str(k)) for k in kinds)}"
                 for name, kinds in fields.items() if name in doc and not _type_ok(doc[name], kinds)]
    if fields is JOB_FIELDS and isinstance(doc.get("connector"), dict):
        problems += [f"connector.{name}: missing" for name in _SNAPSHOT_FIELDS if name not in doc["connector"]]
    return problems


def poll_until_job_final(daemon: Any, es: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll ``daemon`` (in this process) until job ``job_id`` ends; its document."""
    from launcher.indices import JOBS_INDEX

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.poll_once()
        job = es.get(index=JOBS_INDEX, id=job_id)["_source"]
        if job["status"] in ("completed", "error", "canceled"):
            daemon.wait_idle(30)  # the supervisor thread has written the connector too
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end within {timeout}s")
