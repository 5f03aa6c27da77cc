"""Peak memory of a whole process tree (a daemon, its sync child and Beam's workers), sampled with psutil.

RSS is summed over the tree, so pages shared between processes are counted once per
process: an upper bound of what the tree really holds. The anonymous part (RSS minus
file-backed and shared pages: the processes' own heap) is tracked too: a resync maps
the index's digests from files, and those pages are the kernel's page cache, which it can
drop and re-read, not memory the sync holds.

Example usage::

    sampler = TreeSampler(pid).start()
    sampler.reset()            # a new phase
    ...
    sampler.phase_peak_mb, sampler.phase_peak_anon_mb, sampler.phase_max_processes
    sampler.stop()
"""

from __future__ import annotations

import threading

import psutil

__all__ = ["TreeSampler", "tree_rss"]

MB = 1024 * 1024


def tree_rss(pid: int, by_level: dict[int, int] | None = None) -> tuple[int, int, int]:
    """(bytes of RSS summed over ``pid`` and all its descendants, number of processes, bytes
    of anonymous RSS: without file-backed and shared pages).

    ``by_level`` (if given) receives the RSS per tree level: 0 the root (the daemon), 1 its
    children (the sync process), 2 and deeper summed as 2 (Beam's worker processes).
    """
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=False)
        processes = [(root, 0)] + [(c, 1) for c in children]
        for child in children:
            try:
                processes += [(g, 2) for g in child.children(recursive=True)]
            except psutil.Error:
                continue
    except psutil.Error:
        return 0, 0, 0
    total = count = own = 0
    for process, level in processes:
        try:
            info = process.memory_info()
        except psutil.Error:
            continue
        rss = info.rss
        own += rss - getattr(info, "shared", 0)  # Linux: RssFile + RssShmem
        total += rss
        count += 1
        if by_level is not None:
            by_level[level] = by_level.get(level, 0) + rss
    return total, count, own


def _subtree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS, processes, anonymous RSS) of ``pid`` and all its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0
    total = count = own = 0
    for process in processes:
        try:
            info = process.memory_info()
        except psutil.Error:
            continue
        total += info.rss
        own += info.rss - getattr(info, "shared", 0)
        count += 1
    return total, count, own


class TreeSampler:
    """Samples the tree rooted at ``pid`` every ``interval`` seconds in a background thread.

    ``others`` (role -> pid) are more trees the measured work runs in, summed with it under
    their role: e.g. a Prism job service and its worker pool, whose SDK worker processes run
    a sync's DoFns outside the daemon's tree.
    """

    def __init__(self, pid: int, interval: float = 0.2, *, others: dict[str, int] | None = None):
        self.pid, self.interval = pid, interval
        self.others = dict(others or {})
        self.peak = self.phase_peak = self.phase_peak_anon = 0
        self.phase_max_processes = 0
        self.samples = 0
        self.phase_peak_by_level: dict[int | str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        levels: dict[int | str, int] = {}
        rss, count, anon = tree_rss(self.pid, levels)  # type: ignore[arg-type]
        for role, pid in self.others.items():
            other_rss, other_count, other_anon = _subtree_rss(pid)
            rss, count, anon = rss + other_rss, count + other_count, anon + other_anon
            levels[role] = other_rss
        with self._lock:
            self.phase_peak_anon = max(self.phase_peak_anon, anon)
            for level, value in levels.items():
                self.phase_peak_by_level[level] = max(self.phase_peak_by_level.get(level, 0), value)
            self.samples += 1
            self.peak = max(self.peak, rss)
            self.phase_peak = max(self.phase_peak, rss)
            self.phase_max_processes = max(self.phase_max_processes, count)
        return rss

    def reset(self) -> None:
        with self._lock:
            self.phase_peak = self.phase_peak_anon = 0
            self.phase_max_processes = 0
            self.phase_peak_by_level = {}
        self.sample()

    @property
    def phase_peak_mb(self) -> float:
        return round(self.phase_peak / MB, 1)

    @property
    def phase_peak_anon_mb(self) -> float:
        """Peak anonymous RSS of the tree in this phase (without mapped files and shared memory)."""
        return round(self.phase_peak_anon / MB, 1)

    @property
    def phase_peak_by_role_mb(self) -> dict[str, float]:
        """Peak RSS per role in this phase (each role's own peak; they need not coincide)."""
        names = {0: "daemon", 1: "sync_process", 2: "beam_workers"}
        return {names.get(level, level): round(value / MB, 1)  # type: ignore[call-overload]
                for level, value in sorted(self.phase_peak_by_level.items(), key=lambda item: str(item[0]))}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
