"""schedules.timing: cron parsing, slots in time zones across DST, interval and once slots."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import pytest

from schedules import timing
from schedules.exceptions import InvalidCron, ScheduleError
from schedules.timing import Cadence

LA = "America/Los_Angeles"
LORD_HOWE = "Australia/Lord_Howe"
KOLKATA = "Asia/Kolkata"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron(expression: str, tz: str = "UTC") -> Cadence:
    return Cadence(kind=timing.CRON, cron=timing.normalize_cron(expression), timezone=tz)


# --- normalize_cron -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 9 * * MON-FRI", "0 9 * * 1-5"),
        ("0 9 * * mon,wed,Fri", "0 9 * * 1,3,5"),
        ("0 0 1 JAN,jul *", "0 0 1 1,7 *"),
        ("0 0 * * sun", "0 0 * * 0"),
        ("0 0 1 jan-mar *", "0 0 1 1-3 *"),
    ],
)
def test_normalize_cron__names_become_numbers(expression, expected):
    """Month and weekday names (any case) are stored as numbers."""
    assert timing.normalize_cron(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_normalize_cron__macros_expand(expression, expected):
    """Each @macro expands to its five-field form."""
    assert timing.normalize_cron(expression) == expected


def test_normalize_cron__sunday_7_becomes_0():
    """Sunday written as 7 is stored as 0."""
    assert timing.normalize_cron("0 0 * * 7") == "0 0 * * 0"


def test_normalize_cron__sunday_7_fires_on_sundays():
    """A job for day 7 fires on Sundays only."""
    slots = timing.upcoming(cron("0 12 * * 7"), utc(2027, 3, 1), 3)
    assert [slot.strftime("%A") for slot in slots] == ["Sunday"] * 3


@pytest.mark.parametrize(
    ("expression", "days"),
    [
        ("0 12 * * 5-7", ["Friday", "Saturday", "Sunday"]),
        ("0 12 * * 1/2", ["Monday", "Wednesday", "Friday", "Sunday"]),
        ("0 12 * * sun,7", ["Sunday"]),
    ],
)
def test_normalize_cron__sunday_7_in_ranges_becomes_0(expression, days):
    """Sunday as 7 inside a range or step is stored as 0 too, and the days stay the same."""
    normalized = timing.normalize_cron(expression)
    assert "7" not in normalized.split(" ")[4]
    slots = timing.upcoming(Cadence(kind=timing.CRON, cron=normalized), utc(2027, 3, 1), 4 * len(days))
    assert sorted({slot.strftime("%A") for slot in slots}) == sorted(days)


def test_normalize_cron__one_value_range_with_step_is_the_value():
    """`20-20/1` in the hour field means hour 20, not every hour."""
    assert timing.normalize_cron("0 20-20/1 * * *") == "0 20 * * *"


def test_normalize_cron__one_value_range_fires_once_a_day():
    """A `20-20/1` hour fires once a day at 20:00 (croniter alone fires every hour)."""
    slots = timing.upcoming(cron("0 20-20/1 * * *"), utc(2027, 3, 1), 3)
    assert slots == [utc(2027, 3, 1, 20), utc(2027, 3, 2, 20), utc(2027, 3, 3, 20)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("5/15 * * * *", "5-59/15 * * * *"),
        ("0 3/6 * * *", "0 3-23/6 * * *"),
        ("0 0 2/10 * *", "0 0 2-31/10 * *"),
    ],
)
def test_normalize_cron__start_with_step_runs_to_the_field_end(expression, expected):
    """`a/n` means from a to the field's highest value, every n."""
    assert timing.normalize_cron(expression) == expected


def test_normalize_cron__extra_whitespace_is_collapsed():
    """Surrounding and repeated spaces do not matter."""
    assert timing.normalize_cron("  0   9 *  * * ") == "0 9 * * *"


@pytest.mark.parametrize(
    ("expression", "field", "allowed"),
    [
        ("60 * * * *", "minute", "0-59"),
        ("0-60 * * * *", "minute", "0-59"),
        ("* 24 * * *", "hour", "0-23"),
        ("* 1,25 * * *", "hour", "0-23"),
        ("* * 0 * *", "day of month", "1-31"),
        ("* * 32 * *", "day of month", "1-31"),
        ("* * * 0 *", "month", "1-12"),
        ("* * * 13 *", "month", "1-12"),
        ("* * * * 8", "day of week", "0-7"),
        ("* * * * 1-8", "day of week", "0-7"),
    ],
)
def test_normalize_cron__out_of_range_names_field_and_range(expression, field, allowed):
    """An out-of-range value is rejected with the field's name and its allowed range."""
    with pytest.raises(InvalidCron) as excinfo:
        timing.normalize_cron(expression)
    assert field in str(excinfo.value)
    assert allowed in str(excinfo.value)
    assert excinfo.value.field == "cron"


