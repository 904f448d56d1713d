"""schedules.timing: cron parsing, slots in time zones across DST, interval and once slots."""

from __future__ import annotations

import bisect
import random
from array import array
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from time import perf_counter
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


def cron(expression: str, tz: str = "UTC", policy: str = timing.DST_VIXIE) -> Cadence:
    return Cadence(kind=timing.CRON, cron=timing.normalize_cron(expression), timezone=tz, dst_policy=policy)


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


# --- DST: wildcard hours follow real time, fixed times follow the policy ------------------------


def test_upcoming__hourly_runs_both_passes_of_the_repeated_hour():
    """`0 * * * *` in Los Angeles on 2027-11-07 runs at 08:00Z and 09:00Z (01:00 PDT, then 01:00 PST)."""
    slots = timing.upcoming(cron("0 * * * *", LA), utc(2027, 11, 7, 6, 30), 5)
    assert slots == [
        utc(2027, 11, 7, 7),
        utc(2027, 11, 7, 8),
        utc(2027, 11, 7, 9),
        utc(2027, 11, 7, 10),
        utc(2027, 11, 7, 11),
    ]


def test_upcoming__hourly_runs_every_real_hour_through_the_gap():
    """`0 * * * *` in Los Angeles on 2027-03-14 runs at 01:00 PST (09:00Z), then 03:00 PDT (10:00Z)."""
    slots = timing.upcoming(cron("0 * * * *", LA), utc(2027, 3, 14, 8, 30), 3)
    assert slots == [utc(2027, 3, 14, 9), utc(2027, 3, 14, 10), utc(2027, 3, 14, 11)]


def test_upcoming__every_15_minutes_runs_through_both_passes():
    """`*/15 * * * *` runs every 15 real minutes through the repeated hour: eight slots from 08:00Z."""
    slots = timing.upcoming(cron("*/15 * * * *", LA), utc(2027, 11, 7, 7, 59), 9)
    assert slots == [utc(2027, 11, 7, 8) + timedelta(minutes=15 * i) for i in range(9)]


@pytest.mark.parametrize("policy", [timing.DST_VIXIE, timing.DST_SKIP_MISSING, timing.DST_REPEAT_TWICE])
def test_upcoming__wildcard_hour_ignores_the_dst_policy(policy):
    """The DST policy is for fixed times: an hourly trigger runs every real hour under each policy."""
    autumn = timing.upcoming(cron("0 * * * *", LA, policy), utc(2027, 11, 7, 7, 30), 2)
    spring = timing.upcoming(cron("0 * * * *", LA, policy), utc(2027, 3, 14, 8, 30), 2)
    assert autumn == [utc(2027, 11, 7, 8), utc(2027, 11, 7, 9)]
    assert spring == [utc(2027, 3, 14, 9), utc(2027, 3, 14, 10)]


def test_latest_slot_at_or_before__hourly_in_second_pass_is_the_second_occurrence():
    """At 09:30Z (01:30 PST, the second pass) the latest hourly slot is 09:00Z, not the first 01:00."""
    cadence = cron("0 * * * *", LA)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 11, 7, 9, 30)) == utc(2027, 11, 7, 9)
    assert timing.latest_slot_at_or_before(cadence, utc(2027, 11, 7, 8, 59, 59)) == utc(2027, 11, 7, 8)


def test_upcoming__skip_missing_skips_a_time_in_the_gap():
    """With skip_missing, a 02:30 Los Angeles job does not run on 2027-03-14 (no 02:30 that night)."""
    slots = timing.upcoming(cron("30 2 * * *", LA, timing.DST_SKIP_MISSING), utc(2027, 3, 13), 3)
    assert slots == [utc(2027, 3, 13, 10, 30), utc(2027, 3, 15, 9, 30), utc(2027, 3, 16, 9, 30)]


