"""Digests: what the index holds and what the source yielded, in a few bytes per document.

A full sync compares the source with the index twice: to skip documents whose
``_timestamp`` did not change, and to delete documents the source no longer yields.
Holding ids and timestamps as Python strings costs ~150 bytes per document (1.5 GB at
10 M); here each id and each timestamp becomes a 64-bit XXH3 digest:

* :class:`IndexDigests`: the index's ``(id digest, timestamp digest)`` pairs, sorted by
  id digest (16 bytes per indexed document), written by :class:`IndexDigestsWriter`
  for :class:`~transforms.scan_index.ScanIndex`;
* the seen bitmap: one bit per indexed document, set when the source yielded its id
  (:func:`mark_seen`, ORed across workers by :class:`UnionSeen`).

What is compared per document (the "stamp" slot) is the digest of its ``_timestamp``; a
document without one whose content came with it (no lazy download: a table's row, say)
is compared by content instead: :func:`content_digest` of the document as the source
yielded it, which the document keeps in ``_content_digest`` (16 hex digits), so the next
scan reads it back. Either is then combined with the document's shape (:func:`shaped`,
:mod:`transforms.document_shape`): a document written with other settings never compares
as unchanged. 0 stays 0: a document with neither is always sent.

Where all workers share this machine's disk (the local runner; Flink ``[local]``), the
digests are two files in the sync's work directory, sorted on disk in hash buckets
(memory: one bucket, ~1/64 of them) and memory-mapped by every reader: the side input is
then a small handle, every worker process of the machine shares one copy, and that copy
is the kernel's page cache (clean file pages it can drop and re-read under memory
pressure), not the sync's own memory, which does not grow with the index. Elsewhere
(Dataflow) the arrays travel inside the side input.

Lookups are vectorized per batch (``searchsorted``). Two different ids share a digest
with probability about ``n**2 / 2**65`` (3e-6 at 10 M documents); a collision can only
keep a stale document or skip one changed document whose timestamp digest also
collides, never delete a document the source yielded.

Example usage::

    writer = IndexDigestsWriter("/tmp/sync-1")                 # or IndexDigestsWriter(None): in memory
    writer.add(id_digests(["b", "a"]), np.array([stamp_digest("2024-01-01T00:00:00Z"), 0], np.uint64))
    index = writer.finish()
    positions = index.positions(id_digests(["a", "b", "c"]))     # -> [0 or 1, 1 or 0, -1]
    index.unchanged(positions, np.array([stamp_digest("2024-01-01T00:00:00Z")] * 3, np.uint64))
    # -> [False, True, False]: "a" is indexed without a timestamp, "c" is not indexed
"""

from __future__ import annotations

import decimal
import functools
import json
import mmap
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
import xxhash

from transforms.document_shape import SHAPE_FIELD
from transforms.normalize import iso_timestamp, json_safe

__all__ = ["id_digests", "stamp_digest", "content_digest", "shaped", "document_stamp", "indexed_stamp", "CONTENT_FIELD", "IndexDigests", "IndexDigestsWriter", "new_seen", "mark_seen", "seen_count",
           "unseen_mask", "UnionSeen", "DIGEST_FILES", "write_records", "read_records"]

_EMPTY = np.zeros(0, dtype=np.uint64)
_xxh3 = xxhash.xxh3_64_intdigest  # str is hashed as UTF-8; the same on every machine
_RECORD = np.dtype([("id", "<u8"), ("stamp", "<u8")])
#: Hash buckets of the on-disk sort: the writer holds one bucket (1/64 of the digests) at a time.
_BUCKET_BITS = 6
#: The files of IndexDigests kept in a directory: sorted id digests, and the aligned timestamp digests.
DIGEST_FILES = ("ids.u64", "stamps.u64")


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


#: The field a document compared by content keeps its :func:`content_digest` in (16 hex digits).
CONTENT_FIELD = "_content_digest"
_SORTED_JSON = orjson.OPT_SORT_KEYS | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _canonical(value: Any) -> Any:
    """orjson's fallback: decimals exact (their text), sets sorted (their order changes with each
    process's hash seed), the rest JSON-safe."""
    if isinstance(value, decimal.Decimal):
        return f"decimal:{value}"
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return json_safe(value)