@pytest.mark.parametrize(
    ("expression", "field"),
    [
        ("*/0 * * * *", "minute"),
        ("* */25 * * *", "hour"),
        ("* * * * JAN", "day of week"),
        ("* * * MON * ", "month"),
        ("5-1 * * * *", "minute"),
        ("1--2 * * * *", "minute"),
        ("* * x * *", "day of month"),
    ],
)
def test_normalize_cron__malformed_item_names_field(expression, field):
    """Bad steps, names in the wrong field, backwards ranges and junk name the field."""
    with pytest.raises(InvalidCron, match=field):
        timing.normalize_cron(expression)


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_normalize_cron__never_firing_date_rejected(expression):
    """A day that never exists in the chosen months (e.g. February 30th) is rejected."""
    with pytest.raises(InvalidCron, match="never fires"):
        timing.normalize_cron(expression)


def test_normalize_cron__february_29th_accepted():
    """February 29th exists in leap years, so it is a valid schedule."""
    assert timing.normalize_cron("0 0 29 2 *") == "0 0 29 2 *"
    assert timing.upcoming(cron("0 0 29 2 *"), utc(2027, 1, 1), 1) == [utc(2028, 2, 29)]


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * *", "0 9"])
def test_normalize_cron__wrong_field_count_rejected(expression):
    """Anything but five fields is rejected with a message saying five are needed."""
    with pytest.raises(InvalidCron, match="5 fields"):
        timing.normalize_cron(expression)


@pytest.mark.parametrize("expression", ["", "   ", "@reboot", "@every 5m"])
def test_normalize_cron__empty_or_unknown_macro_rejected(expression):
    """An empty expression and an unknown @shortcut are rejected."""
    with pytest.raises(InvalidCron):
        timing.normalize_cron(expression)


def test_zone__unknown_name_names_timezone_field():
    """An unknown time zone raises ScheduleError for the timezone field."""
    with pytest.raises(ScheduleError) as excinfo:
        timing.zone("Mars/Olympus_Mons")
    assert excinfo.value.field == "timezone"


# --- cron slots at fixed points -----------------------------------------------------------------


def test_next_slot_after__utc_weekdays_skip_the_weekend():
    """A weekday 09:00 UTC job after Friday's slot next fires on Monday."""
    friday_slot = utc(2027, 3, 12, 9)
    assert timing.next_slot_after(cron("0 9 * * 1-5"), friday_slot) == utc(2027, 3, 15, 9)


def test_next_slot_after__is_strictly_after():
    """A slot exactly at ``after`` is not returned; one second before, it is."""
    cadence = cron("0 9 * * *")
    assert timing.next_slot_after(cadence, utc(2027, 3, 1, 9)) == utc(2027, 3, 2, 9)
    assert timing.next_slot_after(cadence, utc(2027, 3, 1, 8, 59, 59)) == utc(2027, 3, 1, 9)


def test_latest_slot_at_or_before__includes_the_instant_itself():
    """The slot at ``at`` counts; one second earlier, the previous slot is returned."""
    cadence = cron("0 9 * * *")
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 3, 2, 9)) == utc(2027, 3, 2, 9)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 3, 2, 8, 59, 59)) == utc(2027, 3, 1, 9)


def test_latest_slot_at_or_before__sub_minute_instant():
    """An instant a few seconds past a slot maps back to that slot."""
    assert timing.latest_slot_at_or_before(cron("*/5 * * * *"), utc(2027, 3, 2, 9, 5, 42)) == utc(2027, 3, 2, 9, 5)


def test_upcoming__spring_forward_gap_runs_once_at_gap_end():
    """A 02:30 Los Angeles job on 2027-03-14 (02:00-03:00 skipped) runs once, at 10:00Z."""
    slots = timing.upcoming(cron("30 2 * * *", LA), utc(2027, 3, 12), 4)
    assert slots == [
        utc(2027, 3, 12, 10, 30),  # 02:30 PST
        utc(2027, 3, 13, 10, 30),  # 02:30 PST
        utc(2027, 3, 14, 10, 0),  # the gap ends at 03:00 PDT
        utc(2027, 3, 15, 9, 30),  # 02:30 PDT
    ]