def test_upcoming__skip_missing_runs_a_repeated_time_once():
    """With skip_missing, a 01:30 Los Angeles job runs once in the repeated hour, at the first 01:30."""
    slots = timing.upcoming(cron("30 1 * * *", LA, timing.DST_SKIP_MISSING), utc(2027, 11, 6, 12), 2)
    assert slots == [utc(2027, 11, 7, 8, 30), utc(2027, 11, 8, 9, 30)]


def test_upcoming__repeat_twice_runs_a_repeated_time_at_both_occurrences():
    """With repeat_twice, a 01:30 Los Angeles job runs at 08:30Z and 09:30Z on 2027-11-07."""
    slots = timing.upcoming(cron("30 1 * * *", LA, timing.DST_REPEAT_TWICE), utc(2027, 11, 6, 12), 3)
    assert slots == [utc(2027, 11, 7, 8, 30), utc(2027, 11, 7, 9, 30), utc(2027, 11, 8, 9, 30)]


def test_upcoming__repeat_twice_runs_a_skipped_time_at_gap_end():
    """With repeat_twice, a time in the spring gap runs at the gap's end, as with Vixie rules."""
    slots = timing.upcoming(cron("30 2 * * *", LA, timing.DST_REPEAT_TWICE), utc(2027, 3, 13, 12), 1)
    assert slots == [utc(2027, 3, 14, 10)]


def test_upcoming__skipped_times_of_one_gap_make_one_slot():
    """`*/20 2 * * *` (fixed hour) has three skipped times on 2027-03-14: one slot at the gap's end."""
    slots = timing.upcoming(cron("*/20 2 * * *", LA), utc(2027, 3, 14), 2)
    assert slots == [utc(2027, 3, 14, 10), utc(2027, 3, 15, 9)]


def test_upcoming__lord_howe_hourly_follows_real_time():
    """Lord Howe: `0 * * * *` runs at 01:00 +10:30 then 03:00 +11 in spring, and 01:00 +11 then 02:00 +10:30."""
    spring = timing.upcoming(cron("0 * * * *", LORD_HOWE), utc(2027, 10, 2, 14), 2)
    autumn = timing.upcoming(cron("0 * * * *", LORD_HOWE), utc(2027, 4, 3, 13, 30), 2)
    assert spring == [utc(2027, 10, 2, 14, 30), utc(2027, 10, 2, 16)]
    assert autumn == [utc(2027, 4, 3, 14), utc(2027, 4, 3, 15, 30)]


def test_upcoming__lord_howe_every_15_minutes_in_the_half_hour_fold():
    """Lord Howe repeats 01:30-02:00 on 2027-04-04: `*/15` runs 01:30, 01:45 twice, every 15 real minutes."""
    slots = timing.upcoming(cron("*/15 * * * *", LORD_HOWE), utc(2027, 4, 3, 14, 29), 5)
    assert slots == [utc(2027, 4, 3, 14, 30) + timedelta(minutes=15 * i) for i in range(5)]


def test_next_slot_after__unknown_dst_policy_names_the_field():
    """A DST policy that is not one of the three is refused for the dst_policy field."""
    with pytest.raises(ScheduleError) as excinfo:
        timing.next_slot_after(cron("30 1 * * *", LA, "sometimes"), utc(2027, 1, 1))
    assert excinfo.value.field == "dst_policy"


@pytest.mark.parametrize(
    ("expression", "wildcard"),
    [
        ("0 * * * *", True),
        ("*/15 * * * *", True),
        ("0 */2 * * *", True),
        ("@hourly", True),
        ("0 9 * * *", False),
        ("30 1-5 * * *", False),
        ("0 8,17 * * *", False),
        ("0 3/6 * * *", False),
        ("*/15 1 * * *", False),
    ],
)
def test_has_wildcard_hour__only_star_or_star_step_in_the_hour_field(expression, wildcard):
    """The hour field alone decides: `*` or `*/n` follows real time, anything else is a fixed time."""
    assert timing.has_wildcard_hour(expression) is wildcard


