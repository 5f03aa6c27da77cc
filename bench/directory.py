"""The directory source's scenarios: one big folder, and many small connectors requested at once.

* :func:`folder_scenario`: ``count`` text files of about ``size`` bytes in ``subfolders``
  top-level folders (the source's partitions), synced by one ``dir`` connector through the
  daemon: a full sync, then a no-change resync. The files are written before the clock
  starts and read back from the page cache, as a recently written folder is.
* :func:`many_connectors`: ``connectors`` folders of ``files`` files each, one ``dir``
  connector per folder, one daemon serving them all with the shipped
  ``service.max_concurrent_syncs``; a job is requested for every connector at once (as
  Kibana's "sync all" or a shared schedule does), and the run is timed from the first job
  created to the last one completed. Memory is the peak of the daemon's whole tree.

Elastic's connector service cannot be installed here (it is not on PyPI and no download
source is reachable). The figures it is compared with, :data:`ELASTIC_SERVICE`, were
measured side by side on this machine by an earlier session (issue 15): the same folders,
the same cluster, its own defaults (one sync at a time).

Example usage::

    result = many_connectors(bench, connectors=24, files=2000)
    result["docs_per_s"], result["peak_pss_mb"]
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.baselines import Dataset, settle
from bench.ours import INGEST_PIPELINE, Service, es_cpu_seconds
from bench.memory import tree_cpu_seconds

__all__ = ["file_texts", "write_folder", "full_then_unchanged", "folder_scenario", "many_connectors", "ELASTIC_SERVICE", "DIR_FQN"]

DIR_FQN = "sources.directory:DirectoryDataSource"
#: Elastic's connector service on the same loads, measured on this machine by an earlier session (issue 15).
ELASTIC_SERVICE = {
    "many_connectors": {"connectors": 24, "files": 2000, "seconds": 33.5, "peak_mb": 73.0,
                        "concurrency": 1, "docs_per_s": round(24 * 2000 / 33.5, 1)},
    "folder_100k": {"files": 100_000, "docs_per_s": 2074.0, "peak_mb": 119.0},
    "source": "issue 15 (measured side by side on this machine by an earlier session; not re-run: "
              "Elastic's service cannot be installed here)",
}


def file_texts(count: int, size: int = 1024, seed: int = 1) -> Iterator[bytes]:
    """The content of ``count`` text files of ``size`` bytes, from the synthetic source's word pool."""
    from sources.synthetic import _text_pool

    pool = _text_pool(seed)
    span = len(pool) - size - 1
    for i in range(count):
        offset = (i * 2654435761 + seed) % span
        yield pool[offset:offset + size].encode("ascii")


def write_folder(root: Path, *, count: int, size: int = 1024, subfolders: int = 10, seed: int = 1) -> int:
    """``count`` text files of about ``size`` bytes under ``root`` (in ``subfolders`` folders, or
    flat with 0); their total bytes (see :func:`file_texts`)."""
    total = 0
    folders = [root / f"part-{n:02d}" for n in range(subfolders)] if subfolders else [root]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(file_texts(count, size, seed)):
        path = folders[i % len(folders)] / f"file-{i:07d}.txt"
        path.write_bytes(data)
        total += len(data)
    return total


def _dir_service(bench: Any, workdir: Path, roots: list[Path], connector_ids: list[str],
                 service: dict[str, Any] | None = None) -> Service:
    return Service(bench.es_url, workdir, pipeline=bench.pipeline, connector_ids=connector_ids,
                   service={**(service or {}), **bench.service_overrides},
                   sources={"dir": {"class": DIR_FQN, "allowed_roots": [str(r) for r in roots]}})


def _create_dir_connector(service: Service, connector_id: str, index: str, folder: Path) -> None:
    service.cli("--action", "create-connector", "--connector-id", connector_id, "--service-type", "dir",
                "--index-name", index, "--pipeline", INGEST_PIPELINE, "--json", "--set", f"directory={folder}")


