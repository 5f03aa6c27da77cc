"""transforms.extract_text on real PDF, DOCX and HTML bytes generated here."""

from __future__ import annotations

import io
import json
import zipfile

import docx
import pytest

from transforms.extract_text import extract_text


def make_pdf(*pages: str) -> bytes:
    """A minimal valid PDF (one Helvetica text line per page), with a correct xref table."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    page_ids = [4 + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_id, text in zip(page_ids, pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew in every region.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "north"
    table.rows[0].cells[1].text = "42"
    document.add_paragraph("Closing words.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_extract_text_when_pdf_then_text_of_every_page():
    content = make_pdf("Hello from page one", "Second page (with parens)")

    text = extract_text(content, file_name="report.pdf")

    assert "Hello from page one" in text
    assert "Second page (with parens)" in text
    assert text.index("page one") < text.index("Second page")


def test_extract_text_when_pdf_is_misnamed_then_signature_wins():
    assert "Hello" in extract_text(make_pdf("Hello"), file_name="notes.txt", content_type="text/plain")


def test_extract_text_when_docx_then_paragraphs_and_tables_in_order():
    text = extract_text(make_docx(), file_name="report.docx")

    lines = text.splitlines()
    assert lines == ["Quarterly report", "Revenue grew in every region.", "north\t42", "Closing words."]


def test_extract_text_when_html_then_visible_text_only():
    html = (
        b"<!DOCTYPE html><html><head><title>Title here</title><style>p {color: red}</style>"
        b"<script>var secret = 1;</script></head>"
        b"<body><h1>Heading</h1><p>Some <b>bold</b> text &amp; more</p></body></html>"
    )

    text = extract_text(html)  # recognised from the content, no hints

    assert text.splitlines() == ["Title here", "Heading", "Some", "bold", "text & more"]
    assert "secret" not in text and "color" not in text


@pytest.mark.parametrize(
    ("content", "hints"),
    [
        (b"plain words\nsecond line", {"file_name": "a.txt"}),
        (b"# Title\n\n* item", {"file_name": "README.md"}),
        (b"id,name\n1,caf\xc3\xa9", {"content_type": "text/csv; charset=utf-8"}),
        (json.dumps({"k": "v"}).encode(), {"content_type": "application/json"}),
        (b"no hints at all, but clearly text", {}),
    ],
)
def test_extract_text_when_text_formats_then_decoded(content, hints):
    assert extract_text(content, **hints) == content.decode("utf-8")


def test_extract_text_when_invalid_utf8_text_then_replacement_characters():
    assert extract_text(b"caf\xe9 ok", file_name="a.txt") == "caf\ufffd ok"


def test_extract_text_when_utf16_with_bom_then_decoded():
    assert extract_text("h\u00e9llo".encode("utf-16"), file_name="a.txt") == "h\u00e9llo"


def test_extract_text_when_corrupt_pdf_then_none(caplog):
    corrupt = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R >>\ngarbage" + bytes(range(256))

    with caplog.at_level("DEBUG", logger="transforms.extract_text"):
        assert extract_text(corrupt, file_name="broken.pdf") is None
    assert "broken.pdf" in caplog.text


def test_extract_text_when_truncated_pdf_or_docx_then_none():
    assert extract_text(make_pdf("Hello")[:60], file_name="cut.pdf") is None
    assert extract_text(make_docx()[:500], file_name="cut.docx") is None


def test_extract_text_when_labelled_pdf_or_docx_without_signature_then_none():
    assert extract_text(b"not a pdf", content_type="application/pdf") is None
    assert extract_text(b"not a docx", file_name="x.docx") is None


@pytest.mark.parametrize(
    ("content", "file_name"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "logo.png"),
        (bytes(range(256)) * 4, None),
        (b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64, "a.out"),
    ],
)
def test_extract_text_when_unknown_binary_then_none(content, file_name):
    assert extract_text(content, file_name=file_name) is None


def test_extract_text_when_zip_but_not_docx_then_none():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.txt", "inside a zip")
    assert extract_text(buffer.getvalue(), file_name="archive.zip") is None


def test_extract_text_when_empty_then_empty_text():
    assert extract_text(b"", file_name="empty.txt") == ""
