"""One retry policy for the requests a sync sends to Elasticsearch (``_bulk``, scans).

Exponential backoff with full jitter (tenacity's ``wait_random_exponential``: a random wait
in ``[0, min(max_backoff, initial_backoff * 2**n)]``), at most ``max_retries`` retries, and
a deadline: no attempt starts more than ``max_retry_seconds`` after the first, and no
attempt waits for an answer past it (:func:`attempt_timeout`), so a request that keeps
failing fails its job with the last error in bounded time. What is retried: connection
errors, timeouts, HTTP 429 and 5xx, and :class:`ItemsRejected` (items of an answered
``_bulk`` refused with 429/5xx, sent again alone). Anything else is raised at once.

The elasticsearch-py clients these requests go through are made with ``max_retries=0``:
the client's own retries (no backoff, not counted) would multiply the attempts.

Example usage::

    response = retry_with_backoff(lambda: es.bulk(operations=lines), settings, what="_bulk to search-docs")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import tenacity
from elasticsearch import ApiError, ConnectionError as ESConnectionError, ConnectionTimeout, TransportError

from sources.errors import ElasticsearchUnavailable, connection_failure

__all__ = ["retry_with_backoff", "attempt_timeout", "ItemsRejected", "RetrySettings", "RETRIABLE_STATUS"]

RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_LOGGER = logging.getLogger(__name__)


class RetrySettings(Protocol):
    """What the policy reads (``BulkSettings`` has it: config.yml ``pipeline.bulk``)."""

    max_retries: int
    max_retry_seconds: float
    initial_backoff: float
    max_backoff: float


class ItemsRejected(Exception):
    """Items of an answered ``_bulk`` were refused with 429 or 5xx: they are to be sent again."""

    def __init__(self, count: int, index: str):
        super().__init__(f"{count} document(s) still rejected with 429/5xx by {index}")
        self.count = count


def retriable(exc: BaseException) -> bool:
    if isinstance(exc, (ItemsRejected, ESConnectionError, ConnectionTimeout)):
        return True
    if isinstance(exc, ApiError):
        return exc.meta.status in RETRIABLE_STATUS
    return isinstance(exc, TransportError)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.meta.status} {exc.message}"
    if isinstance(exc, TransportError):  # its str() is only "Connection error"; the message says which
        return connection_failure(exc) or f"{type(exc).__name__}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def attempt_timeout(deadline: float, request_timeout: float, *, clock: Callable[[], float] = time.monotonic) -> float:
    """Seconds an attempt may wait for its answer: the client's timeout, cut at ``deadline``
    (a ``clock()`` value), and at least one second."""
    return max(1.0, min(request_timeout, deadline - clock()))


def retry_with_backoff(call: Callable[[], Any], settings: RetrySettings, *, on_retry: Callable[[], None] = lambda: None,
                       sleep: Callable[[float], None] = time.sleep, what: str = "bulk request",
                       deadline: float | None = None, clock: Callable[[], float] = time.monotonic) -> Any:
    """Run ``call``; retry it by the policy (module docstring); ``on_retry`` before each retry.

    ``deadline``: a ``clock()`` value after which no attempt starts (default:
    ``settings.max_retry_seconds`` from now). Giving up raises
    :class:`~sources.errors.ElasticsearchUnavailable` with the last error.
    """
    started = clock()
    deadline = started + settings.max_retry_seconds if deadline is None else deadline

    # tenacity's retry state and the Retrying object refer to each other: a cycle that only the
    # cyclic garbage collector frees, and rarely (bytes and strings do not count towards its
    # thresholds). Whatever the callbacks refer to (a _bulk batch: 1000 documents) would stay
    # alive with it: RSS grew ~4 KB per document written. The cycle holds this list instead,
    # emptied when the call is over.
    hooks = [call, on_retry]

    def run() -> Any:
        return hooks[0]()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        hooks[1]()
        error = state.outcome.exception() if state.outcome else None
        _LOGGER.warning("%s failed (%s); retry %d in %.1fs", what, _describe(error), state.attempt_number,
                        state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retriable),
        stop=(tenacity.stop_after_attempt(settings.max_retries + 1)
              | (lambda state: clock() + state.upcoming_sleep >= deadline)),
        wait=tenacity.wait_random_exponential(multiplier=settings.initial_backoff, max=settings.max_backoff),
        sleep=sleep, before_sleep=before_sleep, reraise=False)
    try:
        return retrying(run)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        raise ElasticsearchUnavailable(
            f"{what} failed after {exc.last_attempt.attempt_number} attempts in {clock() - started:.0f}s: "
            f"{_describe(last)}") from last
    finally:
        hooks.clear()
