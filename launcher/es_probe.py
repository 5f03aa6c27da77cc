"""Is ``elasticsearch.host`` an Elasticsearch we can use? One request, one precise answer.

:func:`probe_elasticsearch` sends ``GET /_cluster/health`` with the configured credentials and reads the
raw answer (status, headers, body), so that every way of being wrong gets its own error
and says what to fix:

=======================================  ===========================================  =========
what happened                            error                                        retry?
=======================================  ===========================================  =========
nothing listens, DNS fails, timeout      ``ElasticsearchUnavailable``                 yes
429 / 502 / 503 / 504 (starting, proxy)  ``ElasticsearchUnavailable``                 yes
certificate not trusted, wrong host      ``UntrustedCertificate`` (ca_certs)          no
401                                      ``AuthenticationException`` (credentials)    no
an answer without Elasticsearch's        ``NotElasticsearch``: "this URL answers,     no
``X-Elastic-Product`` header             but not as Elasticsearch: ..."
403 (no ``monitor`` privilege)           none: it is Elasticsearch (the daemon's      -
                                         privilege check names what is missing)
another refusal                          ``ConfigError``                              no
=======================================  ===========================================  =========

The daemon waits (with backoff) while the answer is retriable and stops on the others,
which only a change of configuration fixes; the CLI reports either at once.

Example usage::

    health = probe_elasticsearch(config.elasticsearch, config_file="config.yml")
    health["status"]   # 'green'
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, HttpHeaders, TlsError

from sources.errors import (
    AuthenticationException, ConfigError, ElasticsearchUnavailable, NotElasticsearch, UntrustedCertificate,
    connection_failure,
)

__all__ = ["probe_elasticsearch", "RETRIABLE_STATUSES"]

#: Answers that say "not now": Elasticsearch starting or overloaded, a proxy whose upstream is down.
RETRIABLE_STATUSES = frozenset({429, 502, 503, 504})


def _auth_headers(settings: Any) -> dict[str, str]:
    if settings.api_key is not None:
        return {"authorization": f"ApiKey {settings.api_key.get_secret_value()}"}
    if settings.username:
        password = settings.password.get_secret_value() if settings.password is not None else ""
        token = base64.b64encode(f"{settings.username}:{password}".encode()).decode()
        return {"authorization": f"Basic {token}"}
    return {}


def _connection_reason(exc: Exception) -> str:
    """Why the connection failed (``Failed to establish a new connection: [Errno 111] Connection
    refused``), without the address the message around it names already."""
    said = connection_failure(exc) or str(exc)
    return re.sub(r"^cannot connect to \S+: ", "", said)


def _reason(body: bytes) -> str:
    """Elasticsearch's own reason from an error body, else the start of the body on one line."""
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("type"))
        if isinstance(error, str):
            return error
    except ValueError:
        pass
    text = " ".join(body[:200].decode("utf-8", errors="replace").split())
    return text + ("..." if len(body) > 200 else "") if text else "an empty body"


def probe_elasticsearch(settings: Any, *, config_file: str | None = None) -> dict[str, Any]:
    """``GET /_cluster/health`` of ``settings.host`` (an ``ElasticsearchConfig``): the cluster's answer, or an error
    saying what is wrong and which setting of ``config_file`` to change (see the module docstring)."""
    where = config_file or "config.yml"
    host = settings.host
    es = settings.connection().client(max_retries=0)
    try:
        node = es.transport.node_pool.get()
        headers = HttpHeaders({"accept": "application/json", **_auth_headers(settings)})
        try:
            meta, body = node.perform_request("GET", "/_cluster/health", headers=headers,
                                              request_timeout=min(30.0, settings.request_timeout))
        except TlsError as exc:
            raise UntrustedCertificate(
                f"cannot verify the TLS certificate of Elasticsearch at {host}: {exc.message}; set "
                f"elasticsearch.ca_certs in {where} to the CA that signed it (and check that the host name "
                "matches the certificate)") from None
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise ElasticsearchUnavailable(f"cannot reach Elasticsearch at {host}: {_connection_reason(exc)}") from None
    finally:
        es.close()
    status = meta.status
    product = meta.headers.get("x-elastic-product")
    if status == 401:
        used = ("elasticsearch.api_key" if settings.api_key is not None else
                "elasticsearch.username/password" if settings.username else "no credentials")
        raise AuthenticationException(
            f"Elasticsearch at {host} refused the request (401: {_reason(body)}) with {used}; check "
            f"elasticsearch.username and elasticsearch.password, or elasticsearch.api_key, in {where}")
    if status in RETRIABLE_STATUSES:
        raise ElasticsearchUnavailable(f"Elasticsearch at {host} is not ready: HTTP {status}: {_reason(body)}")
    if product != "Elasticsearch":
        answer = [f"HTTP {status}"]
        for name in ("content-type", "server"):
            if meta.headers.get(name):
                answer.append(f"{name.title()}: {meta.headers[name]}")
        raise NotElasticsearch(
            f"{host}: this URL answers, but not as Elasticsearch: {', '.join(answer)}: {_reason(body)}. Check "
            f"elasticsearch.host in {where}: the address of Elasticsearch's HTTP API (port 9200 by default)")
    if status == 403:
        return {}  # Elasticsearch, refusing ``monitor``: what the credentials lack is named where it matters
    if status >= 400:
        raise ConfigError(f"Elasticsearch at {host} refused GET /_cluster/health ({status}: {_reason(body)}); the "
                          f"credentials in {where} need the monitor cluster privilege (docs/operations.md)")
    try:
        return json.loads(body)
    except ValueError:
        return {}
