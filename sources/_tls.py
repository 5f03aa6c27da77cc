"""A CA certificate given as PEM text or as a path, as a file path drivers can use.

Example usage::

    ca = CaFile()
    path = ca.path(settings.ssl_ca)   # PEM text is written to a private temporary file
    ...
    ca.remove()                       # in close(): deletes the temporary file, if any
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from sources.errors import SourceConfigError

__all__ = ["CaFile"]


class CaFile:
    def __init__(self) -> None:
        self._path: str | None = None
        self._temporary = False

    def path(self, ca: str | None) -> str | None:
        """The CA file for ``ca`` (None when no CA is configured)."""
        if not ca:
            return None
        if self._path is None:
            if "-----BEGIN" in ca:
                fd, self._path = tempfile.mkstemp(prefix="elastic-ingest-ca-", suffix=".pem")
                self._temporary = True
                with os.fdopen(fd, "w", encoding="ascii") as out:
                    out.write(ca)
            elif os.path.isfile(ca):
                self._path = ca
            else:
                raise SourceConfigError(f"ssl_ca: neither PEM text nor a readable file: {ca!r}")
        return self._path

    def remove(self) -> None:
        """Delete the temporary file written for PEM text (never a user's own file)."""
        if self._temporary and self._path:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        self._path, self._temporary = None, False
