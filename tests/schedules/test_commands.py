"""The schedules management commands: trigger, rebuild_beat, demo and healthcheck."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError

from schedules import dispatch, services
from schedules.beat import FIRE_TASK
from schedules.models import Execution, ExecutionOrigin, ExecutionStatus, Trigger
from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from workflows.models import Workflow


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def create_args(user, workflow, *schedule: str, name: str = "Morning report") -> list[str]:
    return ["trigger", "create", "--owner", user.username, "--workflow", str(workflow.pk), "--name", name, *schedule]


def assert_nothing_created() -> None:
    assert not Trigger.objects.exists()
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()


# --- trigger create -------------------------------------------------------------------------------


def test_trigger_command__create_cron_prints_id_schedule_and_next_run(user, workflow):
    """create --cron makes a trigger and its PeriodicTask and prints id, schedule and next run (UTC and local)."""
    out = run(*create_args(user, workflow, "--cron", "0 9 * * MON-FRI", "--timezone", "America/Los_Angeles"))
    trigger = Trigger.objects.get()
    assert trigger.kind == "cron" and trigger.timezone == "America/Los_Angeles" and trigger.enabled
    assert trigger.periodic_task is not None and trigger.periodic_task.enabled
    assert f"Created trigger {trigger.pk} " in out
    assert "At 09:00, Monday through Friday (America/Los_Angeles)" in out
    assert trigger.next_run_at.strftime("%Y-%m-%d %H:%M:%S UTC") in out
    assert "09:00:00 P" in out  # PST or PDT


def test_trigger_command__create_by_workflow_name_with_options(user, workflow):
    """create accepts the workflow's name and sets inputs, retry options and --paused."""
    run(
        "trigger", "create", "--owner", user.username, "--workflow", workflow.name, "--name", "Nightly",
        "--cron", "@daily", "--inputs", '{"report": "weekly"}', "--max-attempts", "5",
        "--min-backoff", "2", "--max-backoff", "60", "--paused",
    )  # fmt: skip
    trigger = Trigger.objects.get()
    assert trigger.workflow == workflow
    assert trigger.inputs == {"report": "weekly"}
    assert (trigger.max_attempts, trigger.min_backoff_seconds, trigger.max_backoff_seconds) == (5, 2, 60)
    assert not trigger.enabled and not trigger.periodic_task.enabled


def test_trigger_command__create_in_seconds_runs_once_from_now(user, workflow):
    """create --in 600 makes a once trigger whose run_at is now + 600 s."""
    before = timezone.now()
    run(*create_args(user, workflow, "--in", "600"))
    after = timezone.now()
    trigger = Trigger.objects.get()
    assert trigger.kind == "once"
    assert before + timedelta(seconds=600) <= trigger.run_at <= after + timedelta(seconds=600)


def test_trigger_command__create_run_at_without_offset_is_read_in_timezone(user, workflow):
    """create --run-at without an offset is local time in --timezone; with an offset the offset wins."""
    run(*create_args(user, workflow, "--run-at", "2030-01-01T09:00", "--timezone", "Europe/Paris"))
    run(*create_args(user, workflow, "--run-at", "2030-01-01T09:00+00:00", "--timezone", "Europe/Paris", name="b"))
    assert Trigger.objects.get(name="Morning report").run_at == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    assert Trigger.objects.get(name="b").run_at == datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def test_trigger_command__create_every_makes_interval_trigger(user, workflow):
    """create --every makes an interval trigger."""
    out = run(*create_args(user, workflow, "--every", "900"))
    trigger = Trigger.objects.get()
    assert (trigger.kind, trigger.interval_seconds) == ("interval", 900)
    assert "Every 15 minutes" in out


def test_trigger_command__create_bad_cron_fails_and_creates_nothing(user, workflow):
    """A cron minute out of range is a CommandError naming --cron and the minute field; nothing is created."""
    with pytest.raises(CommandError, match=r"--cron: minute must be 0-59"):
        run(*create_args(user, workflow, "--cron", "61 * * * *"))
    assert_nothing_created()


def test_trigger_command__create_cron_that_never_fires_fails(user, workflow):
    """A cron expression that never fires (February 30th) is refused."""
    with pytest.raises(CommandError, match=r"--cron: .*never fires"):
        run(*create_args(user, workflow, "--cron", "0 0 30 2 *"))
    assert_nothing_created()


def test_trigger_command__create_unknown_timezone_fails(user, workflow):
    """An unknown --timezone is refused with an example of a valid one; nothing is created."""
    with pytest.raises(CommandError, match=r"--timezone: 'Mars/Base' is not an IANA time zone"):
        run(*create_args(user, workflow, "--cron", "* * * * *", "--timezone", "Mars/Base"))
    assert_nothing_created()


@pytest.mark.parametrize("value", ["-5", "0", "soon"])
def test_trigger_command__create_in_not_positive_fails(user, workflow, value):
    """--in must be a positive whole number of seconds; nothing is created."""
    with pytest.raises(CommandError, match=r"argument --in"):
        run(*create_args(user, workflow, "--in", value))
    assert_nothing_created()


def test_trigger_command__create_run_at_in_past_or_malformed_fails(user, workflow):
    """--run-at must be a valid ISO 8601 time in the future."""
    with pytest.raises(CommandError, match=r"--run-at: must be in the future"):
        run(*create_args(user, workflow, "--run-at", "2001-01-01T00:00"))
    with pytest.raises(CommandError, match=r"--run-at: 'tomorrow' is not an ISO 8601 time"):
        run(*create_args(user, workflow, "--run-at", "tomorrow"))
    assert_nothing_created()


def test_trigger_command__create_interval_below_minimum_fails(user, workflow, settings):
    """--every below SCHEDULER_MIN_INTERVAL_SECONDS is refused, naming --every."""
    settings.SCHEDULER_MIN_INTERVAL_SECONDS = 60
    with pytest.raises(CommandError, match=r"--every: must be at least 60 seconds"):
        run(*create_args(user, workflow, "--every", "30"))
    assert_nothing_created()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [("{bad", r"--inputs: not valid JSON"), ("[1, 2]", r"--inputs: must be a JSON object")],
)
def test_trigger_command__create_bad_inputs_fails(user, workflow, inputs, message):
    """--inputs must be a JSON object; nothing is created."""
    with pytest.raises(CommandError, match=message):
        run(*create_args(user, workflow, "--cron", "* * * * *", "--inputs", inputs))
    assert_nothing_created()


def test_trigger_command__create_needs_exactly_one_schedule(user, workflow):
    """Exactly one of --cron, --preset, --run-at, --in and --every is required."""
    with pytest.raises(CommandError, match=r"one of the arguments --cron --preset --run-at --in --every is required"):
        run(*create_args(user, workflow))
    with pytest.raises(CommandError, match=r"not allowed with argument"):
        run(*create_args(user, workflow, "--cron", "* * * * *", "--every", "60"))
    assert_nothing_created()


