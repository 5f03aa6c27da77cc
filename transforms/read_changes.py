"""ReadChanges: an incremental sync's reads, from the source's cursor.

Drives ``source.get_docs_incrementally(sync_cursor)`` (one stream: changes are ordered)
and emits its operations, in the source's order, as ``(op, doc)`` pairs: documents to
index (``OP_INDEX``: replaced whole) and to update (``OP_UPSERT``: merged into the
indexed copy, created if missing), both with their content downloaded, and deletions
(``OP_DELETE``, the doc holding only ``_id``; documents the sync rules now exclude are
deleted too). Order matters (an index then a delete of one id must end deleted), so the
changes stay one stream down to one writer (``Normalize``/``WriteToElasticsearch`` with
``operation="mixed"``). The new cursor the source sets is stored with the job's progress records once
the stream is fully read, and becomes the connector's ``sync_cursor`` only if the job
completes.

Example usage::

    changes = p | beam.Create([cursor]) | ReadChanges(spec, conn, job_id="abc")
    changes.changes, changes.dead_letters
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from apache_beam.metrics import Metrics

from sources.base import OP_DELETE, OP_INDEX, OP_UPSERT
from sources.driver import SourceDriver, as_pair
from sources.errors import SourceError
from transforms.dead_letter import DeadLetter
from transforms.es_client import ElasticsearchConnection
from transforms.normalize import document_id
from transforms.progress import write_job_record
from transforms.read_from_source import SourceSpec
from transforms.sync_rules import BasicRules

__all__ = ["ReadChanges", "CHANGES", "DEAD_LETTERS"]

CHANGES, DEAD_LETTERS = "changes", "dead_letters"


class _ReadChangesFn(beam.DoFn):
    def __init__(self, spec: SourceSpec, conn: ElasticsearchConnection, job_id: str):
        self.spec, self.conn, self.job_id = spec, conn, job_id
        self.read_count = Metrics.counter("elastic_ingest", "source_documents")

    def setup(self) -> None:
        self.source = self.spec.build()
        self.driver = SourceDriver(self.source)
        self.rules = BasicRules(self.spec.basic_rules)

    def teardown(self) -> None:
        if getattr(self, "driver", None):
            self.driver.close()

    def process(self, cursor: Any) -> Iterator[Any]:
        try:
            stream = self.source.get_docs_incrementally(sync_cursor=cursor or None, filtering=self.spec.filtering())
            for item in self.driver.iterate(stream):
                doc, lazy, operation = as_pair(item)
                self.read_count.inc()
                operation = operation or OP_INDEX
                if operation not in (OP_INDEX, OP_UPSERT, OP_DELETE):
                    raise ValueError(f"unknown operation {operation!r}; expected {OP_INDEX}, {OP_UPSERT} or {OP_DELETE}")
                try:
                    doc_id = document_id(doc.get("_id"))
                except ValueError as exc:
                    yield pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter.of(
                        doc, doc_id=None, operation=operation or "index", stage="read", error=exc))
                    continue
                if operation == OP_DELETE or (self.rules and not self.rules.should_index(doc)):
                    yield OP_DELETE, {"_id": doc_id}
                    continue
                out = dict(doc)
                out["_id"] = doc_id
                extra = self.driver.download(lazy, doc)
                if extra:
                    out.update({k: v for k, v in extra.items() if k not in ("_id", "_timestamp")})
                yield operation, out
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"incremental read of {self.spec.fqn} failed: {type(exc).__name__}: {exc}") from exc
        new_cursor = self.source.sync_cursor() if hasattr(self.source, "sync_cursor") else None
        es = self.conn.client()
        try:
            write_job_record(es, self.job_id, "sync_cursor", new_cursor)
        finally:
            es.close()


class ReadChanges(beam.PTransform):
    """A one-element PCollection (the cursor) in; ``changes`` (``(op, doc)``, ordered) and ``dead_letters`` out."""

    def __init__(self, spec: SourceSpec, conn: ElasticsearchConnection, *, job_id: str):
        super().__init__()
        self.spec, self.conn, self.job_id = spec, conn, job_id

    def expand(self, cursor: beam.PCollection):
        return cursor | "ReadChanges" >> beam.ParDo(_ReadChangesFn(self.spec, self.conn, self.job_id)).with_outputs(
            DEAD_LETTERS, main=CHANGES
        )
