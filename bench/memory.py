"""Memory and CPU of a whole process tree (a daemon, its warm process, sync processes, Beam's workers), with psutil.

Memory is sampled in a background thread. Two sums over the tree are kept:

* **RSS** counts a page once per process that maps it: pages shared between processes (a
  sync process forked from the warm process shares its imported code with it) are counted
  several times, so the sum is an upper bound;
* **PSS** (proportional set size) divides each shared page among the processes that map
  it: summed over the tree it is what the tree really holds. It is read from
  ``/proc/<pid>/smaps_rollup`` (psutil's ``memory_full_info``).

The anonymous part (RSS minus file-backed and shared pages: the processes' own heap) is
tracked too: a resync maps the index's digests from files, and those pages are the
kernel's page cache, which it can drop and re-read, not memory the sync holds.

Each process has a role: ``daemon`` (the root), ``warm_process`` (the daemon's child
running ``pipelines.fork_server``), ``sync_process`` (the daemon's other children and the
warm process's children) and ``beam_workers`` (anything below a sync process). More trees
the measured work runs in (``others``: role -> pid, e.g. a Prism job service and its worker
pool, whose SDK workers run a sync's DoFns outside the daemon's tree) are summed with it
under their own role.

Example usage::

    sampler = TreeSampler(pid).start()
    sampler.reset()            # a new phase
    ...
    sampler.phase_peak_mb, sampler.phase_peak_pss_mb, sampler.phase_peak_by_role_mb
    sampler.stop()
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psutil

__all__ = ["TreeSampler", "tree_rss", "tree_processes", "tree_cpu_seconds", "process_memory"]

MB = 1024 * 1024
ROLES = ("daemon", "warm_process", "sync_process", "beam_workers")
_WARM_MARK = "pipelines.fork_server"


def _order(item: tuple[str, int]) -> tuple[int, str]:
    return (ROLES.index(item[0]) if item[0] in ROLES else len(ROLES), item[0])


def _is_warm(process: psutil.Process, cache: dict[int, bool]) -> bool:
    if process.pid not in cache:
        try:
            cache[process.pid] = _WARM_MARK in " ".join(process.cmdline())
        except psutil.Error:
            return False
    return cache[process.pid]


def tree_processes(pid: int, cache: dict[int, bool] | None = None,
                   others: dict[str, int] | None = None) -> Iterator[tuple[psutil.Process, str]]:
    """``(process, role)`` for ``pid`` and every descendant, then for each of ``others`` (role -> pid)
    its root and descendants under that role."""
    for role, other in (others or {}).items():
        try:
            root = psutil.Process(other)
            yield from ((process, role) for process in [root] + root.children(recursive=True))
        except psutil.Error:
            continue
    cache = {} if cache is None else cache
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=False)
    except psutil.Error:
        return
    yield root, "daemon"
    for child in children:
        try:
            if _is_warm(child, cache):
                yield child, "warm_process"
                syncs = child.children(recursive=False)
            else:
                syncs = [child]
            for sync in syncs:
                yield sync, "sync_process"
                for worker in sync.children(recursive=True):
                    yield worker, "beam_workers"
        except psutil.Error:
            continue


def process_memory(process: psutil.Process, *, pss: bool = True) -> tuple[int, int, int]:
    """(RSS, PSS, anonymous RSS) of one process in bytes; PSS is RSS where it cannot be read."""
    if pss:
        try:
            info = process.memory_full_info()
            return info.rss, getattr(info, "pss", info.rss), info.rss - getattr(info, "shared", 0)
        except (psutil.AccessDenied, AttributeError):
            pass
    info = process.memory_info()
    return info.rss, info.rss, info.rss - getattr(info, "shared", 0)


def tree_rss(pid: int, by_role: dict[str, int] | None = None, *, pss: bool = False,
             by_role_pss: dict[str, int] | None = None, cache: dict[int, bool] | None = None,
             others: dict[str, int] | None = None) -> tuple[int, int, int, int]:
    """(RSS summed over the tree, number of processes, anonymous RSS, PSS summed over the tree), in bytes.

    ``by_role`` / ``by_role_pss`` (if given) receive the sums per role (see the module docstring).
    """
    total = count = own = proportional = 0
    for process, role in tree_processes(pid, cache, others):
        try:
            rss, share, anon = process_memory(process, pss=pss)
        except psutil.Error:
            continue
        total += rss
        proportional += share
        own += anon
        count += 1
        if by_role is not None:
            by_role[role] = by_role.get(role, 0) + rss
        if by_role_pss is not None:
            by_role_pss[role] = by_role_pss.get(role, 0) + share
    return total, count, own, proportional


def tree_cpu_seconds(pid: int, roles: tuple[str, ...] = ("daemon", "warm_process")) -> dict[str, float]:
    """CPU seconds (user + system) so far of the tree's long-lived processes, by role."""
    out: dict[str, float] = {}
    for process, role in tree_processes(pid):
        if role not in roles:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