def folder_scenario(bench: Any, *, count: int, size: int = 1024, subfolders: int = 10,
                    target: Any = None) -> dict[str, Any]:
    """A full sync and a no-change resync of one folder of ``count`` files (see the module docstring).

    ``target``: where the folder is and which source reads it (default: a local folder and the
    ``dir`` source; :class:`bench.network_drive.ShareTarget`: the Samba share).
    """
    target = target or LocalFolder()
    tag = f"{target.tag}{count}"
    root = target.folder(bench, tag)
    bench.say(f"{target.source}: writing {count} files of ~{size} bytes in {subfolders} folders")
    started = time.monotonic()
    total = write_folder(root, count=count, size=size, subfolders=subfolders)
    written_in = round(time.monotonic() - started, 1)
    connector_id, index = f"bench-{tag}-{bench.run_id}", f"bench-ours-{tag}-{bench.run_id}"
    service = target.service(bench, bench.workdir / connector_id, root, [connector_id])
    target.create_connector(service, connector_id, index, root)
    expected = count + target.folder_documents(subfolders)
    out: dict[str, Any] = {"label": f"{Dataset(count, size).label} files ({target.source} source)", "count": count,
                           "source": target.source, "doc_size": size, "file_bytes": total,
                           "written_in_seconds": written_in, "results": {}}
    try:
        with service:
            out["results"] = full_then_unchanged(bench, service, connector_id, count=count, data_bytes=total,
                                                 what="files", expected=expected)
            out["idle"] = service.idle
    finally:
        bench.es.indices.delete(index=index, ignore_unavailable=True)
        service.remove_connector(bench.es, connector_id)
        target.clean(root)
    out["elastic_service"] = ELASTIC_SERVICE["folder_100k"] if count == 100_000 and target.source == "dir" else None
    return out


def full_then_unchanged(bench: Any, service: Service, connector_id: str, *, count: int, data_bytes: int,
                        what: str, expected: int | None = None) -> dict[str, Any]:
    """A full sync of ``count`` items (``data_bytes`` of data), then a no-change resync, each checked:
    ``{"ours_full": ..., "ours_nochange": ...}`` as :meth:`Service.sync` measures them. ``expected``:
    the documents the full sync indexes when not ``count`` (a share's folders are documents too)."""
    expected = count if expected is None else expected
    settle(bench.es)
    bench.say(f"  ours: full sync of {count} {what}")
    full = service.sync(bench.es, connector_id)
    full["ok"] = full["status"] == "completed" and full["indexed"] == expected and full["total"] == expected
    full["docs_per_s"] = round(count / full["seconds"], 1) if full["seconds"] else None
    full["mb_per_s"] = round(data_bytes / 1e6 / full["seconds"], 2) if full["seconds"] else None
    created = full.get("seconds_from_created")
    full["docs_per_s_from_created"] = round(count / created, 1) if created else None
    bench.progress()
    settle(bench.es)
    bench.say(f"  ours: no-change resync of the {what}")
    same = service.sync(bench.es, connector_id)
    same["ok"] = same["status"] == "completed" and same["indexed"] == 0 and same["deleted"] == 0
    same["speedup_vs_full"] = round(full["seconds"] / same["seconds"], 2) if same["seconds"] else None
    if full.get("seconds_from_created") and same.get("seconds_from_created"):  # on the user's clock
        same["speedup_vs_full_from_created"] = round(full["seconds_from_created"] / same["seconds_from_created"], 2)
    return {"ours_full": full, "ours_nochange": same}


class LocalFolder:
    """The folder scenario's default target: a folder of the benchmark's work directory, the ``dir`` source."""

    source, tag = "dir", "dir"

    def folder(self, bench: Any, tag: str) -> Path:
        return bench.workdir / f"{tag}-files"

    def service(self, bench: Any, workdir: Path, root: Path, connector_ids: list[str]) -> Service:
        return _dir_service(bench, workdir, [root], connector_ids)

    def create_connector(self, service: Service, connector_id: str, index: str, root: Path) -> None:
        _create_dir_connector(service, connector_id, index, root)

    def folder_documents(self, subfolders: int) -> int:
        return 0  # the dir source indexes files only

    def clean(self, root: Path) -> None:
        pass  # the work directory goes as a whole


