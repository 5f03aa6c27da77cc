"""The directory source: one document per file under a folder.

Each document has ``_id`` (a hash of the path relative to the folder: stable, short),
``path`` (relative), ``file_name``, ``extension``, ``size``, ``_timestamp`` (the file's
mtime, ISO 8601 UTC) and, once downloaded, either ``body`` (plain-text files by extension,
decoded as UTF-8) or ``_attachment`` (every other file, base64), which the pipeline turns
into ``body`` text (:mod:`transforms.extract_text`: PDF, DOCX, HTML's visible text, text
without a known extension), so markup is never indexed as text.

Partitions are top-level subfolders (plus the files at the top), so a big tree is read in
parallel; files are downloaded lazily, only when new or changed.

Example usage::

    source = DirectoryDataSource({"directory": "/srv/docs", "pattern": "**/*.md"})
    for doc, download in source.get_docs():
        ...
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sources.base import BaseDataSource, Filter, Partition, config_folder
from sources.errors import SourceConfigError, SourceError

__all__ = ["DirectoryDataSource"]

#: Plain text as it is (markup such as HTML is not: its text is extracted by the pipeline).
_TEXT_EXTENSIONS = {
    ".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".log", ".py",
    ".js", ".ts", ".java", ".go", ".rs", ".c", ".h", ".cpp", ".sh", ".toml", ".ini", ".cfg",
    ".sql", ".css", ".tex", ".text",
}


def _iso_mtime(stat: os.stat_result) -> str:
    return datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).isoformat()


class DirectoryDataSource(BaseDataSource):
    """Files under a local folder, matched by a glob pattern."""

    name = "Directory"
    service_type = "dir"

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
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
        }

    @property
    def root(self) -> Path:
        """The folder; a relative one is read from the service's config folder (:func:`config_folder`)."""
        return config_folder() / Path(str(self.configuration["directory"] or "")).expanduser()

    @property
    def pattern(self) -> str:
        return str(self.configuration["pattern"] or "**/*")

    async def validate_config(self) -> None:
        if not str(self.configuration["directory"] or "").strip():
            raise SourceConfigError("Directory: a folder path is required")
        if Path(self.pattern).is_absolute() or ".." in Path(self.pattern).parts:
            raise SourceConfigError(f"File pattern: must be relative to the folder, got {self.pattern!r}")

    async def ping(self) -> None:
        await self.validate_config()
        root = self.root
        if not root.exists():
            raise SourceConfigError(f"Directory: {root} does not exist")
        if not root.is_dir():
            raise SourceConfigError(f"Directory: {root} is not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise SourceConfigError(f"Directory: {root} is not readable by this service")

    def get_partitions(self) -> list[Partition]:
        root = self.root
        if not root.is_dir():
            return [Partition()]
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        if not subfolders:
            return [Partition()]
        return [Partition("(top)", {"top": True})] + [Partition(name, {"subfolder": name}) for name in subfolders]

    def _files(self, partition: Partition | None) -> Iterator[Path]:
        root = self.root
        if not root.is_dir():
            raise SourceError(f"Directory: {root} is not a readable folder")
        params = partition.params if partition else {}
        if "subfolder" in params and self.pattern.startswith("**/"):
            matches = (root / params["subfolder"]).glob(self.pattern)  # only this subtree is walked
        else:
            matches = root.glob(self.pattern)
        for path in sorted(matches):
            if not path.is_file():
                continue
            parts = path.relative_to(root).parts
            if params.get("top") and len(parts) != 1:
                continue
            if "subfolder" in params and (len(parts) < 2 or parts[0] != params["subfolder"]):
                continue
            yield path

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None):
        root = self.root
        for path in self._files(partition):
            relative = path.relative_to(root).as_posix()
            try:
                stat = path.stat()
            except OSError as exc:
                raise SourceError(f"cannot read {relative}: {exc.strerror}") from exc
            doc = {
                "_id": hashlib.sha1(relative.encode("utf-8")).hexdigest(),
                "path": relative,
                "file_name": path.name,
                "extension": path.suffix.lower(),
                "size": stat.st_size,
                "_timestamp": _iso_mtime(stat),
            }
            yield doc, _FileDownload(str(path), relative)


class _FileDownload:
    """The lazy download of one file (picklable, cheap to create)."""

    def __init__(self, path: str, relative: str):
        self.path = path
        self.relative = relative

    def __call__(self, doit: bool = True, timestamp: str | None = None) -> dict[str, Any] | None:
        if not doit:
            return None
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            return None  # removed since listed: the next sync deletes it
        except OSError as exc:
            raise SourceError(f"cannot read {self.relative}: {exc.strerror}") from exc
        if Path(self.path).suffix.lower() in _TEXT_EXTENSIONS:
            return {"body": data.decode("utf-8", errors="replace")}
        # HTML, PDF, DOCX, files without a known extension: the pipeline extracts their text.
        return {"_attachment": base64.b64encode(data).decode("ascii")}
