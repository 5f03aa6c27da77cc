"""Scheduled syncs: Quartz cron expressions, evaluated in UTC, each fire time taken once.

Kibana writes Quartz cron (``sec min hour day-of-month month day-of-week [year]``, with
``?``, and day-of-week 1-7 = SUN-SAT). :func:`to_croniter` translates it for the
``croniter`` library (day-of-week 0-6 = SUN-SAT, seconds first).

:func:`due_fire_time` gives the latest fire time not after ``now`` that was not taken
yet; the daemon takes it by writing ``last_*_scheduled_at`` with ``if_seq_no`` /
``if_primary_term``, so two instances never create two jobs for one fire time, and a
fire time that fell between two polls is still taken at the next poll.

Example usage::

    due_fire_time("0 0 * * * ?", last_scheduled_at=None, now=now)
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from croniter import croniter

__all__ = ["parse_time", "to_croniter", "validate_cron", "due_fire_time", "SCHEDULED_AT_FIELD", "next_fire_time"]

SCHEDULED_AT_FIELD = {
    "full": "last_sync_scheduled_at",
    "incremental": "last_incremental_sync_scheduled_at",
    "access_control": "last_access_control_sync_scheduled_at",
}


def _shift_dow(field: str) -> str:
    """Quartz days 1-7 (SUN-SAT) as croniter days 0-6; steps (``/n``) and ``#n`` unchanged."""
    def shift(match: re.Match[str]) -> str:
        return str((int(match.group(0)) - 1) % 7)

    def shift_item(item: str) -> str:
        days, slash, step = item.partition("/")
        days, hash_, nth = days.partition("#")
        return re.sub(r"\d+", shift, days) + hash_ + nth + slash + step

    return ",".join(shift_item(item) for item in field.split(","))


def _year_matches(field: str, year: int) -> bool:
    """Whether ``year`` is in a Quartz year field (``*``, ``2026``, ``2025-2030``, ``2026/2``, lists)."""
    for item in field.split(","):
        if item in ("*", "?"):
            return True
        span, _, step = item.partition("/")
        low, _, high = span.partition("-")
        first = int(low) if low not in ("*", "") else 1970
        last = int(high) if high else (2099 if step or low == "*" else first)
        if first <= year <= last and (year - first) % (int(step) if step else 1) == 0:
            return True
    return False


def _year_field(expression: str) -> str:
    fields = expression.split()
    return fields[6] if len(fields) == 7 else "*"


def to_croniter(expression: str) -> str:
    """A Quartz cron expression as a 6-field croniter expression (seconds first)."""
    if not isinstance(expression, str):
        raise ValueError(f"expected a Quartz cron expression (text), got {type(expression).__name__}")
    fields = expression.split()
    if len(fields) == 7:
        if not re.fullmatch(r"(\*|\?|\d{4}(-\d{4})?(/\d+)?)(,\d{4}(-\d{4})?(/\d+)?)*", fields[6]):
            raise ValueError(f"{expression!r}: invalid year field {fields[6]!r} (e.g. *, 2026, 2026-2030)")
        fields = fields[:6]
    if len(fields) != 6:
        raise ValueError(
            f"{expression!r}: expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), "
            f"got {len(fields)}"
        )
    fields[5] = _shift_dow(fields[5])
    return " ".join(fields)


def validate_cron(expression: str) -> str | None:
    """None when valid, else what is wrong."""
    try:
        translated = to_croniter(expression)
        croniter(translated, datetime.now(timezone.utc), second_at_beginning=True).get_next(datetime)
    except (ValueError, KeyError, TypeError) as exc:
        return f"invalid cron expression {expression!r}: {exc}"
    except Exception as exc:  # noqa: BLE001 - croniter's own error types
        return f"invalid cron expression {expression!r}: {exc}"
    return None


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time from a document as an aware datetime (naive means UTC); None if unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def due_fire_time(expression: str, *, last_scheduled_at: object, now: datetime,
                  created_grace: timedelta = timedelta(seconds=60)) -> datetime | None:
    """The fire time to take now, or None.

    The latest fire time ``<= now`` is due when it is after ``last_scheduled_at``. A
    schedule never taken before fires only if its latest fire time is recent
    (``created_grace``), so enabling an hourly schedule does not start a sync at once.
    """
    now = now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)  # cron is UTC
    translated = to_croniter(expression)
    # A fire time exactly at ``now`` counts: ask from just after it.
    latest = croniter(translated, now + timedelta(microseconds=1), second_at_beginning=True).get_prev(datetime)
    latest = latest if latest.tzinfo else latest.replace(tzinfo=timezone.utc)
    if latest > now:
        latest = croniter(translated, now, second_at_beginning=True).get_prev(datetime)
        latest = latest if latest.tzinfo else latest.replace(tzinfo=timezone.utc)
    if not _year_matches(_year_field(expression), latest.year):
        return None
    previous = parse_time(last_scheduled_at)
    if previous is None:
        return latest if now - latest <= created_grace else None
    return latest if latest > previous else None


def next_fire_time(expression: str, now: datetime) -> datetime:
    """The first fire time after ``now`` (in the expression's years), in UTC."""
    now = now.astimezone(timezone.utc) if now.tzinfo else now.replace(tzinfo=timezone.utc)
    fire = croniter(to_croniter(expression), now, second_at_beginning=True).get_next(datetime)
    fire = fire if fire.tzinfo else fire.replace(tzinfo=timezone.utc)
    for _ in range(1000):
        if _year_matches(_year_field(expression), fire.year):
            break
        fire = croniter(to_croniter(expression), fire, second_at_beginning=True).get_next(datetime)
    return fire
