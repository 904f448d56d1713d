"""When triggers fire: slots computed with croniter in each trigger's time zone.

croniter runs on naive local wall-clock times (pure calendar arithmetic, no DST bugs); each
local time is then mapped to UTC here, with explicit rules for DST:
- a local time skipped by a spring-forward gap runs once, at the instant the gap ends;
- a local time repeated by an autumn fall-back runs once, at its first occurrence.
Interval slots are aligned to the Unix epoch (every 900 s means :00, :15, :30, :45 UTC).
Beat fires, `next_run_at` and previews all come from these functions, so they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
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
_MAX_STEPS = 100_000
# Widest DST shift any zone makes (Antarctica/Troll moves 2 h); used to look past folds.
_MAX_SHIFT = timedelta(hours=3)


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
        from cron_descriptor import Options, get_description

        options = Options()
        options.use_24hour_time_format = True
        options.verbose = False
        return f"{get_description(cadence.cron, options)} ({cadence.timezone})"
    if cadence.kind == INTERVAL and cadence.interval_seconds:
        return f"Every {_duration(cadence.interval_seconds)}"
    if cadence.kind == ONCE and cadence.run_at:
        local = cadence.run_at.astimezone(cadence.zone)
        return f"Once at {local:%Y-%m-%d %H:%M} ({cadence.timezone})"
    return "Not scheduled"


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """Map a naive local wall time to UTC: first occurrence in a fold, gap end in a gap."""
    first = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == local:
        return first
    # ``local`` does not exist (spring forward). fold=1 reads it with the new offset, which
    # lands before the gap; the transition is between the two readings: find it to the second.
    low = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = first
    offset = low.astimezone(tz).utcoffset()
    while (high - low) > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def _local(at: datetime, tz: ZoneInfo) -> datetime:
    return at.astimezone(tz).replace(tzinfo=None)


def _shifts_near(at: datetime, tz: ZoneInfo) -> bool:
    return (at - _MAX_SHIFT).astimezone(tz).utcoffset() != (at + _MAX_SHIFT).astimezone(tz).utcoffset()


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
    tz = cadence.zone
    iterator = croniter(cadence.cron, _local(after, tz))
    for _ in range(_MAX_STEPS):
        candidate = _to_utc(iterator.get_next(datetime), tz)
        if candidate > after:
            return candidate
    return None


def _latest_unbounded(cadence: Cadence, at: datetime) -> datetime | None:
    if cadence.kind == ONCE:
        return cadence.run_at if cadence.run_at and cadence.run_at <= at else None
    if cadence.kind == INTERVAL:
        step = cadence.interval_seconds or 0
        if step <= 0:
            return None
        anchor = cadence.anchor_at or _EPOCH
        return anchor + timedelta(seconds=int((at - anchor).total_seconds() // step) * step)
    tz = cadence.zone
    start = _local(at, tz).replace(second=0, microsecond=0) + timedelta(minutes=1)
    if _shifts_near(at, tz):
        # Near a transition a later local time can be an earlier instant: look further ahead.
        start += _MAX_SHIFT
    iterator = croniter(cadence.cron, start)
    for _ in range(_MAX_STEPS):
        try:
            candidate = _to_utc(iterator.get_prev(datetime), tz)
        except CroniterError:
            return None
        if candidate <= at:
            return candidate
    return None


def next_slot_after(cadence: Cadence, after: datetime) -> datetime | None:
    """The first slot strictly after ``after`` (aware) within start_at/end_at, or None."""
    if cadence.start_at is not None and after < cadence.start_at:
        # A slot exactly at start_at counts: look from just before it.
        after = cadence.start_at - timedelta(microseconds=1)
    slot = _next_unbounded(cadence, after)
    if slot is None or (cadence.end_at is not None and slot > cadence.end_at):
        return None
    return slot


def latest_slot_at_or_before(cadence: Cadence, at: datetime) -> datetime | None:
    """The last slot at or before ``at`` (aware) within start_at/end_at, or None."""
    if cadence.end_at is not None and at > cadence.end_at:
        at = cadence.end_at
    slot = _latest_unbounded(cadence, at)
    if slot is None or (cadence.start_at is not None and slot < cadence.start_at):
        return None
    return slot


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
    if not value:
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
                f"execution_window: range {start_text}-{end_text} must end after it starts (split one crossing midnight).",
                field="execution_window",
            )
        parsed.append((start, end))
    return Window(days=frozenset(d % 7 for d in days), ranges=tuple(parsed))