def test_upcoming__star_step_day_of_month_is_unrestricted():
    """`*/2` in day-of-month counts as unrestricted (Vixie), so it and a weekday must both match."""
    slots = timing.upcoming(cron("0 0 */2 * 1"), utc(2027, 2, 28), 3)
    assert slots == [utc(2027, 3, 1), utc(2027, 3, 15), utc(2027, 3, 29)]


@pytest.mark.parametrize(
    ("expression", "expected_days"),
    [
        # Both restricted (neither starts with "*"): a day matching either runs (OR).
        ("0 9 1,*/10 * MON", ["Mon 01", "Mon 08", "Thu 11", "Mon 15", "Sun 21", "Mon 22", "Mon 29", "Wed 31"]),
        ("0 9 13 * FRI", ["Fri 05", "Fri 12", "Sat 13", "Fri 19", "Fri 26"]),
        # Day-of-month starts with "*": unrestricted, so both must match (AND), as in Vixie cron.
        ("0 9 */10,5 * MON", ["Mon 01"]),
        ("0 9 */10 * MON", ["Mon 01"]),
        # One field restricted, the other "*": the restricted one alone.
        ("0 9 1,15 * *", ["Mon 01", "Mon 15"]),
        ("0 9 * * MON", ["Mon 01", "Mon 08", "Mon 15", "Mon 22", "Mon 29"]),
    ],
)
def test_day_fields__restricted_unless_they_start_with_a_star(expression, expected_days):
    """Vixie cron: a day field starting with "*" is unrestricted; when both are restricted, either
    matches (March 2027 starts on a Monday). `0 9 1,*/10 * MON` was read as AND before."""
    slots = timing.upcoming(cron(expression), utc(2027, 2, 28, 23), 40)
    slots = [slot for slot in slots if (slot.year, slot.month) == (2027, 3)]
    assert [f"{slot:%a %d}" for slot in slots] == expected_days


# --- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "params", "expected", "words"),
    [
        ("hourly", {"minute": 15}, "15 * * * *", "At 15 minutes past the hour"),
        ("hourly", {"minute": "0"}, "0 * * * *", "Every hour"),
        ("daily", {"time": "09:30"}, "30 9 * * *", "At 09:30"),
        ("daily", {"time": time(7, 5)}, "5 7 * * *", "At 07:05"),
        ("weekdays", {"time": "8:00"}, "0 8 * * 1-5", "At 08:00, Monday through Friday"),
        ("weekly", {"day": "MON", "time": "09:00"}, "0 9 * * 1", "At 09:00, only on Monday"),
        ("weekly", {"day": "sunday", "time": "23:45"}, "45 23 * * 0", "At 23:45, only on Sunday"),
        ("weekly", {"day": 6, "time": "12:00"}, "0 12 * * 6", "At 12:00, only on Saturday"),
        ("monthly", {"day": 1, "time": "00:00"}, "0 0 1 * *", "At 00:00, on day 1 of the month"),
        ("monthly", {"day": "31", "time": "18:30"}, "30 18 31 * *", "At 18:30, on day 31 of the month"),
    ],
)
def test_preset_cron__stored_as_cron_and_described_in_words(preset, params, expected, words):
    """Each preset gives a plain cron expression, and describe() reads it back in words."""
    expression = timing.preset_cron(preset, **params)
    assert expression == expected
    assert timing.describe(cron(expression, "Europe/London")) == f"{words} (Europe/London)"