def many_connectors(bench: Any, *, connectors: int = 24, files: int = 2000, size: int = 1024) -> dict[str, Any]:
    """``connectors`` connectors of ``files`` files each, all requested at once (see the module docstring)."""
    from launcher.protocol import create_job, get_connector
    from launcher.store import as_store

    root = bench.workdir / f"many-{connectors}x{files}"
    bench.say(f"many connectors: writing {connectors} folders of {files} files")
    folders, total = [], 0
    for n in range(connectors):
        folder = root / f"c-{n:02d}"
        total += write_folder(folder, count=files, size=size, subfolders=0, seed=n + 1)
        folders.append(folder)
    ids = [f"bench-many{n:02d}-{bench.run_id}" for n in range(connectors)]
    indices = [f"bench-ours-many{n:02d}-{bench.run_id}" for n in range(connectors)]
    from launcher.config import ServiceConfig

    # The shipped concurrency (the benchmark's other daemons run one sync at a time).
    service = _dir_service(bench, bench.workdir / f"many-{bench.run_id}", [root], ids,
                           service={"max_concurrent_syncs": ServiceConfig().max_concurrent_syncs})
    for connector_id, index, folder in zip(ids, indices, folders):
        _create_dir_connector(service, connector_id, index, folder)
    out: dict[str, Any] = {"connectors": connectors, "files": files, "doc_size": size,
                           "elastic_service": ELASTIC_SERVICE["many_connectors"]}
    store = as_store(bench.es)
    try:
        with service:
            settle(bench.es)
            bench.say(f"  ours: {connectors} syncs requested at once")
            assert service.sampler is not None and service.process is not None
            service.sampler.reset()
            cpu_before, es_before = tree_cpu_seconds(service.process.pid), es_cpu_seconds(bench.es)
            job_ids = [create_job(store, get_connector(store, connector_id), job_type="full",
                                  trigger_method="on_demand") for connector_id in ids]
            docs = [service.wait_job(bench.es, job_id, timeout=3600) for job_id in job_ids]
            cpu_after, es_after = tree_cpu_seconds(service.process.pid), es_cpu_seconds(bench.es)
            first = min(datetime.fromisoformat(d["created_at"]) for d in docs)
            last = max(datetime.fromisoformat(d["completed_at"]) for d in docs)
            seconds = (last - first).total_seconds()
            syncs = [service.measured(d, job_id, {}, {}, 0.0) for d, job_id in zip(docs, job_ids)]
            out.update({
                "seconds": round(seconds, 3), "docs_per_s": round(connectors * files / seconds, 1),
                "file_bytes": total, "mb_per_s": round(total / 1e6 / seconds, 2),
                "peak_rss_mb": service.sampler.phase_peak_mb, "peak_pss_mb": service.sampler.phase_peak_pss_mb,
                "peak_pss_by_role_mb": service.sampler.phase_peak_pss_by_role_mb,
                "peak_rss_by_role_mb": service.sampler.phase_peak_by_role_mb,
                "max_processes": service.sampler.phase_max_processes,
                "concurrency": service.config["service"]["max_concurrent_syncs"],
                "cpu_seconds": round(sum(cpu_after.values()) - sum(cpu_before.values())
                                     + sum(s["cpu_seconds"]["sync_process"] or 0 for s in syncs), 3),
                "es_cpu_seconds": round(es_after - es_before, 3),
                "sync_seconds": sorted(s["seconds"] for s in syncs),
                "claim_latency_seconds": sorted(s["claim_latency_seconds"] for s in syncs),
                "idle": service.idle,
            })
            out["ok"] = all(d["status"] == "completed" and d["indexed_document_count"] == files for d in docs)
            out["speedup_vs_elastic"] = round(out["docs_per_s"] / ELASTIC_SERVICE["many_connectors"]["docs_per_s"], 2)
    finally:
        for connector_id, index in zip(ids, indices):
            bench.es.indices.delete(index=index, ignore_unavailable=True)
            service.remove_connector(bench.es, connector_id)
    bench.say(f"  -> {out.get('seconds')} s, {out.get('docs_per_s')} docs/s ({out.get('speedup_vs_elastic')}x "
              f"Elastic's service), peak PSS {out.get('peak_pss_mb')} MB, ok={out.get('ok')}")
    return out
