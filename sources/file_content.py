"""What a file-based source adds to a document from a file's bytes: its text or its attachment.

Shared by the sources that read files (``dir``, ``network_drive``): plain text files (by
extension) become ``body`` as they are; anything else (HTML, PDF, DOCX, files without a
known extension) becomes ``_attachment`` (base64), whose text the pipeline extracts
(:mod:`transforms.extract_text`).

Example usage::

    from sources.file_content import content_fields, file_suffix

    content_fields(b"hello", file_suffix("notes.txt"))   # {"body": "hello"}
    content_fields(pdf_bytes, ".pdf")                     # {"_attachment": "JVBERi0x..."}
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["TEXT_EXTENSIONS", "content_fields", "file_suffix"]

#: Plain text as it is (markup such as HTML is not: its text is extracted by the pipeline).
TEXT_EXTENSIONS = frozenset({
    ".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".log", ".py",
    ".js", ".ts", ".java", ".go", ".rs", ".c", ".h", ".cpp", ".sh", ".toml", ".ini", ".cfg",
    ".sql", ".css", ".tex", ".text",
})


def file_suffix(name: str) -> str:
    """The file name's extension as ``Path.suffix`` gives it (``a.tar.gz``: ``.gz``; ``.bashrc``: none)."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def content_fields(data: bytes, extension: str) -> dict[str, Any]:
    """``{"body": text}`` for a plain text file (``extension`` lower case, with its dot), else
    ``{"_attachment": base64}`` for the pipeline to extract."""
    if extension in TEXT_EXTENSIONS:
        return {"body": data.decode("utf-8", errors="replace")}
    return {"_attachment": base64.b64encode(data).decode("ascii")}
