"""The Elasticsearch privileges the service needs, written once.

docs/security.md shows this table, the least-privilege test (tests/test_least_privilege.py)
runs the daemon with an API key granted exactly these, and the service checks them with
``_security/user/_has_privileges`` (which any authenticated user may call):

* the daemon at start-up (cluster, the BYOC indices, the progress index; and what creating
  the BYOC indices takes, when they do not exist yet): it refuses to start, listing every
  missing privilege;
* each job when it is claimed (its content index): the job fails, listing them, before
  anything is read or written.

On a cluster without security (nothing to check) both checks pass.

Example usage::

    role = role_descriptor(["search-*"])            # for POST _security/api_key role_descriptors
    missing = missing_privileges(es, "search-docs") # [] or ["search-docs: delete", ...]
"""

from __future__ import annotations

from typing import Any

from elasticsearch import ApiError, Elasticsearch

from launcher.index_claims import CLAIMS_INDEX
from launcher.indices import CONNECTORS_INDEX, JOBS_INDEX
from sources.errors import InsufficientPrivileges
from transforms.progress import PROGRESS_INDEX

__all__ = ["CLUSTER", "SERVICE_INDICES", "FIRST_START", "CONNECTOR_API_CLUSTER", "CONTENT_INDEX", "role_descriptor",
           "missing_privileges", "check_privileges", "check_service_privileges", "InsufficientPrivileges"]

#: Cluster privileges: health at start-up (monitor); whether a connector's ingest pipeline exists.
CLUSTER: tuple[str, ...] = ("monitor", "read_pipeline")

# Each entry names an alias and the concrete indices behind it (not ".elastic-connectors*",
# which would also match the jobs' indices).
_CONNECTORS = (CONNECTORS_INDEX, f"{CONNECTORS_INDEX}-v*")
_JOBS = (JOBS_INDEX, f"{JOBS_INDEX}-v*")

#: Index privileges on the indices the service itself keeps, by names: connectors and jobs
#: (read, written, their aliases checked at start-up), the workers' live counters.
SERVICE_INDICES: dict[tuple[str, ...], tuple[str, ...]] = {
    _CONNECTORS: ("read", "write", "view_index_metadata"),
    _JOBS: ("read", "write", "view_index_metadata"),
    (PROGRESS_INDEX,): ("read", "write", "view_index_metadata", "create_index", "maintenance"),
    # The CLI's claims of content index names (launcher/index_claims.py).
    (CLAIMS_INDEX,): ("read", "write", "view_index_metadata", "create_index"),
}

#: Only on a cluster where the connector and job indices do not exist yet: to create them
#: with their aliases (a cluster where Kibana or Elastic's service ran has them already).
FIRST_START: dict[tuple[str, ...], tuple[str, ...]] = {
    _CONNECTORS: ("create_index", "manage"),
    _JOBS: ("create_index", "manage"),
}

#: With the connector API (``service.protocol_store``: ``connector_api``, or ``auto`` on a
#: cluster that has it), connectors and jobs are reached through it: this cluster privilege
#: replaces the index privileges on ``.elastic-connectors*`` (and FIRST_START).
CONNECTOR_API_CLUSTER: tuple[str, ...] = ("manage_connector",)

#: Index privileges on every content index (connectors' index_name): create it, write and
#: delete documents, scan it, refresh and count it, read its stats and settings (the digest
#: cache) and its aliases (one connector per index).
CONTENT_INDEX: tuple[str, ...] = ("read", "write", "create_index", "view_index_metadata", "monitor", "maintenance")


def _service_indices(connector_api: bool) -> dict[tuple[str, ...], tuple[str, ...]]:
    if not connector_api:
        return SERVICE_INDICES
    return {names: privileges for names, privileges in SERVICE_INDICES.items()
            if names[0] in (PROGRESS_INDEX, CLAIMS_INDEX)}


