"""When triggers fire: the slots of a cadence as UTC instants, with explicit DST rules.

A cron expression is matched against naive wall-clock times in the trigger's IANA zone (the
matcher below follows Vixie cron: when day-of-month and day-of-week are both restricted a day
matching either runs; a day field is unrestricted when it starts with `*`, so `*` and `*/n` are
and `1,*/10` is not), and each matching wall time
is mapped to UTC here. croniter only validates: on aware times it runs fixed-time jobs twice in a
fold and mishandles Lord Howe's 30-minute shift (pallets-eco/croniter#258).

DST rules. An expression has a *wildcard hour* when an item of its hour field is `*` or `*/n`
(`0 * * * *`, `*/15 * * * *`, `0 */2 * * *`); any other hour field (`9`, `1-5`, `8,17`, `3-23/6`)
makes its slots *fixed-time*, whatever the minute field (so `*/15 1 * * *` is fixed-time, where
Vixie cron would treat its `*` minute as wildcard). Each local wall time w (a whole minute) that
the expression matches gives:
- if w occurs once: one slot, at that instant;
- if w occurs twice (a fall-back repeats it): with a wildcard hour, a slot at both instants;
  fixed-time, a slot at the first only (DST_VIXIE, DST_SKIP_MISSING) or at both (DST_REPEAT_TWICE);
- if w never occurs (a spring-forward gap skips it): with a wildcard hour, no slot; fixed-time, a
  slot at the instant the gap ends (DST_VIXIE, DST_REPEAT_TWICE) or none (DST_SKIP_MISSING).
The slots are the set of these instants (all skipped times of one gap make one slot, at its end).
So wildcard-hour schedules follow real elapsed time under every policy, as in Vixie cron, which
gives fixed-time jobs alone the special handling. Los Angeles, 2027: `0 * * * *` fires at 08:00Z
and 09:00Z on 11-07 (01:00 PDT, 01:00 PST) and at 09:00Z then 10:00Z on 03-14 (01:00 PST, 03:00
PDT); `30 1 * * *` fires once on 11-07, at 08:30Z; `30 2 * * *` fires on 03-14 at 10:00Z, the
gap's end (DST_SKIP_MISSING: not at all that day).

Interval slots are anchor_at (default: the Unix epoch) plus whole intervals. next_slot_after and
latest_slot_at_or_before enumerate the same slots, so beat fires, `next_run_at` and previews agree.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from croniter.croniter import CroniterError

from .exceptions import InvalidCron, ScheduleError

CRON = "cron"
ONCE = "once"
INTERVAL = "interval"

# DST policies for cron triggers (see module docstring).
DST_VIXIE = "vixie"
DST_SKIP_MISSING = "skip_missing"
DST_REPEAT_TWICE = "repeat_twice"
# (slot only at a repeated time's first occurrence, slot at the end of a gap) for fixed-time slots.
_FIXED_TIME_RULES = {
    DST_VIXIE: (True, True),
    DST_SKIP_MISSING: (True, False),
    DST_REPEAT_TWICE: (False, True),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    name: i
    for i, name in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_DAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (name, lowest, highest, names)
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>[0-9]+))?$")
# How far ahead a cron expression must fire at least once (catches "0 0 30 2 *").
_HORIZON_YEARS = 8
# How far the slot search looks; a cron expression that fires less often than this never fires.
_SEARCH = timedelta(days=366 * 30)
# Longer than the most wall-clock time one offset change repeats (7 h, Antarctica/Vostok in 1994;
# moving across the date line can repeat a whole day); bounds how far back a fold can matter.
_MAX_FOLD = timedelta(hours=25)
# Zone offsets are sampled this often to find their changes, then bisected to the second. Two
# changes that cancel out within one sample would be missed: since 1970 tzdata has no two changes
# less than three days apart.
_PROBE = timedelta(hours=6)
_TICK = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
# Searches stay inside datetime's range (with a day to spare for the offset and the zone).
_EARLIEST = datetime(2, 1, 3, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_LATEST = datetime(9998, 12, 29, tzinfo=UTC)


@dataclass(frozen=True)
class Cadence:
    """The "when" of a trigger, independent of the database."""

    kind: str
    cron: str = ""
    timezone: str = "UTC"
    run_at: datetime | None = None
    interval_seconds: int | None = None
    dst_policy: str = DST_VIXIE
    anchor_at: datetime | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.timezone)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or ScheduleError naming the field."""
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"{name!r} is not an IANA time zone name (for example 'America/Los_Angeles' or 'UTC').",
            field="timezone",
        ) from None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    if name not in _known_zones():
        raise ZoneInfoNotFoundError(name)
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _parse_value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    if text.isdigit():
        value = int(text)
    elif text in names:
        value = names[text]
    else:
        allowed = f"{low}-{high}" + (" or names like " + ", ".join(list(names)[:3]).upper() if names else "")
        raise InvalidCron(f"{field}: {text!r} is not allowed; use {allowed}.")
    if not low <= value <= high:
        raise InvalidCron(f"{field} must be {low}-{high}, not {value}.")
    return value


