"""Dead letters: documents that could not be indexed, kept with the reason, as Avro files.

Every stage that can reject a document (reading, normalizing, writing) emits a
:class:`DeadLetter` on an explicit output; :class:`WriteDeadLetters` writes them as Avro
files under ``<location>/<job_id>/`` (a local folder or ``gs://``), one file per bundle,
through Beam's ``FileSystems`` so every runner writes where the job says.

Example usage::

    dead = ... | "dead letters" >> WriteDeadLetters("./dead_letters", job_id="abc")

Read them back with :func:`read_dead_letters` (the CLI's ``dead-letters`` action does);
that and where they are live in :mod:`transforms.dead_letter_files`, which needs no Beam.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.dead_letter_files import (
    DEAD_LETTER_SCHEMA, count_dead_letters, dead_letter_folder, dead_letter_location, read_dead_letters,
    read_dead_letters_from,
)

__all__ = ["DeadLetter", "WriteDeadLetters", "read_dead_letters", "read_dead_letters_from", "count_dead_letters",
           "DEAD_LETTER_SCHEMA", "dead_letter_folder", "dead_letter_location"]

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