class TreeSampler:
    """Samples the tree rooted at ``pid`` every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float = 0.2, *, pss: bool = True, others: dict[str, int] | None = None):
        self.pid, self.interval, self.pss = pid, interval, pss
        self.others = dict(others or {})
        self.peak = self.phase_peak = self.phase_peak_anon = self.phase_peak_pss = 0
        self.phase_max_processes = 0
        self.samples = 0
        self.phase_peak_by_role: dict[str, int] = {}
        self.phase_peak_pss_by_role: dict[str, int] = {}
        self._cache: dict[int, bool] = {}
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
        roles: dict[str, int] = {}
        roles_pss: dict[str, int] = {}
        rss, count, anon, pss = tree_rss(self.pid, roles, pss=self.pss, by_role_pss=roles_pss, cache=self._cache,
                                         others=self.others)
        with self._lock:
            self.phase_peak_anon = max(self.phase_peak_anon, anon)
            self.phase_peak_pss = max(self.phase_peak_pss, pss)
            for role, value in roles.items():
                self.phase_peak_by_role[role] = max(self.phase_peak_by_role.get(role, 0), value)
            for role, value in roles_pss.items():
                self.phase_peak_pss_by_role[role] = max(self.phase_peak_pss_by_role.get(role, 0), value)
            self.samples += 1
            self.peak = max(self.peak, rss)
            self.phase_peak = max(self.phase_peak, rss)
            self.phase_max_processes = max(self.phase_max_processes, count)
        return rss

    def reset(self) -> None:
        with self._lock:
            self.phase_peak = self.phase_peak_anon = self.phase_peak_pss = 0
            self.phase_max_processes = 0
            self.phase_peak_by_role = {}
            self.phase_peak_pss_by_role = {}
        self.sample()

    @property
    def phase_peak_mb(self) -> float:
        return round(self.phase_peak / MB, 1)

    @property
    def phase_peak_pss_mb(self) -> float:
        """Peak PSS of the tree in this phase: shared pages divided among the processes sharing them."""
        return round(self.phase_peak_pss / MB, 1)

    @property
    def phase_peak_anon_mb(self) -> float:
        """Peak anonymous RSS of the tree in this phase (without mapped files and shared memory)."""
        return round(self.phase_peak_anon / MB, 1)

    @property
    def phase_peak_by_role_mb(self) -> dict[str, float]:
        """Peak RSS per role in this phase (each role's own peak; they need not coincide)."""
        return {role: round(value / MB, 1) for role, value in sorted(self.phase_peak_by_role.items(), key=_order)}

    @property
    def phase_peak_pss_by_role_mb(self) -> dict[str, float]:
        """Peak PSS per role in this phase."""
        return {role: round(value / MB, 1) for role, value in sorted(self.phase_peak_pss_by_role.items(), key=_order)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