def test_upcoming__autumn_fold_runs_once_at_first_occurrence():
    """A 01:30 Los Angeles job on 2027-11-07 (01:00-02:00 twice) runs once, at 08:30Z."""
    slots = timing.upcoming(cron("30 1 * * *", LA), utc(2027, 11, 5), 4)
    assert slots == [
        utc(2027, 11, 5, 8, 30),  # 01:30 PDT
        utc(2027, 11, 6, 8, 30),
        utc(2027, 11, 7, 8, 30),  # first 01:30 (PDT); the second one (09:30Z, PST) does not run
        utc(2027, 11, 8, 9, 30),  # 01:30 PST
    ]


def test_latest_slot_at_or_before__in_repeated_hour_returns_first_occurrence():
    """During the second 01:xx of the fold, the latest slot is the first 01:30 (08:30Z)."""
    cadence = cron("30 1 * * *", LA)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 11, 7, 9, 45)) == utc(2027, 11, 7, 8, 30)
    # 09:10Z reads 01:10 (PST), before 01:30 on the wall clock, yet after the first 01:30.
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 11, 7, 9, 10)) == utc(2027, 11, 7, 8, 30)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 11, 7, 8, 29)) == utc(2027, 11, 6, 8, 30)


def test_latest_slot_at_or_before__at_gap_end():
    """At the end of the spring gap the 02:30 slot is that instant; a second before, the day before."""
    cadence = cron("30 2 * * *", LA)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 3, 14, 10)) == utc(2027, 3, 14, 10)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 3, 14, 9, 59, 59)) == utc(2027, 3, 13, 10, 30)


def test_upcoming__lord_howe_half_hour_fold_runs_once():
    """Lord Howe repeats 01:30-02:00 on 2027-04-04: a 01:45 job runs once, at +11:00 (14:45Z)."""
    slots = timing.upcoming(cron("45 1 * * *", LORD_HOWE), utc(2027, 4, 2), 3)
    assert slots == [utc(2027, 4, 2, 14, 45), utc(2027, 4, 3, 14, 45), utc(2027, 4, 4, 15, 15)]


def test_upcoming__lord_howe_half_hour_gap_runs_at_gap_end():
    """Lord Howe skips 02:00-02:30 on 2027-10-03: a 02:15 job runs at the gap end (15:30Z)."""
    slots = timing.upcoming(cron("15 2 * * *", LORD_HOWE), utc(2027, 10, 1), 3)
    assert slots == [utc(2027, 10, 1, 15, 45), utc(2027, 10, 2, 15, 30), utc(2027, 10, 3, 15, 15)]


def test_upcoming__kolkata_half_hour_offset():
    """09:00 in Kolkata (+05:30, no DST) is 03:30Z every day."""
    slots = timing.upcoming(cron("0 9 * * *", KOLKATA), utc(2027, 6, 1), 2)
    assert slots == [utc(2027, 6, 1, 3, 30), utc(2027, 6, 2, 3, 30)]


# --- an independent brute-force reference -------------------------------------------------------