@pytest.mark.parametrize(
    ("preset", "params", "field", "allowed"),
    [
        ("hourly", {"minute": 60}, "minute", "0-59"),
        ("hourly", {"minute": -1}, "minute", "0-59"),
        ("hourly", {"minute": "quarter"}, "minute", "0-59"),
        ("hourly", {"minute": True}, "minute", "0-59"),
        ("hourly", {}, "minute", "minute is missing"),
        ("hourly", {"minute": 0, "time": "09:00"}, "time", "takes minute"),
        ("daily", {"time": "24:00"}, "time", "00:00-23:59"),
        ("daily", {"time": "9.30"}, "time", "HH:MM"),
        ("daily", {"time": 930}, "time", "HH:MM"),
        ("weekdays", {"time": "09:60"}, "time", "00:00-23:59"),
        ("weekly", {"day": 7, "time": "09:00"}, "day", "0-6 (0 = Sunday) or MON"),
        ("weekly", {"day": "Funday", "time": "09:00"}, "day", "MON, TUE"),
        ("weekly", {"time": "09:00"}, "day", "day is missing"),
        ("monthly", {"day": 0, "time": "09:00"}, "day", "1-31"),
        ("monthly", {"day": 32, "time": "09:00"}, "day", "1-31"),
        ("monthly", {"day": "MON", "time": "09:00"}, "day", "1-31"),
        ("fortnightly", {}, "preset", "hourly, daily, weekdays, weekly, monthly"),
    ],
)
def test_preset_cron__bad_parameter_names_field_and_what_is_allowed(preset, params, field, allowed):
    """A wrong, missing or unknown parameter raises ScheduleError for that field, saying what is allowed."""
    with pytest.raises(ScheduleError) as excinfo:
        timing.preset_cron(preset, **params)
    assert excinfo.value.field == field
    assert allowed in str(excinfo.value)


# --- an independent reference: a whole year, every minute ---------------------------------------
#
# Written from the README's rules, not from timing.py: its own cron matcher (from the cron man
# page), its own test for a wildcard hour, and DST read off a walk over every UTC minute with the
# zone's offset at each: a wall time shown at two instants is repeated, one shown at none (inside
# the walk) is skipped, and the gap ends at the first instant showing a later wall time.

YEAR_START, YEAR_END = utc(2027, 1, 1), utc(2028, 1, 1)
YEAR_ZONES = [
    pytest.param(LA, id="los-angeles"),
    pytest.param("Europe/London", id="london"),
    pytest.param(LORD_HOWE, id="lord-howe-30-minute-shift"),
    pytest.param(KOLKATA, id="kolkata"),
    pytest.param("UTC", id="utc"),
]
YEAR_EXPRESSIONS = ["0 9 * * 1-5", "30 2 * * *", "30 1 * * *", "0 * * * *", "*/15 * * * *", "0 0 1 * *", "45 23 * * 0"]
POLICIES = [timing.DST_VIXIE, timing.DST_SKIP_MISSING, timing.DST_REPEAT_TWICE]
_EPOCH_DAY = EPOCH.date().toordinal()


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


def _matching_walls(expression: str, first_day: date, last_day: date) -> list[int]:
    """Wall-clock minutes (counted from 1970-01-01 00:00) the expression matches, by the man page."""
    minute, hour, dom, month, dow = expression.split()
    minutes, hours = sorted(_field_values(minute, 0, 59)), sorted(_field_values(hour, 0, 23))
    days, months = _field_values(dom, 1, 31), _field_values(month, 1, 12)
    weekdays = {day % 7 for day in _field_values(dow, 0, 7)}
    either = not dom.startswith("*") and not dow.startswith("*")  # both restricted: either may match
    walls = []
    for ordinal in range(first_day.toordinal(), last_day.toordinal() + 1):
        day = date.fromordinal(ordinal)
        in_dom, in_dow = day.day in days, day.isoweekday() % 7 in weekdays
        if day.month in months and ((in_dom or in_dow) if either else (in_dom and in_dow)):
            base = (ordinal - _EPOCH_DAY) * 1440
            walls.extend(base + h * 60 + m for h in hours for m in minutes)
    return walls


def _wildcard_hour(expression: str) -> bool:
    """The README's test: the hour field is `*` or `*/n`."""
    hour = expression.split()[1]
    return hour == "*" or hour.startswith("*/")


