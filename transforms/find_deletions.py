"""FindDeletions: ids in the index that the source no longer yields.

Inputs are two side inputs: ``seen``, the digests of every id the source yielded (the
read's ``seen`` output, unioned here into one sorted array by
:class:`~transforms.digests.UnionDigests`), and ``indexed``, the :class:`~transforms.digests.IndexDigests` scanned before the read. A side
input is ready only when all of its input is complete, so this step runs after the whole
source was read; a failed read fails the pipeline before any deletion.

When every indexed digest is among ``seen`` (the usual resync), nothing is deleted and
the index is not read again. Otherwise the index is scanned once more, ids only, and
every id whose digest the source did not yield is emitted (documents indexed since the
first scan included). Memory: the two digest arrays, and a page of hits.

Example usage::

    stale = p | FindDeletions(conn, "search-docs", seen=read.seen, indexed=index_digests)
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.digests import IndexDigests, UnionDigests, contains, id_digests
from transforms.es_client import ElasticsearchConnection
from transforms.scan_index import scan_pages

__all__ = ["FindDeletions"]


class _FindStaleFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, slices: int):
        self.conn, self.index, self.slices = conn, index, slices
        self.rescans = Metrics.counter("elastic_ingest", "deletion_scans")

    def process(self, _: object, seen: np.ndarray, indexed: IndexDigests) -> Iterator[str]:
        if indexed.missing_from(seen) == 0:
            return
        self.rescans.inc()
        for hits in scan_pages(self.conn, self.index, slices=self.slices):
            ids = [hit["_id"] for hit in hits]
            known = contains(seen, id_digests(ids))
            for doc_id, yielded in zip(ids, known.tolist()):
                if not yielded:
                    yield doc_id


class FindDeletions(beam.PTransform):
    """Root transform: the ids to delete from ``index`` once the source was read.

    Args:
        conn: how to reach Elasticsearch.
        index: the content index.
        seen: ``uint64`` arrays of the source's id digests (any number, duplicates allowed).
        indexed: a PCollection of one :class:`~transforms.digests.IndexDigests`.
        slices: concurrent readers of the second scan, when one is needed.
    """

    def __init__(self, conn: ElasticsearchConnection, index: str, *, seen: beam.PCollection,
                 indexed: beam.PCollection, slices: int = 2):
        super().__init__()
        self.conn, self.index, self.slices = conn, index, slices
        self.seen, self.indexed = seen, indexed

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        seen = self.seen | "UnionSeen" >> beam.CombineGlobally(UnionDigests())
        return (
            pbegin
            | "Start" >> beam.Create([None])
            | "FindStale" >> beam.ParDo(_FindStaleFn(self.conn, self.index, self.slices),
                                        seen=beam.pvalue.AsSingleton(seen),
                                        indexed=beam.pvalue.AsSingleton(self.indexed))
        )
