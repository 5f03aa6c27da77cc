"""Import a library without the optional extras it would load for features we never use.

``elasticsearch`` (through ``elastic_transport``) probes at import time for numpy,
pyarrow, pandas, aiohttp, httpx (whose command line pulls in click, rich and pygments),
requests and opentelemetry, and keeps whichever it finds for optional serializers, HTTP
nodes and tracing. We use none of them: the client talks through urllib3 with orjson. The
probe costs the daemon ~55 MB (105 MB instead of 50) and 0.4 s of start-up, and pyarrow
starts a jemalloc background thread at import, which a process that forks (the warm sync
process, :mod:`pipelines.fork_server`) must not have. Beam probes for pyarrow and pandas
the same way.

:func:`without_extras` makes those probes fail while the library is imported (a ``None``
entry in ``sys.modules`` is how Python spells "no such module") and removes the entries
afterwards, so code that really needs one of them later (a source's driver) imports it as
usual. Modules already imported are left alone.

Example usage::

    with without_extras():
        from elasticsearch import Elasticsearch
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["without_extras", "ES_EXTRAS", "BEAM_EXTRAS"]

#: What elasticsearch-py and elastic_transport probe for and we never use.
ES_EXTRAS = ("numpy", "pyarrow", "pandas", "aiohttp", "httpx", "requests", "opentelemetry")
#: What Beam probes for and a sync never uses (numpy is a real dependency of Beam's and ours).
BEAM_EXTRAS = ("pyarrow", "pandas")


@contextlib.contextmanager
def without_extras(names: tuple[str, ...] = ES_EXTRAS) -> Iterator[None]:
    """Within the block, ``import name`` raises ModuleNotFoundError for each of ``names`` not imported yet."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