def content_digest(doc: Mapping[str, Any]) -> int:
    """The 64-bit digest of a document's content (keys sorted, values as JSON); never 0.

    The same document gives the same digest in every process and on every machine; any
    change of a value, a key or a type (``1`` and ``"1"``) gives another.
    """
    try:
        data = orjson.dumps(doc, default=_canonical, option=_SORTED_JSON)
    except (TypeError, ValueError):  # integers over 64 bits, nesting over orjson's limit: the slow way
        data = json.dumps(json_safe(doc), sort_keys=True, separators=(",", ":"), default=str).encode()
    return _xxh3(data) or 1


#: Each shape's 64-bit key (a scan meets few shapes: one per settings change, at most).
_SHAPE_KEYS: dict[str, int] = {}


def _shape_key(shape: str) -> int:
    key = _SHAPE_KEYS.get(shape)
    if key is None:
        if len(_SHAPE_KEYS) >= 1024:
            _SHAPE_KEYS.clear()
        key = _SHAPE_KEYS[shape] = _xxh3(shape)
    return key


def shaped(stamps: np.ndarray, shape: str | None) -> np.ndarray:
    """Timestamp (or content) digests combined with the documents' shape; 0 stays 0 (always sent)."""
    out = stamps ^ np.uint64(_shape_key(shape or ""))
    out[out == 0] = 1
    out[stamps == 0] = 0
    return out


def document_stamp(doc: Mapping[str, Any]) -> int:
    """What a document is compared by, before its shape: its ``_content_digest`` when it has one
    (16 hex digits: set by the service for documents without ``_timestamp``, or by a source whose
    timestamps are too coarse to tell two versions apart, e.g. an object store's etag with its
    one-second last-modified time), else the digest of its ``_timestamp``; 0: always sent."""
    content = doc.get(CONTENT_FIELD)
    if type(content) is str and len(content) == 16:
        try:
            return int(content, 16)
        except ValueError:
            pass
    timestamp = doc.get("_timestamp")
    return _text_stamp_digest(timestamp) if type(timestamp) is str and timestamp else stamp_digest(timestamp)


def indexed_stamp(source: Mapping[str, Any] | None) -> int:
    """What an indexed document (its ``_source``: ``_timestamp``, ``_content_digest``, ``_shape_digest``)
    is compared by: the same value :class:`~transforms.read_from_source.ReadFromSource` computes for
    the document the source yields, when nothing changed."""
    source = source or {}
    stamp = document_stamp(source)
    if not stamp:
        return 0
    shape = source.get(SHAPE_FIELD)
    return (stamp ^ _shape_key(shape if type(shape) is str else "")) or 1


# -- the index's digests ------------------------------------------------------------------
class _Mapped:
    """The two files of one IndexDigests, memory-mapped once per process."""

    def __init__(self, directory: str, count: int):
        self.maps: list[mmap.mmap] = []
        self.ids, self.stamps = (self._map(Path(directory) / name, count) for name in DIGEST_FILES)

    def _map(self, path: Path, count: int) -> np.ndarray:
        if count == 0:
            return _EMPTY
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)  # binary searches: no read-ahead
        self.maps.append(mapped)
        array = np.frombuffer(mapped, dtype="<u8")
        if len(array) != count:
            raise ValueError(f"IndexDigests: {path} holds {len(array)} digests, expected {count}")
        return array


_MAPPED: dict[str, _Mapped] = {}
_MAPPED_LOCK = threading.Lock()


