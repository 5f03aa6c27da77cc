"""The BYOC indices (PROTOCOL.md section 1): aliases over ``-v1`` indices, made when missing.

On a cluster where Elastic's templates already created them, they are left as they are;
we never delete them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from elasticsearch import ApiError, Elasticsearch
from elasticsearch.exceptions import ElasticsearchWarning

__all__ = ["CONNECTORS_INDEX", "JOBS_INDEX", "ensure_indices", "indices_exist", "CONNECTORS_MAPPINGS", "JOBS_MAPPINGS"]

warnings.filterwarnings("ignore", category=ElasticsearchWarning)  # dot-prefixed index names

CONNECTORS_INDEX = ".elastic-connectors"
JOBS_INDEX = ".elastic-connectors-sync-jobs"
_LOGGER = logging.getLogger(__name__)

_KEYWORD = {"type": "keyword"}
_DATE = {"type": "date"}
_LONG = {"type": "long"}
_BOOL = {"type": "boolean"}

CONNECTORS_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "service_type": _KEYWORD, "index_name": _KEYWORD, "name": _KEYWORD, "status": _KEYWORD,
        "last_sync_status": _KEYWORD, "is_native": _BOOL, "deleted": _BOOL, "api_key_id": _KEYWORD,
        "language": _KEYWORD, "error": _KEYWORD, "last_sync_error": _KEYWORD, "sync_now": _BOOL,
        "last_access_control_sync_status": _KEYWORD, "last_access_control_sync_error": _KEYWORD,
        "last_seen": _DATE, "last_synced": _DATE, "last_sync_scheduled_at": _DATE,
        "last_incremental_sync_scheduled_at": _DATE, "last_access_control_sync_scheduled_at": _DATE,
        "last_indexed_document_count": _LONG, "last_deleted_document_count": _LONG,
        "configuration": {"type": "object", "enabled": False},
        "filtering": {"type": "object", "enabled": False},
        "sync_cursor": {"type": "object", "enabled": False},
        "features": {"type": "object", "enabled": False},
        "scheduling": {"type": "object", "enabled": False},
        "pipeline": {"type": "object", "enabled": False},
    },
}

JOBS_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "connector": {"properties": {
            "id": _KEYWORD, "index_name": _KEYWORD, "service_type": _KEYWORD, "language": _KEYWORD,
            "configuration": {"type": "object", "enabled": False},
            "filtering": {"type": "object", "enabled": False},
            "pipeline": {"type": "object", "enabled": False},
            "sync_cursor": {"type": "object", "enabled": False},
        }},
        "status": _KEYWORD, "job_type": _KEYWORD, "trigger_method": _KEYWORD, "worker_hostname": _KEYWORD,
        "error": _KEYWORD,
        "created_at": _DATE, "started_at": _DATE, "completed_at": _DATE, "canceled_at": _DATE,
        "cancelation_requested_at": _DATE, "last_seen": _DATE,
        "indexed_document_count": _LONG, "indexed_document_volume": _LONG, "deleted_document_count": _LONG,
        "total_document_count": _LONG,
        "metadata": {"type": "object", "enabled": False},
    },
}


def _ensure(es: Elasticsearch, alias: str, mappings: dict[str, Any]) -> None:
    concrete = f"{alias}-v1"
    if es.indices.exists_alias(name=alias):
        return
    if es.indices.exists(index=alias):
        return  # a concrete index under the alias name (made by someone else): use it as it is
    if es.indices.exists(index=concrete):
        es.indices.put_alias(index=concrete, name=alias, is_write_index=True)
        return
    try:
        es.indices.create(
            index=concrete,
            mappings=mappings,
            settings={"index": {"number_of_replicas": 0, "auto_expand_replicas": "0-1"}},
            aliases={alias: {"is_write_index": True}},
        )
        _LOGGER.info("created %s with alias %s", concrete, alias)
    except ApiError as exc:
        if exc.error != "resource_already_exists_exception":
            raise


def indices_exist(es: Elasticsearch) -> bool:
    """Whether ``.elastic-connectors`` and ``.elastic-connectors-sync-jobs`` both resolve."""
    return all(es.indices.exists_alias(name=alias) or es.indices.exists(index=alias)
               for alias in (CONNECTORS_INDEX, JOBS_INDEX))


def ensure_indices(es: Elasticsearch) -> None:
    """Make sure ``.elastic-connectors`` and ``.elastic-connectors-sync-jobs`` resolve."""
    _ensure(es, CONNECTORS_INDEX, CONNECTORS_MAPPINGS)
    _ensure(es, JOBS_INDEX, JOBS_MAPPINGS)
