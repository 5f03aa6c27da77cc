"""Elasticsearch outages, as the daemon lives them: wait at start, log state changes, not every failure.

While Elasticsearch cannot be reached, every poll and every job supervisor fails every few
seconds; a line for each would bury the one line that matters. :class:`Outage` is the
service's one record of the outage, shared by the daemon and its job supervisors:

* the first failure logs one line (what is unreachable, why);
* while it lasts, a reminder at most every ``remind_every`` seconds (how long, how many
  failures, the latest reason);
* the first success after it logs one line (how long it lasted);
* :attr:`Outage.not_ready` says it meanwhile, for ``/healthz``.

:func:`is_outage` tells an outage (nothing answers, timeouts, 429/502/503/504) from other
failures, which still count against ``service.max_errors``: an outage never stops the
daemon, only configuration errors do.

Example usage::

    outage = Outage(_LOGGER, "Elasticsearch at http://127.0.0.1:9200")
    try:
        poll()
        outage.ended()
    except Exception as exc:
        if not is_outage(exc):
            raise
        outage.failed(format_error(exc))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["Outage", "is_outage", "wait_backoff"]

#: Answers that mean "not now" rather than "wrong request" (Elasticsearch busy or starting, a proxy's upstream down).
_RETRIABLE_STATUSES = frozenset({429, 502, 503, 504})


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Elasticsearch cannot be reached or cannot answer now (retrying helps)."""
    from elastic_transport import ApiError, SerializationError, TransportError

    from sources.errors import ElasticsearchUnavailable

    if isinstance(exc, ElasticsearchUnavailable):
        return True
    if isinstance(exc, ApiError):
        return getattr(exc.meta, "status", None) in _RETRIABLE_STATUSES
    return isinstance(exc, TransportError) and not isinstance(exc, SerializationError)


def wait_backoff(attempt: int, *, first: float = 1.0, most: float = 30.0) -> float:
    """Seconds to wait before try ``attempt + 1`` (1, 2, 4, ... up to ``most``)."""
    return min(most, first * 2 ** max(0, attempt - 1))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


class Outage:
    """One service's view of whether ``what`` (e.g. "Elasticsearch at URL") answers; thread-safe."""

    def __init__(self, logger: logging.Logger, what: str, *, remind_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._logger, self.what, self.remind_every, self._clock = logger, what, remind_every, clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._since_wall: datetime | None = None
        self._last_line = 0.0
        self.failures = 0
        self.reason: str | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    @property
    def not_ready(self) -> str | None:
        """Why the service cannot work now (None: it can), for ``/healthz``."""
        with self._lock:
            if self._since is None:
                return None
            return (f"{self.what} unreachable since {self._since_wall:%Y-%m-%d %H:%M:%S} UTC "
                    f"({self.failures} failed attempts): {self.reason}")

    def failed(self, reason: str) -> None:
        """A request failed for an outage reason: logged if it starts the outage, or as a reminder."""
        with self._lock:
            now = self._clock()
            self.failures += 1
            self.reason = reason
            if self._since is None:
                self._since, self._since_wall, self._last_line = now, datetime.now(timezone.utc), now
                self._logger.warning("%s unreachable: %s (retrying; a reminder at most every %s while it lasts)",
                                     self.what, reason, _duration(self.remind_every))
            elif now - self._last_line >= self.remind_every:
                self._last_line = now
                self._logger.warning("%s still unreachable after %s (%d failed attempts): %s", self.what,
                                     _duration(now - self._since), self.failures, reason)

    def ended(self) -> None:
        """A request succeeded: logs the end of an outage, if there was one."""
        if self._since is None:  # the usual case, without the lock
            return
        with self._lock:
            if self._since is None:
                return
            self._logger.info("%s answers again, after %s unreachable (%d failed attempts)", self.what,
                              _duration(self._clock() - self._since), self.failures)
            self._since, self._since_wall, self.failures, self.reason = None, None, 0, None