def test_trigger_command__create_unknown_owner_or_workflow_fails(user, workflow, other_user):
    """An unknown --owner, or a --workflow the owner does not have, is refused."""
    with pytest.raises(CommandError, match=r"--owner: there is no user 'nobody'"):
        run("trigger", "create", "--owner", "nobody", "--workflow", str(workflow.pk), "--name", "x", "--every", "60")
    with pytest.raises(CommandError, match=r"--workflow: no workflow of user .* 'nope'"):
        run("trigger", "create", "--owner", user.username, "--workflow", "nope", "--name", "x", "--every", "60")
    with pytest.raises(CommandError, match=rf"--workflow: no workflow of user '{other_user.username}'"):
        run(*create_args(other_user, workflow, "--every", "60"))
    assert_nothing_created()


def test_trigger_command__create_duplicate_name_fails(trigger):
    """A second trigger with the same owner and name is refused."""
    args = create_args(trigger.owner, trigger.workflow, "--every", "60", name=trigger.name)
    with pytest.raises(CommandError, match=r"already exists"):
        run(*args)
    assert Trigger.objects.count() == 1


def test_trigger_command__without_subcommand_fails(db):
    """`trigger` alone names the subcommands."""
    with pytest.raises(
        CommandError, match=r"create,update,list,show,describe,preview,pause,resume,run,backfill,history"
    ):
        run("trigger")


# --- trigger list ---------------------------------------------------------------------------------


def test_trigger_command__list_shows_triggers_with_last_status(trigger):
    """list shows id, name, workflow, kind, schedule, zone, status, runs, next run and last status."""
    Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=timezone.now(), status=ExecutionStatus.FAILED
    )
    out = run("trigger", "list")
    row = next(line for line in out.splitlines() if line.startswith(str(trigger.pk)))
    for text in (trigger.name, trigger.workflow.name, "cron", "At 09:00, Monday through Friday (UTC)", "UTC",
                 "active", trigger.next_run_at.strftime("%Y-%m-%d %H:%M:%S UTC"), "failed"):  # fmt: skip
        assert text in row
    assert "LAST" in out.splitlines()[0]


def test_trigger_command__list_filters_by_owner_and_workflow(trigger, other_user):
    """--owner and --workflow keep only the matching triggers."""
    other = TriggerFactory(workflow=WorkflowFactory(owner=other_user), name="theirs")
    second = TriggerFactory(workflow=WorkflowFactory(owner=trigger.owner), name="second")
    by_owner = run("trigger", "list", "--owner", other_user.username)
    assert "theirs" in by_owner and trigger.name not in by_owner
    by_workflow = run("trigger", "list", "--owner", trigger.owner.username, "--workflow", trigger.workflow.name)
    assert trigger.name in by_workflow and second.name not in by_workflow and other.name not in by_workflow


def test_trigger_command__list_empty_and_unknown_owner(db):
    """An empty list says so; an unknown --owner is refused."""
    assert run("trigger", "list").strip() == "No triggers."
    with pytest.raises(CommandError, match=r"--owner: there is no user 'ghost'"):
        run("trigger", "list", "--owner", "ghost")


# --- trigger show ---------------------------------------------------------------------------------


def test_trigger_command__show_prints_fields_and_next_five_runs(workflow):
    """show prints the fields, the next 5 runs in UTC and local time, and the PeriodicTask."""
    trigger = TriggerFactory(workflow=workflow, cron="30 8 * * *", timezone="Asia/Tokyo", inputs={"k": "v"})
    out = run("trigger", "show", str(trigger.pk))
    assert f"Trigger {trigger.pk} '{trigger.name}'" in out
    assert "Asia/Tokyo" in out and '{"k": "v"}' in out and "Max attempts" in out
    assert f"trigger:{trigger.pk} (enabled)" in out
    runs = out.split("Next 5 runs:")[1].strip().splitlines()
    assert len(runs) == 5
    assert all("23:30:00 UTC" in line and "08:30:00 JST" in line for line in runs)


def test_trigger_command__show_never_prints_workflow_secret(trigger):
    """show never prints the workflow's signing secret."""
    out = run("trigger", "show", trigger.name)
    assert trigger.workflow.secret not in out
    assert trigger.workflow.secret[len("whsec_") :][:12] not in out


def test_trigger_command__show_unknown_trigger_fails(db):
    """An unknown id or name is a CommandError that names TRIGGER."""
    with pytest.raises(CommandError, match=r"TRIGGER: no trigger has the id or name 'nope'"):
        run("trigger", "show", "nope")


def test_trigger_command__name_shared_by_owners_needs_id_or_owner(trigger, other_user):
    """A name two owners use is refused unless --owner (or the id) says which."""
    theirs = TriggerFactory(workflow=WorkflowFactory(owner=other_user), name=trigger.name)
    with pytest.raises(CommandError, match=r"give its id or --owner"):
        run("trigger", "show", trigger.name)
    out = run("trigger", "show", trigger.name, "--owner", other_user.username)
    assert f"Trigger {theirs.pk} " in out


# --- pause, resume, run ---------------------------------------------------------------------------


def test_trigger_command__pause_disables_periodic_task(trigger):
    """pause disables the trigger and its PeriodicTask and keeps the reason."""
    out = run("trigger", "pause", str(trigger.pk), "--reason", "holiday")
    trigger.refresh_from_db()
    assert not trigger.enabled and trigger.pause_reason == "holiday"
    assert not PeriodicTask.objects.get(pk=trigger.periodic_task_id).enabled
    assert "Paused trigger" in out


def test_trigger_command__pause_twice_fails_clearly(trigger):
    """Pausing a paused trigger says it is already paused."""
    run("trigger", "pause", trigger.name)
    with pytest.raises(CommandError, match=r"already paused"):
        run("trigger", "pause", trigger.name)


def test_trigger_command__resume_enables_and_prints_next_run(trigger):
    """resume enables the trigger and its PeriodicTask and prints the next run."""
    services.trigger_pause(trigger=trigger)
    out = run("trigger", "resume", trigger.name)
    trigger.refresh_from_db()
    assert trigger.enabled and PeriodicTask.objects.get(pk=trigger.periodic_task_id).enabled
    assert "Next run:" in out


def test_trigger_command__resume_running_trigger_fails(trigger):
    """Resuming a trigger that is not paused is refused."""
    with pytest.raises(CommandError, match=r"is not paused"):
        run("trigger", "resume", trigger.name)