class IndexDigests:
    """The index's documents: id digests (sorted) and their timestamp digests, aligned.

    Either in memory (``arrays``) or in two files of ``directory`` (mapped lazily, once per
    process; the mapping is kept per process, not on the object, so it pickles as the arrays
    or as the directory's name).
    """

    def __init__(self, *, count: int, directory: str | None = None,
                 arrays: tuple[np.ndarray, np.ndarray] | None = None):
        if (directory is None) == (arrays is None):
            raise ValueError("IndexDigests: give a directory or the arrays")
        self.count, self.directory, self._arrays = count, directory, arrays

    def __len__(self) -> int:
        return self.count

    def _mapped(self) -> _Mapped | None:
        if self.directory is None:
            return None
        with _MAPPED_LOCK:
            mapped = _MAPPED.get(self.directory)
            if mapped is None:
                mapped = _MAPPED[self.directory] = _Mapped(self.directory, self.count)
        return mapped

    @property
    def ids(self) -> np.ndarray:
        mapped = self._mapped()
        return self._arrays[0] if mapped is None else mapped.ids

    @property
    def stamps(self) -> np.ndarray:
        mapped = self._mapped()
        return self._arrays[1] if mapped is None else mapped.stamps

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each id digest is in the index (``int64``), -1 for ids not indexed."""
        indexed = self.ids
        if len(indexed) == 0 or len(ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        positions = np.searchsorted(indexed, ids).astype(np.int64)
        np.minimum(positions, len(indexed) - 1, out=positions)
        positions[indexed[positions] != ids] = -1
        return positions

    def unchanged(self, positions: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """A bool mask: documents (at ``positions``) indexed with the same non-empty timestamp."""
        found = positions >= 0
        same = np.zeros(len(positions), dtype=bool)
        if found.any():
            same[found] = self.stamps[positions[found]] == stamps[found]
        return same & (stamps != 0)

    @classmethod
    def release(cls, directory: str) -> None:
        """Unmap, in this process, the digests kept under ``directory`` (before it is deleted)."""
        prefix = os.path.join(directory, "")
        with _MAPPED_LOCK:
            released = [_MAPPED.pop(key) for key in list(_MAPPED) if key == directory or key.startswith(prefix)]
        for mapped in released:
            mapped.ids = mapped.stamps = _EMPTY
            for one in mapped.maps:
                try:
                    one.close()
                except BufferError:  # an array still points into it: unmapped when that is collected
                    pass


class IndexDigestsWriter:
    """Builds :class:`IndexDigests` page by page, sorted on disk (``directory``) or in memory (None).

    On disk, pages are held in memory up to ``spill_records`` pairs (4 MiB by default: a
    small sync's digests are sorted at once and written straight to the two result files);
    beyond, each page's pairs are appended to one of 64 bucket files by the top bits of
    the id digest (digests are uniform, so buckets are even); :meth:`finish` sorts one
    bucket at a time and appends it to the two result files, which are then sorted.

    The result files are written under temporary names of their own (created, never
    opened if they exist), made read-only, and renamed into place: a name that already
    held digests (a hard link to a cache entry another sync has mapped, say) is replaced,
    and the file behind it is never written to. Published digest files are never
    reopened for writing, by anyone.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, spill_records: int = 1 << 18):
        self.directory = None if directory is None else Path(directory)
        self.spill_records = spill_records
        self.count = 0
        #: Ids added more than once (counted by :meth:`finish`).
        self.duplicates = 0
        self._pages: list[np.ndarray] = []
        self._spilled = 0  # pairs appended to the bucket files
        self._buckets: dict[int, Any] = {}
        self._token = uuid.uuid4().hex[:12]  # this writer's own temporary names
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _temporary(self, name: str) -> Path:
        return self.directory / f".{name}.{self._token}.tmp"  # type: ignore[operator]

    def add(self, ids: np.ndarray, stamps: np.ndarray) -> None:
        if len(ids) != len(stamps):
            raise ValueError(f"IndexDigestsWriter: {len(ids)} ids but {len(stamps)} timestamps")
        records = np.empty(len(ids), dtype=_RECORD)
        records["id"], records["stamp"] = ids, stamps
        self.count += len(records)
        self._pages.append(records)
        if self.directory is not None and self.count - self._spilled > self.spill_records:
            self._spill()

    def _spill(self) -> None:
        """The pages held in memory, appended to the bucket files."""
        if not self._pages:
            return
        records = np.concatenate(self._pages)
        self._pages.clear()
        self._spilled += len(records)
        buckets = (records["id"] >> np.uint64(64 - _BUCKET_BITS)).astype(np.uint8)  # radix-sortable
        order = np.argsort(buckets, kind="stable")
        records, buckets = records[order], buckets[order]
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(records)]):
            bucket = int(buckets[start])
            file = self._buckets.get(bucket)
            if file is None:
                file = self._buckets[bucket] = open(self._temporary(f"bucket-{bucket:03d}"), "xb")
            records[start:end].tofile(file)

    def finish(self) -> IndexDigests:
        if self.directory is None:
            records = np.concatenate([np.zeros(0, dtype=_RECORD), *self._pages])
            self._pages.clear()
            records.sort(order="id")
            self.duplicates = _repeats(records["id"])
            return IndexDigests(count=len(records), arrays=(records["id"].copy(), records["stamp"].copy()))
        written = [self._temporary(name) for name in DIGEST_FILES]
        try:
            if self._buckets:
                self._spill()
            with open(written[0], "xb") as ids, open(written[1], "xb") as stamps:
                if not self._buckets:  # all in memory: sorted at once
                    records = np.concatenate([np.zeros(0, dtype=_RECORD), *self._pages])
                    self._pages.clear()
                    records = records[np.argsort(records["id"])]
                    self.duplicates = _repeats(records["id"])
                    np.ascontiguousarray(records["id"]).tofile(ids)
                    np.ascontiguousarray(records["stamp"]).tofile(stamps)
                for bucket in sorted(self._buckets):
                    self._buckets[bucket].close()
                    path = self._temporary(f"bucket-{bucket:03d}")
                    records = np.fromfile(path, dtype=_RECORD)
                    records = records[np.argsort(records["id"])]
                    self.duplicates += _repeats(records["id"])  # equal ids share a bucket
                    np.ascontiguousarray(records["id"]).tofile(ids)
                    np.ascontiguousarray(records["stamp"]).tofile(stamps)
                    path.unlink()
            self._buckets.clear()
            for temporary, name in zip(written, DIGEST_FILES):
                os.chmod(temporary, 0o444)  # published digests are read-only
                os.replace(temporary, self.directory / name)
        except BaseException:
            self.abort()
            for temporary in written:
                temporary.unlink(missing_ok=True)
            raise
        return IndexDigests(count=self.count, directory=str(self.directory))

    def abort(self) -> None:
        """Close and remove the bucket files (a failed scan)."""
        for bucket, file in self._buckets.items():
            file.close()
            self._temporary(f"bucket-{bucket:03d}").unlink(missing_ok=True)
        self._buckets.clear()
        self._pages.clear()