def role_descriptor(content_indices: list[str], *, connector_api: bool = False) -> dict[str, Any]:
    """A role granting exactly what the service needs, for content indices matching ``content_indices``.

    Usable as a role (``PUT _security/role/NAME``) or as an API key's ``role_descriptors``.
    """
    return {
        "cluster": list(CLUSTER) + (list(CONNECTOR_API_CLUSTER) if connector_api else []),
        "indices": [{"names": list(names), "privileges": list(privileges)}
                    for names, privileges in _service_indices(connector_api).items()]
        + [{"names": list(content_indices), "privileges": list(CONTENT_INDEX)}],
    }


def missing_privileges(es: Elasticsearch, content_index: str | None = None, *, first_start: bool = False,
                       connector_api: bool = False) -> list[str]:
    """What the credentials lack: ``"cluster: monitor"``, ``"<index>: <privilege>"``, ...

    Without ``content_index``: the cluster and the service's own indices (with
    ``first_start``: also what creating the connector and job indices takes; with
    ``connector_api``: the API's cluster privilege instead of those indices); with it: that
    content index only. Empty when nothing is missing or the cluster has no security.
    """
    if content_index is None:
        cluster = list(CLUSTER) + (list(CONNECTOR_API_CLUSTER) if connector_api else [])
        wanted = {names: list(privileges) for names, privileges in _service_indices(connector_api).items()}
        for names, privileges in (FIRST_START.items() if first_start else ()):
            wanted[names] = wanted[names] + list(privileges)
        # The alias is what the service names in its requests.
        indices = [{"names": [names[0]], "privileges": privileges} for names, privileges in wanted.items()]
    else:
        cluster, indices = [], [{"names": [content_index], "privileges": list(CONTENT_INDEX)}]
    try:
        result = es.security.has_privileges(cluster=cluster or None, index=indices)
    except ApiError as exc:
        if _security_disabled(exc):
            return []
        raise
    if result.get("has_all_requested"):
        return []
    missing = [f"cluster: {name}" for name, granted in (result.get("cluster") or {}).items() if not granted]
    for index, privileges in (result.get("index") or {}).items():
        missing.extend(f"{index}: {name}" for name, granted in privileges.items() if not granted)
    return missing


def check_privileges(es: Elasticsearch, content_index: str | None = None, *, who: str = "the credentials",
                     first_start: bool = False, connector_api: bool = False) -> None:
    """Raise InsufficientPrivileges listing every missing privilege (see :func:`missing_privileges`)."""
    missing = missing_privileges(es, content_index, first_start=first_start, connector_api=connector_api)
    if missing:
        why = (" (the connector and job indices do not exist yet: creating them takes create_index and manage; "
               "or let Kibana or an administrator create them first)" if first_start else "")
        raise InsufficientPrivileges(
            f"{who} lack Elasticsearch privileges this service needs: {'; '.join(missing)}{why} "
            "(docs/security.md lists them)")


def check_service_privileges(es: Elasticsearch, protocol_store: str, *, who: str) -> None:
    """The daemon's start-up check: cluster, the service's own indices for the protocol
    backend it will use (``service.protocol_store``), and what creating the connector and
    job indices takes when they do not exist yet."""
    from launcher.api_store import has_connector_api
    from launcher.es_warnings import log_elasticsearch_warnings_once
    from launcher.indices import indices_exist

    log_elasticsearch_warnings_once()  # the connector API probe is a beta API: logged, once
    connector_api = protocol_store == "connector_api" or (protocol_store == "auto" and has_connector_api(es))
    check_privileges(es, who=who, connector_api=connector_api)
    if not connector_api and not indices_exist(es):
        check_privileges(es, who=who, first_start=True)


def _security_disabled(exc: ApiError) -> bool:
    text = str(getattr(exc, "body", "") or exc).lower()
    return exc.status_code in (400, 404, 405, 500) and ("no handler found" in text or "security" in text and (
        "disabled" in text or "not enabled" in text or "must be explicitly enabled" in text))