def _normalize_field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> str:
    items = []
    for item in text.lower().split(","):
        match = _ITEM.match(item)
        if not match:
            raise InvalidCron(f"{field}: {item!r} is not a value, range (a-b), step (*/n, a-b/n) or list (a,b).")
        step = int(match["step"]) if match["step"] else None
        if step is not None and not 1 <= step <= high - low + 1:
            raise InvalidCron(f"{field}: step must be 1-{high - low + 1}, not {step}.")
        part = match["range"]
        if part == "*":
            items.append("*" if step is None else f"*/{step}")
            continue
        start_text, _, end_text = part.partition("-")
        start = _parse_value(start_text, field, low, high, names)
        if end_text:
            end = _parse_value(end_text, field, low, high, names)
            if names is _DAYS and end_text == "sun":
                end = 7  # "fri-sun": Sunday ends the week here (stored as 0 below)
        elif step is not None:
            end = high  # "a/n" means from a to the end, every n
        else:
            end = start
        if start > end:
            raise InvalidCron(f"{field}: range {start}-{end} runs backwards; write the lower value first.")
        if start == end:
            # croniter reads "20-20/1" as "every value"; a one-value range is just the value.
            items.append(str(start))
        else:
            items.append(f"{start}-{end}" + (f"/{step}" if step else ""))
    return ",".join(items)


def _sunday_as_zero(field: str) -> str:
    """Sunday may be written 7 (alone, ending a range, or as the end of "a/n"); store it as 0.

    Every consumer then reads the field the same; celery's crontab, which django-celery-beat
    builds for each entry, rejects 7 ("Invalid end range: 7 > 6") and beat would drop the task.
    """
    items: list[str] = []
    for item in field.split(","):
        part, _, step = item.partition("/")
        start, _, end = part.partition("-")
        if part == "*" or (end or start) != "7":
            items.append(item)
            continue
        items.extend(str(day % 7) for day in range(int(start), 8, int(step or 1)))
    return ",".join(dict.fromkeys(items))


