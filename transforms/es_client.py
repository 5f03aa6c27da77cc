"""How to reach Elasticsearch, as a small picklable value shared by the daemon and workers.

:class:`ElasticsearchConnection` travels inside Beam transforms to every worker, so it
holds only plain values; secrets are excluded from ``repr`` and never logged. The copy in a
pipeline holds no secret at all (:meth:`ElasticsearchConnection.by_reference`): its
:meth:`~ElasticsearchConnection.client` reads the password or API key from where the sync
put them (:mod:`transforms.secrets`), on the worker.

Example usage::

    conn = ElasticsearchConnection(hosts=("http://127.0.0.1:9200",))
    es = conn.client()
    es.cluster.health()
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer

from transforms.secrets import SecretRef

__all__ = ["ElasticsearchConnection"]


class _NdjsonBody(NdjsonSerializer):
    """NDJSON request bodies: one already encoded (bytes ending with a newline, as the ``_bulk``
    writer builds it) is sent as it is, where elasticsearch-py's serializer copies it twice
    (into a bytearray, then into bytes: ~2 MB of copying per 1,000-document request);
    anything else as elasticsearch-py sends it."""

    def dumps(self, data: Any) -> bytes:
        if type(data) is bytes and data.endswith(b"\n"):
            return data
        return super().dumps(data)


@dataclass(frozen=True)
class ElasticsearchConnection:
    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = 60.0
    max_retries: int = 3
    #: where ``password`` and ``api_key`` are, when this copy does not hold them (a pipeline's)
    secrets: SecretRef | None = None

    def secret_values(self) -> dict[str, str]:
        """The secrets this connection holds (for :func:`transforms.secrets.worker_secrets`)."""
        return {name: value for name, value in (("password", self.password), ("api_key", self.api_key)) if value}

    def by_reference(self, secrets: SecretRef | None) -> "ElasticsearchConnection":
        """This connection without its secrets, which ``client()`` reads from ``secrets``."""
        if secrets is None:
            return self
        return replace(self, password=None, api_key=None, secrets=secrets)

    def client(self, **overrides: Any) -> Elasticsearch:
        """A new client. Retries of whole requests on connection errors and timeouts."""
        password, api_key = self.password, self.api_key
        if self.secrets is not None:
            stored = self.secrets.section("elasticsearch")
            password, api_key = stored.get("password"), stored.get("api_key")
        kwargs: dict[str, Any] = {
            "hosts": list(self.hosts),
            "request_timeout": self.request_timeout,
            "max_retries": self.max_retries,
            "retry_on_timeout": True,
            "retry_on_status": (502, 503, 504),
            # Responses (bulk answers, scan pages) parse ~3x faster with orjson; bodies the
            # writer encoded go as they are.
            "serializers": {"application/json": OrjsonSerializer(), "application/x-ndjson": _NdjsonBody()},
        }
        if api_key:
            kwargs["api_key"] = api_key
        elif self.username:
            kwargs["basic_auth"] = (self.username, password or "")
        if self.ca_certs:
            kwargs["ca_certs"] = self.ca_certs
        if any(h.startswith("https") for h in self.hosts):
            kwargs["verify_certs"] = self.verify_certs
        kwargs.update(overrides)
        return Elasticsearch(**kwargs)

    @property
    def display(self) -> str:
        """Hosts without credentials, for logs and messages."""
        return ", ".join(self.hosts)
