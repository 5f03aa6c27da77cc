"""Digests: what the index holds and what the source yielded, 8 bytes per document.

A full sync compares the source with the index twice: to skip documents whose
``_timestamp`` did not change, and to delete documents the source no longer yields.
Holding ids and timestamps as Python strings costs ~150 bytes per document (1.5 GB at
10 M); here each id and each timestamp becomes a 64-bit XXH3 digest in a NumPy array:

* :class:`IndexDigests`: the index's ``(id digest, timestamp digest)`` pairs, sorted by
  id digest (16 bytes per indexed document), built by
  :class:`~transforms.scan_index.ScanIndex`;
* the source's id digests (8 bytes per document read), unioned by :class:`UnionDigests`.

Both travel as Beam side inputs. Lookups are vectorized per batch (``searchsorted``).
Two different ids share a digest with probability about ``n**2 / 2**65`` (3e-6 at 10 M
documents); a collision can only keep a stale document or skip one changed document
whose timestamp digest also collides, never delete a document the source yielded.

Example usage::

    stamp = stamp_digest("2024-01-01T00:00:00Z")
    index = IndexDigests.build([id_digests(["a", "b"])], [np.array([stamp, 0], np.uint64)])
    index.unchanged(id_digests(["a", "b", "c"]), np.array([stamp] * 3, np.uint64))
    # -> array([ True, False, False]): "b" is indexed without a timestamp, "c" is not indexed
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import xxhash

from transforms.normalize import iso_timestamp

__all__ = ["id_digests", "stamp_digest", "IndexDigests", "UnionDigests", "contains"]

_EMPTY = np.zeros(0, dtype=np.uint64)
_xxh3 = xxhash.xxh3_64_intdigest  # str is hashed as UTF-8; the same on every machine


def id_digests(ids: Sequence[str]) -> np.ndarray:
    """The 64-bit digest of each (normalized) document id, as a ``uint64`` array."""
    if not ids:
        return _EMPTY
    return np.fromiter(map(_xxh3, ids), dtype=np.uint64, count=len(ids))


@functools.lru_cache(maxsize=4096)
def _text_stamp_digest(text: str) -> int:
    stamp = iso_timestamp(text)
    if stamp is None:
        return 0
    return _xxh3(stamp) or 1


def stamp_digest(value: Any) -> int:
    """The digest of a ``_timestamp`` after normalization to ISO 8601 UTC; 0 when there is none.

    0 never equals an indexed timestamp: a document without ``_timestamp`` is always sent.
    """
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        return _text_stamp_digest(value)  # timestamps repeat: parse each distinct text once
    return _text_stamp_digest(iso_timestamp(value) or "")


def contains(sorted_digests: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """A bool mask: which of ``digests`` are in ``sorted_digests`` (sorted, any length)."""
    if len(sorted_digests) == 0 or len(digests) == 0:
        return np.zeros(len(digests), dtype=bool)
    positions = np.searchsorted(sorted_digests, digests)
    np.minimum(positions, len(sorted_digests) - 1, out=positions)
    return sorted_digests[positions] == digests


@dataclass(frozen=True)
class IndexDigests:
    """The index's documents: id digests (sorted) and their timestamp digests, aligned."""

    ids: np.ndarray
    stamps: np.ndarray

    @classmethod
    def build(cls, ids: list[np.ndarray], stamps: list[np.ndarray]) -> IndexDigests:
        """From pages of aligned arrays (the lists are emptied: pages are freed as they are joined)."""
        all_ids = np.concatenate([_EMPTY, *ids])
        ids.clear()
        all_stamps = np.concatenate([_EMPTY, *stamps])
        stamps.clear()
        if len(all_ids) != len(all_stamps):
            raise ValueError(f"IndexDigests: {len(all_ids)} ids but {len(all_stamps)} timestamps")
        order = np.argsort(all_ids)
        all_ids = all_ids[order]
        all_stamps = all_stamps[order]
        return cls(all_ids, all_stamps)

    def __len__(self) -> int:
        return len(self.ids)

    def unchanged(self, ids: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """A bool mask: documents indexed with the same (non-empty) timestamp."""
        if len(self.ids) == 0 or len(ids) == 0:
            return np.zeros(len(ids), dtype=bool)
        positions = np.searchsorted(self.ids, ids)
        np.minimum(positions, len(self.ids) - 1, out=positions)
        return (self.ids[positions] == ids) & (self.stamps[positions] == stamps) & (stamps != 0)

    def missing_from(self, seen: np.ndarray) -> int:
        """How many indexed documents are not among ``seen`` (sorted source id digests)."""
        return int(len(self.ids) - np.count_nonzero(contains(seen, self.ids)))


class UnionDigests(beam.CombineFn):
    """Arrays of id digests -> one sorted array of the distinct digests."""

    def create_accumulator(self) -> list[np.ndarray]:
        return []

    def add_input(self, accumulator: list[np.ndarray], element: np.ndarray) -> list[np.ndarray]:
        accumulator.append(element)
        if len(accumulator) >= 256:  # keep the list short (deduplicated once, at the end)
            accumulator[:] = [np.concatenate(accumulator)]
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        return [array for accumulator in accumulators for array in accumulator]

    def compact(self, accumulator: list[np.ndarray]) -> list[np.ndarray]:
        return [np.concatenate([_EMPTY, *accumulator])] if len(accumulator) > 1 else accumulator

    def extract_output(self, accumulator: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate([_EMPTY, *accumulator]))
