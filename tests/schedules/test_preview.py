"""selectors.trigger_preview and trigger_describe: the next runs and every rule in words, saved or not."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from schedules import services, timing
from schedules.models import Trigger
from schedules.selectors import trigger_describe, trigger_preview
from tests.factories import TriggerFactory, WorkflowFactory

LA = ZoneInfo("America/Los_Angeles")
# A Friday afternoon.
FRIDAY = datetime(2026, 5, 1, 15, 30, tzinfo=UTC)
WEEKDAY_HOURS = {"days": [1, 2, 3, 4, 5], "ranges": [["09:00", "17:00"]]}


def _trigger(**fields: object) -> Trigger:
    """An unsaved trigger (no owner or workflow needed for the timing)."""
    values: dict[str, object] = {"name": "t", "kind": "cron", "cron": "0 * * * *", "timezone": "UTC"}
    values.update(fields)
    return Trigger(**values)


def _at(items: list[dict]) -> list[datetime]:
    return [item["at"] for item in items]


def _brute_force(trigger: Trigger, now: datetime, count: int) -> list[tuple[datetime, bool]]:
    """What the preview should list, by looking at every slot in turn (no jumping)."""
    window = timing.parse_window(trigger.execution_window)
    zone = trigger.cadence.zone
    found: list[tuple[datetime, bool]] = []
    runs = 0
    for slot in timing.upcoming(trigger.cadence, now, 20_000):
        inside = window is None or window.contains(slot, zone)
        if not inside:
            if not found or found[-1][1]:
                found.append((slot, False))
            continue
        found.append((slot, True))
        runs += 1
        if runs == count:
            break
    return found


# --- trigger_preview ----------------------------------------------------------------------------


def test_trigger_preview__next_slots_in_utc_and_local_time():
    """Each item has the slot in UTC, the same instant in the trigger's zone, and runs=True."""
    trigger = _trigger(cron="0 9 * * 1-5", timezone="America/Los_Angeles")
    items = trigger_preview(trigger, count=3, now=FRIDAY)
    assert _at(items) == [
        datetime(2026, 5, 1, 16, 0, tzinfo=UTC),
        datetime(2026, 5, 4, 16, 0, tzinfo=UTC),
        datetime(2026, 5, 5, 16, 0, tzinfo=UTC),
    ]
    assert [item["local"].hour for item in items] == [9, 9, 9]
    assert all(item["local"].tzinfo == LA for item in items)
    assert all(item["at"].tzinfo == UTC for item in items)
    assert all(item["runs"] and item["reason"] == "" for item in items)


def test_trigger_preview__outside_window_listed_once_per_stretch_and_not_counted():
    """Slots outside the window are listed once per closed stretch, with runs=False, and do not count."""
    trigger = _trigger(execution_window=WEEKDAY_HOURS)
    items = trigger_preview(trigger, count=4, now=FRIDAY)
    assert [(item["at"], item["runs"], item["reason"]) for item in items] == [
        (datetime(2026, 5, 1, 16, 0, tzinfo=UTC), True, ""),
        (datetime(2026, 5, 1, 17, 0, tzinfo=UTC), False, "outside_window"),
        (datetime(2026, 5, 4, 9, 0, tzinfo=UTC), True, ""),
        (datetime(2026, 5, 4, 10, 0, tzinfo=UTC), True, ""),
        (datetime(2026, 5, 4, 11, 0, tzinfo=UTC), True, ""),
    ]


@pytest.mark.parametrize(
    ("cron", "zone", "window", "now"),
    [
        # Every 5 minutes, office hours, across the weekend.
        ("*/5 * * * *", "Europe/Berlin", WEEKDAY_HOURS, FRIDAY),
        # A window range inside the hour a fall-back repeats (Los Angeles, 2026-11-01).
        (
            "*/10 * * * *",
            "America/Los_Angeles",
            {"ranges": [["01:00", "01:30"]]},
            datetime(2026, 10, 31, 12, tzinfo=UTC),
        ),
        # A window range inside the hour a spring-forward skips (Los Angeles, 2027-03-14).
        (
            "*/15 * * * *",
            "America/Los_Angeles",
            {"ranges": [["02:00", "03:30"]]},
            datetime(2027, 3, 13, 12, tzinfo=UTC),
        ),
        # Weekends only, with several ranges.
        ("0,30 * * * *", "Asia/Kolkata", {"days": [0, 6], "ranges": [["00:00", "01:00"], ["22:00", "24:00"]]}, FRIDAY),
    ],
)
def test_trigger_preview__jumping_over_closed_windows_matches_looking_at_every_slot(cron, zone, window, now):
    """Jumping to the window's next opening finds the same runs as checking every slot, DST changes included."""
    trigger = _trigger(cron=cron, timezone=zone, execution_window=window)
    items = trigger_preview(trigger, count=12, now=now)
    assert [(item["at"], item["runs"]) for item in items] == _brute_force(trigger, now, 12)


