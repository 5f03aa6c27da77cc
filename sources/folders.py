"""Folders the operator allows a source to read (config.yml): validation and the "below a root" test.

Used by the directory source (``allowed_roots``) and the network drive source
(``identity_roots``, where its identity mapping files may lie).

Example usage::

    roots = absolute_folders(("/srv/docs",))            # ValueError for a relative folder
    within(os.path.realpath(path), roots)                # True when path is a root or lies below one
"""

from __future__ import annotations

import functools
import os

__all__ = ["absolute_folders", "within"]


def absolute_folders(value: tuple[str, ...]) -> tuple[str, ...]:
    """``value`` with ``~`` expanded; ValueError naming every folder that is not absolute."""
    relative = [root for root in value if not os.path.isabs(os.path.expanduser(root))]
    if relative:
        raise ValueError(f"expected absolute folder paths, got {', '.join(repr(r) for r in relative)}")
    return tuple(os.path.expanduser(root) for root in value)


def within(path: str, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``roots`` or lies below one (a string test: paths already resolved)."""
    exact, prefixes = _root_prefixes(roots)
    return path in exact or path.startswith(prefixes)


@functools.lru_cache(maxsize=32)
def _root_prefixes(roots: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    return frozenset(roots), tuple(root.rstrip(os.sep) + os.sep for root in roots)
