"""The document shape: what, besides the source's data, decides what a synced document holds.

A full sync skips documents whose ``_timestamp`` (or content digest) did not change. That
is only right while the settings that turn a source's data into a document stay the same:
the connector's ingest pipeline, its pipeline flags (``extract_binary_content``,
``reduce_whitespace``, ``run_ml_inference``), the service's text extraction
(``pipeline.extract_text``, ``pipeline.max_download_bytes``), and the source's service type,
configuration and advanced sync rules (an SQL query may select other columns under the
same ids).

Every document records the shape it was written with, in ``_shape_digest``: three 32-bit
XXH3 digests in hex, one per part (pipeline, document settings, source), 24 characters.
The digests a full sync compares (:mod:`transforms.digests`) combine the timestamp with
that shape, so a document written with another shape never compares as unchanged and is
written again, while deletions work as always. A sync stopped half way after a change
resumes where it stopped: documents already written with the new shape are skipped.

Sensitive configuration values (passwords, keys) are left out of the shape: rotating a
credential does not change what a document holds, and re-writing a whole index for it
would only cost. No secret ever enters a digest. Nor do the fields a source declares
``document_neutral_fields`` (page sizes, partitions: how it is read, not what a document
holds), nor ``continuous_sync`` (whether the service streams the source).

Example usage::

    shape = document_shape(ingest_pipeline="search-default-ingestion", pipeline_flags={"_reduce_whitespace": True},
                           extract_text=True, max_download_bytes=10 << 20,
                           service_type="postgresql", configuration={"tables": "*"})
    reshaped = reshaped_documents(es, "search-orders", shape)   # None, or (count, the shape of one of them)
    if reshaped:
        print(describe_reshape(*reshaped, shape))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import xxhash

__all__ = ["SHAPE_FIELD", "SHAPE_VERSION", "document_shape", "reshaped_documents", "describe_reshape"]

_LOGGER = logging.getLogger(__name__)
#: The field every synced document records its shape in.
SHAPE_FIELD = "_shape_digest"
#: Part of the document settings: a release that shapes documents differently (normalization) bumps it.
SHAPE_VERSION = 1
_PARTS = ("another ingest pipeline", "other pipeline flags or text extraction settings",
          "another source configuration or advanced sync rules")


def _part(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return f"{xxhash.xxh3_64_intdigest(text) & 0xFFFFFFFF:08x}"


def document_shape(*, ingest_pipeline: str | None, pipeline_flags: Mapping[str, Any], extract_text: bool,
                   max_download_bytes: int, service_type: str, configuration: Mapping[str, Any],
                   advanced_rules: Any = None) -> str:
    """The 24-character shape of the documents written with these settings.

    ``ingest_pipeline``: the pipeline the documents go through (None: none, e.g. it does
    not exist); ``configuration``: the source's values that shape documents, ``field -> value``
    (not the sensitive ones, nor its ``document_neutral_fields``: tuning, or the data itself).
    """
    return (_part(ingest_pipeline or None)
            + _part([SHAPE_VERSION, dict(pipeline_flags), bool(extract_text), int(max_download_bytes)])
            + _part([service_type, dict(configuration), advanced_rules or None]))


def reshaped_documents(es: Any, index: str, shape: str) -> tuple[int, str | None] | None:
    """How many documents of ``index`` were written with another shape, and one of their shapes.

    None when there is none, the index does not exist, or it cannot be known (the full
    sync's digests still send those documents again: only the reason is not told).
    """
    from elasticsearch import NotFoundError

    try:
        found = es.search(index=index, size=1, source=[SHAPE_FIELD], track_total_hits=True,
                          query={"bool": {"must_not": [{"term": {SHAPE_FIELD: shape}}]}},
                          filter_path="hits.total,hits.hits._source")
    except NotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - only the reason is lost
        _LOGGER.warning("index %s: cannot tell whether its documents were written with other settings: %s",
                        index, exc)
        return None
    hits = found.get("hits") or {}
    count = int((hits.get("total") or {}).get("value") or 0)
    if not count:
        return None
    sources = [hit.get("_source") or {} for hit in hits.get("hits") or ()]
    other = sources[0].get(SHAPE_FIELD) if sources else None
    return count, other if isinstance(other, str) else None


def describe_reshape(count: int, other: str | None, shape: str) -> str:
    """Why the documents of :func:`reshaped_documents` are written again, in one sentence."""
    if other is None or len(other) != len(shape):
        why = "an earlier release, which did not record the settings that shaped them"
    else:
        changed = [text for n, text in enumerate(_PARTS) if other[8 * n:8 * n + 8] != shape[8 * n:8 * n + 8]]
        why = " and ".join(changed) or "other settings"
    return f"{count:,} document(s) in the index were written with {why}: they are all written again"