def test_trigger_preview__window_that_never_opens_for_the_schedule_gives_up_quickly():
    """A schedule whose slots all fall outside the window lists one skipped slot, and returns fast."""
    trigger = _trigger(cron="0 3 * * *", execution_window={"ranges": [["09:00", "17:00"]]})
    started = time.perf_counter()
    items = trigger_preview(trigger, count=5, now=FRIDAY)
    assert time.perf_counter() - started < 5
    assert [(item["at"], item["reason"]) for item in items] == [
        (datetime(2026, 5, 2, 3, 0, tzinfo=UTC), "outside_window")
    ]


def test_trigger_preview__stops_after_the_runs_max_runs_leaves():
    """With max_runs, the preview lists only the runs remaining; none once they are used up."""
    assert len(trigger_preview(_trigger(max_runs=10, run_count=8), count=5, now=FRIDAY)) == 2
    assert trigger_preview(_trigger(max_runs=3, run_count=3), count=5, now=FRIDAY) == []


def test_trigger_preview__max_runs_counts_only_slots_that_run():
    """Skipped (outside-window) slots do not use up max_runs, as at fire time."""
    trigger = _trigger(max_runs=2, execution_window=WEEKDAY_HOURS)
    items = trigger_preview(trigger, count=5, now=FRIDAY)
    assert [item["runs"] for item in items] == [True, False, True]


def test_trigger_preview__honours_start_and_end():
    """No slot before start_at (a slot right at it counts) or after end_at."""
    start = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
    end = datetime(2026, 5, 10, 14, 0, tzinfo=UTC)
    items = trigger_preview(_trigger(start_at=start, end_at=end), count=5, now=FRIDAY)
    assert _at(items) == [start, start + timedelta(hours=1), end]


def test_trigger_preview__follows_the_dst_policy():
    """A fixed time skipped by spring-forward runs at the gap's end (vixie) or not at all (skip_missing)."""
    now = datetime(2027, 3, 12, 12, tzinfo=UTC)
    vixie = trigger_preview(_trigger(cron="30 2 * * *", timezone="America/Los_Angeles"), count=3, now=now)
    skip = trigger_preview(
        _trigger(cron="30 2 * * *", timezone="America/Los_Angeles", dst_policy="skip_missing"), count=3, now=now
    )
    gap_end = datetime(2027, 3, 14, 10, 0, tzinfo=UTC)  # 03:00 PDT
    assert gap_end in _at(vixie)
    assert gap_end not in _at(skip)
    assert [item["local"].strftime("%m-%d %H:%M") for item in skip] == ["03-13 02:30", "03-15 02:30", "03-16 02:30"]


def test_trigger_preview__interval_from_its_anchor():
    """Interval slots are anchor + k * interval."""
    anchor = datetime(2026, 1, 1, 0, 7, tzinfo=UTC)
    trigger = _trigger(kind="interval", cron="", interval_seconds=3600, anchor_at=anchor)
    assert [item["at"].minute for item in trigger_preview(trigger, count=3, now=FRIDAY)] == [7, 7, 7]


def test_trigger_preview__paused_trigger_lists_slots_that_do_not_run():
    """A paused trigger's slots are listed with runs=False, reason paused (and still counted)."""
    items = trigger_preview(_trigger(enabled=False), count=3, now=FRIDAY)
    assert [(item["runs"], item["reason"]) for item in items] == [(False, "paused")] * 3


def test_trigger_preview__completed_trigger_has_no_runs():
    """A completed trigger has nothing to preview."""
    assert trigger_preview(_trigger(completed_at=FRIDAY), count=3, now=FRIDAY) == []


@pytest.mark.django_db
def test_trigger_preview__inactive_workflow_slots_do_not_run(trigger):
    """Slots of a trigger whose workflow is inactive are listed as skipped (workflow_inactive)."""
    trigger.workflow.is_active = False
    trigger.workflow.save()
    items = trigger_preview(trigger, count=2)
    assert [(item["runs"], item["reason"]) for item in items] == [(False, "workflow_inactive")] * 2


@pytest.mark.django_db
def test_trigger_preview__saved_trigger_agrees_with_next_run_at(workflow):
    """The first previewed slot of a saved trigger is its next_run_at."""
    trigger = TriggerFactory(workflow=workflow, cron="*/5 * * * *", timezone="Asia/Tokyo")
    items = trigger_preview(trigger, count=3)
    assert items[0]["at"] == trigger.next_run_at
    assert len(items) == 3


@pytest.mark.django_db
def test_trigger_preview__of_an_unsaved_trigger_after_validation(workflow):
    """An unsaved trigger validated by trigger_validate previews without being saved."""
    trigger = Trigger(
        owner=workflow.owner,
        workflow=workflow,
        name="draft",
        kind="cron",
        cron="0 9 * * MON-FRI",
        timezone="Europe/Paris",
        max_runs=2,
        execution_window={"days": [2, 3, 4]},
    )
    services.trigger_validate(trigger=trigger)
    items = trigger_preview(trigger, count=5, now=FRIDAY)
    assert [(item["local"].strftime("%a %H:%M"), item["reason"]) for item in items] == [
        ("Mon 09:00", "outside_window"),
        ("Tue 09:00", ""),
        ("Wed 09:00", ""),
    ]
    assert not Trigger.objects.exists()


