"""Resolve a source class from its fully qualified name, ``package.module:ClassName``.

Only FQNs listed in config.yml ``sources:`` are ever resolved: the service looks a
connector's ``service_type`` up in that map and never imports a name taken from a
connector or job document.

Example usage::

    cls = load_source_class("sources.directory:DirectoryDataSource")
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from sources.errors import SourceLoadError

__all__ = ["load_source_class", "display_name"]


@functools.lru_cache(maxsize=None)
def load_source_class(fqn: str) -> type[Any]:
    """The class named by ``fqn``; SourceLoadError says what is wrong and how to fix it."""
    module_name, sep, class_name = fqn.partition(":")
    if not sep or not module_name or not class_name:
        raise SourceLoadError(f"{fqn!r} is not a source name; expected package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceLoadError(
            f"cannot import module {module_name!r} for source {fqn!r}: {exc}; is its package installed?"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a broken third-party module
        raise SourceLoadError(f"importing {module_name!r} for source {fqn!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise SourceLoadError(f"module {module_name!r} has no class {class_name!r}") from None
    if not isinstance(cls, type) or not callable(getattr(cls, "get_docs", None)):
        raise SourceLoadError(f"{fqn!r} is not a source class (it has no get_docs method)")
    return cls


def display_name(cls: type[Any]) -> str:
    return str(getattr(cls, "name", None) or cls.__name__)
