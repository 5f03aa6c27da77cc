"""The directory source's change capture: inotify watches (watchdog) plus rescans.

A folder keeps no log of its changes, so the stream never trusts events alone:

* **Paths, not events.** An event (created, modified, closed after writing, moved, deleted;
  for a folder: every file below it) only marks a file's path *dirty*. When the path has been
  quiet for :data:`QUIET_SECONDS` (a file still being written is not read half-way; one written
  without pause is read every :data:`MAX_WAIT_SECONDS`), the stream looks at the file as it is
  then: a file the pattern selects is read and yields an ``index`` change (the very document a
  full sync yields: :meth:`~sources.directory.DirectoryDataSource.document`); a file that is
  gone (deleted, moved away, or deleted before it was read: not a failure) yields a ``delete``
  when it was indexed. An editor's save (write a temporary file, rename it over the original)
  is then one ``index`` of the original; a move is a ``delete`` of the old path and an ``index``
  of the new one.
* **Rescans.** The watches are set first (new subfolders are watched as they appear); then,
  when the service attached the content index (:meth:`DirChangeStream.attach_index`, always in
  a continuous sync), the index's ``path``, ``_timestamp`` and ``size`` are read and compared
  with a full listing of the folder (the full sync's listing: pattern, symlink rules): every file
  new or changed (mtime or size) and every indexed file gone becomes dirty. That is the first
  run's snapshot (an empty index: every file), and, after a restart or a crash, what changed
  while no stream ran. When the kernel's event queue overflowed (``IN_Q_OVERFLOW``: events were
  lost), the listing is compared again with what the stream knows it indexed. Deletions are only
  derived from a whole listing: a folder that cannot be listed fails the stream.
* **Versions.** Each change's position, the document's external version, comes from a
  per-stream clock: the wall clock in microseconds, strictly increasing, and above the highest
  version the index holds (read by the rescan) and the cursor's acknowledged position. A file
  is read after its position was taken, so a higher version always carries content read later:
  a replayed or reordered older change is refused by Elasticsearch (a version conflict). The
  position never depends on the file's mtime, which can go back (``cp -p``, ``touch -d``, a
  ``mv`` of an older file).

Without an attached index (a direct use of the stream), a first stream takes a snapshot of
the folder (the contract's snapshot and sweep) and a stream opened with a cursor marks every
file dirty (it cannot tell what changed while it did not run, nor what was deleted).

The cursor (``{"position", "acknowledged_at", "folder"}``) is where Elasticsearch acknowledged;
what the stream holds (the watches, a thread) is released by :meth:`DirChangeStream.close`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_module
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from watchdog.events import (EVENT_TYPE_CLOSED, EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_EVENTS_LOST,
                             EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.inotify import InotifyObserver

from sources.errors import SourceConfigError, SourceError
from sources.directory import file_id, iso_mtime
from sources.streaming import Change, ChangeStream, IndexReader

__all__ = ["DirChangeStream", "QUIET_SECONDS", "MAX_WAIT_SECONDS", "INDEX_FIELDS"]

_LOGGER = logging.getLogger(__name__)
#: Seconds a path must stay without events before the file is read.
QUIET_SECONDS = 0.2
#: A file written without pause is read at least this often.
MAX_WAIT_SECONDS = 5.0
#: The indexed fields a rescan compares with the folder.
INDEX_FIELDS = ("path", "_timestamp", "size")
_MAX_CHANGES = 500  # files read by one changes() call at most
_RESCAN = -1.0  # the "first event" time of a path a rescan marked: ready at once, no lag reported


def _stamp(doc: dict[str, Any]) -> tuple[Any, Any]:
    """What tells two versions of a file apart: its mtime (ISO 8601) and size."""
    return doc.get("_timestamp"), doc.get("size")


class _Events(FileSystemEventHandler):
    """Watchdog's events -> dirty paths (relative to the folder), under the stream's lock."""

    def __init__(self, stream: DirChangeStream):
        self.stream = stream

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        stream = self.stream
        if kind == EVENT_TYPE_EVENTS_LOST:
            _LOGGER.warning("inotify's event queue overflowed under %s: the folder is listed again", stream.root)
            stream.request_rescan()
            return
        if kind not in (EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED, EVENT_TYPE_MOVED,
                        EVENT_TYPE_DELETED):
            return  # opened, closed without writing, attributes: the content did not change
        paths = [event.src_path]
        if kind == EVENT_TYPE_MOVED and event.dest_path:
            paths.append(event.dest_path)
        for path in paths:
            relative = stream.relative(os.fsdecode(path))
            if relative is None:
                if kind in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED) and event.is_directory:
                    stream.request_rescan()  # the folder itself went: its listing fails the job
                continue
            if event.is_directory:
                if kind == EVENT_TYPE_MODIFIED:
                    continue  # an entry of it changed: its own event follows
                stream.dirty_folder(relative)
            else:
                stream.dirty(relative)


class DirChangeStream(ChangeStream):
    """A folder's changes (see the module docstring)."""

    def __init__(self, source: Any, cursor: dict[str, Any] | None):
        source._check_root()
        self.source = source
        self.root = str(source.root)
        self._real_root = os.path.realpath(self.root)
        if not os.path.isdir(self.root):
            raise SourceError(f"Directory: {self.root} is not a readable folder")
        cursor = cursor if isinstance(cursor, dict) else None
        acked = cursor.get("position") if cursor else None
        self._acked = acked if isinstance(acked, int) and acked > 0 else 0
        self._acked_at: str | None = cursor.get("acknowledged_at") if cursor else None
        self._last = self._acked  # the clock's last position
        self._lock = threading.Condition()
        self._dirty: dict[str, tuple[float, float]] = {}  # path -> (first event, last event), monotonic
        self._first_wall: dict[str, float] = {}  # path -> wall time of its first pending event (the lag)
        self._known: dict[str, tuple[Any, Any]] = {}  # indexed path -> its stamp, as this stream knows it
        self._rescan: str | None = "cursor" if cursor else None  # what the next rescan compares with
        self.rescans = 0
        self._identity = _identity(self.root)
        self._observer = self._watch()
        self._snapshot: Iterator[dict[str, Any]] | None = None
        if cursor is None:  # no index attached yet: the contract's first snapshot (attach_index may drop it)
            self.snapshot_position = self._tick()
            self._snapshot = self._read_snapshot()

    # -- watches -------------------------------------------------------------------------
    def _watch(self) -> InotifyObserver:
        observer = InotifyObserver()
        observer.name = f"dir-stream {self.root}"
        try:
            observer.schedule(_Events(self), self.root, recursive=True)
            observer.start()
        except OSError as exc:
            with contextlib.suppress(Exception):
                observer.stop()
            if exc.errno == errno.ENOSPC:
                raise SourceConfigError(
                    f"Directory: cannot watch {self.root}: the limit of inotify watches is reached (one per folder); "
                    "raise fs.inotify.max_user_watches (sysctl), see docs/sources/dir.md") from exc
            if exc.errno == errno.EMFILE:
                raise SourceConfigError(
                    f"Directory: cannot watch {self.root}: the limit of inotify instances is reached; raise "
                    "fs.inotify.max_user_instances (sysctl), see docs/sources/dir.md") from exc
            raise SourceError(f"Directory: cannot watch {self.root}: {exc.strerror or exc}") from exc
        return observer

    def relative(self, path: str) -> str | None:
        """``path`` (an event's) relative to the folder, None when it is the folder or outside it."""
        relative = os.path.relpath(path, self.root)
        if relative == "." or relative.startswith("../") or relative == "..":
            return None
        return relative.replace(os.sep, "/")

    def dirty(self, relative: str, *, rescan: bool = False) -> None:
        """The file at ``relative`` changed (or may have): read it once it is quiet."""
        now = _RESCAN if rescan else time.monotonic()
        with self._lock:
            first = self._dirty.get(relative, (now, now))[0]
            self._dirty[relative] = (first if first != _RESCAN else _RESCAN, now)
            if not rescan:
                self._first_wall.setdefault(relative, time.time())
            self._lock.notify_all()

    def dirty_folder(self, relative: str) -> None:
        """A folder appeared, vanished or moved: every file below it, indexed or present, is dirty."""
        prefix = relative + "/"
        with self._lock:
            below = [path for path in self._known if path.startswith(prefix)]
        for path in below:
            self.dirty(path)
        folder = os.path.join(self.root, relative)
        for top, folders, files in os.walk(folder):
            folders[:] = [name for name in folders if not os.path.islink(os.path.join(top, name))]
            base = os.path.relpath(top, self.root).replace(os.sep, "/")
            for name in files:
                self.dirty(f"{base}/{name}")

    def request_rescan(self) -> None:
        """Events were lost: list the folder again and compare it with what was indexed."""
        with self._lock:
            self._rescan = self._rescan or "known"
            self._lock.notify_all()

    # -- positions -----------------------------------------------------------------------
    def _tick(self) -> int:
        """The next position: the wall clock in microseconds, above every position given before."""
        self._last = max(time.time_ns() // 1000, self._last + 1)
        return self._last

    # -- the first snapshot (no index attached) ------------------------------------------
    def _read_snapshot(self) -> Iterator[dict[str, Any]]:
        for path, relative, stat in self.source._files(None):
            doc = self._read(path, relative, stat)
            if doc is not None:
                with self._lock:
                    self._known[relative] = _stamp(doc)
                yield doc

    def snapshot(self) -> Iterator[dict[str, Any]]:
        rows, self._snapshot = self._snapshot, None
        return rows if rows is not None else iter(())

    def attach_index(self, read_index: IndexReader) -> None:
        """Compare the folder with the index instead of a snapshot (see the module docstring)."""
        self._read_index = read_index
        self._snapshot = None
        self.snapshot_position = 0
        with self._lock:
            self._rescan = "index"

    # -- reading -------------------------------------------------------------------------
    def _read(self, path: str, relative: str, stat: os.stat_result) -> dict[str, Any] | None:
        """The file's whole document (content included), None when it vanished before it was read."""
        doc, download = self.source.document(path, relative, stat)
        if self.max_download_bytes and stat.st_size > self.max_download_bytes:
            return doc  # too large to download: its metadata only, as a full sync indexes it
        try:
            content = download()
        except SourceError as exc:
            _LOGGER.warning("continuous sync of %s: %s; the file is left as indexed", self.root, exc)
            return None
        if content is None:
            return None
        if content:
            doc.update(content)
        return doc

    def _current(self, relative: str) -> tuple[str, os.stat_result] | None:
        """``(path, stat)`` of the file at ``relative`` when a full sync would index it now, else None."""
        if not self.source.matches(relative):
            return None
        path = os.path.join(self.root, relative)
        try:
            stat = os.lstat(path)
            folder = os.path.dirname(path)
            if os.path.realpath(folder) != os.path.normpath(os.path.join(self._real_root, os.path.dirname(relative))):
                return None  # below a symlinked folder: a full sync does not descend those
            if os.path.islink(path):
                if not self.source._allowed(path):
                    return None
                stat = os.stat(path)
        except OSError:
            return None
        if not stat_module.S_ISREG(stat.st_mode):
            return None
        return path, stat

    def _settle(self, relative: str, committed_at: float | None) -> Change | None:
        """The change of a dirty path, as the file is now (None: nothing to do)."""
        position = self._tick()  # taken before the read: a later read gets a higher version
        found = self._current(relative)
        doc = self._read(found[0], relative, found[1]) if found else None
        if doc is None and found is not None and not os.path.lexists(found[0]):
            found = None  # deleted before it was read: gone
        with self._lock:
            if doc is not None:
                self._known[relative] = _stamp(doc)
                return Change("index", doc, position, committed_at)
            if found is not None:  # unreadable (logged): left as indexed
                return None
            if self._known.pop(relative, None) is None:
                return None  # never indexed
        return Change("delete", {"_id": file_id(relative)}, position, committed_at)

    def _compare(self, kind: str) -> None:
        """A rescan: every file new or changed since ``kind`` (``index``: what the index holds;
        ``known``: what this stream indexed; ``cursor``: unknown, every file) and every file gone."""
        started = time.monotonic()
        if kind == "index":
            known: dict[str, tuple[Any, Any]] = {}
            highest = 0
            for _id, fields, version in self._read_index(INDEX_FIELDS):
                highest = max(highest, version)
                if isinstance(fields.get("path"), str):
                    known[fields["path"]] = _stamp(fields)
            self._last = max(self._last, highest)
            with self._lock:
                self._known = known
        listed = {relative: (iso_mtime(stat), stat.st_size) for _path, relative, stat in self.source._files(None)}
        with self._lock:
            known = dict(self._known)
        changed = [relative for relative, stamp in listed.items() if known.get(relative) != stamp or kind == "cursor"]
        gone = [relative for relative in known if relative not in listed]
        for relative in changed + gone:
            self.dirty(relative, rescan=True)
        self.rescans += 1
        _LOGGER.info("continuous sync of %s: rescan (%s) of %d file(s) in %.2f s: %d new or changed, %d gone",
                     self.root, kind, len(listed), time.monotonic() - started, len(changed), len(gone))

    def _check_folder(self) -> None:
        """The watched folder must still be the one watched (inotify follows the folder, not its path)."""
        now = _identity(self.root)
        if now is None:
            raise SourceError(f"Directory: {self.root} is not a readable folder any more (moved or deleted while "
                              "watched); nothing is deleted from the index, the stream starts again once it is back")
        if now != self._identity:
            raise SourceError(f"Directory: {self.root} was replaced by another folder while watched; the stream "
                              "starts again and compares the new one with the index")

    def changes(self, timeout: float) -> list[Change]:
        self._check_folder()
        deadline = time.monotonic() + timeout
        with self._lock:
            kind, self._rescan = self._rescan, None
        if kind:
            self._compare(kind)
        out: list[Change] = []
        while True:
            now = time.monotonic()
            with self._lock:
                ready = [path for path, (first, last) in self._dirty.items()
                         if first == _RESCAN or now - last >= QUIET_SECONDS or now - first >= MAX_WAIT_SECONDS]
                ready = ready[:_MAX_CHANGES - len(out)]
                for path in ready:
                    del self._dirty[path]
                walls = [self._first_wall.pop(path, None) for path in ready]
                if not ready and not out:
                    wait = min([QUIET_SECONDS] + [max(0.0, QUIET_SECONDS - (now - last)) + 0.01
                                                  for _first, last in self._dirty.values()])
                    left = deadline - now
                    if left <= 0 or self._rescan:
                        return out
                    self._lock.wait(min(left, wait))
                    continue
            for path, wall in zip(ready, walls, strict=True):
                change = self._settle(path, wall)
                if change is not None:
                    out.append(change)
            if not ready or len(out) >= _MAX_CHANGES or time.monotonic() >= deadline:
                return out

    # -- acknowledgement -----------------------------------------------------------------
    def acknowledge(self, position: int) -> None:
        if position > self._acked:
            self._acked = position
            self._acked_at = datetime.now(timezone.utc).isoformat()

    def cursor(self) -> dict[str, Any]:
        return {"position": self._acked, "acknowledged_at": self._acked_at, "folder": self.root}

    def lag_hint(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._dirty)
        return {"pending_files": pending, "rescans": self.rescans}

    def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            with contextlib.suppress(RuntimeError):
                observer.join(timeout=5)


def _identity(folder: str) -> tuple[int, int] | None:
    """(device, inode) of ``folder``, None when it is not a folder any more."""
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino) if stat_module.S_ISDIR(stat.st_mode) else None