@pytest.mark.django_db
def test_trigger_validate__refuses_an_unsaved_trigger_with_a_bad_window(workflow):
    """A draft with a malformed window is refused before any preview (the caller validates)."""
    trigger = Trigger(
        owner=workflow.owner, workflow=workflow, name="draft", kind="cron", cron="* * * * *", execution_window={"x": 1}
    )
    with pytest.raises(ValidationError, match="execution_window"):
        services.trigger_validate(trigger=trigger)


# --- trigger_describe ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_trigger_describe__every_rule_in_words(workflow, admin_user):
    """describe names the schedule, state (who paused it, when, why) and each rule, plus the next runs."""
    fallback = WorkflowFactory(owner=workflow.owner, name="Page the on-call")
    trigger = TriggerFactory(
        workflow=workflow,
        cron="0 9 * * 1-5",
        timezone="America/Los_Angeles",
        dst_policy="skip_missing",
        start_at=timezone.now() + timedelta(days=1),
        max_runs=10,
        jitter_seconds=30,
        execution_window=WEEKDAY_HOURS,
        catchup="all",
        catchup_window_seconds=7200,
        overlap="buffer_one",
        priority="high",
        max_attempts=4,
        max_retry_duration_seconds=600,
        pause_after_failures=3,
        notify_emails="ops@example.com",
        notify_webhook_url="https://hooks.example.com/x?token=secret",
        fallback_workflow=fallback,
        keep_failed=50,
    )
    services.trigger_pause(trigger=trigger, reason="quarter close", by=admin_user)
    trigger.refresh_from_db()
    described = trigger_describe(trigger, count=2)
    assert described["schedule"] == "At 09:00, Monday through Friday (America/Los_Angeles)"
    assert described["status"] == "paused"
    assert described["state"].startswith("Paused since ")
    assert f"by {admin_user.username}: quarter close" in described["state"]
    rules = described["rules"]
    assert set(rules) == {
        "bounds", "max_runs", "window", "jitter", "dst_policy", "catchup", "overlap", "priority",
        "retries", "failures", "notifications", "retention",
    }  # fmt: skip
    assert rules["bounds"].startswith("From ")
    assert "0 of 10 scheduled runs done, 10 remaining" in rules["max_runs"]
    assert "Only Mon, Tue, Wed, Thu, Fri, 09:00-17:00 (America/Los_Angeles)" in rules["window"]
    assert "random 0-30 s" in rules["jitter"]
    assert "(skip_missing)" in rules["dst_policy"]
    assert "(7200 s)" in rules["catchup"]
    assert rules["overlap"].startswith("Run right after the previous one")
    assert "'high' queue" in rules["priority"]
    assert "Up to 4 calls per slot" in rules["retries"] and "over 600 s ago" in rules["retries"]
    assert "Pauses after 3 failed executions in a row (0 in a row now)" in rules["failures"]
    assert "'Page the on-call'" in rules["failures"]
    assert "ops@example.com" in rules["notifications"] and "https://hooks.example.com/x" in rules["notifications"]
    assert "secret" not in rules["notifications"]
    assert "the last 50 failed," in rules["retention"] and "(default)" in rules["retention"]
    assert [item["reason"] for item in described["next_runs"]] == ["paused", "paused"]


def test_trigger_describe__defaults_and_other_kinds():
    """An unsaved interval trigger with defaults: no bounds, no window, DST does not apply."""
    described = trigger_describe(_trigger(kind="interval", cron="", interval_seconds=900), count=1, now=FRIDAY)
    assert described["schedule"] == "Every 15 minutes"
    assert described["state"] == "Active"
    assert described["rules"]["bounds"] == "No start or end."
    assert described["rules"]["window"] == "Always (no execution window)."
    assert described["rules"]["dst_policy"].startswith("Does not apply")
    assert described["rules"]["max_runs"].startswith("No limit")
    assert described["rules"]["notifications"] == "None."
    assert _at(described["next_runs"]) == [datetime(2026, 5, 1, 15, 45, tzinfo=UTC)]


def test_trigger_describe__wildcard_hour_ignores_the_dst_policy():
    """An hourly cron follows real time, so the DST policy is said not to apply."""
    assert "wildcard hour" in trigger_describe(_trigger(cron="0 * * * *"), count=0)["rules"]["dst_policy"]


def test_trigger_describe__invalid_window_says_so_instead_of_failing():
    """A describe of a trigger with an invalid window still answers, saying what is wrong."""
    described = trigger_describe(_trigger(execution_window={"days": "weekdays"}), now=FRIDAY)
    assert described["rules"]["window"].startswith("Invalid: ")
    assert described["next_runs"] == []
    assert "Cannot compute the next runs" in described["state"]


@pytest.mark.django_db
def test_trigger_describe__completed_trigger(trigger):
    """A completed trigger says when it completed and has no next runs."""
    Trigger.objects.filter(pk=trigger.pk).update(completed_at=FRIDAY)
    trigger.refresh_from_db()
    described = trigger_describe(trigger)
    assert described["status"] == "completed"
    assert described["state"] == "Completed at 2026-05-01 15:30 UTC"
    assert described["next_runs"] == []
