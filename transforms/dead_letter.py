"""Dead letters: documents that could not be indexed, kept with the reason, as Avro files.

Every stage that can reject a document (reading, normalizing, writing) emits a
:class:`DeadLetter` on an explicit output; :class:`WriteDeadLetters` writes them as Avro
files under ``<location>/<job_id>/`` (a local folder or ``gs://``), one file per bundle,
through Beam's ``FileSystems`` so every runner writes where the job says.

Example usage::

    dead = ... | "dead letters" >> WriteDeadLetters("./dead_letters", job_id="abc")

Read them back with :func:`read_dead_letters` (the CLI's ``dead-letters`` action does).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

__all__ = ["DeadLetter", "WriteDeadLetters", "read_dead_letters", "read_dead_letters_from", "count_dead_letters",
           "DEAD_LETTER_SCHEMA", "dead_letter_folder", "dead_letter_location"]

DEAD_LETTER_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "DeadLetter",
        "namespace": "elastic_ingest",
        "fields": [
            {"name": "doc_id", "type": ["null", "string"]},
            {"name": "operation", "type": "string"},
            {"name": "stage", "type": "string"},
            {"name": "error_type", "type": "string"},
            {"name": "error_message", "type": "string"},
            {"name": "document", "type": ["null", "string"]},
            {"name": "job_id", "type": ["null", "string"]},
            {"name": "timestamp", "type": "double"},
        ],
    }
)

_MAX_DOCUMENT_CHARS = 1024 * 1024


@dataclass
class DeadLetter:
    """One rejected document and why."""

    doc_id: str | None
    operation: str
    stage: str
    error_type: str
    error_message: str
    document: str | None = None

    @classmethod
    def of(cls, doc: Any, *, doc_id: str | None, operation: str, stage: str, error: BaseException | str,
           error_type: str | None = None) -> "DeadLetter":
        if isinstance(error, BaseException):
            kind, message = error_type or type(error).__name__, str(error)
        else:
            kind, message = error_type or "Error", error
        return cls(doc_id, operation, stage, kind, message[:4000], _as_json(doc))


def _as_json(doc: Any) -> str | None:
    if doc is None:
        return None
    if isinstance(doc, (bytes, bytearray)):
        text = bytes(doc).decode("utf-8", errors="replace")
    else:
        try:
            text = json.dumps(doc, default=repr, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            text = repr(doc)
    if len(text) > _MAX_DOCUMENT_CHARS:
        text = text[:_MAX_DOCUMENT_CHARS] + "...(truncated)"
    return text


def dead_letter_location(location: str) -> str:
    """``pipeline.dead_letters`` as a job records it: a URI (``gs://...``) as is, a local
    folder made absolute (relative to the working directory), so it is found from anywhere."""
    if "://" in location:
        return location
    return os.path.abspath(os.path.expanduser(location))


def dead_letter_folder(location: str, job_id: str) -> str:
    """Where the dead letters of ``job_id`` go: ``<location>/<job_id>``."""
    return FileSystems.join(location, job_id)


class _WriteAvroFn(beam.DoFn):
    def __init__(self, location: str, job_id: str):
        self.location = location
        self.job_id = job_id
        self.counter = Metrics.counter("elastic_ingest", "dead_letters")

    def start_bundle(self) -> None:
        self.records: list[dict[str, Any]] = []

    def process(self, letter: DeadLetter) -> None:
        record = asdict(letter)
        record["job_id"] = self.job_id
        record["timestamp"] = time.time()
        self.records.append(record)
        self.counter.inc()

    def finish_bundle(self) -> None:
        if not self.records:
            return
        folder = dead_letter_folder(self.location, self.job_id)
        if "://" not in folder:
            os.makedirs(folder, exist_ok=True)
        path = FileSystems.join(folder, f"dead-letters-{uuid.uuid4().hex}.avro")
        with FileSystems.create(path) as out:
            fastavro.writer(out, DEAD_LETTER_SCHEMA, self.records, codec="deflate")
        self.records = []


class WriteDeadLetters(beam.PTransform):
    """Write :class:`DeadLetter` elements as Avro files under ``location/job_id/``."""

    def __init__(self, location: str, *, job_id: str):
        super().__init__()
        if not location:
            raise ValueError("WriteDeadLetters: location is required")
        self.location = location
        self.job_id = job_id

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | "WriteAvro" >> beam.ParDo(_WriteAvroFn(self.location, self.job_id))


def read_dead_letters(location: str, job_id: str) -> Iterator[dict[str, Any]]:
    """Every dead letter a job wrote under ``location`` (``pipeline.dead_letters``), oldest file first."""
    return read_dead_letters_from(dead_letter_folder(location, job_id))


def read_dead_letters_from(folder: str) -> Iterator[dict[str, Any]]:
    """Every dead letter in ``folder`` (a job's, as its ``metadata.dead_letters.location`` says)."""
    pattern = FileSystems.join(folder, "dead-letters-*.avro")
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - no folder means no dead letters
        return
    for meta in sorted(matches, key=lambda m: m.path):
        with FileSystems.open(meta.path) as stream:
            yield from fastavro.reader(stream)


def count_dead_letters(folder: str) -> int | None:
    """How many dead letters ``folder`` holds (None: it cannot be read)."""
    try:
        return sum(1 for _ in read_dead_letters_from(folder))
    except Exception:  # noqa: BLE001 - unreadable: unknown, not zero
        return None
