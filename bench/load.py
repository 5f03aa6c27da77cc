"""How busy the machine was during a benchmark run, beside what the run itself used.

On a shared machine a slow figure may be someone else's work. :class:`MachineLoad` samples
the 1-minute load average during the run and, at its end, splits the CPU time the machine
spent into the benchmark's own (this process and every process it started and reaped: our
daemons, sync processes, Beam's workers), Elasticsearch's (the node's process) and the
**others'**: whatever else ran meanwhile. The others' share of the machine's CPU capacity
is the figure to read: near 0, the run had the machine to itself.

Example usage::

    load = MachineLoad(es).start()
    ...
    load.stop()   # {"loadavg_1m": {"min": .., "mean": .., "max": ..}, "others_cpu_share": 0.03, ...}
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

__all__ = ["MachineLoad"]


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle, since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _own_seconds() -> float:
    """CPU seconds of this process, of its reaped children and of its live descendants."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _es_pids(es: Any) -> list[int]:
    try:
        nodes = es.nodes.info(metric="process")["nodes"].values()
    except Exception:  # noqa: BLE001 - not known: counted among the others
        return []
    return [n["process"]["id"] for n in nodes if (n.get("process") or {}).get("id")]


def _seconds_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


class MachineLoad:
    """The machine's load over a run (see the module docstring)."""

    def __init__(self, es: Any, interval: float = 5.0):
        self.es_pids = _es_pids(es)
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-load", daemon=True)

    def start(self) -> "MachineLoad":
        self._t0 = time.monotonic()
        self._busy0, self._own0, self._es0 = _busy_seconds(), _own_seconds(), _seconds_of(self.es_pids)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        """What the run saw: load average samples and the CPU seconds by whom."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
        wall = time.monotonic() - self._t0
        busy = _busy_seconds() - self._busy0
        own = _own_seconds() - self._own0
        es = _seconds_of(self.es_pids) - self._es0
        others = max(0.0, busy - own - es)
        cpus = os.cpu_count() or 1
        samples = self.samples or [os.getloadavg()[0]]
        return {
            "wall_seconds": round(wall, 1), "cpus": cpus,
            "loadavg_1m": {"min": round(min(samples), 2), "mean": round(sum(samples) / len(samples), 2),
                           "max": round(max(samples), 2), "samples": len(samples)},
            "cpu_seconds": {"machine": round(busy, 1), "benchmark": round(own, 1), "elasticsearch": round(es, 1),
                            "others": round(others, 1)},
            # Of the machine's capacity over the run (cpus x wall seconds), what others used.
            "others_cpu_share": round(others / (wall * cpus), 3) if wall > 0 else None,
        }
