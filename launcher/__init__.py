"""The daemon and the command line. Importing the package first imports :mod:`transforms`, so
elasticsearch-py is loaded without its optional extras (transforms/lean_imports.py): the
daemon stays ~55 MB smaller."""

import transforms  # noqa: F401