@pytest.mark.django_db(transaction=True)
def test_trigger_command__run_creates_manual_execution_and_sends_it(trigger, monkeypatch):
    """run records a manual execution with the merged inputs and sends it to the broker."""
    sent = []
    original = dispatch.publish

    def spy(attempts, **kwargs):
        sent.extend({"execution_id": attempt.execution_id, "attempt": attempt.attempt} for attempt in attempts)
        return original(attempts, **kwargs)

    monkeypatch.setattr(dispatch, "publish", spy)
    out = run("trigger", "run", str(trigger.pk), "--inputs", '{"extra": 1}')
    execution = Execution.objects.get()
    assert execution.manual and execution.status == ExecutionStatus.QUEUED
    assert execution.inputs == {"extra": 1}
    assert str(execution.pk) in out
    assert sent == [{"execution_id": str(execution.pk), "attempt": 1}]


@pytest.mark.django_db(transaction=True)
def test_trigger_command__run_with_broker_down_fails_clearly(trigger, monkeypatch):
    """If the broker cannot be reached, run says the execution is recorded and will be recovered."""

    monkeypatch.setattr(dispatch, "publish", lambda attempts, **kwargs: (0, OperationalError("connection refused")))
    with pytest.raises(CommandError, match=r"recorded but the broker could not be reached"):
        run("trigger", "run", str(trigger.pk))
    assert Execution.objects.filter(manual=True).count() == 1


def test_trigger_command__run_bad_inputs_creates_nothing(trigger):
    """run with --inputs that is not a JSON object is refused and records nothing."""
    with pytest.raises(CommandError, match=r"--inputs: not valid JSON"):
        run("trigger", "run", trigger.name, "--inputs", "{'single': 'quotes'}")
    with pytest.raises(CommandError, match=r"--inputs: must be a JSON object"):
        run("trigger", "run", trigger.name, "--inputs", '"text"')
    assert not Execution.objects.exists()


def test_trigger_command__run_inactive_workflow_fails(trigger):
    """run refuses a trigger whose workflow is inactive."""
    Workflow.objects.filter(pk=trigger.workflow_id).update(is_active=False)
    with pytest.raises(CommandError, match=r"is not active"):
        run("trigger", "run", trigger.name)
    assert not Execution.objects.exists()


# --- history --------------------------------------------------------------------------------------


def test_trigger_command__history_lists_newest_first(trigger):
    """history lists executions newest slot first with status, attempts, HTTP status, duration, run id, error."""
    now = timezone.now().replace(microsecond=0)
    Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=now - timedelta(hours=1),
        status=ExecutionStatus.SUCCEEDED, attempts=1, http_status=202, duration_ms=41, run_id="run-old",
    )  # fmt: skip
    Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=now, status=ExecutionStatus.FAILED,
        attempts=3, http_status=503, duration_ms=12, error="Service Unavailable " * 20,
    )  # fmt: skip
    lines = run("trigger", "history", trigger.name).splitlines()
    assert lines[0].startswith("SLOT (UTC)")
    assert "failed" in lines[1] and "503" in lines[1] and "..." in lines[1]
    assert "succeeded" in lines[2] and "202" in lines[2] and "41" in lines[2] and "run-old" in lines[2]
    limited = run("trigger", "history", trigger.name, "--limit", "1").splitlines()
    assert len(limited) == 2 and "failed" in limited[1]


def test_trigger_command__history_empty_and_bad_limit(trigger):
    """history says when there are no executions; --limit must be positive."""
    assert "has no executions yet" in run("trigger", "history", trigger.name)
    with pytest.raises(CommandError, match=r"argument --limit"):
        run("trigger", "history", trigger.name, "--limit", "0")


# --- create: the scheduling rules ----------------------------------------------------------------


def test_trigger_command__create_with_every_rule_option(user, workflow):
    """create sets bounds, window, jitter, catch-up, overlap, priority, failure, retry and retention options."""
    fallback = WorkflowFactory(owner=user, name="Fallback")
    run(
        *create_args(user, workflow, "--cron", "0 9 * * *", "--timezone", "Europe/Paris"),
        "--dst-policy", "repeat_twice", "--start-at", "2030-01-01T00:00", "--end-at", "2030-06-01T00:00+00:00",
        "--max-runs", "10", "--jitter", "30", "--window", '{"days": [1, 2, 3, 4, 5], "ranges": [["08:00", "18:00"]]}',
        "--catchup", "all", "--catchup-window", "7200", "--overlap", "buffer_one", "--priority", "high",
        "--pause-after-failures", "3", "--notify-emails", "ops@example.com, dev@example.com",
        "--notify-webhook", "https://hooks.example.com/t", "--fallback-workflow", "Fallback",
        "--max-doublings", "2", "--max-retry-duration", "600", "--keep-succeeded", "100", "--keep-failed", "0",
        "--retention-days", "30",
    )  # fmt: skip
    trigger = Trigger.objects.get()
    assert trigger.dst_policy == "repeat_twice"
    assert trigger.start_at == datetime(2029, 12, 31, 23, 0, tzinfo=UTC)  # read in Europe/Paris
    assert trigger.end_at == datetime(2030, 6, 1, 0, 0, tzinfo=UTC)
    assert (trigger.max_runs, trigger.jitter_seconds) == (10, 30)
    assert trigger.execution_window == {"days": [1, 2, 3, 4, 5], "ranges": [["08:00", "18:00"]]}
    assert (trigger.catchup, trigger.catchup_window_seconds, trigger.overlap, trigger.priority) == (
        "all",
        7200,
        "buffer_one",
        "high",
    )
    assert trigger.pause_after_failures == 3
    assert trigger.notify_emails == "ops@example.com, dev@example.com"
    assert trigger.notify_webhook_url == "https://hooks.example.com/t"
    assert trigger.fallback_workflow == fallback
    assert (trigger.max_doublings, trigger.max_retry_duration_seconds) == (2, 600)
    assert (trigger.keep_succeeded, trigger.keep_failed, trigger.retention_days) == (100, 0, 30)
    assert trigger.next_run_at >= trigger.start_at


def test_trigger_command__create_interval_with_anchor(user, workflow):
    """create --every with --anchor-at puts the slots at anchor + k * interval."""
    run(*create_args(user, workflow, "--every", "3600", "--anchor-at", "2026-01-01T00:07:00+00:00"))
    trigger = Trigger.objects.get()
    assert trigger.anchor_at == datetime(2026, 1, 1, 0, 7, tzinfo=UTC)
    assert trigger.next_run_at.minute == 7


def test_trigger_command__create_without_retry_options_takes_the_workflows(user):
    """Retry options left out come from the workflow's defaults."""
    workflow = WorkflowFactory(owner=user, max_attempts=7, min_backoff_seconds=2, max_doublings=1)
    run(*create_args(user, workflow, "--every", "60"))
    trigger = Trigger.objects.get()
    assert (trigger.max_attempts, trigger.min_backoff_seconds, trigger.max_doublings) == (7, 2, 1)


