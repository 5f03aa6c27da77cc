"""Drive any source synchronously, whatever its style.

Beam calls ``DoFn.process`` synchronously; sources may be written with async generators
(the original connector framework's style), plain generators, sync or async ``ping``/
``close``, and lazy downloads that are sync or async. :class:`SourceDriver` owns one
event loop per instance (one per DoFn, opened in ``setup()``) and turns all of that into
plain calls and plain iterators.

Example usage::

    driver = SourceDriver(source)
    driver.call(source.ping)
    for doc, lazy in driver.iterate(source.get_docs(partition=p)):
        ...
    driver.close()
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from sources.base import Doc, Filter, Partition

__all__ = ["SourceDriver", "as_pair", "call_get_docs"]


class SourceDriver:
    """Run a source's coroutines and async iterators on a private event loop."""

    def __init__(self, source: Any):
        self.source = source
        self.loop = asyncio.new_event_loop()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn``; if it returns an awaitable, run it to completion."""
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = self.loop.run_until_complete(result)
        return result

    def resolve(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            return self.loop.run_until_complete(value)
        return value

    def iterate(self, iterable: Any) -> Iterator[Any]:
        """Iterate a sync iterable or an async iterator, item by item."""
        if hasattr(iterable, "__anext__"):
            agen = iterable
            while True:
                try:
                    item = self.loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        elif isinstance(iterable, Iterable):
            yield from iterable
        elif iterable is None:
            return
        else:
            raise TypeError(
                f"{type(self.source).__name__}.get_docs must return an iterator or an async "
                f"iterator, got {type(iterable).__name__}"
            )

    def download(self, lazy: Any, doc: Doc) -> Doc | None:
        """Run a lazy download for ``doc`` (original-framework calling convention)."""
        if lazy is None:
            return None
        try:
            result = lazy(doit=True, timestamp=doc.get("_timestamp"))
        except TypeError:
            result = lazy()
        return self.resolve(result)

    def close(self) -> None:
        try:
            close = getattr(self.source, "close", None)
            if close is not None:
                self.call(close)
        finally:
            if not self.loop.is_closed():
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()


def call_get_docs(source: Any, filtering: Filter | None, partition: Partition | None) -> Any:
    """Call ``get_docs`` with the arguments its signature accepts.

    Sources of the original framework take only ``filtering``; they get one partition.
    """
    params = inspect.signature(source.get_docs).parameters
    kwargs: dict[str, Any] = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "filtering" in params or accepts_any:
        kwargs["filtering"] = filtering
    if "partition" in params or accepts_any:
        kwargs["partition"] = partition
    return source.get_docs(**kwargs)


def as_pair(item: Any) -> tuple[Doc, Any, str | None]:
    """Normalise what a source yielded to ``(doc, lazy_download, operation)``."""
    if isinstance(item, dict):
        return item, None, None
    if isinstance(item, tuple):
        if len(item) == 2:
            return item[0], item[1], None
        if len(item) == 3:
            return item[0], item[1], item[2]
    raise TypeError(
        "a source must yield a doc dict, (doc, lazy_download) or (doc, lazy_download, operation); "
        f"got {type(item).__name__}"
    )