def _repeats(sorted_ids: np.ndarray) -> int:
    return int(np.count_nonzero(sorted_ids[1:] == sorted_ids[:-1])) if len(sorted_ids) > 1 else 0


# -- what the source yielded --------------------------------------------------------------
def write_records(file: Any, ids: np.ndarray, stamps: np.ndarray) -> None:
    """Append ``(id digest, timestamp digest)`` pairs to an open binary file (16 bytes each)."""
    records = np.empty(len(ids), dtype=_RECORD)
    records["id"], records["stamp"] = ids, stamps
    records.tofile(file)


def read_records(path: str | os.PathLike[str], chunk: int) -> Iterable[np.ndarray]:
    """The pairs of a file of :func:`write_records`, ``chunk`` at a time (fields ``id`` and ``stamp``).

    A torn last record (a writer that died mid-write) is left out.
    """
    with open(path, "rb") as file:
        while True:
            data = file.read(chunk * _RECORD.itemsize)
            whole = len(data) // _RECORD.itemsize
            if whole:
                yield np.frombuffer(data, dtype=_RECORD, count=whole)
            if len(data) < chunk * _RECORD.itemsize:
                return


def new_seen(count: int) -> np.ndarray:
    """An empty seen bitmap for an index of ``count`` documents (packed, little bit order)."""
    return np.zeros((count + 7) // 8, dtype=np.uint8)


def mark_seen(seen: np.ndarray, positions: np.ndarray) -> None:
    """Set the bit of every found position (``-1``: not indexed, ignored)."""
    found = positions[positions >= 0]
    np.bitwise_or.at(seen, found >> 3, np.left_shift(1, found & 7).astype(np.uint8))


def seen_count(seen: np.ndarray) -> int:
    """How many bits are set."""
    return int(np.bitwise_count(seen).sum())


def unseen_mask(seen: np.ndarray, count: int) -> np.ndarray:
    """A bool per indexed document: True where its bit is clear (an empty bitmap: all)."""
    if len(seen) == 0:
        return np.ones(count, dtype=bool)
    return np.unpackbits(seen, count=count, bitorder="little") == 0


class UnionSeen(beam.CombineFn):
    """Seen bitmaps (:func:`new_seen`, all as long) -> their OR (empty when there was none)."""

    def create_accumulator(self) -> np.ndarray | None:
        return None

    def add_input(self, accumulator: np.ndarray | None, element: np.ndarray) -> np.ndarray:
        if accumulator is None:
            return np.array(element, dtype=np.uint8)  # a copy: inputs are not modified
        if len(element) != len(accumulator):
            raise ValueError(f"UnionSeen: bitmaps of {len(accumulator)} and {len(element)} bytes")
        np.bitwise_or(accumulator, element, out=accumulator)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray | None]) -> np.ndarray | None:
        merged = None
        for accumulator in accumulators:
            if accumulator is not None:
                merged = self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator: np.ndarray | None) -> np.ndarray:
        return np.zeros(0, dtype=np.uint8) if accumulator is None else accumulator