@pytest.mark.parametrize(
    ("preset", "cron", "description"),
    [
        (["--preset", "hourly", "--minute", "15"], "15 * * * *", "At 15 minutes past the hour"),
        (["--preset", "daily", "--at", "06:30"], "30 6 * * *", "At 06:30"),
        (["--preset", "weekdays", "--at", "9:00"], "0 9 * * 1-5", "At 09:00, Monday through Friday"),
        (["--preset", "weekly", "--day", "MON", "--at", "09:30"], "30 9 * * 1", "At 09:30, only on Monday"),
        (["--preset", "monthly", "--day", "1", "--at", "00:00"], "0 0 1 * *", "At 00:00, on day 1 of the month"),
    ],
)
def test_trigger_command__create_from_a_preset(user, workflow, preset, cron, description):
    """--preset (with --minute, --at, --day) makes the matching cron trigger."""
    out = run(*create_args(user, workflow, *preset, "--timezone", "Asia/Tokyo"))
    trigger = Trigger.objects.get()
    assert (trigger.kind, trigger.cron) == ("cron", cron)
    assert f"{description} (Asia/Tokyo)" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cron", "* * * * *", "--dst-policy", "sometimes"], r"argument --dst-policy: invalid choice: 'sometimes'"),
        (["--cron", "* * * * *", "--catchup", "never"], r"argument --catchup: invalid choice"),
        (["--cron", "* * * * *", "--overlap", "queue"], r"argument --overlap: invalid choice"),
        (["--cron", "* * * * *", "--priority", "urgent"], r"argument --priority: invalid choice"),
        (["--cron", "* * * * *", "--window", "weekdays"], r"--window: not valid JSON"),
        (["--cron", "* * * * *", "--window", '{"days": "weekdays"}'], r"--window: .*days must be a non-empty list"),
        (["--cron", "* * * * *", "--window", '{"ranges": [["17:00", "09:00"]]}'], r"--window: .*must end after it"),
        (["--cron", "* * * * *", "--jitter", "4000"], r"--jitter: .*less than or equal to 3600"),
        (["--cron", "* * * * *", "--jitter", "-1"], r"argument --jitter: must be 0 or more"),
        (["--cron", "* * * * *", "--max-runs", "0"], r"argument --max-runs: must be 1 or more"),
        (["--cron", "* * * * *", "--max-runs", "lots"], r"argument --max-runs: 'lots' is not a whole number or 'none'"),
        (["--cron", "* * * * *", "--start-at", "soon"], r"--start-at: 'soon' is not an ISO 8601 time"),
        (
            ["--cron", "* * * * *", "--start-at", "2031-01-01T00:00", "--end-at", "2030-01-01T00:00"],
            r"--end-at: must be after start_at",
        ),
        (["--cron", "* * * * *", "--anchor-at", "2030-01-01T00:00"], r"--anchor-at: only applies to interval"),
        (["--every", "60", "--jitter", "60"], r"--jitter: must be shorter than the interval"),
        (["--cron", "* * * * *", "--catchup", "all", "--catchup-window", "0"], r"--catchup-window: must be at least 1"),
        (["--cron", "* * * * *", "--notify-emails", "ops@, dev"], r"--notify-emails: 'ops@' is not an e-mail"),
        (["--cron", "* * * * *", "--notify-webhook", "ftp://x.example"], r"--notify-webhook: Enter a valid URL"),
        (["--cron", "* * * * *", "--fallback-workflow", "nope"], r"--fallback-workflow: no workflow of user"),
        (["--cron", "* * * * *", "--min-backoff", "100", "--max-backoff", "10"], r"--min-backoff: must not exceed"),
        (["--cron", "* * * * *", "--max-doublings", "31"], r"--max-doublings: .*less than or equal to 30"),
        (["--cron", "* * * * *", "--retention-days", "0"], r"argument --retention-days: must be 1 or more"),
        (["--preset", "daily"], r"--at: the daily preset needs time"),
        (["--preset", "hourly", "--at", "09:00"], r"--at: the hourly preset takes minute, not time"),
        (["--preset", "weekly", "--day", "someday", "--at", "09:00"], r"--day: day must be 0-6 \(0 = Sunday\)"),
        (["--preset", "daily", "--at", "25:00"], r"--at: time must be a time of day 'HH:MM'"),
        (["--preset", "monthly", "--day", "32", "--at", "09:00"], r"--day: day must be a day of the month, 1-31"),
        (["--preset", "fortnightly"], r"argument --preset: invalid choice"),
        (["--cron", "* * * * *", "--at", "09:00"], r"--at: only goes with --preset"),
        (["--cron", "* * * * *", "--preset", "daily"], r"argument --preset: not allowed with argument --cron"),
    ],
)
def test_trigger_command__create_bad_rule_option_fails_naming_it(user, workflow, extra, message):
    """Every bad rule option is a CommandError naming the option and what is allowed; nothing is created."""
    with pytest.raises(CommandError, match=message):
        run(*create_args(user, workflow, *extra))
    assert_nothing_created()


def test_trigger_command__create_fallback_must_be_another_workflow(user, workflow):
    """The fallback workflow cannot be the trigger's own."""
    with pytest.raises(CommandError, match=r"--fallback-workflow: must be another workflow"):
        run(*create_args(user, workflow, "--every", "60", "--fallback-workflow", str(workflow.pk)))
    assert_nothing_created()


# --- update ---------------------------------------------------------------------------------------


def test_trigger_command__update_changes_only_the_options_given(trigger):
    """update changes the fields whose options are given and leaves the rest."""
    before = Trigger.objects.get(pk=trigger.pk)
    out = run("trigger", "update", str(trigger.pk), "--max-runs", "5", "--priority", "low", "--window", '{"days": [1]}')
    trigger.refresh_from_db()
    assert (trigger.max_runs, trigger.priority, trigger.execution_window) == (5, "low", {"days": [1]})
    for name in ("cron", "timezone", "catchup", "overlap", "jitter_seconds", "max_attempts", "next_run_at", "name"):
        assert getattr(trigger, name) == getattr(before, name), name
    assert f"Updated trigger {trigger.pk} " in out and "--max-runs, --priority, --window" in out


def test_trigger_command__update_schedule_moves_beat_entry(trigger):
    """update --cron --timezone changes the crontab and the next run."""
    run("trigger", "update", trigger.name, "--cron", "30 6 * * *", "--timezone", "Europe/Berlin")
    trigger.refresh_from_db()
    crontab = trigger.periodic_task.crontab
    assert (crontab.minute, crontab.hour, str(crontab.timezone)) == ("30", "6", "Europe/Berlin")
    assert trigger.next_run_at.astimezone(trigger.cadence.zone).strftime("%H:%M") == "06:30"


