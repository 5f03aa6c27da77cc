"""Elasticsearch's deprecation warnings: logged, each kind once, never silenced.

Elasticsearch answers some requests with a ``Warning`` header that elasticsearch-py
raises as an :class:`~elasticsearch.exceptions.ElasticsearchWarning` (e.g. "index name
[.elastic-connectors-v1] starts with a dot", or direct access to a system index in
Elasticsearch 9). They tell the operator something real about the cluster, so they are
logged; but a poll every few seconds must not repeat them: each kind (the message with
its bracketed names and numbers blanked) is logged once per process.

Only :class:`ElasticsearchWarning` and elasticsearch-py's ``GeneralAvailabilityWarning``
(a call of an API it marks beta, as the connector API) are handled here; every other
warning goes where it went before.

Example usage::

    log_elasticsearch_warnings_once()     # idempotent; the stores call it
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from typing import Any

from elasticsearch.exceptions import ElasticsearchWarning, GeneralAvailabilityWarning

# What elasticsearch-py raises for Elasticsearch's Warning headers, and for calls of APIs it
# marks beta (the connector API).
_CATEGORIES = (ElasticsearchWarning, GeneralAvailabilityWarning)

__all__ = ["log_elasticsearch_warnings_once", "warning_kind"]

_LOGGER = logging.getLogger("launcher.elasticsearch")
_lock = threading.Lock()
_seen: set[str] = set()
_installed = False


def warning_kind(message: str) -> str:
    """The message with what varies between requests (names in brackets, numbers) blanked."""
    return re.sub(r"\d+", "N", re.sub(r"\[[^\]]*\]", "[...]", message))


def log_elasticsearch_warnings_once() -> None:
    """Route :class:`ElasticsearchWarning` to the log, each kind once; other warnings untouched."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        # Python's own "default" action would show each message once per call site, and
        # a message naming another index counts as new: we decide what repeats ourselves.
        for category in _CATEGORIES:
            warnings.filterwarnings("always", category=category)
        previous = warnings.showwarning

        def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
            if not issubclass(category, _CATEGORIES):
                previous(message, category, filename, lineno, file, line)
                return
            text = str(message)
            kind = warning_kind(text)
            with _lock:
                if kind in _seen:
                    return
                _seen.add(kind)
            if issubclass(category, GeneralAvailabilityWarning):  # elasticsearch-py's note, not the cluster's
                _LOGGER.debug("elasticsearch-py: %s (logged once)", text)
            else:
                _LOGGER.warning("Elasticsearch says: %s (logged once)", text)

        warnings.showwarning = show
