"""Turn a file's bytes into plain text for the ``body`` field.

Sources hand over file content as bytes (object stores as a base64 ``_attachment``); the
pipeline calls :func:`extract_text` to index searchable text instead. It is a pure function,
so it runs anywhere (in a DoFn, a test, a notebook) without Beam.

The format is recognised from the content itself first (PDF and DOCX have unambiguous
signatures, and a file's name or declared type is often wrong), then from ``content_type``,
then from the ``file_name`` extension:

=========================  ==========================================================
PDF                        text of every page (pypdf); encrypted PDFs with an empty
                           user password are opened, others give ``None``
DOCX                       paragraphs and table cells, in document order (python-docx)
HTML / XHTML               visible text; ``script``/``style`` dropped (beautifulsoup4)
text, markdown, CSV, JSON,  decoded as UTF-8 (or UTF-16 with a BOM); undecodable bytes
XML, YAML, source code...  become U+FFFD rather than failing the document
anything else              ``None`` when it looks binary
=========================  ==========================================================

Corrupt or truncated input never raises: the function returns ``None`` and logs why at
debug level, because one bad file must not fail a sync of millions.

Example usage::

    from transforms.extract_text import extract_text

    with open("report.pdf", "rb") as f:
        text = extract_text(f.read(), file_name="report.pdf")
    extract_text(b"<p>Hello <b>world</b></p>", content_type="text/html")  # 'Hello\\nworld'
    extract_text(b"\\x89PNG\\r\\n\\x1a\\n...", file_name="logo.png")     # None
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable

__all__ = ["extract_text"]

_LOGGER = logging.getLogger(__name__)

_PDF, _DOCX, _HTML, _TEXT = "pdf", "docx", "html", "text"

_DOCX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_CONTENT_TYPES = {
    "application/pdf": _PDF,
    "application/x-pdf": _PDF,
    _DOCX_CONTENT_TYPE: _DOCX,
    "text/html": _HTML,
    "application/xhtml+xml": _HTML,
}
# Non-``text/*`` types that are text all the same.
_TEXT_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/ld+json",
        "application/xml",
        "application/csv",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/javascript",
        "application/x-sh",
        "application/sql",
        "application/x-tex",
        "application/rtf",
    }
)
_EXTENSIONS = {
    ".pdf": _PDF,
    ".docx": _DOCX,
    ".html": _HTML,
    ".htm": _HTML,
    ".xhtml": _HTML,
    **dict.fromkeys(
        (
            ".txt .text .md .markdown .rst .adoc .csv .tsv .json .jsonl .ndjson .xml .yaml .yml "
            ".toml .ini .cfg .conf .properties .log .tex .rtf .sql .sh .py .js .ts .java .go .rs "
            ".c .h .cpp .hpp .cs .rb .php .css .scss .kt .swift .scala .r .m .pl .lua .srt .vtt"
        ).split(),
        _TEXT,
    ),
}
# How much of the content is inspected to decide whether unlabelled bytes are text.
_SNIFF_BYTES = 8192


def extract_text(
    content: bytes, *, file_name: str | None = None, content_type: str | None = None
) -> str | None:
    """The text of ``content``, or ``None`` when the format is unknown or the file is unreadable.

    Args:
        content: the whole file.
        file_name: the file's name or path; only its extension is used, as a hint.
        content_type: the declared MIME type (parameters such as ``; charset=`` are ignored),
            as a hint.

    Returns:
        The extracted text (possibly empty, e.g. a PDF of scanned images), or ``None``.
        Never raises on bad input.
    """
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise TypeError(f"extract_text expects bytes, got {type(content).__name__}")
    content = bytes(content)
    kind = _detect(content, file_name, content_type)
    if kind is None:
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug(
                "no text extracted from %s: unrecognised binary format", file_name or content_type or "content"
            )
        return None
    try:
        return _EXTRACTORS[kind](content)
    except Exception as exc:  # corrupt input must never fail the caller
        _LOGGER.debug("no text extracted from %s as %s: %s: %s", file_name or "content", kind, type(exc).__name__, exc)
        return None


def _detect(content: bytes, file_name: str | None, content_type: str | None) -> str | None:
    head = content[:1024]
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"%PDF-"):
        return _PDF
    if content.startswith(b"PK\x03\x04"):
        return _DOCX if _is_docx(content) else None
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    extension = os.path.splitext(file_name or "")[1].lower()
    kind = _CONTENT_TYPES.get(declared) or _EXTENSIONS.get(extension)
    if kind in (_PDF, _DOCX):  # labelled as such but without the signature: not one
        return None
    if kind is not None:
        return kind
    if declared.startswith("text/") or declared in _TEXT_CONTENT_TYPES or declared.endswith(("+json", "+xml")):
        return _TEXT
    if _looks_like_html(head):
        return _HTML
    return _TEXT if _looks_like_text(content[:_SNIFF_BYTES]) else None


def _is_docx(content: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html"))


def _looks_like_text(sample: bytes) -> bool:
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sample's end is still text.
        if exc.start < len(sample) - 3:
            return False
    controls = sum(1 for byte in sample if byte < 32 and byte not in b"\t\n\r\f\x0b\x1b")
    return controls <= len(sample) // 100


def _decode(content: bytes) -> str:
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16", errors="replace")
    return content.decode("utf-8-sig", errors="replace")


def _pdf_text(content: bytes) -> str | None:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(content))
    if reader.is_encrypted and not reader.decrypt(""):
        _LOGGER.debug("no text extracted from an encrypted PDF (a password is needed)")
        return None
    return "\n".join(page.extract_text() or "" for page in reader.pages).strip()


def _docx_text(content: bytes) -> str:
    from docx import Document
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = Document(io.BytesIO(content))
    lines: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            lines.append(block.text)
        elif isinstance(block, Table):
            for row in block.rows:
                lines.append("\t".join(cell.text for cell in row.cells))
    return "\n".join(line for line in lines if line.strip())


def _html_text(content: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(content, "html.parser")
    for hidden in soup(["script", "style", "noscript", "template"]):
        hidden.decompose()
    return soup.get_text(separator="\n", strip=True)


_EXTRACTORS: dict[str, Callable[[bytes], str | None]] = {
    _PDF: _pdf_text,
    _DOCX: _docx_text,
    _HTML: _html_text,
    _TEXT: _decode,
}