def test_trigger_command__update_switches_kind_and_clears_the_old_kinds_fields(workflow):
    """Giving --cron to an interval trigger makes it a cron trigger (interval and anchor cleared)."""
    trigger = TriggerFactory(workflow=workflow, kind="interval", interval_seconds=600)
    Trigger.objects.filter(pk=trigger.pk).update(anchor_at=datetime(2026, 1, 1, tzinfo=UTC))
    run("trigger", "update", str(trigger.pk), "--preset", "weekdays", "--at", "08:15")
    trigger.refresh_from_db()
    assert (trigger.kind, trigger.cron, trigger.interval_seconds, trigger.anchor_at) == (
        "cron",
        "15 8 * * 1-5",
        None,
        None,
    )
    assert trigger.periodic_task.crontab is not None


def test_trigger_command__update_none_and_empty_clear_fields(workflow):
    """'none' clears a nullable option and '' clears a text one."""
    fallback = WorkflowFactory(owner=workflow.owner)
    trigger = TriggerFactory(
        workflow=workflow,
        max_runs=3,
        end_at=timezone.now() + timedelta(days=30),
        fallback_workflow=fallback,
        notify_emails="ops@example.com",
        keep_failed=5,
    )
    run(
        "trigger", "update", trigger.name, "--max-runs", "none", "--end-at", "none", "--fallback-workflow", "none",
        "--notify-emails", "", "--keep-failed", "none",
    )  # fmt: skip
    trigger.refresh_from_db()
    assert (trigger.max_runs, trigger.end_at, trigger.fallback_workflow, trigger.keep_failed) == (
        None,
        None,
        None,
        None,
    )
    assert trigger.notify_emails == ""


def test_trigger_command__update_without_options_fails(trigger):
    """update with nothing to change says so."""
    with pytest.raises(CommandError, match=r"give at least one option to change"):
        run("trigger", "update", trigger.name)


def test_trigger_command__update_bad_option_changes_nothing(trigger):
    """A bad option refuses the whole update: the good options given with it are not applied either."""
    before = Trigger.objects.get(pk=trigger.pk)
    with pytest.raises(CommandError, match=r"--jitter: .*less than or equal to 3600"):
        run("trigger", "update", trigger.name, "--priority", "low", "--jitter", "4000")
    with pytest.raises(CommandError, match=r"--cron: minute must be 0-59"):
        run("trigger", "update", trigger.name, "--priority", "low", "--cron", "99 * * * *")
    with pytest.raises(CommandError, match=r"--window: .*must be a time 'HH:MM'"):
        run("trigger", "update", trigger.name, "--max-runs", "4", "--window", '{"ranges": [["9", "17"]]}')
    trigger.refresh_from_db()
    assert (trigger.priority, trigger.jitter_seconds, trigger.cron, trigger.max_runs) == (
        before.priority,
        before.jitter_seconds,
        before.cron,
        before.max_runs,
    )
    assert trigger.updated_at == before.updated_at


# --- preview, describe, show ----------------------------------------------------------------------


def _run_lines(out: str) -> list[str]:
    return [line.strip() for line in out.split("runs:")[1].strip().splitlines()]


def test_trigger_command__preview_saved_trigger(workflow):
    """preview TRIGGER --count N lists the next N runs in UTC and local time."""
    trigger = TriggerFactory(workflow=workflow, cron="0 9 * * *", timezone="America/New_York")
    lines = _run_lines(run("trigger", "preview", trigger.name, "--count", "3"))
    assert len(lines) == 3
    assert all("09:00:00 E" in line and "America/New_York" in line for line in lines)  # EST or EDT


def test_trigger_command__preview_marks_skipped_slots(workflow):
    """Slots outside the window are marked skipped and do not count; a paused trigger's slots say paused."""
    trigger = TriggerFactory(workflow=workflow, cron="0 * * * *", execution_window={"ranges": [["09:00", "10:00"]]})
    lines = _run_lines(run("trigger", "preview", str(trigger.pk), "--count", "2"))
    runs = [line for line in lines if "outside the execution window" not in line]
    assert len(runs) == 2 and all("09:00:00 UTC" in line and "[" not in line for line in runs)
    assert len(lines) > 2
    services.trigger_pause(trigger=trigger)
    lines = _run_lines(run("trigger", "preview", str(trigger.pk), "--count", "2"))
    runs = [line for line in lines if "outside the execution window" not in line]
    assert len(runs) == 2 and all("[paused: does not run unless resumed]" in line for line in runs)


def test_trigger_command__preview_with_changes_saves_nothing(trigger):
    """preview TRIGGER with options shows what update would make of it, without changing it."""
    before = Trigger.objects.get(pk=trigger.pk)
    out = run("trigger", "preview", trigger.name, "--max-runs", "2", "--cron", "*/5 * * * *")
    assert "with the changes given (not saved)" in out
    assert len(_run_lines(out)) == 2
    trigger.refresh_from_db()
    assert (trigger.cron, trigger.max_runs, trigger.updated_at) == (before.cron, None, before.updated_at)
    with pytest.raises(CommandError, match=r"--end-at: must be after start_at"):
        run("trigger", "preview", trigger.name, "--start-at", "2031-01-01T00:00", "--end-at", "2030-01-01T00:00")


def test_trigger_command__preview_unsaved_trigger(user, workflow):
    """preview --workflow with a schedule and options previews a trigger that is not saved."""
    out = run(
        "trigger", "preview", "--workflow", workflow.name, "--preset", "weekly", "--day", "FRI", "--at", "17:45",
        "--timezone", "Australia/Sydney", "--max-runs", "2", "--count", "5",
    )  # fmt: skip
    assert "Trigger not saved yet" in out
    assert "At 17:45, only on Friday (Australia/Sydney)" in out
    lines = _run_lines(out)
    assert len(lines) == 2 and all("17:45:00 AE" in line for line in lines)
    assert not Trigger.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "* * * * *"], r"--workflow: needed to preview a trigger that is not saved"),
        (["--workflow", "{workflow}"], r"one of --cron, --preset, --run-at, --in, --every is needed"),
        (["--workflow", "{workflow}", "--cron", "61 * * * *"], r"--cron: minute must be 0-59"),
        (["--workflow", "{workflow}", "--run-at", "2001-01-01T00:00"], r"--run-at: must be in the future"),
        (["--workflow", "{workflow}", "--every", "60", "--timezone", "Mars/Base"], r"--timezone: 'Mars/Base'"),
        (["--workflow", "{workflow}", "--every", "60", "--window", "[]"], r"--window: must be a JSON object"),
        (["--workflow", "{workflow}", "--every", "60", "--count", "0"], r"argument --count: must be 1 or more"),
        (["--workflow", "nope", "--every", "60"], r"--workflow: no workflow has the id or name 'nope'"),
        (["nope"], r"TRIGGER: no trigger has the id or name 'nope'"),
    ],
)
def test_trigger_command__preview_bad_input_fails_naming_the_option(workflow, args, message):
    """preview refuses what create would refuse, naming the option; nothing is saved."""
    with pytest.raises(CommandError, match=message):
        run("trigger", "preview", *(arg.format(workflow=workflow.pk) for arg in args))
    assert_nothing_created()


