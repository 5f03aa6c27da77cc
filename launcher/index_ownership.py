"""One connector per content index: whoever wrote the connector documents.

A full sync deletes every document of its index that its source did not yield, so two
connectors sharing an index delete each other's documents, and an alias over several
indices reaches documents nobody synced. :func:`check_index_ownership` refuses both:

* the index name is an alias over more than one index, or a data stream;
* another connector (not soft-deleted, any service type, served here or not) names the
  same index, or a name that resolves to the same index (the index, or an alias of it).

It is called by ``create-connector`` / ``update-connector`` before they write, and by the
daemon for every job it claims, before the sync starts (so connector documents written
by Kibana or any other client cannot cause it either): the job then fails with the reason
and nothing is written or deleted.

Example usage::

    check_index_ownership(store, "search-docs", connector_id="abc")   # raises IndexConflict

Connectors are listed through the protocol's store (whichever backend); the content
index's aliases are read from Elasticsearch (``view_index_metadata`` on content indices).
"""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch, NotFoundError

from launcher.store import ConnectorStore
from sources.errors import IndexConflict

__all__ = ["check_index_ownership", "names_of_index", "IndexConflict"]


def _resolve(es: Elasticsearch, name: str) -> dict[str, Any] | None:
    try:
        return dict(es.indices.resolve_index(name=name, expand_wildcards="all"))
    except NotFoundError:
        return None


def names_of_index(es: Elasticsearch, index_name: str, connector_id: str | None = None) -> set[str]:
    """Every name that reaches the index ``index_name`` writes to: the index and its aliases.

    Raises IndexConflict when ``index_name`` is an alias over several indices or a data stream.
    """
    resolved = _resolve(es, index_name)
    if resolved is None:
        return {index_name}  # not created yet: the first sync creates it under this name
    if resolved.get("data_streams"):
        raise IndexConflict(f"index_name {index_name!r} is a data stream; a connector needs an index "
                            "(it updates and deletes documents)", connector_id)
    for alias in resolved.get("aliases") or []:
        if alias.get("name") == index_name:
            indices = sorted(alias.get("indices") or [])
            if len(indices) != 1:
                raise IndexConflict(
                    f"index_name {index_name!r} is an alias over {len(indices)} indices ({', '.join(indices)}); "
                    "a connector owns exactly one index: name the index itself, or an alias over one index",
                    connector_id)
            return {index_name} | names_of_index(es, indices[0], connector_id)
    names = {index_name}
    for index in resolved.get("indices") or []:
        names.add(index["name"])
        names.update(index.get("aliases") or [])
    return names


def check_index_ownership(store: ConnectorStore, index_name: str, connector_id: str | None) -> None:
    """Raise IndexConflict unless the connector ``connector_id`` may own ``index_name`` alone."""
    names = names_of_index(store.es, index_name, connector_id)
    others = [c for c in store.list_connectors() if c.id != connector_id and c.index_name in names]
    if not others:
        return
    described = ", ".join(
        f"{c.id!r} ({c.service_type}"
        + (f", index_name {c.index_name!r}" if c.index_name != index_name else "") + ")" for c in others)
    raise IndexConflict(
        f"index {index_name!r} is already the index of connector {described}; each connector needs an index of "
        "its own (a full sync deletes every document its source did not yield): choose another index_name",
        connector_id)
