"""ScanIndex: every document id of an index, read as parallel slices of a point in time.

``slices`` independent readers each open a point in time (PIT) and page through their
slice with ``search_after``, yielding ids only (no ``_source``). Slices are reshuffled so
they run on different workers; no worker ever holds more than one page.

Example usage::

    ids = p | ScanIndex(conn, "search-docs", slices=4)
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from elasticsearch import NotFoundError

from transforms.es_client import ElasticsearchConnection
from transforms.write_to_elasticsearch import BulkSettings, retry_with_backoff

__all__ = ["ScanIndex"]


class _ScanSliceFn(beam.DoFn):
    def __init__(self, conn: ElasticsearchConnection, index: str, slices: int, page_size: int, keep_alive: str):
        self.conn, self.index, self.slices = conn, index, slices
        self.page_size, self.keep_alive = page_size, keep_alive

    def setup(self) -> None:
        self.es = self.conn.client()

    def teardown(self) -> None:
        if getattr(self, "es", None) is not None:
            self.es.close()

    def process(self, slice_id: int) -> Iterator[str]:
        retry = BulkSettings(max_retries=5)
        try:
            pit = retry_with_backoff(
                lambda: self.es.open_point_in_time(index=self.index, keep_alive=self.keep_alive),
                retry, what=f"open point in time on {self.index}",
            )["id"]
        except NotFoundError:
            pit = None  # no index yet: nothing to delete
        if pit is not None:
            yield from self._scan(pit, slice_id, retry)

    def _scan(self, pit: str, slice_id: int, retry: BulkSettings) -> Iterator[str]:
        try:
            search_after = None
            while True:
                body = {
                    "size": self.page_size,
                    "pit": {"id": pit, "keep_alive": self.keep_alive},
                    "sort": [{"_shard_doc": "asc"}],
                    "_source": False,
                    "track_total_hits": False,
                }
                if self.slices > 1:
                    body["slice"] = {"id": slice_id, "max": self.slices}
                if search_after is not None:
                    body["search_after"] = search_after
                page = retry_with_backoff(lambda: self.es.search(**body), retry, what=f"scan of {self.index}")
                hits = page["hits"]["hits"]
                if not hits:
                    break
                pit = page.get("pit_id", pit)
                for hit in hits:
                    yield hit["_id"]
                search_after = hits[-1]["sort"]
        finally:
            try:
                self.es.close_point_in_time(id=pit)
            except Exception:  # noqa: BLE001 - it expires by itself
                pass


class ScanIndex(beam.PTransform):
    """Root transform: the ids of every document in ``index`` (none when it does not exist)."""

    def __init__(self, conn: ElasticsearchConnection, index: str, *, slices: int = 2, page_size: int = 5000,
                 keep_alive: str = "5m"):
        super().__init__()
        if slices < 1 or page_size < 1:
            raise ValueError("ScanIndex: slices and page_size must be positive")
        self.conn, self.index, self.slices = conn, index, slices
        self.page_size, self.keep_alive = page_size, keep_alive

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Slices" >> beam.Create(list(range(self.slices)))
            | "SpreadSlices" >> beam.Reshuffle()
            | "ScanSlice" >> beam.ParDo(_ScanSliceFn(self.conn, self.index, self.slices, self.page_size, self.keep_alive))
        )