def test_trigger_command__describe_prints_every_rule(workflow, user):
    """describe prints the schedule, who paused it and why, each rule, and the next runs."""
    trigger = TriggerFactory(
        workflow=workflow, max_runs=4, jitter_seconds=15, overlap="allow", execution_window={"days": [1, 2]}
    )
    run("trigger", "pause", trigger.name, "--reason", "audit", "--by", user.username)
    out = run("trigger", "describe", trigger.name, "--count", "2")
    for text in (
        "At 09:00, Monday through Friday (UTC)",
        f"by {user.username}: audit",
        "0 of 4 scheduled runs done, 4 remaining",
        "Only Mon, Tue, all day",
        "random 0-15 s",
        "Run alongside",
        "Catch-up",
        "Retries",
        "Retention",
        "Next 2 runs:",
    ):
        assert text in out, text


def test_trigger_command__show_includes_rules_and_runs(workflow):
    """show prints the fields, the rules and the next runs, with runs done and remaining."""
    trigger = TriggerFactory(workflow=workflow, max_runs=3)
    out = run("trigger", "show", str(trigger.pk))
    assert "Rules:" in out and "Overlap" in out and "Skip while the previous run is unfinished" in out
    assert "0/3 (3 left)" in out
    assert len(_run_lines(out)) == 3


# --- pause --by, backfill, stats ------------------------------------------------------------------


def test_trigger_command__pause_records_who(trigger, user):
    """pause --by records the user; without it nobody is recorded; an unknown user is refused."""
    with pytest.raises(CommandError, match=r"--by: there is no user 'ghost'"):
        run("trigger", "pause", trigger.name, "--by", "ghost")
    trigger.refresh_from_db()
    assert trigger.enabled
    run("trigger", "pause", trigger.name, "--by", user.username)
    trigger.refresh_from_db()
    assert trigger.paused_by == user and not trigger.enabled


@pytest.mark.django_db(transaction=True)
def test_trigger_command__backfill_runs_past_slots_once(workflow, monkeypatch):
    """backfill queues one execution per past slot (origin backfill) and sends them; a repeat finds them taken."""
    sent = []
    original = dispatch.publish

    def spy(attempts, **kwargs):
        sent.extend(attempt.execution_id for attempt in attempts)
        return original(attempts, **kwargs)

    monkeypatch.setattr(dispatch, "publish", spy)
    trigger = TriggerFactory(workflow=workflow, cron="0 * * * *")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    start, end = (hour - timedelta(hours=3)).isoformat(), (hour - timedelta(hours=1)).isoformat()
    out = run("trigger", "backfill", trigger.name, "--start", start, "--end", end, "--overlap", "allow")
    executions = Execution.objects.filter(trigger=trigger).order_by("scheduled_for")
    assert [e.scheduled_for for e in executions] == [hour - timedelta(hours=h) for h in (3, 2, 1)]
    assert {e.origin for e in executions} == {ExecutionOrigin.BACKFILL}
    assert "3 execution(s) queued, 0 slot(s) already had one, 0 skipped" in out
    assert sorted(sent) == sorted(str(e.pk) for e in executions)
    again = run("trigger", "backfill", trigger.name, "--start", start, "--end", end)
    assert "0 execution(s) queued, 3 slot(s) already had one" in again
    assert Execution.objects.filter(trigger=trigger).count() == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2026-01-02T00:00", "--end", "2026-01-01T00:00"], r"--end: must be after start"),
        (["--start", "2026-01-01T00:00", "--end", "2999-01-01T00:00"], r"--end: must not be in the future"),
        (["--start", "yesterday", "--end", "2026-01-01T00:00"], r"--start: 'yesterday' is not an ISO 8601 time"),
        (["--start", "2026-01-01T00:00", "--end", "2026-01-01T01:00", "--overlap", "x"], r"argument --overlap"),
        (["--start", "2026-01-01T00:00"], r"the following arguments are required: --end"),
        (["--start", "2000-01-01T00:00", "--end", "2026-01-01T00:00"], r"--end: the range holds more than"),
    ],
)
def test_trigger_command__backfill_bad_input_creates_nothing(trigger, args, message):
    """Bad backfill ranges and options are refused naming the option; no execution is created."""
    with pytest.raises(CommandError, match=message):
        run("trigger", "backfill", trigger.name, *args)
    assert not Execution.objects.exists()


def test_trigger_command__backfill_inactive_workflow_fails(trigger):
    """Backfilling a trigger whose workflow is inactive is refused."""
    Workflow.objects.filter(pk=trigger.workflow_id).update(is_active=False)
    with pytest.raises(CommandError, match=r"--workflow: workflow .* is not active"):
        run("trigger", "backfill", trigger.name, "--start", "2026-01-01T00:00", "--end", "2026-01-02T00:00")


def _finished(trigger, status, *, minutes_ago: int, duration_ms: int | None = None) -> Execution:
    execution = Execution.objects.create(
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=timezone.now() - timedelta(minutes=minutes_ago),
        status=status,
        duration_ms=duration_ms,
        finished_at=timezone.now(),
    )
    services.stats_record(execution=execution)
    return execution


def test_trigger_command__stats_prints_figures_and_next_runs(trigger):
    """stats prints counts, success rate, durations, the last statuses and the next runs."""
    _finished(trigger, ExecutionStatus.SUCCEEDED, minutes_ago=30, duration_ms=100)
    _finished(trigger, ExecutionStatus.SUCCEEDED, minutes_ago=20, duration_ms=300)
    _finished(trigger, ExecutionStatus.FAILED, minutes_ago=10, duration_ms=200)
    out = run("trigger", "stats", trigger.name, "--last", "2", "--next", "2")
    for text in ("Total         3", "Succeeded     2", "Failed        1", "66.7%", "200 ms", "failed, succeeded"):
        assert text in out, text
    assert len(out.split("Next runs:")[1].strip().splitlines()) == 2


def test_trigger_command__stats_without_history(trigger):
    """stats of a trigger that never ran shows dashes, not errors."""
    out = run("trigger", "stats", trigger.name)
    assert "Total         0" in out and "Success rate  -" in out


# --- execution ------------------------------------------------------------------------------------


def test_execution_command__show_prints_fields_and_attempts(trigger):
    """execution show prints origin, status, reasons and the attempt log."""
    execution = Execution.objects.create(
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=timezone.now(),
        status=ExecutionStatus.FAILED,
        attempts=1,
        http_status=503,
        error="HTTP 503",
        metadata={"attempts": [{"attempt": 1, "started_at": "2026-01-01T00:00:00+00:00", "error": "HTTP 503"}]},
    )
    out = run("execution", "show", str(execution.pk))
    assert f"Execution {execution.pk}" in out
    for text in ("Origin", "schedule", "failed", "503", "Attempts:", "2026-01-01T00:00:00+00:00"):
        assert text in out, text


