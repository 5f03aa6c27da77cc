"""The content index (BYOEI): create it when missing, check its ingest pipeline, count it.

Mappings that work on any cluster (no analyzers from optional modules): dynamic mapping
for the source's fields, with the fields the service relies on declared. Shards and
replicas are the cluster's (its defaults and index templates), as Elastic's own service
leaves them, unless config.yml ``pipeline.content_index`` names them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError

__all__ = ["ensure_content_index", "ingest_pipeline_exists", "count_documents", "CONTENT_MAPPINGS"]

_LOGGER = logging.getLogger(__name__)

CONTENT_MAPPINGS: dict[str, Any] = {
    "dynamic": True,
    "properties": {
        "id": {"type": "keyword"},
        "_timestamp": {"type": "date"},
        "body": {"type": "text"},
        "_extract_binary_content": {"type": "boolean"},
        "_reduce_whitespace": {"type": "boolean"},
        "_run_ml_inference": {"type": "boolean"},
        # What a full sync compares documents by (transforms/digests.py, transforms/document_shape.py).
        "_shape_digest": {"type": "keyword"},
        "_content_digest": {"type": "keyword", "index": False, "doc_values": False},
        # Document-level security: who may read the document, searched on `.enum` by Elastic's DLS query.
        "_allow_access_control": {"type": "text", "fields": {"enum": {"type": "keyword", "ignore_above": 2048}}},
    },
}


def ensure_content_index(es: Elasticsearch, index: str, settings: Mapping[str, Any] | None = None) -> bool:
    """Create ``index`` with our mappings if it does not exist. True if it was created.

    ``settings``: index settings to create it with (e.g. ``{"number_of_shards": 2}``);
    whatever they leave out comes from the cluster (defaults, index templates).
    """
    if es.indices.exists(index=index):
        return False
    given = {name: value for name, value in (settings or {}).items() if value is not None}
    try:
        es.indices.create(index=index, mappings=CONTENT_MAPPINGS, settings={"index": given} if given else None)
    except ApiError as exc:
        if exc.error == "resource_already_exists_exception":
            return False
        raise
    _LOGGER.info("created content index %s", index)
    return True


def ingest_pipeline_exists(es: Elasticsearch, name: str | None) -> bool:
    if not name:
        return False
    try:
        es.ingest.get_pipeline(id=name)
        return True
    except NotFoundError:
        return False


def count_documents(es: Elasticsearch, index: str) -> int:
    try:
        es.indices.refresh(index=index)
        return int(es.count(index=index)["count"])
    except NotFoundError:
        return 0
