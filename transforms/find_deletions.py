"""FindDeletions: ids in the index that the source no longer yields.

A ``CoGroupByKey`` of the source's ids with the index's ids: on a distributed runner the
join is spread by key over the workers, so no worker holds an id set. The join emits
only after both inputs are complete, i.e. after the whole source was read; a failed read
fails the pipeline before any deletion.

Example usage::

    stale = (source_ids, index_ids) | FindDeletions()
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

__all__ = ["FindDeletions"]


def _only_in_index(element: tuple[str, dict[str, Any]]) -> Iterator[str]:
    doc_id, groups = element
    if groups["index"] and not groups["source"]:
        yield doc_id


class FindDeletions(beam.PTransform):
    """``(source_ids, index_ids)`` -> ids present only in the index."""

    def expand(self, pcolls: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        source_ids, index_ids = pcolls
        keyed_source = source_ids | "KeySource" >> beam.Map(lambda i: (i, None))
        keyed_index = index_ids | "KeyIndex" >> beam.Map(lambda i: (i, None))
        return (
            {"source": keyed_source, "index": keyed_index}
            | "Join" >> beam.CoGroupByKey()
            | "OnlyInIndex" >> beam.FlatMap(_only_in_index)
        )
