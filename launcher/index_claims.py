"""Atomic claims of content index names: of two ``create-connector`` at once, one wins.

:func:`launcher.index_ownership.check_index_ownership` lists the connectors and refuses an
index another one uses; but two processes that list at the same moment both find no
owner, and both write. So before it writes, the CLI *claims* the index name: a document
in the hidden index ``elastic-ingest-index-claims`` whose ``_id`` is the index name,
written with ``op_type=create``, which Elasticsearch performs once per ``_id``. The second
writer's create fails with a conflict; it reads the claim, and is refused unless the claim
is stale:

* the claim names the same connector (an update that keeps its index): nothing to do;
* its connector no longer exists (or is soft-deleted), or names another index now, and
  the claim is older than :data:`CLAIM_GRACE_SECONDS` (a connector being created right
  now has its claim and no document yet): the claim is taken over with a write
  conditional on its ``_seq_no``, so of two writers that both found it stale, one wins.

``delete-connector`` releases the claims of the connector, and ``update-connector
--index-name`` releases the old index's. Connectors written by Kibana or another client
have no claim: the listing check sees them, and the daemon checks every job it claims
(the last line, :mod:`launcher.index_ownership`).

Example usage::

    claim_index(store, "search-docs", "c1")     # raises IndexConflict if another connector has it
    release_index(store.es, "search-docs", "c1")
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from elasticsearch import ApiError, ConflictError, Elasticsearch, NotFoundError

from launcher.store import ConnectorStore
from sources.errors import IndexConflict

__all__ = ["CLAIMS_INDEX", "CLAIM_GRACE_SECONDS", "claim_index", "release_index"]

_LOGGER = logging.getLogger(__name__)

CLAIMS_INDEX = "elastic-ingest-index-claims"
#: A claim younger than this whose connector does not exist yet belongs to a ``create-connector`` in progress.
CLAIM_GRACE_SECONDS = 120.0
_ATTEMPTS = 5


def _ensure_index(es: Elasticsearch) -> None:
    if es.indices.exists(index=CLAIMS_INDEX):
        return
    try:
        es.indices.create(index=CLAIMS_INDEX, settings={"index": {"hidden": True, "auto_expand_replicas": "0-1"}},
                          mappings={"dynamic": False, "properties": {"connector_id": {"type": "keyword"}}})
    except ApiError as exc:
        if exc.error != "resource_already_exists_exception":  # created by another process meanwhile
            raise


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _age_seconds(stamp: Any) -> float:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(str(stamp))).total_seconds()
    except (TypeError, ValueError):
        return float("inf")  # unreadable: as old as can be


def _stale_because(store: ConnectorStore, index_name: str, claim: dict[str, Any]) -> str | None:
    """Why the claim no longer holds (None: it does)."""
    owner = claim.get("connector_id")
    connector = store.get_connector(owner) if isinstance(owner, str) and owner else None
    if connector is not None and not connector.get("deleted"):
        if connector.index_name == index_name:
            return None
        return f"connector {owner} now uses index {connector.index_name!r}"
    if _age_seconds(claim.get("claimed_at")) < CLAIM_GRACE_SECONDS:
        return None  # being created right now
    return f"connector {owner} no longer exists"


def claim_index(store: ConnectorStore, index_name: str, connector_id: str) -> None:
    """Claim ``index_name`` for ``connector_id``, atomically; raise IndexConflict if another connector holds it."""
    es = store.es
    _ensure_index(es)
    document = {"connector_id": connector_id, "index_name": index_name, "claimed_at": _now()}
    for _ in range(_ATTEMPTS):
        try:
            es.index(index=CLAIMS_INDEX, id=index_name, document=document, op_type="create", refresh=True)
            return
        except ConflictError:
            pass
        try:
            current = es.get(index=CLAIMS_INDEX, id=index_name)
        except NotFoundError:
            continue  # released meanwhile: try to create it again
        claim = current["_source"] or {}
        if claim.get("connector_id") == connector_id:
            return
        stale = _stale_because(store, index_name, claim)
        if stale is None:
            raise IndexConflict(
                f"index {index_name!r} is claimed by connector {claim.get('connector_id')!r} (since "
                f"{claim.get('claimed_at')}); each connector needs an index of its own (a full sync deletes every "
                "document its source did not yield): choose another index_name", connector_id)
        try:
            es.index(index=CLAIMS_INDEX, id=index_name, document=document, refresh=True,
                     if_seq_no=current["_seq_no"], if_primary_term=current["_primary_term"])
            _LOGGER.info("index %s: claim taken over from connector %s (%s)", index_name, claim.get("connector_id"),
                         stale)
            return
        except ConflictError:
            continue  # another writer took it over first: read again
    raise IndexConflict(f"index {index_name!r}: its claim kept changing ({_ATTEMPTS} attempts); try again",
                        connector_id)


def release_index(es: Elasticsearch, index_name: str, connector_id: str) -> None:
    """Give up ``connector_id``'s claim on ``index_name`` (another connector's claim is left alone)."""
    try:
        current = es.get(index=CLAIMS_INDEX, id=index_name)
    except NotFoundError:
        return
    if (current["_source"] or {}).get("connector_id") != connector_id:
        return
    try:
        es.delete(index=CLAIMS_INDEX, id=index_name, refresh=True, if_seq_no=current["_seq_no"],
                  if_primary_term=current["_primary_term"])
    except (ConflictError, NotFoundError):
        pass  # taken over or released meanwhile