@pytest.mark.django_db(transaction=True)
def test_execution_command__retry_failed_execution(trigger, monkeypatch):
    """execution retry queues a new execution (origin retry, linked to the failed one) and sends it."""
    sent = []

    def publish(attempts, **kwargs):
        sent.extend(attempt.execution_id for attempt in attempts)
        return len(attempts), None

    monkeypatch.setattr(dispatch, "publish", publish)
    failed = Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=timezone.now(), status=ExecutionStatus.FAILED
    )
    out = run("execution", "retry", str(failed.pk))
    retry = Execution.objects.get(retry_of=failed)
    assert retry.origin == ExecutionOrigin.RETRY and retry.status == ExecutionStatus.QUEUED
    assert sent == [str(retry.pk)]
    assert f"Queued execution {retry.pk}, a retry of {failed.pk}." in out
    assert re.search(rf"Retried as +{retry.pk}", run("execution", "show", str(failed.pk)))


def test_execution_command__retry_refuses_what_did_not_fail(trigger):
    """Only failed executions can be retried; bad or unknown ids are refused."""
    done = Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=timezone.now(), status=ExecutionStatus.SUCCEEDED
    )
    with pytest.raises(CommandError, match=r"EXECUTION_ID: only a failed execution can be retried; .* succeeded"):
        run("execution", "retry", str(done.pk))
    with pytest.raises(CommandError, match=r"EXECUTION_ID: 'abc' is not an execution id"):
        run("execution", "retry", "abc")
    with pytest.raises(CommandError, match=r"EXECUTION_ID: there is no execution 00000000-"):
        run("execution", "show", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(CommandError, match=r"show,retry"):
        run("execution")
    assert Execution.objects.count() == 1


# --- workflow stats (its figures come from the schedules app) -------------------------------------


def test_workflow_command__stats_adds_up_its_triggers(workflow):
    """workflow stats adds up every trigger of the workflow and lists the soonest next runs."""
    first = TriggerFactory(workflow=workflow, name="first")
    second = TriggerFactory(workflow=workflow, name="second", kind="interval", interval_seconds=3600)
    _finished(first, ExecutionStatus.SUCCEEDED, minutes_ago=5, duration_ms=50)
    _finished(second, ExecutionStatus.FAILED, minutes_ago=3, duration_ms=70)
    out = run("execution", "stats", "--workflow", workflow.name, "--next", "3")
    assert f"Workflow {workflow.pk} '{workflow.name}'" in out
    assert "Total         2" in out and "50.0%" in out and "60 ms" in out
    next_runs = out.split("Next runs:")[1].strip().splitlines()
    assert len(next_runs) == 3 and any("'second'" in line for line in next_runs)


def test_execution_stats__owner_alone_or_everything(workflow, other_user):
    """Without --workflow: all of --owner's executions, or every execution."""
    _finished(TriggerFactory(workflow=workflow, name="mine"), ExecutionStatus.SUCCEEDED, minutes_ago=5, duration_ms=50)
    theirs = TriggerFactory(workflow=WorkflowFactory(owner=other_user), name="theirs")
    _finished(theirs, ExecutionStatus.FAILED, minutes_ago=3, duration_ms=70)
    mine = run("execution", "stats", "--owner", workflow.owner.username)
    assert f"All executions of {workflow.owner.username}'s triggers" in mine and "Total         1" in mine
    everything = run("execution", "stats")
    assert "All executions (counts" in everything and "Total         2" in everything


def test_workflow_command__stats_unknown_workflow_fails(db):
    """An unknown workflow is refused, naming WORKFLOW."""
    with pytest.raises(CommandError, match=r"--workflow: no workflow has the id or name 'nope'"):
        run("execution", "stats", "--workflow", "nope")


# --- rebuild_beat ---------------------------------------------------------------------------------


def test_rebuild_beat_command__repairs_and_deletes_orphans(trigger):
    """rebuild_beat re-creates missing PeriodicTasks, deletes orphans and prints the counts."""
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(enabled=False)
    PeriodicTask.objects.create(name="trigger:99999", task=FIRE_TASK, crontab=trigger.periodic_task.crontab)
    out = run("rebuild_beat")
    assert "1 triggers, 1 repaired, 1 orphans deleted" in out
    assert PeriodicTask.objects.get(task=FIRE_TASK).enabled


# --- demo -----------------------------------------------------------------------------------------


def test_demo_command__twice_creates_one_of_each(db, settings):
    """demo creates admin, the demo workflow (built-in endpoint) and an every-minute trigger once."""
    settings.DEBUG = True  # as bin/dev runs it (pytest-django turns DEBUG off)
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://localhost:8123"
    first = run("demo")
    second = run("demo")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("admin")
    workflow = Workflow.objects.get(name="Demo workflow")
    assert workflow.name == "Demo workflow" and workflow.endpoint_url == ""
    trigger = Trigger.objects.get()
    assert (trigger.name, trigger.cron, trigger.timezone, trigger.workflow) == (
        "Every minute",
        "* * * * *",
        "UTC",
        workflow,
    )
    assert PeriodicTask.objects.filter(task=FIRE_TASK).count() == 1
    assert "local use only" in first and "local use only" not in second
    assert "http://localhost:8123/admin/" in first and "admin / admin" in first
    assert "http://localhost:8123/admin/" in second


def test_demo_command__keeps_existing_admin(db, settings):
    """demo reuses an existing admin user and never changes its password."""
    settings.DEBUG = True
    UserFactory(username="admin")
    out = run("demo")
    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password("password") and not admin.is_superuser
    assert "already exists" in out and Trigger.objects.get().owner == admin


def test_demo_command__refuses_with_debug_off(db, settings):
    """With DEBUG off, demo stops with a one-line error naming --insecure-demo and creates nothing."""
    settings.DEBUG = False
    with pytest.raises(CommandError) as caught:
        run("demo")
    assert "--insecure-demo" in str(caught.value) and "\n" not in str(caught.value)
    assert not get_user_model().objects.exists() and not Workflow.objects.exists()


def test_demo_command__insecure_demo_flag_runs_with_debug_off(db, settings):
    """With DEBUG off, demo --insecure-demo sets the demo up as usual; with the demo target off (its
    default then) it says why the examples are not set up."""
    settings.DEBUG = False
    settings.SCHEDULER_DEMO_TARGET = False
    out = run("demo", "--insecure-demo")
    assert get_user_model().objects.get(username="admin").is_superuser
    assert Trigger.objects.get().name == "Every minute" and "admin / admin" in out
    assert list(Workflow.objects.values_list("name", flat=True)) == ["Demo workflow"]
    assert "Examples not set up: the demo target is off" in out and "SCHEDULER_DEMO_TARGET=1" in out


EXAMPLE_NAMES = ["Example: raid", "Example: stream-end", "Example: stream-start"]


def test_demo_command__sets_up_each_example_once_calling_the_demo_target(db, settings):
    """One workflow per example, its config.target the demo target on SCHEDULER_PUBLIC_BASE_URL, with
    short waits in its default inputs; a second run changes nothing, and a new base URL is taken up."""
    settings.DEBUG = True
    settings.SCHEDULER_DEMO_TARGET = True
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://localhost:8123"
    first = run("demo")
    examples = Workflow.objects.filter(name__startswith="Example: ").order_by("name")
    assert [workflow.name for workflow in examples] == EXAMPLE_NAMES
    for workflow in examples:
        assert workflow.definition["config"]["target"] == "http://localhost:8123/api/demo-target"
        assert workflow.endpoint_url == "" and workflow.owner.username == "admin"
    raid = examples.get(name="Example: raid")
    assert raid.default_inputs == {"target": "demo", "gather_seconds": 5}
    assert raid.definition["states"][0]["params"]["url"] == "${config.target}/raid"  # the file, as shipped
    assert first.count("Created workflow") == 4 and "http://localhost:8123/api/demo-target/<call>" in first

    assert run("demo").count("Reusing workflow") == 4
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://127.0.0.1:9000"
    assert run("demo").count("Updated workflow") == 3
    assert Workflow.objects.get(name="Example: raid").definition["config"]["target"] == (
        "http://127.0.0.1:9000/api/demo-target"
    )
    assert Workflow.objects.count() == 4


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--run", "raid", "party"], "--run: 'party' is not an example; choose from stream-start, stream-end, raid."),
        (["--wait", "10"], "--wait: only with --run"),
        (["--inputs", "{}"], "--inputs: only with --run"),
        (["--run", "--inputs", "[1"], "--inputs: not valid JSON"),
        (["--run", "--wait", "0"], "--wait: must be 1-3600 seconds, not 0"),
    ],
)
def test_demo_command__bad_options_name_the_option_and_change_nothing(db, settings, args, named):
    """Each bad option ends in a one-line CommandError naming it, before anything is created."""
    settings.DEBUG = True
    with pytest.raises(CommandError) as caught:
        run("demo", *args)
    assert named in str(caught.value) and "\n" not in str(caught.value)
    assert not Workflow.objects.exists()


