"""Drive any source synchronously, whatever its style.

Beam calls ``DoFn.process`` synchronously; sources may be written with async generators
(the original connector framework's style), plain generators, sync or async ``ping``/
``close``, and lazy downloads that are sync or async. :class:`SourceDriver` owns one
event loop per instance (one per DoFn, opened in ``setup()``) and turns all of that into
plain calls and plain iterators. Every coroutine of one source instance runs on that one
loop, so clients the source opened (an ``aiohttp`` session, an async driver) stay on the
loop they were created on.

Example usage::

    source = build_source(MySource, {"host": {"value": "db.example.com"}})
    driver = SourceDriver(source)
    driver.call(source.ping)
    for item in driver.iterate(call_get_docs(source, filtering=None, partition=None)):
        doc, lazy_download, operation = as_pair(item)
        extra = driver.download(lazy_download, doc)
    driver.close()
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sources.base import DataSourceConfiguration, Doc, Filter, OperatorSettings, Partition
from sources.errors import ConfigError
from sources.network import check_endpoints

__all__ = ["SourceDriver", "as_pair", "build_source", "operator_settings_of", "call_get_docs", "call_lazy", "is_async_callable"]


def build_source(cls: type[Any], configuration: Mapping[str, Any] | None,
                 operator_settings: OperatorSettings | Mapping[str, Any] | None = None) -> Any:
    """An instance of source class ``cls`` for the connector's ``configuration``, checked.

    ``configuration`` is the connector document's ``configuration`` (field name -> field
    object or bare value). Every source receives a :class:`DataSourceConfiguration`
    completed with its own schema, so ``self.configuration["x"]`` reads the value whether
    or not the class subclasses :class:`~sources.base.BaseDataSource`.

    ``operator_settings`` (the source's ``sources:`` entry in config.yml, validated) become
    ``source.operator_settings``; the hosts the source names (``network_endpoints()``) are
    then checked against their ``allowed_hosts``, connecting to nothing, so a refused host
    raises ``SourceConfigError`` here, before any other call of the source.
    """
    if not isinstance(configuration, DataSourceConfiguration):
        schema_of = getattr(cls, "get_default_configuration", None)
        schema = schema_of() if callable(schema_of) else {}
        configuration = DataSourceConfiguration(dict(configuration or {}), schema)
    settings = operator_settings_of(cls, operator_settings)
    try:
        accepts = "operator_settings" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        source = cls(configuration=configuration, operator_settings=settings)
    else:  # a source that overrides __init__ (the original framework's style)
        source = cls(configuration=configuration)
        source.operator_settings = settings
    endpoints = getattr(source, "network_endpoints", None)
    if callable(endpoints):
        check_endpoints(endpoints(), settings.allowed_hosts, source_name=str(getattr(cls, "name", cls.__name__)))
    return source


def operator_settings_of(cls: type[Any], given: OperatorSettings | Mapping[str, Any] | None) -> OperatorSettings:
    """``given`` as the settings model of ``cls`` (:class:`OperatorSettings` for classes without one)."""
    from pydantic import ValidationError

    model = getattr(cls, "operator_settings_model", OperatorSettings)
    if isinstance(given, model):
        return given
    try:
        return model.model_validate(given.model_dump() if isinstance(given, OperatorSettings) else dict(given or {}))
    except ValidationError as exc:
        raise ConfigError(f"the operator settings of {cls.__name__} are not valid:",
                          [_problem(error) for error in exc.errors()]) from None


def _problem(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``path: message`` (list positions as ``[i]``)."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown setting"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path or '(settings)'}: {message}"


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions, partials of them, async ``__call__``)."""
    kind = _kind(fn)
    if kind is not None and kind in _ASYNC:
        return _ASYNC[kind]
    inner = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    answer = inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(getattr(inner, "__call__", None))
    if kind is not None:
        _ASYNC[kind] = answer  # once per kind of download (see _kind), not per document
    return answer


#: Whether a kind of callable is async, by its code (see :func:`_kind`).
_ASYNC: dict[Any, bool] = {}


#: What a kind of lazy download accepts: (``doit``, ``timestamp``), by its code (see :func:`_kind`).
_ACCEPTS: dict[Any, tuple[bool, bool]] = {}


def _kind(lazy: Any) -> Any:
    """What makes lazy downloads alike for :func:`call_lazy`: a function's code, a method's, a
    callable object's class. None for others (partials, builtins), inspected each time."""
    kind = type(lazy)
    if kind is types.MethodType:
        lazy = lazy.__func__
        kind = type(lazy)
        if kind is not types.FunctionType:
            return None
    if kind is types.FunctionType:
        # A function with attributes may carry its own signature (``__wrapped__`` from
        # functools.wraps, ``__signature__``): many share one decorator's code, so not cached.
        return None if lazy.__dict__ else lazy.__code__
    known = _OBJECT_KINDS.get(kind)
    if known is None:  # once per class: are its instances callables of their own kind?
        call = getattr(kind, "__call__", None)
        known = _OBJECT_KINDS[kind] = not issubclass(kind, (functools.partial, types.BuiltinFunctionType)) and \
            isinstance(call, types.FunctionType) and not call.__dict__
    if not known:
        return None
    own = getattr(lazy, "__dict__", None)
    return None if own and ("__wrapped__" in own or "__signature__" in own) else kind


#: Per class: whether its instances are lazy downloads alike (a ``__call__`` written in Python).
_OBJECT_KINDS: dict[type, bool] = {}


def _accepts(lazy: Any) -> tuple[bool, bool] | None:
    """(passes ``doit``, passes ``timestamp``); None when it has no signature (called bare)."""
    kind = _kind(lazy)
    if kind is not None and kind in _ACCEPTS:
        return _ACCEPTS[kind]
    try:
        params = inspect.signature(lazy).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return None
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepts = ("doit" in params or accepts_any, "timestamp" in params or accepts_any)
    if kind is not None:
        _ACCEPTS[kind] = accepts  # one inspection per kind of download, not per document
    return accepts


def call_lazy(lazy: Any, doc: Doc) -> Any:
    """Call a lazy download with the original framework's convention, ``(doit=True, timestamp=...)``.

    Lazy downloads that take no such arguments are called bare. The result may be awaitable.
    """
    accepts = _accepts(lazy)
    if accepts is None:
        return lazy()
    doit, timestamp = accepts
    kwargs: dict[str, Any] = {}
    if doit:
        kwargs["doit"] = True
    if timestamp:
        kwargs["timestamp"] = doc.get("_timestamp")
    return lazy(**kwargs)


class SourceDriver:
    """Run a source's coroutines and async iterators on a private event loop."""

    def __init__(self, source: Any):
        self.source = source
        self.loop = asyncio.new_event_loop()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn``; if it returns an awaitable, run it to completion."""
        return self.resolve(fn(*args, **kwargs))

    def resolve(self, value: Any) -> Any:
        """``value``, awaited on this driver's loop when it is awaitable."""
        if inspect.isawaitable(value):
            return self.loop.run_until_complete(_await(value))
        return value

    def gather(self, awaitables: list[Any], *, limit: int) -> list[Any]:
        """Await ``awaitables`` concurrently, at most ``limit`` at a time; results in order.

        The first failure is raised (the others are cancelled).
        """
        if not awaitables:
            return []

        async def run_all() -> list[Any]:
            gate = asyncio.Semaphore(max(1, limit))

            async def one(awaitable: Any) -> Any:
                async with gate:
                    return await awaitable

            tasks = [asyncio.ensure_future(one(a)) for a in awaitables]
            try:
                return await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

        return self.loop.run_until_complete(run_all())

    def iterate(self, iterable: Any) -> Iterator[Any]:
        """Iterate a sync iterable or an async iterator, item by item.

        An async generator left before its end (the consumer failed or stopped) is closed
        on this loop, so its ``finally`` blocks run.
        """
        if hasattr(iterable, "__anext__"):
            agen = iterable
            finished = False
            try:
                while True:
                    try:
                        item = self.loop.run_until_complete(agen.__anext__())
                    except StopAsyncIteration:
                        finished = True
                        return
                    yield item
            finally:
                if not finished and hasattr(agen, "aclose") and not self.loop.is_closed():
                    try:
                        self.loop.run_until_complete(agen.aclose())
                    except Exception:  # noqa: BLE001 - already failing; keep the first error
                        pass
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
        """Run a lazy download for ``doc`` to completion on this thread (and this loop)."""
        if lazy is None:
            return None
        return self.resolve(call_lazy(lazy, doc))

    def close(self) -> None:
        """Close the source (``close()``, sync or async), then the loop. Safe to call twice."""
        if self.loop.is_closed():
            return
        try:
            close = getattr(self.source, "close", None)
            if close is not None:
                self.call(close)
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()


async def _await(awaitable: Any) -> Any:
    return await awaitable


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
    if isinstance(item, tuple):  # first: a concrete type check, no ABC check per document
        if len(item) in (2, 3):
            return item[0], item[1], item[2] if len(item) == 3 else None
    elif isinstance(item, Mapping):
        return item, None, None  # type: ignore[return-value]
    raise TypeError(
        "a source must yield a doc dict, (doc, lazy_download) or (doc, lazy_download, operation); "
        f"got {type(item).__name__}"
    )
