"""Normalize: turn what a source yielded into a valid Elasticsearch document, or a dead letter.

For each document:

* ``_id`` becomes a string (ids over 512 bytes are replaced by their SHA-256) and is
  copied into the ``id`` field;
* ``_timestamp`` becomes ISO 8601 UTC;
* ``_attachment`` (base64 content) becomes ``body`` text when text extraction is on
  (PDF, DOCX, HTML, text; see :mod:`transforms.extract_text`);
* the connector's pipeline flags are set (``_extract_binary_content``, ``_reduce_whitespace``,
  ``_run_ml_inference``);
* with a shape, ``_shape_digest`` records the settings the document is written with
  (:mod:`transforms.document_shape`);
* every value is made JSON-safe (datetimes, dates, decimals, bytes, ObjectIds, sets, UUIDs,
  NaN, ...);
* the document is serialized once, here; a document that cannot be serialized or is larger
  than ``max_document_bytes`` goes to the dead letters with the reason.

The output is ``(doc_id, source_json_bytes)``: writers never serialize again.

Example usage::

    docs, dead = raw_docs | Normalize(pipeline_flags={"_reduce_whitespace": True})
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import functools
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.dead_letter import DeadLetter

__all__ = ["Normalize", "document_id", "json_safe", "iso_timestamp", "MAX_ID_BYTES", "DEAD_LETTERS"]

MAX_ID_BYTES = 512
#: Naive datetimes are UTC (as json_safe says); keys that are not strings become strings.
_ORJSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
DEAD_LETTERS = "dead_letters"
#: Serialized documents smaller than this are copied to their exact size (see ``_serialize``).
_ORJSON_SPARE = 16384


def document_id(value: Any) -> str:
    """The Elasticsearch ``_id`` for a source id: a string, hashed when over 512 bytes."""
    if type(value) is str and 0 < len(value) <= MAX_ID_BYTES // 4:  # short text: no UTF-8 length check needed
        return value
    if value is None:
        raise ValueError("the document has no _id")
    if isinstance(value, bytes):
        text = value.hex()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    if not text:
        raise ValueError("the document's _id is empty")
    if len(text.encode("utf-8")) > MAX_ID_BYTES:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text


def _is_canonical(text: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``: what ``iso_timestamp`` returns for any UTC instant.

    The date and time (the first 19 characters) are checked once per second of time seen
    lately (files written together, rows of one import share it); the fraction and offset
    each time."""
    size = len(text)
    if size == 25:
        if text[19:] != "+00:00":
            return False
    elif size == 32:
        fraction = text[20:26]
        # isoformat() leaves out zero microseconds; isdecimal() alone would take other scripts' digits
        if text[19] != "." or text[26:] != "+00:00" or not (fraction.isascii() and fraction.isdecimal()) \
                or fraction == "000000":
            return False
    else:
        return False
    return _valid_seconds(text[:19])


@functools.lru_cache(maxsize=4096)
def _valid_seconds(head: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS``, a real date and time (remembered for the seconds seen lately)."""
    if not head.isascii() or head[4] != "-" or head[7] != "-" or head[10] != "T" or head[13] != ":" \
            or head[16] != ":":
        return False
    try:
        dt.datetime.fromisoformat(head)
    except ValueError:
        return False
    return True



#: Canonical timestamps seen lately (many documents share one: a batch import, a synthetic source).
_CANONICAL: dict[str, bool] = {}


def iso_timestamp(value: Any) -> str | None:
    """``_timestamp`` as ISO 8601 UTC (datetimes, dates, epoch seconds or ISO strings)."""
    if value is None or value == "":
        return None
    if type(value) is str:
        if value in _CANONICAL:
            return value
        if _is_canonical(value):
            if len(_CANONICAL) >= 1024:
                _CANONICAL.clear()
            _CANONICAL[value] = True
            return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).isoformat()
    text = str(value)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return iso_timestamp(parsed)


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A JSON-serializable copy of ``value``; raises ValueError for what cannot be made so."""
    if _depth > 100:
        raise ValueError("document nested deeper than 100 levels")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json_safe(v, _depth + 1) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, dt.datetime):
        return value.isoformat() if value.tzinfo else value.replace(tzinfo=dt.timezone.utc).isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() and abs(value) < 2**63 else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return json_safe(value.value, _depth + 1)
    type_name = type(value).__name__
    if type_name in ("ObjectId", "Decimal128", "Int64", "Timestamp", "Regex", "DBRef", "Code"):
        if type_name == "Decimal128":
            return json_safe(value.to_decimal(), _depth + 1)
        if type_name == "Int64":
            return int(value)
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise ValueError(f"cannot represent a {type_name} value as JSON")


