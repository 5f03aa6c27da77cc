"""The sync's work directory, as a worker sees it: marked by the sync process, checked by workers.

A full sync may keep the index's digests as files in a directory of the machine that runs
the sync process (``pipeline.work_dir``); the workers write and memory-map them there.
That holds only where every worker reads this machine's disk (the local runner, Prism or
an embedded Flink with local workers: ``pipeline.workers_share_disk``, see
:func:`pipelines.options.workers_share_this_disk`). A worker elsewhere would create the
same path on its own disk, write digests nobody reads, and the sync process would find
none. So the sync process marks the directory when it creates it, and every step that
uses it checks the mark in ``DoFn.setup()``: a worker that does not share the disk fails
the sync at once, saying which setting to change.

Example usage::

    mark_work_dir("/tmp/elastic-ingest-job-1-abc")     # the sync process, after mkdtemp
    check_work_dir("/tmp/elastic-ingest-job-1-abc")    # a worker, in setup(): raises ConfigError if unseen
"""

from __future__ import annotations

import os
import socket

from sources.errors import ConfigError

__all__ = ["mark_work_dir", "check_work_dir", "WORK_DIR_MARK"]

WORK_DIR_MARK = ".elastic-ingest-work-dir"


def mark_work_dir(path: str | os.PathLike[str]) -> None:
    """Mark ``path`` as a sync's work directory (what :func:`check_work_dir` looks for)."""
    with open(os.path.join(path, WORK_DIR_MARK), "w", encoding="utf-8") as out:
        out.write(f"{socket.gethostname()} {os.getpid()}\n")


def check_work_dir(path: str | os.PathLike[str]) -> None:
    """Raise ConfigError unless this worker sees the sync's work directory at ``path``."""
    if os.path.isfile(os.path.join(path, WORK_DIR_MARK)):
        return
    raise ConfigError(
        f"pipeline.workers_share_disk: a worker on {socket.gethostname()} (pid {os.getpid()}) does not see the "
        f"sync's work directory {os.fspath(path)!r}, so it does not share the sync process's disk; set "
        "pipeline.workers_share_disk: false (the index digests then travel inside the pipeline)")
