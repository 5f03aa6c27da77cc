"""A CA certificate (or a client certificate or key) given as PEM text or as a path, as a file
path drivers can use.

Example usage::

    ca = CaFile()
    path = ca.path(settings.ssl_ca)   # PEM text is written to a private temporary file
    ...
    ca.remove()                       # in close(): deletes the temporary file, if any

    key = CaFile(field="tls_keyfile", secret=True)  # another field, named in errors (a secret: never shown)
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from sources.errors import SourceConfigError

__all__ = ["CaFile"]


class CaFile:
    """PEM text or a path in the connector field ``field`` (default ``ssl_ca``), as a file path.

    ``secret``: the field holds a private key, so an error never shows its value."""

    def __init__(self, field: str = "ssl_ca", *, secret: bool = False) -> None:
        self._field = field
        self._secret = secret
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
                shown = "(value not shown)" if self._secret else repr(ca if len(ca) <= 200 else ca[:200] + "...")
                raise SourceConfigError(f"{self._field}: neither PEM text nor a readable file: {shown}")
        return self._path

    def remove(self) -> None:
        """Delete the temporary file written for PEM text (never a user's own file)."""
        if self._temporary and self._path:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
        self._path, self._temporary = None, False