def _reduce_whitespace(text: str) -> str:
    """Runs of whitespace -> one space, no leading or trailing space (as ``" ".join(text.split())``)."""
    if text.isascii() and "  " not in text and not _has_ascii_control_space(text):
        # Single spaces only: at most one to drop at each end. A few C-speed scans instead of
        # a split and a join (``strip`` returns the text itself when there is none).
        return text.strip(" ")
    return " ".join(text.split())


def _has_ascii_control_space(text: str) -> bool:
    """Whether ``text`` holds an ASCII whitespace character other than the space (what ``str.split`` also
    splits on). Nine ``memchr`` scans: ~4x faster than ``str.isprintable`` on 1 KB of text."""
    return ("\n" in text or "\t" in text or "\r" in text or "\x0b" in text or "\x0c" in text or "\x1c" in text
            or "\x1d" in text or "\x1e" in text or "\x1f" in text)


class _NormalizeFn(beam.DoFn):
    def __init__(self, pipeline_flags: Mapping[str, Any], max_document_bytes: int, extract_text: bool,
                 operation: str = "index", shape: str | None = None, batched: bool = False):
        self.batched = batched
        self.pipeline_flags = dict(pipeline_flags)
        self.max_document_bytes = max_document_bytes
        self.extract_text = extract_text
        self.operation = operation
        self.mixed = operation == "mixed"
        # The flags, read once (not per document).
        self.reduce_whitespace = bool(self.pipeline_flags.get("_reduce_whitespace"))
        self.extract_attachments = extract_text and self.pipeline_flags.get("_extract_binary_content", True) is not False
        self.dead = Metrics.counter("elastic_ingest", "dead_letters_normalize")
        # Set on every document with the flags: the settings it is written with (transforms/document_shape.py).
        self.fields = {**self.pipeline_flags, **({"_shape_digest": shape} if shape else {})}

    # A list, not a generator: one document in, one element out (a generator per document costs more).
    def process(self, element: Any) -> list[Any]:
        if not self.batched:
            return [self._normalize(element)]
        normalized: list[Any] = []
        dead: list[Any] = []
        for raw in element:
            out = self._normalize(raw)
            (normalized if type(out) is tuple else dead).append(out)
        return [normalized, *dead] if normalized else dead

    def _normalize(self, element: Any) -> Any:
        """One document -> ``(doc_id, json_bytes)`` (mixed: ``(op, doc_id, json_bytes)``), or a dead letter."""
        op, raw = element if self.mixed else (self.operation, element)
        if op == "delete":  # an incremental sync's deletion: only the id, already normalized
            return op, document_id(raw.get("_id") if isinstance(raw, Mapping) else raw), None
        doc_id = None
        try:
            if type(raw) is not dict and not isinstance(raw, Mapping):  # a concrete check first: no ABC check per document
                raise TypeError(f"a document must be a dict, got {type(raw).__name__}")
            doc = dict(raw)
            doc_id = document_id(doc.pop("_id", None))
            data = self._serialize(doc, doc_id)
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            self.dead.inc()
            return pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter.of(raw, doc_id=doc_id, operation=op, stage="normalize", error=exc))
        return (op, doc_id, data) if self.mixed else (doc_id, data)

    def _serialize(self, doc: dict[str, Any], doc_id: str) -> bytes:
        if "_attachment" in doc:
            attachment = doc.pop("_attachment")
            if attachment is not None and self.extract_attachments and "body" not in doc:
                doc["body"] = self._extract(attachment, doc)
            elif attachment is not None:
                doc["_attachment"] = attachment
        if "_timestamp" in doc:
            doc["_timestamp"] = iso_timestamp(doc["_timestamp"])
        if self.reduce_whitespace:
            body = doc.get("body")
            if isinstance(body, str):
                doc["body"] = _reduce_whitespace(body)
        doc.update(self.fields)
        doc.setdefault("id", doc_id)  # a source's own ``id`` (a table's id column) is kept as it is
        try:
            # Fast path (orjson: datetimes, UUIDs, enums, NaN as null, non-string keys natively);
            # only values it cannot encode go through json_safe.
            data = orjson.dumps(doc, default=json_safe, option=_ORJSON_OPTIONS)
            if len(data) < _ORJSON_SPARE:
                # orjson's bytes keep the capacity it wrote into (~8 KB of memory for a 1 KB
                # document, measured: 8.1 KB RSS each): an exact copy costs 0.1 us, and the
                # thousands of documents a writer holds in flight then take 1.3 KB each.
                data = memoryview(data).tobytes()
        except (TypeError, ValueError):
            # Integers over 64 bits, nesting over orjson's limit, ...: a JSON-safe copy first
            # (raises when impossible).
            data = json.dumps(json_safe(doc), ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False).encode("utf-8")
        if len(data) > self.max_document_bytes:
            raise ValueError(
                f"document is {len(data)} bytes, over the limit of {self.max_document_bytes} "
                "(pipeline.max_document_bytes)"
            )
        return data

    @staticmethod
    def _extract(attachment: Any, doc: Mapping[str, Any]) -> str | None:
        from transforms.extract_text import extract_text

        try:
            content = base64.b64decode(attachment) if isinstance(attachment, str) else bytes(attachment)
        except (ValueError, TypeError):
            return None
        name = doc.get("file_name") or doc.get("filename") or doc.get("name") or doc.get("key") or doc.get("path")
        return extract_text(content, file_name=str(name) if name else None, content_type=doc.get("content_type"))