@lru_cache(maxsize=8)
def _year_walk(tz_name: str) -> tuple[int, array, tuple[tuple[int, int], ...]]:
    """Every UTC minute from two days before 2027 to two days after, once: the wall minute it shows.

    Returns the first UTC minute (from the epoch), the wall minutes, and the index ranges in which
    the wall clock only moves forward (it moves back at each fall-back).
    """
    tz = ZoneInfo(tz_name)
    first = int((YEAR_START - timedelta(days=2)).timestamp()) // 60
    count = int((YEAR_END - YEAR_START + timedelta(days=4)) / MINUTE)
    offsets = [datetime.fromtimestamp(minute * 60, tz).utcoffset() for minute in range(first, first + count)]
    in_minutes = {offset: offset // MINUTE for offset in set(offsets)}
    assert all(offset % MINUTE == timedelta(0) for offset in in_minutes)
    walls = array("q", [first + index + in_minutes[offset] for index, offset in enumerate(offsets)])
    backs = [index for index in range(1, count) if walls[index] <= walls[index - 1]]
    edges = [0, *backs, count]
    return first, walls, tuple(zip(edges, edges[1:], strict=False))


@lru_cache(maxsize=256)
def reference_year(expression: str, tz_name: str, policy: str) -> list[datetime]:
    """The slots of 2027 (after 2027-01-01T00:00Z, up to 2028-01-01T00:00Z) by the README's rules."""
    first, walls, runs = _year_walk(tz_name)
    wildcard = _wildcard_hour(expression)
    minutes = set()
    first_day = date.fromordinal(_EPOCH_DAY + walls[0] // 1440)
    last_day = date.fromordinal(_EPOCH_DAY + walls[-1] // 1440)
    for wall in _matching_walls(expression, first_day, last_day):
        shown_at, gap_end = [], None
        for low, high in runs:
            if walls[low] <= wall <= walls[high - 1]:
                index = bisect.bisect_left(walls, wall, low, high)
                if walls[index] == wall:
                    shown_at.append(index)
                elif gap_end is None:
                    gap_end = index
        if shown_at:
            minutes.update(shown_at if wildcard or policy == timing.DST_REPEAT_TWICE else shown_at[:1])
        elif gap_end is not None and not wildcard and policy != timing.DST_SKIP_MISSING:
            minutes.add(gap_end)
    slots = (EPOCH + MINUTE * (first + index) for index in sorted(minutes))
    return [slot for slot in slots if YEAR_START < slot <= YEAR_END]


@lru_cache(maxsize=8)
def _changes(tz_name: str) -> list[datetime]:
    """The first UTC minutes of 2027 whose offset differs from the minute before (from the walk)."""
    first, walls, _ = _year_walk(tz_name)
    return [
        EPOCH + MINUTE * (first + index)
        for index in range(1, len(walls))
        if walls[index] - walls[index - 1] != 1 and YEAR_START < EPOCH + MINUTE * (first + index) <= YEAR_END
    ]


def _sample_points(slots: list[datetime], tz_name: str) -> list[datetime]:
    """Instants about every 4 hours, every 7 minutes for 3 hours either side of each DST change,
    and each slot within a day of a change and the second before it."""
    every = timedelta(hours=4, minutes=11, seconds=7)
    points = {YEAR_START + every * i for i in range(int((YEAR_END - YEAR_START) / every) + 1)}
    changes = _changes(tz_name)
    for change in changes:
        points.update(change + timedelta(minutes=7 * i, seconds=3) for i in range(-26, 27))
        points.update({change, change - timedelta(seconds=1)})
    for change in changes:
        near = slots[
            bisect.bisect_left(slots, change - timedelta(days=1)) : bisect.bisect_right(
                slots, change + timedelta(days=1)
            )
        ]
        points.update(near)
        points.update(slot - timedelta(seconds=1) for slot in near)
    return sorted(point for point in points if YEAR_START <= point <= YEAR_END)


def test_reference__agrees_with_hand_checked_dst_cases():
    """The reference itself gives the README's answers for the gap and the fold in Los Angeles."""

    def on(day: datetime, expression: str, policy: str = timing.DST_VIXIE) -> list[datetime]:
        return [slot for slot in reference_year(expression, LA, policy) if day <= slot < day + timedelta(days=1)]

    assert on(utc(2027, 3, 14), "30 2 * * *") == [utc(2027, 3, 14, 10)]
    assert on(utc(2027, 3, 14), "30 2 * * *", timing.DST_SKIP_MISSING) == []
    assert on(utc(2027, 11, 7), "30 1 * * *") == [utc(2027, 11, 7, 8, 30)]
    assert on(utc(2027, 11, 7), "30 1 * * *", timing.DST_REPEAT_TWICE) == [
        utc(2027, 11, 7, 8, 30),
        utc(2027, 11, 7, 9, 30),
    ]
    assert utc(2027, 11, 7, 8) in on(utc(2027, 11, 7), "0 * * * *")
    assert utc(2027, 11, 7, 9) in on(utc(2027, 11, 7), "0 * * * *")
    assert [slot.hour for slot in on(utc(2027, 3, 14), "0 * * * *")][8:11] == [8, 9, 10]
    # Local days: 25 hours on 2027-11-07 (07:00Z-08:00Z next day), 23 on 2027-03-14 (08:00Z-07:00Z).
    for start, end, hours in (
        (utc(2027, 11, 7, 7), utc(2027, 11, 8, 8), 25),
        (utc(2027, 3, 14, 8), utc(2027, 3, 15, 7), 23),
    ):
        hourly = reference_year("0 * * * *", LA, timing.DST_VIXIE)
        quarterly = reference_year("*/15 * * * *", LA, timing.DST_VIXIE)
        assert len([slot for slot in hourly if start <= slot < end]) == hours
        assert len([slot for slot in quarterly if start <= slot < end]) == 4 * hours


@pytest.mark.parametrize("tz_name", YEAR_ZONES)
def test_upcoming__whole_year_every_minute_matches_reference(tz_name):
    """Over all of 2027, for each expression and DST policy, upcoming() equals the reference."""
    for expression in YEAR_EXPRESSIONS:
        for policy in POLICIES:
            expected = reference_year(expression, tz_name, policy)
            slots = timing.upcoming(cron(expression, tz_name, policy), YEAR_START, len(expected) + 1)
            got = [slot for slot in slots if slot <= YEAR_END]
            assert got == expected, f"{expression!r} in {tz_name}, {policy}"


@pytest.mark.parametrize("tz_name", YEAR_ZONES)
def test_latest_slot_at_or_before__whole_year_matches_reference(tz_name):
    """At instants through 2027, dense around DST changes, the latest slot equals the reference."""
    for expression in YEAR_EXPRESSIONS:
        for policy in POLICIES:
            cadence = cron(expression, tz_name, policy)
            slots = reference_year(expression, tz_name, policy)
            for point in _sample_points(slots, tz_name):
                index = bisect.bisect_right(slots, point)
                got = timing.latest_slot_at_or_before(cadence, point)
                if index:
                    assert got == slots[index - 1], f"{expression!r} in {tz_name}, {policy}, at {point}"
                else:
                    assert got is not None and got <= YEAR_START, f"{expression!r} in {tz_name}, {policy}, at {point}"


@pytest.mark.parametrize("tz_name", YEAR_ZONES)
def test_next_and_latest__agree_at_random_instants(tz_name):
    """At seeded random instants (half near a DST change), next_slot_after and latest_slot_at_or_before agree."""
    rng = random.Random(f"timing-{tz_name}")
    changes = _changes(tz_name) or [YEAR_START + timedelta(days=180)]
    year_seconds = int((YEAR_END - YEAR_START).total_seconds())
    for expression in [*YEAR_EXPRESSIONS, "*/7 1-3 * * *", "0 0 29 2 *", "* * * * *"]:
        for policy in POLICIES:
            cadence = cron(expression, tz_name, policy)
            for draw in range(120):
                if draw % 2:
                    point = rng.choice(changes) + timedelta(
                        microseconds=rng.randint(-3 * 3600 * 10**6, 3 * 3600 * 10**6)
                    )
                else:
                    point = YEAR_START + timedelta(
                        seconds=rng.randint(0, year_seconds), microseconds=rng.randint(0, 999_999)
                    )
                latest = timing.latest_slot_at_or_before(cadence, point)
                following = timing.next_slot_after(cadence, point)
                where = f"{expression!r} in {tz_name}, {policy}, at {point}"
                assert following is not None and following > point, where
                assert timing.latest_slot_at_or_before(cadence, following) == following, where
                if latest is None:
                    continue
                assert latest <= point, where
                assert timing.next_slot_after(cadence, latest - timedelta(microseconds=1)) == latest, where
                assert timing.next_slot_after(cadence, latest) == following, where
                assert timing.latest_slot_at_or_before(cadence, following - timedelta(microseconds=1)) == latest, where


def test_next_slot_after__typical_call_is_well_under_a_millisecond():
    """Away from DST changes one call for a minute or hour cron takes far less than 1 ms (beat calls it per entry)."""
    cadences = [cron("*/15 * * * *", LA), cron("0 * * * *", LORD_HOWE), cron("0 9 * * 1-5", "Europe/London")]
    points = [utc(2027, 6, 1, 12) + timedelta(minutes=37 * i, seconds=i) for i in range(500)]
    for cadence in cadences:  # warm the caches, as a running beat has them
        timing.next_slot_after(cadence, points[0])
        timing.latest_slot_at_or_before(cadence, points[0])
    started = perf_counter()
    for cadence in cadences:
        for point in points:
            timing.next_slot_after(cadence, point)
            timing.latest_slot_at_or_before(cadence, point)
    per_call = (perf_counter() - started) / (2 * len(cadences) * len(points))
    assert per_call < 0.0005, f"{per_call * 1e6:.0f} µs per call"


# --- interval and once --------------------------------------------------------------------------


def test_slot_searches__the_two_passes_of_a_repeated_hour_are_different_instants():
    """01:30 on New York's fall-back night comes twice (EDT, then EST). In one zone Python compares
    and hashes datetimes by wall time, so the answers for one pass must not be reused for the other
    (the searches remember recent answers)."""
    new_york = ZoneInfo("America/New_York")
    first = datetime(2027, 11, 7, 1, 30, tzinfo=new_york)  # 05:30 UTC
    second = datetime(2027, 11, 7, 1, 30, tzinfo=new_york, fold=1)  # 06:30 UTC
    cadence = Cadence(kind=timing.INTERVAL, interval_seconds=900)
    for _ in range(2):  # the second round answers from what the first remembered
        assert timing.next_slot_after(cadence, first) == utc(2027, 11, 7, 5, 45)
        assert timing.next_slot_after(cadence, second) == utc(2027, 11, 7, 6, 45)
        assert timing.latest_slot_at_or_before(cadence, first) == utc(2027, 11, 7, 5, 30)
        assert timing.latest_slot_at_or_before(cadence, second) == utc(2027, 11, 7, 6, 30)
    once_first = Cadence(kind=timing.ONCE, run_at=first)
    once_second = Cadence(kind=timing.ONCE, run_at=second)
    assert once_first == once_second  # equal as dataclasses: the same wall time in one zone
    for _ in range(2):
        # (An instant in a repeated hour never compares equal to one in another zone: compare in UTC.)
        assert timing.next_slot_after(once_first, utc(2027, 11, 7, 5)).astimezone(UTC) == utc(2027, 11, 7, 5, 30)
        assert timing.next_slot_after(once_second, utc(2027, 11, 7, 5)).astimezone(UTC) == utc(2027, 11, 7, 6, 30)
        assert timing.next_slot_after(once_first, utc(2027, 11, 7, 5, 40)) is None
        assert timing.next_slot_after(once_second, utc(2027, 11, 7, 5, 40)).astimezone(UTC) == utc(2027, 11, 7, 6, 30)


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