def _field_values(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            start, end = (int(part) for part in base.split("-"))
        else:
            start = int(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return values


def _matcher(expression: str):
    """A predicate on naive wall times, written from the cron man page (Vixie day rule)."""
    minute, hour, dom, month, dow = expression.split()
    minutes, hours = _field_values(minute, 0, 59), _field_values(hour, 0, 23)
    days, months = _field_values(dom, 1, 31), _field_values(month, 1, 12)
    weekdays = {day % 7 for day in _field_values(dow, 0, 7)}
    dom_any, dow_any = dom.startswith("*"), dow.startswith("*")

    def matches(wall: datetime) -> bool:
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            return False
        in_dom, in_dow = wall.day in days, (wall.weekday() + 1) % 7 in weekdays
        if dom_any or dow_any:
            return in_dom and in_dow
        return in_dom or in_dow

    return matches


@lru_cache(maxsize=32)
def _walk(tz_name: str, start: datetime, end: datetime) -> tuple[tuple[datetime, tuple[datetime, ...]], ...]:
    """For each UTC minute in (start, end]: the wall times that fall due at that instant.

    - a wall time that already happened (second pass of a fold) does not run again;
    - wall times skipped by a forward jump run at the first instant after the jump.
    """
    tz = ZoneInfo(tz_name)
    steps = []
    at = start.replace(second=0, microsecond=0) + MINUTE
    previous_wall = (at - MINUTE).astimezone(tz).replace(tzinfo=None, fold=0)
    while at <= end:
        local = at.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        # PEP 495: converting from UTC sets fold=1 on the second pass through a repeated wall time.
        due = [] if local.fold else [wall]
        skipped = previous_wall + MINUTE
        while skipped < wall:
            due.append(skipped)
            skipped += MINUTE
        steps.append((at, tuple(due)))
        previous_wall = wall
        at += MINUTE
    return tuple(steps)


@lru_cache(maxsize=64)
def reference_slots(expression: str, tz_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Slots in (start, end] by brute force over every minute, with the documented DST rules."""
    matches = _matcher(expression)
    return [at for at, due in _walk(tz_name, start, end) if any(matches(wall) for wall in due)]


def _near_transition(at: datetime, tz_name: str) -> bool:
    tz = ZoneInfo(tz_name)
    return (at - timedelta(hours=6)).astimezone(tz).utcoffset() != (at + timedelta(hours=6)).astimezone(tz).utcoffset()


def _transitions(tz_name: str, start: datetime, end: datetime) -> list[datetime]:
    tz, hour = ZoneInfo(tz_name), timedelta(hours=1)
    hours = [start + hour * i for i in range(int((end - start) / hour))]
    return [at for at in hours if at.astimezone(tz).utcoffset() != (at + hour).astimezone(tz).utcoffset()]


def _sample_points(slots: list[datetime], tz_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Instants about every 4 hours, every 7 minutes for 3 hours either side of each DST change,
    and each slot and the second before it (all of them near DST changes)."""
    every = timedelta(hours=4, minutes=11, seconds=7)
    points = {start + every * i for i in range(int((end - start) / every) + 1)}
    for transition in _transitions(tz_name, start, end):
        points.update(transition + timedelta(minutes=7 * i, seconds=3) for i in range(-26, 35))
    for index, slot in enumerate(slots):
        if len(slots) < 200 or _near_transition(slot, tz_name) or index % 50 == 0:
            points.update({slot, slot - timedelta(seconds=1)})
    return sorted(point for point in points if start <= point <= end)


EXPRESSIONS = ["0 9 * * 1-5", "30 2 * * *", "30 1 * * *", "*/15 * * * *", "0 0 1 * *", "0 * * * *"]
# Dense schedules are checked over the middle week only (the transition is mid-window) to stay fast.
DENSE = {"*/15 * * * *", "0 * * * *"}
WINDOWS = [
    pytest.param(LA, utc(2027, 3, 3), utc(2027, 3, 24), id="los-angeles-spring"),
    pytest.param(LA, utc(2027, 10, 28), utc(2027, 11, 18), id="los-angeles-autumn"),
    pytest.param(LORD_HOWE, utc(2027, 3, 24), utc(2027, 4, 14), id="lord-howe-autumn"),
    pytest.param(LORD_HOWE, utc(2027, 9, 22), utc(2027, 10, 13), id="lord-howe-spring"),
    pytest.param(KOLKATA, utc(2027, 2, 20), utc(2027, 3, 13), id="kolkata"),
    pytest.param("UTC", utc(2027, 2, 20), utc(2027, 3, 13), id="utc"),
]


def _window(expression: str, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    if expression not in DENSE:
        return start, end
    middle = start + (end - start) / 2
    return middle - timedelta(days=4), middle + timedelta(days=4)


@pytest.mark.parametrize(("tz_name", "start", "end"), WINDOWS)
def test_upcoming__matches_brute_force_reference(tz_name, start, end):
    """Over three weeks around each transition, upcoming() equals the minute-by-minute reference."""
    for expression in EXPRESSIONS:
        start, end = _window(expression, start, end)
        expected = reference_slots(expression, tz_name, start, end)
        got = [slot for slot in timing.upcoming(cron(expression, tz_name), start, len(expected) + 1) if slot <= end]
        assert got == expected, f"{expression!r} in {tz_name}"


@pytest.mark.parametrize(("tz_name", "start", "end"), WINDOWS)
def test_latest_slot_at_or_before__matches_brute_force_reference(tz_name, start, end):
    """At sampled instants (and at every slot and just before it) the latest slot equals the reference."""
    for expression in EXPRESSIONS:
        start, end = _window(expression, start, end)
        cadence = cron(expression, tz_name)
        slots = reference_slots(expression, tz_name, start, end)
        for point in _sample_points(slots, tz_name, start, end):
            index = bisect.bisect_right(slots, point)
            got = timing.latest_slot_at_or_before(cadence, point)
            if index:
                assert got == slots[index - 1], f"{expression!r} in {tz_name} at {point}"
            else:
                assert got is not None and got <= start, f"{expression!r} in {tz_name} at {point}"


def test_reference__agrees_with_hand_checked_dst_cases():
    """The reference itself gives the documented answers for the gap and the fold."""
    assert utc(2027, 3, 14, 10) in reference_slots("30 2 * * *", LA, utc(2027, 3, 14), utc(2027, 3, 15))
    assert reference_slots("30 1 * * *", LA, utc(2027, 11, 7), utc(2027, 11, 7, 12)) == [utc(2027, 11, 7, 8, 30)]


# --- interval and once --------------------------------------------------------------------------


def test_next_slot_after__interval_is_epoch_aligned():
    """Every 900 s fires on :00, :15, :30, :45 UTC whatever the starting instant."""
    cadence = Cadence(kind=timing.INTERVAL, interval_seconds=900)
    assert timing.next_slot_after(cadence, utc(2027, 3, 14, 10, 7, 13)) == utc(2027, 3, 14, 10, 15)
    assert timing.next_slot_after(cadence, utc(2027, 3, 14, 10, 15)) == utc(2027, 3, 14, 10, 30)


@pytest.mark.parametrize("seconds", [7, 900, 3600 * 7, 86400 + 1])
def test_upcoming__interval_slots_are_multiples_of_the_interval_since_epoch(seconds):
    """Each interval slot is a whole number of intervals after the Unix epoch, one interval apart."""
    after = utc(2027, 3, 14, 9, 59, 58)
    slots = timing.upcoming(Cadence(kind=timing.INTERVAL, interval_seconds=seconds), after, 5)
    assert after < slots[0] <= after + timedelta(seconds=seconds)
    for slot in slots:
        assert (slot - EPOCH) % timedelta(seconds=seconds) == timedelta(0)
    assert all(b - a == timedelta(seconds=seconds) for a, b in zip(slots, slots[1:], strict=False))


def test_latest_slot_at_or_before__interval():
    """The latest interval slot is the aligned instant at or before ``at``."""
    cadence = Cadence(kind=timing.INTERVAL, interval_seconds=900)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 3, 14, 10, 15)) == utc(2027, 3, 14, 10, 15)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 3, 14, 10, 14, 59)) == utc(2027, 3, 14, 10)


