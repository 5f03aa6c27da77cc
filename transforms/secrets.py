"""Secrets out of the pipeline graph: workers read them, by reference, in ``DoFn.setup()``.

A runner stages the pipeline it runs: every DoFn is pickled into the pipeline's proto
(Dataflow copies it to GCS; a portable runner hands it to its job server and its SDK
workers). So no DoFn may be built with a secret: the Elasticsearch password or API key,
or a sensitive field of the source's configuration. The sync process puts a job's secrets
in one place for the run, and the graph carries only a :class:`SecretRef` to them:

=================================  ==========================================================
workers                            where the secrets are (the ``SecretRef``)
=================================  ==========================================================
on this machine (FnApiRunner,      a JSON file, mode 0600, in the sync's private work
Flink ``[local]``, Prism): threads directory (``pipeline.work_dir``, else the daemon's
or processes of their own          temporary directory), named by its path; deleted when
                                   the sync ends. A file works for worker processes started
                                   by a worker pool too, whose environment is not the
                                   sync process's.
on other machines, sharing a       the same file in ``pipeline.secrets_dir`` (a folder every
folder (a remote Flink)            worker reads at the same path, e.g. a shared mount)
Dataflow                           a Google Secret Manager secret made for the job (project
                                   ``pipeline.dataflow.secret_project``, else
                                   ``pipeline.dataflow.project``), named by its version;
                                   workers read it with Beam's ``GcpSecret`` (their service
                                   account needs ``roles/secretmanager.secretAccessor``, the
                                   daemon's credentials ``roles/secretmanager.admin`` on it);
                                   deleted when the sync ends
=================================  ==========================================================

What needs them resolves the reference itself:
:meth:`~transforms.es_client.ElasticsearchConnection.client` and
:meth:`~transforms.read_from_source.SourceSpec.build`, both called in ``setup()``.

Example usage::

    with worker_secrets({"elasticsearch": {"password": "..."}}, settings, work_dir=work_dir, job_id=job_id) as ref:
        conn = conn.by_reference(ref)        # what goes into the graph
        ...                                  # run the pipeline
    ref.load()["elasticsearch"]["password"]  # on a worker, in setup()
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sources.errors import ConfigError

__all__ = ["SecretRef", "worker_secrets", "discard_all"]

_FILE, _GCP = "file://", "gcp-secret-manager:"
_LOADED: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()
#: How to remove each secret put in this process and not removed yet (for :func:`discard_all`).
_PUT: dict[str, Callable[[], None]] = {}


@dataclass(frozen=True)
class SecretRef:
    """Where a job's secrets are: ``file:///path`` or ``gcp-secret-manager:projects/.../versions/N``.

    The only thing about the secrets that travels in the pipeline graph.
    """

    uri: str

    def load(self) -> dict[str, Any]:
        """The secrets (read once per process)."""
        with _LOCK:
            if self.uri not in _LOADED:
                _LOADED[self.uri] = json.loads(self._read())
            return _LOADED[self.uri]

    def section(self, name: str) -> Mapping[str, Any]:
        """One part of them, e.g. ``"elasticsearch"`` or ``"source"``."""
        value = self.load().get(name)
        return value if isinstance(value, Mapping) else {}

    def _read(self) -> bytes:
        if self.uri.startswith(_FILE):
            path = self.uri[len(_FILE):]
            try:
                with open(path, "rb") as stream:
                    return stream.read()
            except OSError as exc:
                raise ConfigError(f"the sync's secrets are not readable at {path} ({exc.strerror or exc}): the "
                                  "workers must run on this machine, or read pipeline.secrets_dir") from exc
        if self.uri.startswith(_GCP):
            from apache_beam.utils.secret import GcpSecret

            return GcpSecret(self.uri[len(_GCP):]).get_secret_bytes()
        raise ValueError(f"SecretRef: unknown kind of reference {self.uri.split(':', 1)[0]!r}")


@contextlib.contextmanager
def worker_secrets(values: Mapping[str, Mapping[str, Any]], settings: Any, *, work_dir: str | None,
                   job_id: str) -> Iterator[SecretRef | None]:
    """Put ``values`` where the workers of ``settings.runner`` read them, for the ``with`` block.

    None when there is no secret at all (nothing to hide). ``work_dir``: the sync's private
    directory on this machine, when its workers run here (see the module docstring).
    """
    values = {name: dict(part) for name, part in values.items() if part}
    if not values:
        yield None
        return
    payload = json.dumps(values).encode("utf-8")
    if settings.runner == "DataflowRunner":
        with _secret_manager(payload, settings, job_id) as ref:
            yield ref
        return
    folder = settings.secrets_dir or work_dir
    if not folder:
        raise ConfigError("pipeline.secrets_dir: this runner's workers are not on this machine; name a folder "
                          "they all read at the same path (a shared mount), where the sync puts its secrets")
    path = os.path.join(os.path.abspath(folder), f"secrets-{job_id}-{uuid.uuid4().hex}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    with _put(path, remove):
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        yield SecretRef(_FILE + path)


@contextlib.contextmanager
def _put(key: str, remove: Callable[[], None]) -> Iterator[None]:
    """Remove a secret at the end of the block, or earlier by :func:`discard_all`."""
    _PUT[key] = remove
    try:
        yield
    finally:
        if _PUT.pop(key, None) is not None:
            remove()


def discard_all() -> None:
    """Remove every secret this process put and still holds (a sync process stopped by a signal)."""
    for key in list(_PUT):
        remove = _PUT.pop(key, None)
        if remove is not None:
            with contextlib.suppress(Exception):
                remove()


def _secret_manager_client() -> Any:
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient()


@contextlib.contextmanager
def _secret_manager(payload: bytes, settings: Any, job_id: str) -> Iterator[SecretRef]:
    """A Secret Manager secret holding ``payload`` while the job runs (Dataflow's workers read it)."""
    project = settings.dataflow.secret_project or settings.dataflow.project
    if not project:
        raise ConfigError("pipeline.dataflow.project (or secret_project): where the job's secrets are kept "
                          "for Dataflow's workers (Secret Manager)")
    client = _secret_manager_client()
    secret = client.create_secret(request={
        "parent": f"projects/{project}", "secret_id": f"elastic-ingest-{job_id}"[:255],
        "secret": {"replication": {"automatic": {}}, "labels": {"elastic-ingest": "sync-secrets"}}})
    with _put(secret.name, lambda: client.delete_secret(request={"name": secret.name})):
        version = client.add_secret_version(request={"parent": secret.name, "payload": {"data": payload}})
        yield SecretRef(_GCP + version.name)