@lru_cache(maxsize=8192)
def normalize_cron(expression: str) -> str:
    """Validate a 5-field cron expression (or @macro) and return it in numeric form.

    Raises InvalidCron with a message naming the field and what is allowed.
    """
    text = " ".join((expression or "").split())
    if not text:
        raise InvalidCron("a cron expression is required, for example '0 9 * * MON-FRI'.")
    text = MACROS.get(text.lower(), text)
    if text.startswith("@"):
        raise InvalidCron(f"{text!r}: known shortcuts are {', '.join(sorted(MACROS))}.")
    parts = text.split(" ")
    if len(parts) != 5:
        raise InvalidCron(
            f"{expression!r}: needs 5 fields (minute hour day-of-month month day-of-week), not {len(parts)}."
        )
    fields = [_normalize_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    fields[4] = _sunday_as_zero(fields[4])
    normalized = " ".join(fields)
    try:
        croniter(normalized, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError as exc:
        raise InvalidCron(f"{expression!r} never fires (e.g. February 30th).") from exc
    return normalized


def describe(cadence: Cadence) -> str:
    """The schedule in words, e.g. 'At 09:00, Monday through Friday (America/Los_Angeles)'."""
    if cadence.kind == CRON:
        return f"{_cron_words(cadence.cron)} ({cadence.timezone})"
    if cadence.kind == INTERVAL and cadence.interval_seconds:
        return f"Every {_duration(cadence.interval_seconds)}"
    if cadence.kind == ONCE and cadence.run_at:
        local = cadence.run_at.astimezone(cadence.zone)
        return f"Once at {local:%Y-%m-%d %H:%M} ({cadence.timezone})"
    return "Not scheduled"


@lru_cache(maxsize=4096)
def _cron_words(expression: str) -> str:
    """cron-descriptor's words for an expression, remembered: it re-reads its translation catalogue
    on every call (about 0.3 ms, most of the cost of a trigger in a list)."""
    from cron_descriptor import Options, get_description

    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    return get_description(expression, options)


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


# --- Presets: schedules picked without writing cron ---------------------------------------------

PRESETS = ("hourly", "daily", "weekdays", "weekly", "monthly")
_PRESET_PARAMS = {
    "hourly": ("minute",),
    "daily": ("time",),
    "weekdays": ("time",),
    "weekly": ("day", "time"),
    "monthly": ("day", "time"),
}
_WEEKDAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_PRESET_TIME = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_ALLOWED_MINUTE = "a minute past the hour, 0-59"
_ALLOWED_TIME = "a time of day 'HH:MM', 00:00-23:59"
_ALLOWED_WEEKDAY = "0-6 (0 = Sunday) or MON, TUE, WED, THU, FRI, SAT, SUN"
_ALLOWED_MONTH_DAY = "a day of the month, 1-31"


def preset_cron(preset: str, **params: object) -> str:
    """The cron expression (numeric form) for a preset, e.g. ``preset_cron("weekly", day="MON", time="09:30")``.

    hourly: minute (0-59); daily and weekdays (Monday to Friday): time ("HH:MM"); weekly: day (0-6,
    0 = Sunday, or MON..SUN) and time; monthly: day (1-31; months without that day are skipped, as in
    cron) and time. Raises ScheduleError whose ``field`` names the wrong parameter.
    """
    names = _PRESET_PARAMS.get(preset)
    if names is None:
        raise ScheduleError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}.", field="preset")
    takes = " and ".join(names)
    for name in params:
        if name not in names:
            raise ScheduleError(f"the {preset} preset takes {takes}, not {name}.", field=name)
    for name in names:
        if params.get(name) is None:
            raise ScheduleError(f"the {preset} preset needs {takes}; {name} is missing.", field=name)
    if preset == "hourly":
        minute = _preset_number(params["minute"], "minute", 0, 59, _ALLOWED_MINUTE)
        return normalize_cron(f"{minute} * * * *")
    hour, minute = _preset_time(params["time"])
    if preset == "daily":
        return normalize_cron(f"{minute} {hour} * * *")
    if preset == "weekdays":
        return normalize_cron(f"{minute} {hour} * * 1-5")
    if preset == "weekly":
        return normalize_cron(f"{minute} {hour} * * {_preset_weekday(params['day'])}")
    day = _preset_number(params["day"], "day", 1, 31, _ALLOWED_MONTH_DAY)
    return normalize_cron(f"{minute} {hour} {day} * *")


def _preset_number(value: object, field: str, low: int, high: int, allowed: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScheduleError(f"{field} must be {allowed}, not {value!r}.", field=field)
    return value


def _preset_time(value: object) -> tuple[int, int]:
    if isinstance(value, time) and value.second == 0 and value.microsecond == 0:
        return value.hour, value.minute
    match = _PRESET_TIME.match(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ScheduleError(f"time must be {_ALLOWED_TIME}, not {value!r}.", field="time")
    return int(match[1]), int(match[2])


def _preset_weekday(value: object) -> int:
    if isinstance(value, str) and not value.strip().isdigit():
        name = value.strip().lower()
        for number, day in enumerate(_WEEKDAY_NAMES):
            if name in (day, day[:3]):
                return number
        raise ScheduleError(f"day must be {_ALLOWED_WEEKDAY}, not {value!r}.", field="day")
    return _preset_number(value, "day", 0, 6, _ALLOWED_WEEKDAY)


# --- Cron slots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CronSpec:
    """A cron expression as sets of values, matched against naive wall-clock times.

    The searches build datetimes with the constructor: ``datetime.replace`` is several times slower.
    """

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]  # 0 = Sunday
    either_day: bool  # day-of-month and day-of-week both restricted: a day matching either runs
    wildcard_hour: bool
    _month_days: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    def days_in(self, year: int, month: int) -> tuple[int, ...]:
        """The days of that month the expression runs on."""
        key = (year, month)
        found = self._month_days.get(key)
        if found is None:
            if len(self._month_days) > 1024:
                self._month_days.clear()
            first_weekday = date(year, month, 1).isoweekday() % 7
            found = tuple(
                day
                for day in range(1, monthrange(year, month)[1] + 1)
                if self._day_matches(day, (first_weekday + day - 1) % 7)
            )
            self._month_days[key] = found
        return found

    def _day_matches(self, day: int, weekday: int) -> bool:
        in_days, in_weekdays = day in self.days, weekday in self.weekdays
        return (in_days or in_weekdays) if self.either_day else (in_days and in_weekdays)

    def first_at_or_after(self, low: datetime, high: datetime) -> datetime | None:
        """The earliest matching wall time in [low, high]."""
        wall = low
        if low.second or low.microsecond:
            wall = datetime(low.year, low.month, low.day, low.hour, low.minute) + _MINUTE
        months, hours, minutes = self.months, self.hours, self.minutes
        while wall <= high:
            year, month, day = wall.year, wall.month, wall.day
            index = bisect_left(months, month)
            if index == len(months):
                wall = datetime(year + 1, months[0], 1)
                continue
            if months[index] != month:
                wall = datetime(year, months[index], 1)
                continue
            days = self.days_in(year, month)
            index = bisect_left(days, day)
            if index == len(days):
                wall = datetime(year + 1, 1, 1) if month == 12 else datetime(year, month + 1, 1)
                continue
            if days[index] != day:
                day = days[index]
                wall = datetime(year, month, day)
            index = bisect_left(hours, wall.hour)
            if index == len(hours):
                wall = datetime(year, month, day) + _DAY
                continue
            hour = hours[index]
            index = bisect_left(minutes, wall.minute if hour == wall.hour else 0)
            if index == len(minutes):
                wall = datetime(year, month, day, hour) + _HOUR
                continue
            wall = datetime(year, month, day, hour, minutes[index])
            return wall if wall <= high else None
        return None

    def last_at_or_before(self, high: datetime, low: datetime) -> datetime | None:
        """The latest matching wall time in [low, high]."""
        wall = high
        if high.second or high.microsecond:
            wall = datetime(high.year, high.month, high.day, high.hour, high.minute)
        months, hours, minutes = self.months, self.hours, self.minutes
        while wall >= low:
            year, month, day = wall.year, wall.month, wall.day
            index = bisect_right(months, month) - 1
            if index < 0:
                wall = datetime(year, 1, 1) - _MINUTE
                continue
            if months[index] != month:
                following = months[index] + 1
                wall = (datetime(year + 1, 1, 1) if following == 13 else datetime(year, following, 1)) - _MINUTE
                continue
            days = self.days_in(year, month)
            index = bisect_right(days, day) - 1
            if index < 0:
                wall = datetime(year, month, 1) - _MINUTE
                continue
            if days[index] != day:
                day = days[index]
                wall = datetime(year, month, day, 23, 59)
            index = bisect_right(hours, wall.hour) - 1
            if index < 0:
                wall = datetime(year, month, day) - _MINUTE
                continue
            hour = hours[index]
            index = bisect_right(minutes, wall.minute if hour == wall.hour else 59) - 1
            if index < 0:
                wall = datetime(year, month, day, hour) - _MINUTE
                continue
            wall = datetime(year, month, day, hour, minutes[index])
            return wall if wall >= low else None
        return None


def _is_wildcard(field: str) -> bool:
    return any(item.partition("/")[0] == "*" for item in field.split(","))


def _values(field: str, low: int, high: int) -> list[int]:
    values: set[int] = set()
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            start, end = low, high
        else:
            start_text, _, end_text = base.partition("-")
            start = int(start_text)
            end = int(end_text) if end_text else (high if step else start)
        values.update(range(start, end + 1, int(step or 1)))
    return sorted(values)


@lru_cache(maxsize=4096)
def _compile(expression: str) -> _CronSpec:
    minute, hour, day, month, weekday = normalize_cron(expression).split(" ")
    return _CronSpec(
        minutes=tuple(_values(minute, 0, 59)),
        hours=tuple(_values(hour, 0, 23)),
        days=frozenset(_values(day, 1, 31)),
        months=tuple(_values(month, 1, 12)),
        weekdays=frozenset(value % 7 for value in _values(weekday, 0, 7)),
        # Vixie cron's rule: a day field is unrestricted when it starts with "*" (DOM_STAR, DOW_STAR),
        # so "*/10" is unrestricted and "1,*/10" is restricted. croniter differs on "*/10" (restricted).
        either_day=not day.startswith("*") and not weekday.startswith("*"),
        wildcard_hour=_is_wildcard(hour),
    )


def has_wildcard_hour(expression: str) -> bool:
    """Whether the expression's hour field is `*` or `*/n`: its slots follow real elapsed time
    through DST changes; otherwise they are fixed times that the DST policy applies to."""
    return _compile(expression).wildcard_hour


@lru_cache(maxsize=4096)
def _cron_plan(expression: str, tz_name: str, policy: str) -> tuple[_CronSpec, ZoneInfo, bool, bool]:
    """The compiled expression, its zone, and its DST rules: (a repeated wall time has a slot only
    at its first occurrence, a skipped one has a slot at the gap's end)."""
    if policy not in _FIXED_TIME_RULES:
        raise ScheduleError(
            f"dst_policy must be one of {', '.join(_FIXED_TIME_RULES)}, not {policy!r}.", field="dst_policy"
        )
    spec = _compile(expression)
    # A wildcard hour follows real elapsed time: every instant whose wall time matches, nothing else.
    first_only, gap_end_runs = (False, False) if spec.wildcard_hour else _FIXED_TIME_RULES[policy]
    return spec, zone(tz_name), first_only, gap_end_runs


class _Change(NamedTuple):
    """A change of a zone's UTC offset: ``at`` is the first instant with the new offset."""

    at: datetime
    before: timedelta
    after: timedelta


@lru_cache(maxsize=4096)
def _year_changes(tz_name: str, year: int) -> tuple[tuple[datetime, ...], tuple[_Change, ...]]:
    """The offset changes of a zone within a UTC year, oldest first (and their instants, for bisect)."""
    tz = _zone(tz_name)
    low = datetime(year, 1, 1, tzinfo=UTC) - _SECOND
    end = datetime(year + 1, 1, 1, tzinfo=UTC) - _SECOND
    low_offset = low.astimezone(tz).utcoffset()
    changes: list[_Change] = []
    while low < end:
        high = min(low + _PROBE, end)
        high_offset = high.astimezone(tz).utcoffset()
        if high_offset != low_offset:
            old, new = low, high  # offsets change on whole seconds: bisect to one
            while new - old > _SECOND:
                middle = old + timedelta(seconds=int((new - old).total_seconds()) // 2)
                if middle.astimezone(tz).utcoffset() == low_offset:
                    old = middle
                else:
                    new = middle
            assert low_offset is not None and high_offset is not None
            changes.append(_Change(new, low_offset, high_offset))
        low, low_offset = high, high_offset
    return tuple(change.at for change in changes), tuple(changes)


def _first_change(tz_name: str, after: datetime, until: datetime) -> _Change | None:
    """The zone's first offset change in (after, until]; both in UTC."""
    for year in range(after.year, until.year + 1):
        instants, changes = _year_changes(tz_name, year)
        index = bisect_right(instants, after)
        if index < len(instants):
            return changes[index] if instants[index] <= until else None
    return None


def _last_change(tz_name: str, since: datetime, at: datetime) -> _Change | None:
    """The zone's last offset change in (since, at]; both in UTC."""
    for year in range(at.year, since.year - 1, -1):
        instants, changes = _year_changes(tz_name, year)
        index = bisect_right(instants, at) - 1
        if index >= 0:
            return changes[index] if instants[index] > since else None
    return None


def _wall(at: datetime, offset: timedelta) -> datetime:
    """The naive wall-clock time a UTC instant shows at ``offset``."""
    return _NAIVE_EPOCH + (at - _EPOCH) + offset


def _instant(wall: datetime, offset: timedelta) -> datetime:
    """The UTC instant at which the wall clock, at ``offset``, shows ``wall``."""
    return _EPOCH + (wall - offset - _NAIVE_EPOCH)


def _gap_has_match(spec: _CronSpec, change: _Change) -> bool:
    """Whether a forward change skips a wall time the expression matches."""
    if change.after <= change.before:
        return False
    first_skipped = _wall(change.at, change.before)
    return spec.first_at_or_after(first_skipped, _wall(change.at, change.after) - _TICK) is not None


# The UTC line is cut at each offset change into stretches of one offset, in which wall time and
# UTC move together. Both searches below walk those stretches (outward from the given instant),
# looking in each for its first (last) matching wall time, and at each change for a gap's slot.


def _next_cron(cadence: Cadence, after: datetime) -> datetime | None:
    name = cadence.timezone
    spec, tz, first_only, gap_end_runs = _cron_plan(cadence.cron, name, cadence.dst_policy)
    if after.tzinfo is not UTC:
        after = after.astimezone(UTC)
    limit = _LATEST if after >= _LATEST - _SEARCH else after + _SEARCH
    if after >= limit:
        return None
    offset = after.astimezone(tz).utcoffset() or timedelta(0)
    cursor = after
    low = _wall(after, offset) + _TICK  # strictly after `after` (wall times are whole minutes)
    if first_only:
        change = _last_change(name, after - _MAX_FOLD, after)
        if change is not None and change.before > change.after:
            # Inside (or just past) a fold's second pass: those wall times had their slot already.
            low = max(low, _wall(change.at, change.before))
    while True:
        wall = spec.first_at_or_after(low, _wall(limit, offset))
        slot = None if wall is None else _instant(wall, offset)
        change = _first_change(name, cursor, slot or limit)
        if change is None:
            return slot
        # The offset changes before that wall time comes round: go on from the change.
        if gap_end_runs and _gap_has_match(spec, change):
            return change.at
        offset, cursor = change.after, change.at
        repeated = first_only and change.before > change.after
        low = _wall(change.at, change.before if repeated else change.after)


def _latest_cron(cadence: Cadence, at: datetime) -> datetime | None:
    name = cadence.timezone
    spec, tz, first_only, gap_end_runs = _cron_plan(cadence.cron, name, cadence.dst_policy)
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    floor = _EARLIEST if at <= _EARLIEST + _SEARCH else at - _SEARCH
    if at <= floor:
        return None
    offset = at.astimezone(tz).utcoffset() or timedelta(0)
    cursor = at
    high = _wall(at, offset)
    while True:
        wall = spec.last_at_or_before(high, _wall(floor, offset))
        slot = None if wall is None else _instant(wall, offset)
        since = floor if slot is None else slot - _MAX_FOLD if first_only else slot
        change = _last_change(name, since, cursor)
        if change is None:
            return slot
        # The stretch starts before the slot: the slot counts unless it repeats a wall time.
        repeated = wall is not None and first_only and wall < _wall(change.at, change.before)
        if slot is not None and change.at <= slot and not repeated:
            return slot
        if gap_end_runs and _gap_has_match(spec, change):
            return change.at
        offset, cursor = change.before, change.at - _TICK
        high = _wall(change.at, change.before) - _TICK


def _next_unbounded(cadence: Cadence, after: datetime) -> datetime | None:
    if cadence.kind == ONCE:
        return cadence.run_at if cadence.run_at and cadence.run_at > after else None
    if cadence.kind == INTERVAL:
        step = cadence.interval_seconds or 0
        if step <= 0:
            return None
        anchor = cadence.anchor_at or _EPOCH
        elapsed = int((after - anchor).total_seconds() // step) * step + step
        return anchor + timedelta(seconds=elapsed)
    return _next_cron(cadence, after)


def _latest_unbounded(cadence: Cadence, at: datetime) -> datetime | None:
    if cadence.kind == ONCE:
        return cadence.run_at if cadence.run_at and cadence.run_at <= at else None
    if cadence.kind == INTERVAL:
        step = cadence.interval_seconds or 0
        if step <= 0:
            return None
        anchor = cadence.anchor_at or _EPOCH
        return anchor + timedelta(seconds=int((at - anchor).total_seconds() // step) * step)
    return _latest_cron(cadence, at)


# Both searches are pure functions of (cadence, instant), and the same pairs come round again and
# again: every trigger of a burst due on one minute with the same schedule asks for the same
# slots (10,000 triggers, a handful of distinct schedules), as do beat's ticks for a schedule
# shared by many triggers. The instant is cached in UTC: two datetimes in the same zone compare
# and hash by wall time (fold ignored), so the two passes of a repeated hour would share an entry.
_SLOT_CACHE_SIZE = 8192


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is UTC or moment.tzinfo is None else moment.astimezone(UTC)


def _cacheable(cadence: Cadence) -> bool:
    """Whether the cadence's own instants are in UTC (as read from the database), so that equal
    cadences are the same schedule (see above)."""
    return all(
        moment is None or moment.tzinfo is UTC
        for moment in (cadence.run_at, cadence.anchor_at, cadence.start_at, cadence.end_at)
    )


def next_slot_after(cadence: Cadence, after: datetime) -> datetime | None:
    """The first slot strictly after ``after`` (aware) within start_at/end_at, or None."""
    if _cacheable(cadence):
        return _next_slot_after_cached(cadence, _utc(after))
    return _next_slot_after(cadence, after)


def latest_slot_at_or_before(cadence: Cadence, at: datetime) -> datetime | None:
    """The last slot at or before ``at`` (aware) within start_at/end_at, or None."""
    if _cacheable(cadence):
        return _latest_slot_at_or_before_cached(cadence, _utc(at))
    return _latest_slot_at_or_before(cadence, at)


def _next_slot_after(cadence: Cadence, after: datetime) -> datetime | None:
    if cadence.start_at is not None and after < cadence.start_at:
        # A slot exactly at start_at counts: look from just before it.
        after = cadence.start_at - timedelta(microseconds=1)
    slot = _next_unbounded(cadence, after)
    if slot is None or (cadence.end_at is not None and slot > cadence.end_at):
        return None
    return slot


def _latest_slot_at_or_before(cadence: Cadence, at: datetime) -> datetime | None:
    if cadence.end_at is not None and at > cadence.end_at:
        at = cadence.end_at
    slot = _latest_unbounded(cadence, at)
    if slot is None or (cadence.start_at is not None and slot < cadence.start_at):
        return None
    return slot


_next_slot_after_cached = lru_cache(maxsize=_SLOT_CACHE_SIZE)(_next_slot_after)
_latest_slot_at_or_before_cached = lru_cache(maxsize=_SLOT_CACHE_SIZE)(_latest_slot_at_or_before)


def slots_between(cadence: Cadence, after: datetime, until: datetime, *, limit: int) -> list[datetime]:
    """Slots in (after, until], oldest first, at most ``limit``."""
    slots: list[datetime] = []
    cursor = after
    while len(slots) < limit:
        slot = next_slot_after(cadence, cursor)
        if slot is None or slot > until:
            break
        slots.append(slot)
        cursor = slot
    return slots


def upcoming(cadence: Cadence, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` slots after ``after``."""
    slots: list[datetime] = []
    cursor = after
    while len(slots) < count:
        slot = next_slot_after(cadence, cursor)
        if slot is None:
            break
        slots.append(slot)
        cursor = slot
    return slots


def validate_cadence(cadence: Cadence, *, now: datetime) -> None:
    """Cross-check that the cadence can fire at all (raises ScheduleError)."""
    if cadence.kind == CRON:
        first = next_slot_after(cadence, now)
        if first is None or first > now + timedelta(days=366 * _HORIZON_YEARS):
            raise InvalidCron(f"{cadence.cron!r} does not fire in the next {_HORIZON_YEARS} years.")


# --- Execution windows --------------------------------------------------------------------------

_TIME = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")


@dataclass(frozen=True)
class Window:
    """Days of week (0=Sunday) and local [start, end) minute ranges a slot may run in."""

    days: frozenset[int]
    ranges: tuple[tuple[int, int], ...]

    def contains(self, at: datetime, tz: ZoneInfo) -> bool:
        local = at.astimezone(tz)
        if (local.isoweekday() % 7) not in self.days:
            return False
        if not self.ranges:
            return True
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.ranges)


def _minutes(text: object, what: str) -> int:
    match = _TIME.match(text) if isinstance(text, str) else None
    if not match or (match[1] == "24" and match[2] != "00"):
        raise ScheduleError(
            f"execution_window: {what} {text!r} must be a time 'HH:MM' (00:00-24:00).", field="execution_window"
        )
    return int(match[1]) * 60 + int(match[2])


def parse_window(value: object) -> Window | None:
    """Read an execution window; {} (or None) means no window. Raises ScheduleError."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or set(value) - {"days", "ranges"}:
        raise ScheduleError(
            'execution_window must be {"days": [1, 2, 3, 4, 5], "ranges": [["09:00", "17:00"]]} (both optional).',
            field="execution_window",
        )
    days = value.get("days", list(range(7)))
    if not isinstance(days, list) or not days or not all(isinstance(d, int) and 0 <= d <= 7 for d in days):
        raise ScheduleError(
            "execution_window: days must be a non-empty list of 0-6 (0 = Sunday).", field="execution_window"
        )
    ranges = value.get("ranges", [])
    if not isinstance(ranges, list) or not all(isinstance(r, list) and len(r) == 2 for r in ranges):
        raise ScheduleError(
            'execution_window: ranges must be a list of ["HH:MM", "HH:MM"] pairs.', field="execution_window"
        )
    parsed = []
    for start_text, end_text in ranges:
        start, end = _minutes(start_text, "start"), _minutes(end_text, "end")
        if start >= end:
            raise ScheduleError(
                f"execution_window: range {start_text}-{end_text} must end after it starts "
                "(split one crossing midnight in two).",
                field="execution_window",
            )
        parsed.append((start, end))
    return Window(days=frozenset(d % 7 for d in days), ranges=tuple(parsed))
