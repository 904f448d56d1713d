"""The schedules management commands: trigger, rebuild_beat, demo and healthcheck."""

from __future__ import annotations

import os
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

from schedules import services
from schedules.beat import FIRE_TASK
from schedules.models import Execution, ExecutionStatus, Trigger
from schedules.tasks import run_execution
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
    """Exactly one of --cron, --run-at, --in and --every is required."""
    with pytest.raises(CommandError, match=r"one of the arguments --cron --run-at --in --every is required"):
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
    with pytest.raises(CommandError, match=r"create,list,show,pause,resume,run,history"):
        run("trigger")


# --- trigger list ---------------------------------------------------------------------------------


def test_trigger_command__list_shows_triggers_with_last_status(trigger):
    """list shows id, name, workflow, kind, schedule, zone, state, next run and last status."""
    Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=timezone.now(), status=ExecutionStatus.FAILED
    )
    out = run("trigger", "list")
    row = next(line for line in out.splitlines() if line.startswith(str(trigger.pk)))
    for text in (trigger.name, trigger.workflow.name, "cron", "At 09:00, Monday through Friday (UTC)", "UTC",
                 "enabled", trigger.next_run_at.strftime("%Y-%m-%d %H:%M:%S UTC"), "failed"):  # fmt: skip
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
    original = run_execution.apply_async

    def spy(*args, **kwargs):
        sent.append(kwargs["kwargs"])
        return original(*args, **kwargs)

    monkeypatch.setattr(run_execution, "apply_async", spy)
    out = run("trigger", "run", str(trigger.pk), "--inputs", '{"extra": 1}')
    execution = Execution.objects.get()
    assert execution.manual and execution.status == ExecutionStatus.QUEUED
    assert execution.inputs == {"extra": 1}
    assert str(execution.pk) in out
    assert sent == [{"execution_id": str(execution.pk), "attempt": 1}]


@pytest.mark.django_db(transaction=True)
def test_trigger_command__run_with_broker_down_fails_clearly(trigger, monkeypatch):
    """If the broker cannot be reached, run says the execution is recorded and will be recovered."""

    def down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(run_execution, "apply_async", down)
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
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://localhost:8123"
    first = run("demo")
    second = run("demo")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("admin")
    workflow = Workflow.objects.get()
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


def test_demo_command__keeps_existing_admin(db):
    """demo reuses an existing admin user and never changes its password."""
    UserFactory(username="admin")
    out = run("demo")
    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password("password") and not admin.is_superuser
    assert "already exists" in out and Trigger.objects.get().owner == admin


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


def test_healthcheck_command__web_default_url_uses_public_base_url(http_server, settings):
    """Without --url, healthcheck web GETs SCHEDULER_PUBLIC_BASE_URL + /admin/login/."""
    settings.SCHEDULER_PUBLIC_BASE_URL = http_server
    with pytest.raises(CommandError, match=r"/admin/login/ answered HTTP 503"):
        run("healthcheck", "web")
