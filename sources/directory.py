"""The directory source: one document per file under a folder.

Each document has ``_id`` (a hash of the path relative to the folder: stable, short),
``path`` (relative), ``file_name``, ``extension``, ``size``, ``_timestamp`` (the file's
mtime, ISO 8601 UTC) and, once downloaded, either ``body`` (plain-text files by extension,
decoded as UTF-8) or ``_attachment`` (every other file, base64), which the pipeline turns
into ``body`` text (:mod:`transforms.extract_text`: PDF, DOCX, HTML's visible text, text
without a known extension), so markup is never indexed as text.

Partitions are top-level subfolders (plus the files at the top), so a big tree is read in
parallel; files are downloaded lazily, only when new or changed.

The operator decides which folders may be read at all: ``allowed_roots`` in the source's
``sources:`` entry of config.yml (:class:`DirectorySettings`). The connector's folder is
resolved (``..``, symlinks) and must lie below one of them; so must every file, resolved
again when it is listed and when it is opened (a symlink out of a root is skipped, never
read). With no roots, every directory connector is refused, saying how to allow folders.

Example usage::

    source = DirectoryDataSource({"directory": "/srv/docs", "pattern": "**/*.md"},
                                 operator_settings={"allowed_roots": ["/srv"]})
    for doc, download in source.get_docs():
        ...
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import field_validator

from sources.base import BaseDataSource, Filter, OperatorSettings, Partition, config_folder
from sources.errors import SourceConfigError, SourceError
from sources.file_content import content_fields, file_suffix
from sources.folders import absolute_folders, within
from sources.streaming import with_continuous_sync_field

__all__ = ["DirectoryDataSource", "DirectorySettings", "file_id", "iso_mtime"]

_HOW_TO_ALLOW = ("list the folders directory connectors may read in config.yml, e.g. `sources: {dir: {class: "
                 "sources.directory:DirectoryDataSource, allowed_roots: [/srv/docs]}}`")

def iso_mtime(stat: os.stat_result) -> str:
    """A file's mtime as its document's ``_timestamp`` (ISO 8601, UTC): exactly
    ``datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).isoformat()``, whose microseconds
    are the float's rounded half to even, at a quarter of the cost (the seconds' text is kept:
    files written together share it)."""
    mtime = stat.st_mtime
    seconds = math.floor(mtime)
    micros = round((mtime - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    text = _second_text(seconds)
    return f"{text}.{micros:06d}+00:00" if micros else f"{text}+00:00"


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole second (UTC), remembered for the seconds seen lately."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()[:19]


class DirectorySettings(OperatorSettings):
    """What the operator allows the directory source (config.yml)."""

    #: Absolute folders below which connectors may read; empty: none (every connector refused).
    allowed_roots: tuple[str, ...] = ()

    @field_validator("allowed_roots")
    @classmethod
    def _absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return absolute_folders(value)


class DirectoryDataSource(BaseDataSource):
    """Files under a local folder, matched by a glob pattern."""

    name = "Directory"
    service_type = "dir"
    operator_settings_model = DirectorySettings
    continuous_sync_enabled = True

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return with_continuous_sync_field({
            "directory": {
                "label": "Directory",
                "order": 1,
                "type": "str",
                "tooltip": "The folder to index: an absolute path, or one relative to the folder of the "
                           "service's config file.",
            },
            "pattern": {
                "label": "File pattern (glob)",
                "order": 2,
                "type": "str",
                "default_value": "**/*",
                "required": False,
                "tooltip": "Which files to index, relative to the folder, e.g. **/*.md",
            },
        }, order=3)

    @property
    def root(self) -> Path:
        """The folder; a relative one is read from the service's config folder (:func:`config_folder`)."""
        return config_folder() / Path(str(self.configuration["directory"] or "")).expanduser()

    @property
    def pattern(self) -> str:
        return str(self.configuration["pattern"] or "**/*")

    @functools.cached_property
    def allowed_roots(self) -> tuple[str, ...]:
        """The operator's roots, resolved (a root that does not exist allows nothing)."""
        return tuple(os.path.realpath(root) for root in self.operator_settings.allowed_roots)

    def _allowed(self, path: Path | str) -> bool:
        """Whether ``path``, resolved (``..``, every symlink), lies below an allowed root."""
        try:
            return within(os.path.realpath(path, strict=True), self.allowed_roots)
        except OSError:  # missing, a symlink loop, unreadable
            return False

    async def validate_config(self) -> None:
        if not str(self.configuration["directory"] or "").strip():
            raise SourceConfigError("Directory: a folder path is required")
        pattern = Path(self.pattern)
        if pattern.is_absolute() or ".." in pattern.parts:
            raise SourceConfigError(f"File pattern: must be relative to the folder, without '..', got {self.pattern!r}")
        self.check_operator_bounds()

    def check_operator_bounds(self) -> None:
        """Refuse a folder outside the operator's ``allowed_roots`` (also called by create/update-connector)."""
        if not self.operator_settings.allowed_roots:
            raise SourceConfigError(f"Directory: this service allows no folders; the operator must {_HOW_TO_ALLOW}")
        resolved = os.path.realpath(self.root)  # a folder that does not exist yet is judged by its path
        if not within(resolved, self.allowed_roots):
            raise SourceConfigError(
                f"Directory: {self.root} is outside the folders this service may read (resolved to {resolved}); "
                "the operator lists them in config.yml `allowed_roots` of the source's sources: entry")

    async def ping(self) -> None:
        await self.validate_config()
        root = self.root
        if not root.exists():
            raise SourceConfigError(f"Directory: {root} does not exist")
        if not root.is_dir():
            raise SourceConfigError(f"Directory: {root} is not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise SourceConfigError(f"Directory: {root} is not readable by this service")

    def _check_root(self) -> None:
        """Refuse a folder outside the roots (checked again when read: it may have been swapped for a symlink)."""
        if not self._allowed(self.root):
            raise SourceConfigError(f"Directory: {self.root} is outside the folders this service may read")

    def get_partitions(self) -> list[Partition]:
        self._check_root()
        root = self.root
        if not root.is_dir():
            return [Partition()]
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        if not subfolders:
            return [Partition()]
        return [Partition("(top)", {"top": True})] + [Partition(name, {"subfolder": name}) for name in subfolders]

    def _files(self, partition: Partition | None) -> Iterator[tuple[str, str, os.stat_result]]:
        """``(path, relative path, stat)`` of each file of ``partition`` the pattern matches."""
        self._check_root()
        root = self.root
        if not root.is_dir():
            raise SourceError(f"Directory: {root} is not a readable folder")
        params = partition.params if partition else {}
        name_pattern, recursive = _walk_pattern(self.pattern)
        if name_pattern is None:  # a pattern with folders in it: pathlib's glob, file by file
            yield from self._globbed(root, params)
            return
        if params.get("top"):
            yield from self._walk(str(root), "", name_pattern, recursive=False)
        elif "subfolder" in params:
            if recursive:  # a top-level pattern (``*.md``) matches nothing in a subfolder
                sub = params["subfolder"]
                folder = os.path.join(root, sub)
                if os.path.islink(folder) and not self._allowed(folder):  # swapped since partitioned
                    self._logger.warning("skipping %s: it resolves outside the allowed folders, or not at all", sub)
                    return
                yield from self._walk(folder, sub + "/", name_pattern, recursive=True)
        else:
            yield from self._walk(str(root), "", name_pattern, recursive=recursive)

    def _walk(self, folder: str, prefix: str, matches: Any, *, recursive: bool
              ) -> Iterator[tuple[str, str, os.stat_result]]:
        """Files under ``folder`` (its path relative to the root is ``prefix``) whose name ``matches``,
        as ``Path.glob("**/<name>")`` finds them: hidden ones too, sorted by name, symlinked folders
        not descended, each symlink resolved and kept only within the allowed roots. One ``stat``
        per file; a folder reached without a symlink lies below the (checked) root by construction."""
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed meanwhile
        except OSError as exc:
            raise SourceError(f"cannot list {prefix or '.'}: {exc.strerror}") from exc
        for entry in entries:
            relative = prefix + entry.name
            try:
                if entry.is_symlink():
                    if not matches(entry.name):
                        continue
                    if not self._allowed(entry.path):
                        self._logger.warning("skipping %s: it resolves outside the allowed folders, or not at all",
                                             relative)
                        continue
                    if not entry.is_file():  # a symlinked folder is not descended (as ``**`` does not)
                        continue
                elif entry.is_dir(follow_symlinks=False):
                    if recursive:
                        yield from self._walk(entry.path, relative + "/", matches, recursive=True)
                    continue
                elif not entry.is_file(follow_symlinks=False) or not matches(entry.name):
                    continue  # sockets, fifos, devices; names the pattern does not match
                stat = entry.stat()
            except FileNotFoundError:
                continue  # removed since listed: the next sync deletes it
            except OSError as exc:
                raise SourceError(f"cannot read {relative}: {exc.strerror}") from exc
            yield entry.path, relative, stat

    def _globbed(self, root: Path, params: dict[str, Any]) -> Iterator[tuple[str, str, os.stat_result]]:
        if "subfolder" in params and self.pattern.startswith("**/"):
            matches = (root / params["subfolder"]).glob(self.pattern)  # only this subtree is walked
        else:
            matches = root.glob(self.pattern)
        for path in sorted(matches):
            if not self._allowed(path):
                self._logger.warning("skipping %s: it resolves outside the allowed folders, or not at all",
                                     path.relative_to(root).as_posix())
                continue
            if not path.is_file():
                continue
            parts = path.relative_to(root).parts
            if params.get("top") and len(parts) != 1:
                continue
            if "subfolder" in params and (len(parts) < 2 or parts[0] != params["subfolder"]):
                continue
            try:
                stat = path.stat()
            except OSError as exc:
                raise SourceError(f"cannot read {'/'.join(parts)}: {exc.strerror}") from exc
            yield str(path), "/".join(parts), stat

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None):
        for path, relative, stat in self._files(partition):
            yield self.document(path, relative, stat)

    def document(self, path: str, relative: str, stat: os.stat_result) -> tuple[dict[str, Any], "_FileDownload"]:
        """The document of the file at ``path`` (``relative`` to the folder) without its content, and
        its lazy download (what a full sync yields; the continuous sync builds the same)."""
        name = relative.rpartition("/")[2]
        extension = file_suffix(name).lower()
        doc = {
            "_id": file_id(relative),
            "path": relative,
            "file_name": name,
            "extension": extension,
            "size": stat.st_size,
            "_timestamp": iso_mtime(stat),
        }
        return doc, _FileDownload(path, relative, self.allowed_roots, extension)

    def matches(self, relative: str) -> bool:
        """Whether the file at ``relative`` (a path below the folder) is one the pattern selects,
        as a full sync's listing selects it."""
        return _glob_match(tuple(relative.split("/")), tuple(self.pattern.split("/")))

    # -- continuous sync (sources/directory_stream.py) -----------------------------------
    def open_change_stream(self, cursor: dict[str, Any] | None, filtering: Filter | None = None, *,
                           stream_id: str = "default") -> Any:
        """The folder's changes: inotify watches (watchdog) plus a rescan compared with the index."""
        from sources.directory_stream import DirChangeStream

        return DirChangeStream(self, cursor)

    def release_change_stream(self, cursor: dict[str, Any] | None, *, stream_id: str = "default") -> None:
        """Nothing to release: the watches belong to the open stream (closed with it) and the
        folder keeps nothing for the connector."""
        self._logger.info("continuous sync of %s off: nothing is kept for it outside the stream", self.root)