def test_next_slot_after__interval_ignores_dst():
    """Interval slots stay evenly spaced in UTC through a DST change of the trigger's zone."""
    cadence = Cadence(kind=timing.INTERVAL, interval_seconds=3600, timezone=LA)
    slots = timing.upcoming(cadence, utc(2027, 3, 14, 8), 4)
    assert slots == [utc(2027, 3, 14, 9), utc(2027, 3, 14, 10), utc(2027, 3, 14, 11), utc(2027, 3, 14, 12)]


def test_next_slot_after__once_only_before_run_at():
    """A once trigger's only slot is run_at: returned while it is ahead, then never."""
    run_at = utc(2027, 3, 14, 12, 30)
    cadence = Cadence(kind=timing.ONCE, run_at=run_at)
    assert timing.next_slot_after(cadence, run_at - timedelta(seconds=1)) == run_at
    assert timing.next_slot_after(cadence, run_at) is None
    assert timing.upcoming(cadence, utc(2027, 1, 1), 3) == [run_at]


def test_latest_slot_at_or_before__once_only_from_run_at():
    """A once trigger has no slot before run_at and run_at itself from then on."""
    run_at = utc(2027, 3, 14, 12, 30)
    cadence = Cadence(kind=timing.ONCE, run_at=run_at)
    assert timing.latest_slot_at_or_before(cadence, run_at - timedelta(seconds=1)) is None
    assert timing.latest_slot_at_or_before(cadence, run_at) == run_at
    assert timing.latest_slot_at_or_before(cadence, run_at + timedelta(days=400)) == run_at


def test_normalize_cron__day_range_may_end_on_sunday_by_name():
    """'FRI-SUN' wraps to Sunday (written 0) instead of being refused as a backwards range."""
    assert timing.normalize_cron("0 9 * * FRI-SUN") == "0 9 * * 5,6,0"
