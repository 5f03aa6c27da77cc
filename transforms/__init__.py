"""Beam transforms of a sync. Importing the package imports elasticsearch-py without the
optional extras it would probe for (see :mod:`transforms.lean_imports`), whoever imports it first."""

from transforms.lean_imports import without_extras as _without_extras

with _without_extras():
    import elasticsearch  # noqa: F401
