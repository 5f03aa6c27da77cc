"""The Azure Blob Storage source's scenario: one container of many small blobs, on Azurite.

:func:`blobs_scenario` uploads ``count`` text blobs of about ``size`` bytes (the directory
scenario's texts, :func:`bench.directory.file_texts`) under ``prefixes`` top-level prefixes
of one container, then syncs it with one ``azure_blob_storage`` connector through the
daemon: a full sync, then a no-change resync. The container is named after its shape
(``bench-<count>-<size>-<prefixes>``) and kept in Azurite, so the next run reuses it
instead of uploading again (the upload is timed and reported apart, never in the syncs).

Azurite must be running (``scripts/servers/azurite start``, or ``AZURITE_URL``); its blob
service is one Node.js process on the same machine, so the syncs measure the source and
the pipeline against a local server, not Azure's network.

Example usage::

    result = blobs_scenario(bench, count=100_000)
    result["results"]["ours_full"]["docs_per_s"]
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.baselines import Dataset
from bench.directory import file_texts, full_then_unchanged
from bench.ours import INGEST_PIPELINE, Service

__all__ = ["blobs_scenario", "AZURE_FQN", "AZURITE_URL"]

AZURE_FQN = "sources.azure_blob:AzureBlobStorageDataSource"
AZURITE_URL = os.environ.get("AZURITE_URL") or (
    f"http://127.0.0.1:{os.environ.get('AZURITE_PORT', '10000')}/devstoreaccount1"
)
_ACCOUNT = "devstoreaccount1"
#: Azurite's development account key: public (Microsoft's documentation), not a secret.
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_UPLOADERS = 16


def _client(url: str, pool: int) -> Any:
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobServiceClient

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return BlobServiceClient(url, credential={"account_name": _ACCOUNT, "account_key": _DEV_KEY},
                             transport=RequestsTransport(session=session, session_owner=True))


def upload_blobs(url: str, container: str, *, count: int, size: int, prefixes: int) -> dict[str, Any]:
    """Make ``container`` hold exactly the scenario's blobs (uploaded concurrently when missing)."""
    from azure.core.exceptions import ResourceExistsError

    client = _client(url, _UPLOADERS)
    try:
        box = client.get_container_client(container)
        try:
            box.create_container()
        except ResourceExistsError:
            pass
        names = [f"part-{i % prefixes:02d}/blob-{i:07d}.txt" for i in range(count)]
        present = set(box.list_blob_names(results_per_page=5000))
        if present == set(names):
            return {"uploaded": 0, "reused": count, "seconds": 0.0}
        for stray in present - set(names):
            box.delete_blob(stray)
        missing = [(name, data) for name, data in zip(names, file_texts(count, size)) if name not in present]
        started, done, lock = time.monotonic(), [0], threading.Lock()

        def put(item: tuple[str, bytes]) -> None:
            box.upload_blob(item[0], item[1], overwrite=True)
            with lock:
                done[0] += 1

        with ThreadPoolExecutor(_UPLOADERS) as pool:
            list(pool.map(put, missing))
        return {"uploaded": done[0], "reused": count - len(missing), "seconds": round(time.monotonic() - started, 1)}
    finally:
        client.close()


def blobs_scenario(bench: Any, *, count: int, size: int = 1024, prefixes: int = 10,
                   url: str = AZURITE_URL) -> dict[str, Any]:
    """A full sync and a no-change resync of one container of ``count`` blobs (see the module docstring)."""
    container = f"bench-{count}-{size}-{prefixes}"
    bench.say(f"azure_blob_storage: {count} blobs of ~{size} bytes under {prefixes} prefixes in {container} at {url}")
    upload = upload_blobs(url, container, count=count, size=size, prefixes=prefixes)
    bench.say(f"  upload: {upload['uploaded']} uploaded in {upload['seconds']} s, {upload['reused']} reused")
    tag = f"azure{count}"
    connector_id, index = f"bench-{tag}-{bench.run_id}", f"bench-ours-{tag}-{bench.run_id}"
    service = Service(bench.es_url, bench.workdir / connector_id, pipeline=bench.pipeline,
                      connector_ids=[connector_id], service=bench.service_overrides,
                      sources={"azure_blob_storage": AZURE_FQN})
    settings = {"account_name": _ACCOUNT, "account_key": _DEV_KEY, "blob_endpoint": url, "containers": container}
    service.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type",
                "azure_blob_storage", "--index-name", index, "--pipeline", INGEST_PIPELINE, "--json",
                *[arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")])
    out: dict[str, Any] = {"source": "azure_blob_storage", "server": "Azurite (local)",
                           "label": f"{Dataset(count, size).label} blobs (azure_blob_storage, Azurite)",
                           "count": count, "doc_size": size, "blob_bytes": count * size, "upload": upload}
    try:
        with service:
            out["results"] = full_then_unchanged(bench, service, connector_id, count=count, data_bytes=count * size,
                                                 what="blobs")
    finally:
        bench.es.indices.delete(index=index, ignore_unavailable=True)
        service.remove_connector(bench.es, connector_id)
    full, same = out["results"]["ours_full"], out["results"]["ours_nochange"]
    bench.say(f"  -> full {full['seconds']} s ({full['docs_per_s']} docs/s, ok={full['ok']}), "
              f"no-change {same['seconds']} s (ok={same['ok']})")
    return out
