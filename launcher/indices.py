"""The BYOC indices (PROTOCOL.md section 1): aliases over ``-v1`` indices, made when missing.

On a cluster where Elastic's templates already created them, they are left as they are;
we never delete them. Indices someone else created may lack the mappings our queries
need: :func:`check_mappings` adds missing fields (and re-indexes the documents in place so
they are found) and names every field of the wrong type, with the fix.

Used by :class:`launcher.index_store.IndexStore` (direct index access).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError

__all__ = ["CONNECTORS_INDEX", "JOBS_INDEX", "ensure_indices", "indices_exist", "CONNECTORS_MAPPINGS", "JOBS_MAPPINGS",
           "check_mappings", "QUERIED_FIELDS"]

CONNECTORS_INDEX = ".elastic-connectors"
JOBS_INDEX = ".elastic-connectors-sync-jobs"
_LOGGER = logging.getLogger(__name__)
#: How long to wait for protocol indices another process is creating to answer.
SHARD_WAIT_SECONDS = 30.0

_KEYWORD = {"type": "keyword"}
_DATE = {"type": "date"}
_LONG = {"type": "long"}
_INTEGER = {"type": "integer"}
_BOOL = {"type": "boolean"}
_OBJECT_NOT_INDEXED = {"type": "object", "enabled": False}

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
        "created_at": _DATE, "updated_at": _DATE, "api_key_secret_id": _KEYWORD, "description": _KEYWORD,
        "configuration": _OBJECT_NOT_INDEXED, "filtering": _OBJECT_NOT_INDEXED, "sync_cursor": _OBJECT_NOT_INDEXED,
        "features": _OBJECT_NOT_INDEXED, "scheduling": _OBJECT_NOT_INDEXED, "pipeline": _OBJECT_NOT_INDEXED,
        "custom_scheduling": _OBJECT_NOT_INDEXED,
    },
}

JOBS_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "connector": {"properties": {
            "id": _KEYWORD, "index_name": _KEYWORD, "service_type": _KEYWORD, "language": _KEYWORD,
            "configuration": _OBJECT_NOT_INDEXED, "filtering": _OBJECT_NOT_INDEXED, "pipeline": _OBJECT_NOT_INDEXED,
            "sync_cursor": _OBJECT_NOT_INDEXED,
        }},
        "status": _KEYWORD, "job_type": _KEYWORD, "trigger_method": _KEYWORD, "worker_hostname": _KEYWORD,
        "error": _KEYWORD,
        "created_at": _DATE, "started_at": _DATE, "completed_at": _DATE, "canceled_at": _DATE,
        "cancelation_requested_at": _DATE, "last_seen": _DATE,
        # PROTOCOL.md section 3: the job counters are integers (Elastic's templates agree).
        "indexed_document_count": _INTEGER, "indexed_document_volume": _INTEGER, "deleted_document_count": _INTEGER,
        "total_document_count": _INTEGER,
        "metadata": _OBJECT_NOT_INDEXED,
    },
}


def _field_mapping(es: Elasticsearch, alias: str, fields: list[str]) -> Any:
    """``GET alias/_mapping/field/...``, waiting out an index another process is creating.

    Until a new index is ready on the node, Elasticsearch answers a bare 404 (an existing
    index that lacks the fields answers 200 with empty mappings): we ask again, for at
    most ``SHARD_WAIT_SECONDS``, waiting for its primaries in between.
    """
    deadline = time.monotonic() + SHARD_WAIT_SECONDS
    while True:
        try:
            return es.indices.get_field_mapping(index=alias, fields=fields)
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise
        es.options(ignore_status=(404, 408)).cluster.health(index=alias, wait_for_status="yellow", timeout="5s")
        time.sleep(0.1)


def _ensure(es: Elasticsearch, alias: str, mappings: dict[str, Any]) -> bool:
    """Make ``alias`` resolve; True when this call created its index (and its shards are active)."""
    concrete = f"{alias}-v1"
    if es.indices.exists_alias(name=alias):
        return False
    if es.indices.exists(index=alias):
        return False  # a concrete index under the alias name (made by someone else): use it as it is
    if es.indices.exists(index=concrete):
        es.indices.put_alias(index=concrete, name=alias, is_write_index=True)
        return False
    try:
        es.indices.create(
            index=concrete,
            mappings=mappings,
            settings={"index": {"number_of_replicas": 0, "auto_expand_replicas": "0-1"}},
            aliases={alias: {"is_write_index": True}},
        )
        _LOGGER.info("created %s with alias %s", concrete, alias)
        return True
    except ApiError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
        return False  # another process created it meanwhile


def indices_exist(es: Elasticsearch) -> bool:
    """Whether ``.elastic-connectors`` and ``.elastic-connectors-sync-jobs`` both resolve."""
    return all(es.indices.exists_alias(name=alias) or es.indices.exists(index=alias)
               for alias in (CONNECTORS_INDEX, JOBS_INDEX))


def ensure_indices(es: Elasticsearch) -> None:
    """Make sure ``.elastic-connectors`` and ``.elastic-connectors-sync-jobs`` resolve, and answer.

    An index another process created a moment ago (two commands on a fresh cluster) may
    not have its primary shard yet: searches fail (503) until it does. So unless both were
    created here (the create waits for the shards), wait for them (``yellow``, at most
    ``SHARD_WAIT_SECONDS``; usually an instant answer).
    """
    created = [_ensure(es, CONNECTORS_INDEX, CONNECTORS_MAPPINGS), _ensure(es, JOBS_INDEX, JOBS_MAPPINGS)]
    if not all(created):
        answer = es.options(ignore_status=(404, 408)).cluster.health(
            index=f"{CONNECTORS_INDEX},{JOBS_INDEX}", wait_for_status="yellow", timeout=f"{SHARD_WAIT_SECONDS:g}s")
        if answer.meta.status != 200 or answer.body.get("timed_out"):
            _LOGGER.warning("%s, %s: their primary shards are not all active (cluster health %s)", CONNECTORS_INDEX,
                            JOBS_INDEX, answer.body.get("status") if isinstance(answer.body, dict) else "?")


# The fields the service queries (terms filters, sorts, aggregations), and the types
# under which those queries work. Anything else is only read from ``_source``.
_KEYWORDS = ("keyword", "constant_keyword")
_DATES = ("date", "date_nanos")
_NUMBERS = ("integer", "long", "short", "byte", "unsigned_long")
QUERIED_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    CONNECTORS_INDEX: {"service_type": _KEYWORDS, "index_name": _KEYWORDS, "status": _KEYWORDS,
                       "last_sync_status": _KEYWORDS, "deleted": ("boolean",), "is_native": ("boolean",)},
    JOBS_INDEX: {"connector.id": _KEYWORDS, "connector.service_type": _KEYWORDS, "status": _KEYWORDS,
                 "job_type": _KEYWORDS, "created_at": _DATES, "indexed_document_count": _NUMBERS},
}
_PROTOCOL_MAPPINGS = {CONNECTORS_INDEX: CONNECTORS_MAPPINGS, JOBS_INDEX: JOBS_MAPPINGS}


def _protocol_mapping(alias: str, path: str) -> dict[str, Any]:
    """The protocol's mapping of ``path`` (``connector.id``) as a put-mapping ``properties`` tree."""
    head, _, tail = path.partition(".")
    spec = _PROTOCOL_MAPPINGS[alias]["properties"][head]
    if not tail:
        return {head: spec}
    return {head: {"properties": {tail: spec["properties"][tail]}}}


