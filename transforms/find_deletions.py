"""FindDeletions: ids in the index that the source no longer yields.

Inputs are two side inputs: ``seen``, the read's bitmaps of the indexed documents the
source yielded (ORed here by :class:`~transforms.digests.UnionSeen`: one bit per indexed
document), and ``indexed``, the :class:`~transforms.digests.IndexDigests` scanned before
the read. A side input is ready only when all of its input is complete, so this step
runs after the whole source was read; a failed read fails the pipeline before any
deletion.

When every bit is set (the usual resync), nothing is deleted and the index is not read
again. Otherwise the index is scanned once more, ids only, and every id that was indexed
at the first scan and not yielded by the source is emitted. A document indexed by
someone else during the sync is left for the next sync. Memory: the bitmap (a byte per
indexed document while rescanning) and a page of hits; the digests are mapped files on
the local runner.

Example usage::

    stale = p | FindDeletions(conn, "search-docs", seen=read.seen, indexed=index_digests)
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.digests import IndexDigests, UnionSeen, id_digests, seen_count, unseen_mask
from transforms.es_client import ElasticsearchConnection
from transforms.scan_index import scan_pages

__all__ = ["FindDeletions"]


class _FindStaleFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, slices: int):
        self.conn, self.index, self.slices = conn, index, slices
        self.rescans = Metrics.counter("elastic_ingest", "deletion_scans")

    def process(self, _: object, seen: np.ndarray, indexed: IndexDigests) -> Iterator[str]:
        if seen_count(seen) == len(indexed):
            return  # the source yielded every indexed id
        self.rescans.inc()
        unseen = unseen_mask(seen, len(indexed))
        for hits in scan_pages(self.conn, self.index, slices=self.slices):
            ids = [hit["_id"] for hit in hits]
            positions = indexed.positions(id_digests(ids))
            stale = (positions >= 0) & unseen[np.maximum(positions, 0)]
            for doc_id, gone in zip(ids, stale.tolist()):
                if gone:
                    yield doc_id


class FindDeletions(beam.PTransform):
    """Root transform: the ids to delete from ``index`` once the source was read.

    Args:
        conn: how to reach Elasticsearch.
        index: the content index.
        seen: packed bitmaps of the indexed documents the source yielded (the read's ``seen``).
        indexed: a PCollection of one :class:`~transforms.digests.IndexDigests`.
        slices: concurrent readers of the second scan, when one is needed.
    """

    def __init__(self, conn: ElasticsearchConnection, index: str, *, seen: beam.PCollection,
                 indexed: beam.PCollection, slices: int = 2):
        super().__init__()
        self.conn, self.index, self.slices = conn, index, slices
        self.seen, self.indexed = seen, indexed

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        seen = self.seen | "UnionSeen" >> beam.CombineGlobally(UnionSeen())
        return (
            pbegin
            | "Start" >> beam.Create([None])
            | "FindStale" >> beam.ParDo(_FindStaleFn(self.conn, self.index, self.slices),
                                        seen=beam.pvalue.AsSingleton(seen),
                                        indexed=beam.pvalue.AsSingleton(self.indexed))
        )
