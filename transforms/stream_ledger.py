"""StreamLedger: which source positions Elasticsearch has acknowledged, for a continuous sync.

The reader of a continuous sync records each change it emits (:meth:`StreamLedger.emitted`);
the writer records each change Elasticsearch acknowledged, or that was dead-lettered
(:meth:`StreamLedger.done`), in whatever order its batches answer. The position the source
may be acknowledged at (:meth:`StreamLedger.confirmable`) is the highest one whose changes,
and every earlier position's, are all done: nothing the source forgets was not written.

A snapshot's documents all share one position and are emitted a chunk at a time: the writer
may have written every document emitted so far before the next chunk is read. The reader
therefore holds the snapshot's position (:meth:`StreamLedger.hold`) while it reads the
snapshot, and releases it (:meth:`StreamLedger.release`) with the sweep, the snapshot's last
change: the position is confirmable only once the whole snapshot and its sweep are written
(else the source would record the snapshot as done, and a restart or a stream opened again
would never read the rest of it).

Reader and writer meet here within one process: the Prism runner's LOOPBACK workers (the
continuous sync's runner, docs/runners.md) run every stage of the sync in the sync
process. Ledgers are per job (:func:`ledger`).

Example usage::

    book = ledger("job-1")
    book.emitted(100); book.emitted(100); book.emitted(120)
    book.done({120: 1}); book.confirmable()   # 0: position 100 is not written yet
    book.done({100: 2}); book.confirmable()   # 120
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from datetime import datetime, timezone
from typing import Any

__all__ = ["StreamLedger", "ledger", "new_ledger", "IDLE_AFTER"]

#: Seconds after its last acknowledgement a stream with nothing outstanding reports lag 0.
IDLE_AFTER = 5.0


class StreamLedger:
    """Emitted and acknowledged changes of one continuous sync (see the module docstring)."""

    def __init__(self, generation: int = 0) -> None:
        #: Which opening of the stream this ledger counts (changes of another are ignored).
        self.generation = generation
        self._lock = threading.Lock()
        self._emitted_at: dict[int, float] = {}  # outstanding position -> when it was first emitted
        self._passed_at: dict[int, float] = {}  # outstanding position -> when a later position was done
        self._outstanding: OrderedDict[int, int] = OrderedDict()  # position -> changes not yet done
        self._order: deque[int] = deque()  # distinct positions emitted, oldest first, not yet confirmable
        self._early: dict[int, int] = {}  # done before the reader recorded them (another thread's race)
        self._confirmable = 0
        self._held: int | None = None  # a position more changes are still to come for (a snapshot's)
        #: Changes Elasticsearch refused as older than the indexed version (a replay, a reordering).
        self.version_conflicts = 0
        #: Changes Elasticsearch acknowledged (written, deleted, refused as older, or dead-lettered).
        self.changes_applied = 0
        #: Seconds from the source's commit to Elasticsearch's acknowledgement, of the last batch.
        self.lag_seconds: float | None = None
        self.acknowledged_at: float | None = None
        self.lags: list[float] = []  # recent lags, for p50/p99 (bounded)
        self._writing = 0  # _bulk requests under way (a writer retrying through an outage is not stuck)
        self._last_done = 0.0  # monotonic time of the last done()

    def emitted(self, position: int, count: int = 1) -> None:
        with self._lock:
            if not self._order or self._order[-1] != position:
                self._order.append(position)
            self._emitted_at.setdefault(position, time.monotonic())
            early = self._early.pop(position, 0)
            left = self._outstanding.get(position, 0) + count - early
            if left > 0:
                self._outstanding[position] = left
            else:
                self._outstanding.pop(position, None)
                if left < 0:
                    self._early[position] = -left
            self._advance()

    def done(self, positions: dict[int, int], *, committed_at: list[float] | None = None,
             conflicts: int = 0) -> None:
        """``positions``: position -> changes of it now written (or dead-lettered)."""
        now = time.time()
        with self._lock:
            self._last_done = time.monotonic()
            self.version_conflicts += conflicts
            self.changes_applied += sum(positions.values())
            for position, count in positions.items():
                left = self._outstanding.get(position)
                if left is None:
                    self._early[position] = self._early.get(position, 0) + count
                elif left - count > 0:
                    self._outstanding[position] = left - count
                else:
                    del self._outstanding[position]
            if positions:
                self._advance()
                self.acknowledged_at = now
                highest, clock = max(positions), time.monotonic()
                for waiting in self._outstanding:
                    if waiting >= highest:
                        break
                    self._passed_at.setdefault(waiting, clock)
            for committed in committed_at or ():
                lag = max(0.0, now - committed)
                self.lag_seconds = lag
                self.lags.append(lag)
            del self.lags[:-2000]

    def hold(self, position: int) -> None:
        """More changes of ``position`` are still to come (a snapshot being read a chunk at a time):
        neither it nor any later position is confirmable until :meth:`release`, however many of
        those emitted so far are done."""
        with self._lock:
            self._held = position
            if not self._order or self._order[-1] != position:
                self._order.append(position)

    def release(self) -> None:
        """Every change of the held position was emitted (:meth:`emitted` first): it becomes
        confirmable once they are all done."""
        with self._lock:
            self._held = None
            self._advance()

    def _advance(self) -> None:
        """Under the lock: positions emitted in order, every change of them done, are confirmable."""
        while self._order and self._order[0] not in self._outstanding:
            done = self._order[0]
            self._emitted_at.pop(done, None)
            self._passed_at.pop(done, None)
            if done == self._held:
                break  # written so far, more to come
            self._order.popleft()
            self._confirmable = max(self._confirmable, done)

    def writing(self, delta: int) -> None:
        """A ``_bulk`` request starts (+1) or ends (-1): while one is under way nothing counts as lost."""
        with self._lock:
            self._writing = max(0, self._writing + delta)
            self._last_done = time.monotonic()

    def lost(self, after: float) -> bool:
        """Whether changes were lost on the way to Elasticsearch (a runner that dropped a bundle's output
        or a timer; the reader then reads again from the acknowledged position): the oldest outstanding
        position has waited ``after`` seconds since a later one was written, or, at the tail of the
        stream (nothing later to write), ``after`` seconds since it was emitted while no write was
        under way or done."""
        with self._lock:
            oldest = next(iter(self._outstanding), None)
            if oldest is None:
                return False
            now = time.monotonic()
            passed = self._passed_at.get(oldest)
            if passed is not None and now - passed >= after:
                return True
        return self.stalled(after)

    def stalled(self, after: float) -> bool:
        """Whether changes were lost with nothing written after them: changes are outstanding, the
        oldest for ``after`` seconds, no ``_bulk`` is under way and the writer acknowledged nothing for
        as long (a dropped bundle at the end of a snapshot, or before the source went idle)."""
        with self._lock:
            oldest = next(iter(self._outstanding), None)
            if oldest is None or self._writing:
                return False
            now = time.monotonic()
            emitted = self._emitted_at.get(oldest, now)
            return now - emitted >= after and now - max(self._last_done, emitted) >= after

    def confirmable(self) -> int:
        """The highest position whose changes, and all earlier ones, are in Elasticsearch (0: none)."""
        with self._lock:
            return self._confirmable

    def pending(self) -> int:
        with self._lock:
            return sum(self._outstanding.values())

    def current_lag(self) -> float | None:
        """How far behind the stream is now, in seconds (None: nothing measured yet). While changes
        are outstanding: the last acknowledged batch's lag or, when longer, how long the oldest
        outstanding change has waited since it was read (a stuck write shows a growing lag, not
        the last good one). Caught up (nothing outstanding): the last batch's lag for
        :data:`IDLE_AFTER` seconds after it was acknowledged, then 0 (an idle stream is not behind:
        a spike measured long ago is not shown as the present)."""
        with self._lock:
            return self._current_lag()

    def _current_lag(self) -> float | None:
        oldest = next(iter(self._outstanding), None)
        if oldest is not None:
            waited = time.monotonic() - self._emitted_at.get(oldest, time.monotonic())
            return max(self.lag_seconds or 0.0, waited)
        if self.lag_seconds is None:
            return None
        if self.acknowledged_at is not None and time.time() - self.acknowledged_at > IDLE_AFTER:
            return 0.0
        return self.lag_seconds

    def state(self) -> dict[str, Any]:
        with self._lock:
            lags = sorted(self.lags)
            lag = self._current_lag()
            return {
                "lag_seconds": None if lag is None else round(lag, 3),
                "last_batch_lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
                "lag_p50_seconds": round(lags[len(lags) // 2], 3) if lags else None,
                "lag_p99_seconds": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3) if lags else None,
                "version_conflicts": self.version_conflicts,
                "changes_applied": self.changes_applied,
                "acknowledged_at": None if self.acknowledged_at is None else datetime.fromtimestamp(
                    self.acknowledged_at, timezone.utc).isoformat(timespec="milliseconds"),
                "pending_changes": sum(self._outstanding.values()),
            }


_LEDGERS: dict[str, StreamLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def ledger(job_id: str) -> StreamLedger:
    """The ledger of ``job_id`` in this process (made on first use)."""
    with _LEDGERS_LOCK:
        book = _LEDGERS.get(job_id)
        if book is None:
            book = _LEDGERS[job_id] = StreamLedger()
        return book


def new_ledger(job_id: str) -> StreamLedger:
    """A fresh ledger for ``job_id`` (the stream was opened again), of the next generation."""
    with _LEDGERS_LOCK:
        old = _LEDGERS.get(job_id)
        book = _LEDGERS[job_id] = StreamLedger((old.generation + 1) if old else 0)
        if old is not None:
            book.version_conflicts, book.changes_applied = old.version_conflicts, old.changes_applied
            book.acknowledged_at = old.acknowledged_at
            book.lag_seconds, book.lags = old.lag_seconds, list(old.lags)  # the job keeps reporting its lag
        return book