def _mapped_types(es: Elasticsearch, alias: str, fields: list[str]) -> dict[str, dict[str, str | None]]:
    """``{concrete index: {field: type or None (unmapped)}}`` for the indices behind ``alias``.

    Another process may have created the index a moment ago (two ``create-connector`` on a
    fresh cluster): until its primary shard starts, Elasticsearch answers this request with
    a bare 404; :func:`_field_mapping` waits for it.
    """
    result = _field_mapping(es, alias, fields)
    types: dict[str, dict[str, str | None]] = {}
    for index, body in result.body.items():
        mapped = body.get("mappings") or {}
        types[index] = {}
        for field in fields:
            leaf = field.rsplit(".", 1)[-1]
            mapping = ((mapped.get(field) or {}).get("mapping") or {}).get(leaf) or {}
            types[index][field] = mapping.get("type") if mapping else None
    return types


def _reindex_in_place(es: Elasticsearch, index: str, page: int = 500) -> int:
    """Index every document of ``index`` again as it is, so fields mapped since are searchable.

    Each write is conditional on the ``_seq_no`` read: a document somebody changes
    meanwhile is left alone (their write indexed it already). ``_update_by_query`` would do
    the same, but not every distribution has it (the integration-test build lacks it).
    """
    done, after = 0, None
    while True:
        kwargs: dict[str, Any] = {"search_after": after} if after is not None else {}
        hits = es.search(index=index, size=page, sort=[{"_doc": "asc"}], seq_no_primary_term=True,
                         query={"match_all": {}}, **kwargs)["hits"]["hits"]
        if not hits:
            break
        operations: list[dict[str, Any]] = []
        for hit in hits:
            operations += [{"index": {"_index": index, "_id": hit["_id"], "if_seq_no": hit["_seq_no"],
                                      "if_primary_term": hit["_primary_term"]}}, hit["_source"]]
        es.bulk(operations=operations, refresh=True)
        done += len(hits)
        after = hits[-1]["sort"]
    return done


def check_mappings(es: Elasticsearch) -> list[str]:
    """Make the fields the service queries usable; return what cannot be fixed here.

    A field that is not mapped gets the protocol's mapping (put mapping), and the
    documents already there are re-indexed in place (``_update_by_query``) so queries
    find them. A field mapped with another type (e.g. ``text``, as dynamic mapping makes
    it) cannot be changed in place: it is returned as a problem naming the index, the
    field, both types and the fix.
    """
    problems: list[str] = []
    for alias, wanted in QUERIED_FIELDS.items():
        for index, types in _mapped_types(es, alias, list(wanted)).items():
            missing = [field for field, kind in types.items() if kind is None]
            wrong = [f"{field!r} is mapped as {kind!r} (the protocol needs {wanted[field][0]!r})"
                     for field, kind in types.items() if kind is not None and kind not in wanted[field]]
            if wrong:
                problems.append(
                    f"{index}: {'; '.join(wrong)}, so the service's queries cannot match them. Fix: create a new "
                    f"index with the protocol's mappings (docs/operations.md, 'Indices made by another client'), "
                    f"_reindex {index} into it and point the alias {alias} at it"
                )
            if missing:
                properties: dict[str, Any] = {}
                for field in missing:
                    for head, spec in _protocol_mapping(alias, field).items():
                        if "properties" in spec and "properties" in properties.get(head, {}):
                            properties[head]["properties"].update(spec["properties"])
                        else:
                            properties[head] = spec
                es.indices.put_mapping(index=index, properties=properties)
                count = _reindex_in_place(es, index)
                _LOGGER.warning("%s lacked the protocol's mapping of %s: added, and its %d document(s) re-indexed",
                                index, ", ".join(missing), count)
    return problems
