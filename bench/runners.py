"""The same sync on another Beam runner, beside the in-process one: Prism with its workers in processes of their own.

The benchmark's syncs run on ``FnApiRunner`` (everything in the sync process). Here the
same connector is synced on Prism, Beam's portable runner: ``PortableRunner`` submitting to
the job service ``scripts/prism start`` runs, the DoFns in an SDK worker process of the
worker pool beside it (EXTERNAL environment), the path a Flink or Dataflow job takes.
Memory is that of every process the sync runs in: the daemon's tree (daemon, sync process)
plus Prism's job service and the worker pool's tree (the pool and its SDK workers).

:class:`PrismServices` uses the job service and pool on ``PRISM_JOB_PORT`` and
``PRISM_WORKER_PORT`` (defaults 9270 and 9271); it starts them (and stops them after) when
they are not running and the binary is built, and reports why not otherwise (the benchmark
never builds Prism: that is ``scripts/prism build``, once).

Example usage::

    with PrismServices() as prism:
        if prism.available:
            Service(es_url, workdir, pipeline=prism.pipeline(settings), connector_ids=[...], others=prism.pids())
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from bench.ours import REPO

__all__ = ["PrismServices", "RUNNER_LABELS"]

#: How the runners compared are named in the results.
RUNNER_LABELS = {"local": "FnApiRunner (in the sync process)",
                 "prism": "Prism (PortableRunner, EXTERNAL workers in the pool's processes)"}


class PrismServices:
    """Prism's job service and worker pool for the benchmark, started here if needed."""

    def __init__(self) -> None:
        self.job_port = int(os.environ.get("PRISM_JOB_PORT", "9270"))
        self.worker_port = int(os.environ.get("PRISM_WORKER_PORT", "9271"))
        self.home = Path(os.environ.get("PRISM_HOME_DIR", REPO / ".servers" / "prism"))
        self.started = False
        self.available = False
        self.why_not: str | None = None

    def _script(self, action: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PRISM_JOB_PORT": str(self.job_port), "PRISM_WORKER_PORT": str(self.worker_port)}
        return subprocess.run([str(REPO / "scripts" / "prism"), action], capture_output=True, text=True, env=env,
                              timeout=120)

    def __enter__(self) -> "PrismServices":
        if self._script("status").returncode == 0:
            self.available = True
        elif self._script("bin").returncode != 0:
            self.why_not = "Prism is not built (scripts/prism build, ~5 minutes once)"
        else:
            started = self._script("start")
            self.available = self.started = started.returncode == 0
            if not self.available:
                self.why_not = f"scripts/prism start failed: {started.stderr.strip()[-500:]}"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self._script("stop")

    def pids(self) -> dict[str, int]:
        """The job service's and the worker pool's pids (their trees are measured with the daemon's)."""
        pids = {}
        for role, name in (("prism_job_service", f"prism-{self.job_port}.pid"),
                           ("worker_pool", f"worker-pool-{self.worker_port}.pid")):
            try:
                pids[role] = int((self.home / name).read_text())
            except (OSError, ValueError):
                continue
        return pids

    def pipeline(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` with the sync submitted to this Prism, its DoFns in the pool's workers."""
        return {**settings, "runner": "PortableRunner",
                "portable": {"job_endpoint": f"localhost:{self.job_port}", "environment_type": "EXTERNAL",
                             "environment_config": f"localhost:{self.worker_port}"}}