def test_demo_command__run_with_the_demo_target_off_is_refused(db, settings):
    """--run needs the demo target: off, the error names SCHEDULER_DEMO_TARGET."""
    settings.DEBUG = True
    settings.SCHEDULER_DEMO_TARGET = False
    with pytest.raises(CommandError, match=r"^--run: the demo target .* SCHEDULER_DEMO_TARGET=1"):
        run("demo", "--run")


def test_demo_command__run_starts_the_named_examples_now_with_the_inputs(db, settings):
    """--run raid starts one run of the raid example now, its inputs over the example's defaults."""
    settings.DEBUG = True
    out = run("demo", "--run", "raid", "--inputs", '{"target": "fail"}')
    from workflows.models import WorkflowRun

    (started,) = WorkflowRun.objects.all()
    assert started.workflow.name == "Example: raid"
    assert (started.status, started.inputs) == ("queued", {"target": "fail", "gather_seconds": 5})
    assert started.wake_at <= timezone.now()
    assert f"Follow it: manage.py workflow run {started.pk}" in out


def test_demo_command__wait_gives_up_naming_the_option_when_nothing_runs_the_steps(db, settings):
    """No worker takes the run: --wait ends at its deadline with an error naming --wait and the run."""
    settings.DEBUG = True
    with pytest.raises(CommandError, match=r"^--wait: after 1s still going: stream-end \(queued\)"):
        run("demo", "--run", "stream-end", "--wait", "1")


# --- healthcheck ----------------------------------------------------------------------------------


@pytest.fixture
def heartbeat(tmp_path, settings):
    path = tmp_path / "beat-heartbeat"
    settings.SCHEDULER_BEAT_HEARTBEAT_FILE = str(path)
    return path


def test_healthcheck_command__beat_fails_without_heartbeat(heartbeat):
    """healthcheck beat fails when beat never wrote its heartbeat."""
    with pytest.raises(CommandError, match=r"beat: no heartbeat yet"):
        run("healthcheck", "beat")


def test_healthcheck_command__beat_passes_after_heartbeat(heartbeat):
    """healthcheck beat passes right after the heartbeat file is touched."""
    heartbeat.touch()
    assert "beat ok" in run("healthcheck", "beat")


def test_healthcheck_command__beat_fails_when_heartbeat_is_old(heartbeat):
    """healthcheck beat fails, saying how old, when the heartbeat is older than --max-age."""
    heartbeat.touch()
    old = time.time() - 120
    os.utime(heartbeat, (old, old))
    with pytest.raises(CommandError, match=r"last heartbeat 1[12]\d s ago, more than --max-age 60 s"):
        run("healthcheck", "beat")
    assert "beat ok" in run("healthcheck", "beat", "--max-age", "300")
    with pytest.raises(CommandError, match=r"argument --max-age"):
        run("healthcheck", "beat", "--max-age", "-1")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/behind-proxy":  # answers as Django does with SECURE_SSL_REDIRECT on
            self.send_response(200 if self.headers.get("X-Forwarded-Proto") == "https" else 301)
        else:
            self.send_response(200 if self.path == "/ok" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_healthcheck_command__web_passes_on_200(http_server):
    """healthcheck web passes when the URL answers 200."""
    assert "web ok" in run("healthcheck", "web", "--url", f"{http_server}/ok")


def test_healthcheck_command__web_fails_on_other_status(http_server):
    """healthcheck web fails, naming the status, when the URL answers something else."""
    with pytest.raises(CommandError, match=r"answered HTTP 503, expected 200"):
        run("healthcheck", "web", "--url", f"{http_server}/down")


def test_healthcheck_command__web_fails_on_closed_port():
    """healthcheck web fails when nothing listens on the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CommandError, match=r"web: cannot reach"):
        run("healthcheck", "web", "--url", f"http://127.0.0.1:{port}/")


def test_healthcheck_command__web_asks_as_the_tls_proxy_does(http_server, settings):
    """healthcheck web sends SECURE_PROXY_SSL_HEADER's header, so the HTTPS redirect spares it (else: 301)."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert "web ok" in run("healthcheck", "web", "--url", f"{http_server}/behind-proxy")
    settings.SECURE_PROXY_SSL_HEADER = None
    with pytest.raises(CommandError, match=r"answered HTTP 301, expected 200"):
        run("healthcheck", "web", "--url", f"{http_server}/behind-proxy")


def test_healthcheck_command__web_default_url_uses_public_base_url(http_server, settings):
    """Without --url, healthcheck web GETs SCHEDULER_PUBLIC_BASE_URL + /admin/login/."""
    settings.SCHEDULER_PUBLIC_BASE_URL = http_server
    with pytest.raises(CommandError, match=r"/admin/login/ answered HTTP 503"):
        run("healthcheck", "web")
