"""Helpers for testing a source without Beam or Elasticsearch.

Example usage::

    from sources.testing import read_all

    docs = read_all(MySource({"host": "localhost"}))
    assert {d["_id"] for d in docs} == {"1", "2"}
"""

from __future__ import annotations

from typing import Any

from sources.base import Doc, Filter, Partition
from sources.driver import SourceDriver, as_pair, call_get_docs

__all__ = ["read_all", "read_partitions", "ping"]


def read_all(
    source: Any,
    *,
    partition: Partition | None = None,
    filtering: Filter | None = None,
    download: bool = True,
    close: bool = True,
) -> list[Doc]:
    """Every document of one partition (default: the whole source as one read)."""
    driver = SourceDriver(source)
    try:
        docs = []
        for item in driver.iterate(call_get_docs(source, filtering, partition)):
            doc, lazy, _ = as_pair(item)
            doc = dict(doc)
            if download:
                extra = driver.download(lazy, doc)
                if extra:
                    doc.update({k: v for k, v in extra.items() if k not in ("_id", "_timestamp")})
            docs.append(doc)
        return docs
    finally:
        if close:
            driver.close()


def read_partitions(source: Any, *, filtering: Filter | None = None, download: bool = True) -> list[Doc]:
    """Every document, read partition by partition as the pipeline does."""
    partitions = list(source.get_partitions()) if hasattr(source, "get_partitions") else [Partition()]
    docs: list[Doc] = []
    for partition in partitions:
        docs.extend(read_all(source, partition=partition, filtering=filtering, download=download, close=False))
    SourceDriver(source).close()
    return docs


def ping(source: Any) -> Any:
    driver = SourceDriver(source)
    try:
        return driver.call(source.ping)
    finally:
        driver.loop.close()
