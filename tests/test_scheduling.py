"""Quartz cron translation and due fire times, with an injected ``now`` (no servers)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from launcher.scheduling import due_fire_time, next_fire_time, to_croniter, validate_cron

UTC = timezone.utc
NOON = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize("quartz, expected", [
    ("0 0 * * * ?", "0 0 * * * ?"),
    ("0 0 12 ? * 1", "0 0 12 ? * 0"),            # Quartz SUN=1 -> croniter SUN=0
    ("0 0 12 ? * 7", "0 0 12 ? * 6"),            # SAT
    ("0 0 12 ? * 2-6", "0 0 12 ? * 1-5"),        # MON-FRI
    ("0 0 12 ? * 2,4,6", "0 0 12 ? * 1,3,5"),
    ("0 0 12 ? * */2", "0 0 12 ? * */2"),        # a step is not a day
    ("0 0 12 ? * 2/2", "0 0 12 ? * 1/2"),
    ("0 0 12 ? * 6#3", "0 0 12 ? * 5#3"),        # third Friday: n stays
    ("0 0 12 ? * MON-FRI", "0 0 12 ? * MON-FRI"),
    ("0 0 12 * * ? *", "0 0 12 * * ?"),          # year field
])
def test_to_croniter_when_quartz_then_translated(quartz, expected):
    assert to_croniter(quartz) == expected


@pytest.mark.parametrize("bad", ["not a cron", "* * * * *", "0 0 25 * * ?", "0 61 * * * ?", "0 0 12 * * ? abc", 5, None,
                                 ""])
def test_validate_cron_when_invalid_then_says_why(bad):
    problem = validate_cron(bad)
    assert problem and "invalid cron expression" in problem


@pytest.mark.parametrize("good", ["0 0 * * * ?", "0 0 0 * * ?", "*/5 * * * * ?", "0 30 9 ? * 2-6", "0 0 12 * * ? 2026",
                                  "0 0 0 L * ?", "0 0 0 ? * 6#3"])
def test_validate_cron_when_valid_then_none(good):
    assert validate_cron(good) is None


def test_due_fire_time_when_fire_time_is_now_then_due():
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at="2025-12-31T12:00:00+00:00", now=NOON) == NOON


def test_due_fire_time_when_already_taken_then_none():
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at=NOON.isoformat(), now=NOON + timedelta(minutes=5)) is None


def test_due_fire_time_when_fire_time_fell_between_two_polls_then_still_due():
    # Polled at 11:59:58 (nothing due) and next at 12:00:03: the 12:00:00 fire time is taken.
    last = "2025-12-31T12:00:00+00:00"
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at=last, now=NOON - timedelta(seconds=2)) is None
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at=last, now=NOON + timedelta(seconds=3)) == NOON


def test_due_fire_time_when_many_missed_then_only_the_latest():
    # The service was down for three hours: one job, for the latest fire time.
    fire = due_fire_time("0 0 * * * ?", last_scheduled_at="2026-01-01T09:00:00Z", now=NOON + timedelta(minutes=30))
    assert fire == NOON


def test_due_fire_time_when_never_scheduled_then_only_a_recent_fire_time():
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at=None, now=NOON + timedelta(seconds=20)) == NOON
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at=None, now=NOON + timedelta(hours=2)) is None
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at=None, now=NOON + timedelta(hours=2),
                         created_grace=timedelta(hours=3)) == NOON


def test_due_fire_time_when_kibana_date_formats_then_parsed():
    for stamp in ("2026-01-01T11:00:00.000Z", "2026-01-01T11:00:00Z", "2026-01-01T11:00:00+00:00",
                  "2026-01-01T11:00:00"):
        assert due_fire_time("0 0 * * * ?", last_scheduled_at=stamp, now=NOON) == NOON


def test_due_fire_time_when_evaluated_then_in_utc():
    # 12:00 UTC is 13:00 in Paris: a "0 0 12 * * ?" schedule fires at 12:00 UTC whatever ``now``'s zone.
    paris = timezone(timedelta(hours=1))
    now = datetime(2026, 1, 1, 13, 0, 1, tzinfo=paris)
    assert due_fire_time("0 0 12 * * ?", last_scheduled_at="2025-12-31T12:00:00Z", now=now) == NOON


def test_due_fire_time_when_day_of_week_then_quartz_numbering():
    # 2026-01-01 is a Thursday: Quartz 5. Quartz 4 (Wednesday) last fired on Dec 31.
    assert due_fire_time("0 0 12 ? * 5", last_scheduled_at="2025-12-01T00:00:00Z", now=NOON) == NOON
    assert due_fire_time("0 0 12 ? * 4", last_scheduled_at="2025-12-01T00:00:00Z",
                         now=NOON) == NOON - timedelta(days=1)


def test_due_fire_time_when_year_field_excludes_now_then_none():
    assert due_fire_time("0 0 12 * * ? 2027", last_scheduled_at=None, now=NOON) is None
    assert due_fire_time("0 0 12 * * ? 2025-2026", last_scheduled_at=None, now=NOON) == NOON


def test_next_fire_time_when_every_five_seconds_then_next_multiple():
    assert next_fire_time("*/5 * * * * ?", NOON + timedelta(seconds=1)) == NOON + timedelta(seconds=5)
    assert next_fire_time("0 0 12 * * ? 2027", NOON) == datetime(2027, 1, 1, 12, tzinfo=UTC)