def file_id(relative: str) -> str:
    """The document id of the file at ``relative`` (a hash of the path below the folder)."""
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()


def _glob_match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a file's path parts match a glob's parts as ``Path.glob`` selects files (``**``: any
    number of folders; a glob ending in ``**`` selects folders only)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        if len(pattern) == 1:
            return False
        return any(_glob_match(parts[start:], pattern[1:]) for start in range(len(parts)))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


@functools.lru_cache(maxsize=64)
def _walk_pattern(pattern: str) -> tuple[Any, bool]:
    """(a matcher of file names, whether subfolders are searched) for patterns a walk answers:
    ``**/<name>`` and ``<name>`` where ``<name>`` has no folder in it; ``(None, False)`` for others."""
    recursive = pattern.startswith("**/")
    name = pattern[3:] if recursive else pattern
    if not name or "/" in name or "**" in name:
        return None, False
    return re.compile(fnmatch.translate(name)).match, recursive  # case-sensitive, as pathlib on POSIX


class _FileDownload:
    """The lazy download of one file (picklable, cheap to create).

    The file opened is checked again (``/proc/self/fd``: the very file, whatever was swapped
    in since it was listed) against the allowed roots before a byte is read.
    """

    __slots__ = ("path", "relative", "roots", "extension")

    def __init__(self, path: str, relative: str, roots: tuple[str, ...], extension: str | None = None):
        self.path = path
        self.relative = relative
        self.roots = roots
        self.extension = file_suffix(os.path.basename(path)).lower() if extension is None else extension

    def __getstate__(self) -> tuple[str, str, tuple[str, ...], str]:
        return self.path, self.relative, self.roots, self.extension

    def __setstate__(self, state: tuple[str, str, tuple[str, ...], str]) -> None:
        self.path, self.relative, self.roots, self.extension = state

    def __call__(self, doit: bool = True, timestamp: str | None = None) -> dict[str, Any] | None:
        if not doit:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a fifo swapped in: no wait
        except FileNotFoundError:
            return None  # removed since listed: the next sync deletes it
        except OSError as exc:
            raise SourceError(f"cannot read {self.relative}: {exc.strerror}") from exc
        try:
            if not within(_opened_path(fd, self.path), self.roots):
                raise SourceError(f"cannot read {self.relative}: it now resolves outside the allowed folders")
            data = _read_all(fd)
        except OSError as exc:
            raise SourceError(f"cannot read {self.relative}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        # HTML, PDF, DOCX, files without a known extension: the pipeline extracts their text.
        return content_fields(data, self.extension)


def _opened_path(fd: int, path: str) -> str:
    """The real path of an open file (Linux: its /proc/self/fd link), else ``path`` resolved."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _read_all(fd: int) -> bytes:
    """The whole file: one ``read`` for a small one (the usual case), more while it gives data."""
    chunk = os.read(fd, 1 << 16)
    if len(chunk) < 1 << 16:
        return chunk
    chunks = [chunk]
    while chunk:
        chunk = os.read(fd, 1 << 20)
        chunks.append(chunk)
    return b"".join(chunks)
