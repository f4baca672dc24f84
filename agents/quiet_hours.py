"""Quiet hours (pure): whether an instant is inside a user's window, and when that window ends.

A window is wall-clock `start`..`end` in an IANA zone, `HH:MM` or `HH:MM:SS`; `end` before `start`
crosses midnight; `start == end` is no window. An instant is quiet when its local wall time (in the
zone, with that instant's UTC offset) is inside the window. So across DST a window keeps its wall
times: a window ending at 02:30 on the night clocks jump 02:00 -> 03:00 ends at the jump, and one
whose end is repeated when clocks fall back ends at the first 02:30 (quiet again at the second 02:00
only if the window says so, as a minute-by-minute scan would find).

`quiet_end` finds the first instant after `now` that is not quiet without scanning: quietness can
only change where the wall clock passes `start` or `end` (either fold of that wall time) or where
the zone's offset changes, so it tries those instants in order.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["QuietHours", "QuietHoursError", "parse_quiet_hours", "quiet_end", "is_quiet"]

DAY_S = 86_400
HOUR_S = 3_600
LOOKAHEAD_S = 2 * DAY_S + HOUR_S  # a window is at most a day long, and starts at most a day ago


class QuietHoursError(ValueError):
    """A quiet-hours setting that is not `{start, end, tz}` with wall times and an IANA zone."""


@dataclass(frozen=True)
class QuietHours:
    start_s: int  # seconds after local midnight
    end_s: int
    tz: str

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _seconds_of(text: object) -> int:
    if not isinstance(text, str):
        raise QuietHoursError("start and end are wall times, HH:MM or HH:MM:SS")
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        h, m, s = (int(p) for p in (*parts, "0")[:3])
    except ValueError:
        raise QuietHoursError(f"{text!r} is not HH:MM or HH:MM:SS") from None
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 60):
        raise QuietHoursError(f"{text!r} is not a time of day")
    return h * 3600 + m * 60 + s


def parse_quiet_hours(value: object) -> QuietHours | None:
    """`{start, end, tz}` (or None / {} for none) as QuietHours; QuietHoursError when malformed."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise QuietHoursError("quiet_hours is {start, end, tz}")
    tz = value.get("tz")
    if not isinstance(tz, str):
        raise QuietHoursError("quiet_hours.tz is an IANA zone name, e.g. Europe/Helsinki")
    try:
        _zone(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise QuietHoursError(f"unknown time zone {tz!r}") from None
    start, end = _seconds_of(value.get("start")), _seconds_of(value.get("end"))
    return None if start == end else QuietHours(start, end, tz)


def _wall_s(q: QuietHours, t: int) -> int:
    local = dt.datetime.fromtimestamp(t, q.zone)
    return local.hour * 3600 + local.minute * 60 + local.second


def is_quiet(q: QuietHours, t_s: int) -> bool:
    """Whether the instant `t_s` (epoch seconds) is inside the window."""
    w = _wall_s(q, t_s)
    if q.start_s < q.end_s:
        return q.start_s <= w < q.end_s
    return w >= q.start_s or w < q.end_s


def _wall_instants(q: QuietHours, wall_s: int, days: list[dt.date]) -> set[int]:
    """Every instant whose local wall time is `wall_s` on `days`, both folds (a gap's give the jump's sides)."""
    h, rest = divmod(wall_s, 3600)
    m, s = divmod(rest, 60)
    out: set[int] = set()
    for day in days:
        for fold in (0, 1):
            local = dt.datetime(day.year, day.month, day.day, h, m, s, tzinfo=q.zone, fold=fold)
            out.add(int(local.timestamp()))
    return out


def _offset_changes(q: QuietHours, t: int, until: int) -> set[int]:
    """The instants in (t, until] where the zone's UTC offset changes (to the second, by bisection)."""
    out: set[int] = set()

    def offset(x: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(x, q.zone).utcoffset()

    lo, lo_off = t, offset(t)
    while lo < until:
        hi = min(until, lo + HOUR_S)
        hi_off = offset(hi)
        if hi_off != lo_off:
            a, b = lo, hi
            while b - a > 1:
                mid = (a + b) // 2
                if offset(mid) == lo_off:
                    a = mid
                else:
                    b = mid
            out.add(b)
        lo, lo_off = hi, hi_off
    return out


def quiet_end(q: QuietHours | None, now_ms: int) -> int | None:
    """When the quiet window holding `now_ms` ends (epoch ms: the first instant not quiet), or None when
    `now_ms` is not quiet."""
    if q is None:
        return None
    t = now_ms // 1000
    if not is_quiet(q, t):
        return None
    today = dt.datetime.fromtimestamp(t, q.zone).date()
    days = [today + dt.timedelta(days=d) for d in (-1, 0, 1, 2)]
    until = t + LOOKAHEAD_S
    candidates = _wall_instants(q, q.end_s, days) | _wall_instants(q, q.start_s, days) | _offset_changes(q, t, until)
    for c in sorted(c for c in candidates if t < c <= until):
        if not is_quiet(q, c):
            return c * 1000
    raise AssertionError("a quiet window longer than two days")  # the wall times make it at most one
