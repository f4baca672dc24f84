"""agents.quiet_hours: the window end equals a minute-by-minute scan, across DST and midnight."""
from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest

from agents.quiet_hours import QuietHoursError, is_quiet, parse_quiet_hours, quiet_end

ZONES = ("Europe/Helsinki", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC", "America/Sao_Paulo")
# Nights around DST changes (both directions, northern and southern) and an ordinary one.
DAYS = (
    ("Europe/Helsinki", dt.date(2026, 3, 29)), ("Europe/Helsinki", dt.date(2026, 10, 25)),
    ("America/New_York", dt.date(2026, 3, 8)), ("America/New_York", dt.date(2026, 11, 1)),
    ("Australia/Lord_Howe", dt.date(2026, 4, 5)), ("Australia/Lord_Howe", dt.date(2026, 10, 4)),
    ("Asia/Kolkata", dt.date(2026, 6, 1)),
)
WINDOWS = (("22:00", "07:00"), ("01:30", "03:30"), ("02:30", "02:45"), ("23:59", "00:01"), ("00:00", "23:00"),
           ("09:00", "17:00"), ("03:00", "02:00"))


def scan_end(q_value: dict[str, str], now_s: int) -> int | None:
    """The first whole minute after now that is not quiet, by looking at every minute."""
    q = parse_quiet_hours(q_value)
    assert q is not None
    if not is_quiet(q, now_s):
        return None
    t = now_s + 60
    while is_quiet(q, t):
        t += 60
    return t * 1000


def minutes_around(zone: str, day: dt.date) -> list[int]:
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(zone)).timestamp()) - 6 * 3600
    return list(range(start, start + 36 * 3600, 60 * 7))  # every 7th minute over 36 hours


@pytest.mark.parametrize("zone,day", DAYS)
@pytest.mark.parametrize("start,end", WINDOWS)
def test_window_end_equals_a_minute_by_minute_scan(zone: str, day: dt.date, start: str, end: str) -> None:
    value = {"start": start, "end": end, "tz": zone}
    q = parse_quiet_hours(value)
    for now_s in minutes_around(zone, day):
        assert quiet_end(q, now_s * 1000) == scan_end(value, now_s), (zone, day, start, end, now_s)


def test_random_windows_and_instants_equal_the_scan() -> None:
    rng = random.Random(7)
    for _ in range(300):
        zone = rng.choice(ZONES)
        value = {"start": f"{rng.randrange(24):02d}:{rng.randrange(0, 60, 15):02d}",
                 "end": f"{rng.randrange(24):02d}:{rng.randrange(0, 60, 15):02d}", "tz": zone}
        q = parse_quiet_hours(value)
        if q is None:
            continue
        now_s = 1_767_225_600 + rng.randrange(365 * 24 * 60) * 60  # a minute of 2026
        assert quiet_end(q, now_s * 1000) == scan_end(value, now_s), (value, now_s)


def test_spring_forward_gap_ends_the_window_at_the_jump() -> None:
    # Helsinki, 2026-03-29: 03:00 EET becomes 04:00 EEST (01:00 UTC); a window to 03:30 ends then.
    q = parse_quiet_hours({"start": "01:00", "end": "03:30", "tz": "Europe/Helsinki"})
    now = int(dt.datetime(2026, 3, 29, 2, 0, tzinfo=ZoneInfo("Europe/Helsinki")).timestamp())
    assert quiet_end(q, now * 1000) == int(dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.timezone.utc).timestamp()) * 1000


def test_a_window_crossing_midnight_ends_the_next_morning_local_time() -> None:
    q = parse_quiet_hours({"start": "22:00", "end": "07:00", "tz": "America/New_York"})
    now = int(dt.datetime(2026, 7, 1, 23, 15, tzinfo=ZoneInfo("America/New_York")).timestamp())
    end = dt.datetime.fromtimestamp(quiet_end(q, now * 1000) // 1000, ZoneInfo("America/New_York"))  # type: ignore[operator]
    assert (end.date(), end.hour, end.minute) == (dt.date(2026, 7, 2), 7, 0)


def test_outside_the_window_is_not_quiet_and_seconds_are_kept() -> None:
    q = parse_quiet_hours({"start": "10:00:00", "end": "10:00:05", "tz": "UTC"})
    at = int(dt.datetime(2026, 1, 1, 10, 0, 2, tzinfo=dt.timezone.utc).timestamp())
    assert quiet_end(q, at * 1000) == (at + 3) * 1000
    assert quiet_end(q, (at + 10) * 1000) is None


@pytest.mark.parametrize("bad", [{"start": "25:00", "end": "07:00", "tz": "UTC"},
                                 {"start": "22:00", "end": "07:00", "tz": "Mars/Olympus"},
                                 {"start": "22", "end": "07:00", "tz": "UTC"}, "22-07"])
def test_malformed_windows_are_refused(bad: object) -> None:
    with pytest.raises(QuietHoursError):
        parse_quiet_hours(bad)
