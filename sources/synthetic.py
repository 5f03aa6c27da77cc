"""The synthetic source: deterministic, seeded documents for benchmarks and tests.

``count`` documents of about ``doc_size`` bytes each (serialized), generated from ``seed``
without any I/O, split into ``partitions`` contiguous id ranges. The same configuration
always yields byte-identical documents, with a fixed ``_timestamp``, so a resync of an
unchanged source skips every document.

``version`` produces a deterministic variant of the base data (version 0): about
``remove_ratio`` of the documents are gone and about ``change_ratio`` have new content and
a newer ``_timestamp``; every other document is identical to version 0. Which documents
change depends on ``(seed, version)``; :func:`variant_counts` says exactly how many.

Example usage::

    source = SyntheticDataSource({"count": 100_000, "doc_size": 1024, "partitions": 2})
    for doc, _ in source.get_docs(partition=source.get_partitions()[0]):
        ...

    # the same documents without the source machinery (the benchmark's baselines use this)
    docs = list(synthetic_docs(count=1000, doc_size=1024, seed=1))
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
from collections.abc import Iterator
from typing import Any

from sources.base import BaseDataSource, Filter, Partition
from sources.errors import SourceConfigError

__all__ = ["SyntheticDataSource", "synthetic_docs", "variant_counts", "doc_state", "BASE_TIMESTAMP"]

BASE_TIMESTAMP = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
_CATEGORIES = ("news", "blog", "manual", "faq", "forum", "wiki", "ticket", "email",
               "report", "spec", "note", "review", "post", "page", "paper", "memo")
_POOL_BYTES = 4 << 20
_GOLDEN = 2654435761
_UNCHANGED, _CHANGED, _REMOVED = 0, 1, 2


@functools.lru_cache(maxsize=8)
def _text_pool(seed: int) -> str:
    """About 4 MiB of ASCII words, a function of ``seed`` only (built once per process)."""
    import numpy as np  # the draw below is ~5x faster than random.choices (each sync process builds the pool)

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(4096)]
    weights = np.array([1.0 / (rank + 1) for rank in range(len(vocabulary))])  # Zipf-like, as real text
    picks = np.random.default_rng(seed).choice(len(vocabulary), size=_POOL_BYTES // 6, p=weights / weights.sum())
    return " ".join([vocabulary[i] for i in picks.tolist()])


def doc_state(i: int, *, seed: int, version: int, change_ratio: float, remove_ratio: float) -> int:
    """0 unchanged, 1 changed, 2 removed: document ``i`` in ``version`` relative to version 0."""
    if version <= 0:
        return _UNCHANGED
    # A Weyl sequence: evenly spread fractions, cheap, deterministic.
    u = (((i + 1) * _GOLDEN + seed * 97531 + version * 1000003) % (1 << 32)) / float(1 << 32)
    if u < remove_ratio:
        return _REMOVED
    if u < remove_ratio + change_ratio:
        return _CHANGED
    return _UNCHANGED


def variant_counts(count: int, *, seed: int = 1, version: int = 0, change_ratio: float = 0.01,
                   remove_ratio: float = 0.01) -> dict[str, int]:
    """How many documents ``version`` changes and removes (relative to version 0)."""
    changed = removed = 0
    for i in range(count):
        state = doc_state(i, seed=seed, version=version, change_ratio=change_ratio, remove_ratio=remove_ratio)
        changed += state == _CHANGED
        removed += state == _REMOVED
    return {"changed": changed, "removed": removed, "present": count - removed}


def _stamp(version: int) -> str:
    return (BASE_TIMESTAMP + dt.timedelta(days=version)).isoformat()


def synthetic_docs(*, count: int, doc_size: int = 1024, seed: int = 1, version: int = 0, change_ratio: float = 0.01,
                   remove_ratio: float = 0.01, low: int = 0, high: int | None = None) -> Iterator[dict[str, Any]]:
    """The documents with index ``low <= i < high`` (default: all), in id order."""
    pool = _text_pool(seed)
    high = count if high is None else min(high, count)
    template = {"_id": "0000000000", "title": "Document 0000000000 v0", "category": "manual", "number": 0,
                "version": 0, "tags": ["aaaaaaaaaa", "bbbbbbbbbb"], "body": "", "_timestamp": _stamp(0)}
    overhead = len(json.dumps(template, separators=(",", ":")).encode())
    body_len = max(16, doc_size - overhead)
    span = len(pool) - body_len - 1
    if span <= 0:
        raise SourceConfigError(f"doc_size: at most {len(pool) - overhead - 1} bytes, got {doc_size}")
    base_stamp, new_stamp = _stamp(0), _stamp(version)
    tag_count = len(_CATEGORIES)
    for i in range(low, high):
        state = _UNCHANGED if version <= 0 else doc_state(
            i, seed=seed, version=version, change_ratio=change_ratio, remove_ratio=remove_ratio)
        if state == _REMOVED:
            continue
        v = version if state == _CHANGED else 0
        offset = ((i + 1) * _GOLDEN + seed + v * 7919) % span
        yield {
            "_id": f"{i:010d}",
            "title": f"Document {i} v{v}",
            "category": _CATEGORIES[i % tag_count],
            "number": i,
            "version": v,
            "tags": [_CATEGORIES[(i // 7) % tag_count], _CATEGORIES[(i // 13 + v) % tag_count]],
            "body": pool[offset:offset + body_len],
            "_timestamp": new_stamp if state == _CHANGED else base_stamp,
        }


class SyntheticDataSource(BaseDataSource):
    """Seeded, deterministic documents generated in memory (benchmarks and tests)."""

    name = "Synthetic"
    service_type = "synthetic"
    #: The data's size and variant, and how it is read: not its shape.
    document_neutral_fields = frozenset({"count", "partitions", "version", "change_ratio", "remove_ratio"})

    @classmethod
    def get_default_configuration(cls) -> dict[str, dict[str, Any]]:
        return {
            "count": {"label": "Documents", "type": "int", "order": 1, "default_value": 10000,
                      "required": False, "tooltip": "How many documents version 0 has."},
            "doc_size": {"label": "Document size (bytes)", "type": "int", "order": 2, "default_value": 1024,
                         "required": False, "tooltip": "Approximate serialized size of each document."},
            "seed": {"label": "Seed", "type": "int", "order": 3, "default_value": 1, "required": False},
            "partitions": {"label": "Partitions", "type": "int", "order": 4, "default_value": 1,
                           "required": False, "tooltip": "Independent id ranges, read in parallel."},
            "version": {"label": "Version", "type": "int", "order": 5, "default_value": 0, "required": False,
                        "tooltip": "0: the base data; N > 0: a variant with change_ratio changed and "
                                   "remove_ratio removed documents."},
            "change_ratio": {"label": "Changed fraction", "type": "str", "order": 6, "default_value": "0.01",
                             "required": False},
            "remove_ratio": {"label": "Removed fraction", "type": "str", "order": 7, "default_value": "0.01",
                             "required": False},
        }

    def _int(self, name: str, minimum: int) -> int:
        raw = self.configuration[name]
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SourceConfigError(f"{name}: expected an integer, got {raw!r}") from None
        if value < minimum:
            raise SourceConfigError(f"{name}: must be at least {minimum}, got {value}")
        return value

    def _ratio(self, name: str) -> float:
        raw = self.configuration[name]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SourceConfigError(f"{name}: expected a number between 0 and 1, got {raw!r}") from None
        if not 0.0 <= value <= 1.0:
            raise SourceConfigError(f"{name}: expected a number between 0 and 1, got {value}")
        return value

    def params(self) -> dict[str, Any]:
        """The validated generator parameters."""
        params = {
            "count": self._int("count", 0), "doc_size": self._int("doc_size", 64), "seed": self._int("seed", 0),
            "version": self._int("version", 0), "change_ratio": self._ratio("change_ratio"),
            "remove_ratio": self._ratio("remove_ratio"),
        }
        if params["change_ratio"] + params["remove_ratio"] > 1.0:
            raise SourceConfigError("change_ratio + remove_ratio: must be at most 1")
        return params

    async def validate_config(self) -> None:
        self.params()
        self._int("partitions", 1)

    async def ping(self) -> None:
        self.params()

    def get_partitions(self) -> list[Partition]:
        count = self._int("count", 0)
        parts = max(1, min(self._int("partitions", 1), max(count, 1)))
        bounds = [count * k // parts for k in range(parts + 1)]
        return [Partition(f"synthetic[{lo}:{hi}]", {"low": lo, "high": hi}) for lo, hi in zip(bounds, bounds[1:])]

    def get_docs(self, filtering: Filter | None = None, partition: Partition | None = None):
        params = self.params()
        p = partition.params if partition is not None else {}
        for doc in synthetic_docs(**params, low=int(p.get("low", 0)), high=p.get("high")):
            yield doc, None