class Normalize(beam.PTransform):
    """Documents -> ``(doc_id, json_bytes)``, with a ``dead_letters`` output.

    With ``operation="mixed"`` elements are an incremental sync's ``(op, doc)`` changes and
    the output is ``(op, doc_id, json_bytes)`` (``json_bytes`` is None for ``delete``), in
    the same order, for ``WriteToElasticsearch(operation="mixed")``.

    Args:
        pipeline_flags: ``{"_extract_binary_content": bool, "_reduce_whitespace": bool,
            "_run_ml_inference": bool}`` from the connector's ``pipeline`` settings.
        max_document_bytes: larger serialized documents are dead-lettered.
        extract_text: turn ``_attachment`` content into ``body`` text in the workers (unless the
            connector's ``_extract_binary_content`` flag is false: ``_attachment`` is then kept).
        shape: set as ``_shape_digest`` on every document (None: not set).
        batched: elements are lists of documents (``ReadFromSource(batched=True)``) and so is
            the output (one list per list, for ``WriteToElasticsearch(batched=True)``); dead
            letters stay one element each.
    """

    def __init__(self, pipeline_flags: Mapping[str, Any] | None = None, *, max_document_bytes: int = 20 * 1024 * 1024,
                 extract_text: bool = True, operation: str = "index", shape: str | None = None,
                 batched: bool = False):
        super().__init__()
        if batched and operation != "index":
            raise ValueError("Normalize: batched is for operation='index' only")
        self.batched = batched
        if max_document_bytes <= 0:
            raise ValueError("Normalize: max_document_bytes must be positive")
        self.pipeline_flags = dict(pipeline_flags or {})
        self.max_document_bytes = max_document_bytes
        self.extract_text = extract_text
        self.operation = operation
        self.shape = shape

    def expand(self, docs: beam.PCollection):
        results = docs | "Normalize" >> beam.ParDo(
            _NormalizeFn(self.pipeline_flags, self.max_document_bytes, self.extract_text, self.operation,
                         self.shape, self.batched)
        ).with_outputs(DEAD_LETTERS, main="docs")
        return results.docs, results[DEAD_LETTERS]
