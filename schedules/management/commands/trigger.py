"""`manage.py trigger ...`: create, inspect, pause, resume and run triggers from the shell."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from kombu.exceptions import OperationalError

from schedules import selectors, services, timing
from schedules.exceptions import ScheduleError
from schedules.models import Trigger, TriggerKind
from workflows.management.commands._common import (
    EMPTY,
    format_local,
    format_utc,
    parse_json_object,
    positive_int,
    redact_url,
    table,
    user_get,
    workflow_get,
)

from ._common import errors_as_command_errors, trigger_get

# Model field -> the option that sets it, so errors name what the user typed.
_OPTIONS = {
    "owner": "--owner",
    "workflow": "--workflow",
    "name": "--name",
    "cron": "--cron",
    "timezone": "--timezone",
    "run_at": "--run-at",
    "interval_seconds": "--every",
    "inputs": "--inputs",
    "max_attempts": "--max-attempts",
    "min_backoff_seconds": "--min-backoff",
    "max_backoff_seconds": "--max-backoff",
}
_UPCOMING = 5
_ERROR_WIDTH = 60


class Command(BaseCommand):
    help = "Create, list, show, pause, resume and run triggers, and show their history."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="subcommand", required=True, metavar="{create,list,show,pause,resume,run,history}"
        )

        create = sub.add_parser("create", help="Create a trigger (and its beat entry).")
        create.add_argument("--owner", required=True, metavar="USERNAME", help="The user who owns it.")
        create.add_argument("--workflow", required=True, metavar="ID_OR_NAME", help="One of the owner's workflows.")
        create.add_argument("--name", required=True, help="Unique per owner, e.g. 'Weekday morning report'.")
        when = create.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", metavar="EXPR", help="5-field cron or @daily etc., e.g. '0 9 * * MON-FRI'.")
        when.add_argument(
            "--run-at", metavar="ISO8601", help="Run once at this time, e.g. 2026-12-01T09:00 (read in --timezone)."
        )
        when.add_argument(
            "--in",
            dest="in_seconds",
            type=positive_int,
            metavar="SECONDS",
            help="Run once, this many seconds from now.",
        )
        when.add_argument(
            "--every", type=positive_int, metavar="SECONDS", help="Run every SECONDS, aligned to the Unix epoch."
        )
        create.add_argument(
            "--timezone", default="UTC", metavar="TZ", help="IANA zone for --cron and --run-at, e.g. Europe/Paris."
        )
        create.add_argument("--inputs", metavar="JSON", help="Merged over the workflow's inputs, e.g. '{\"a\": 1}'.")
        create.add_argument("--max-attempts", type=positive_int, default=3, metavar="N", help="Calls per slot, 1-20.")
        create.add_argument("--min-backoff", type=positive_int, default=5, metavar="SECONDS", help="First retry wait.")
        create.add_argument("--max-backoff", type=positive_int, default=300, metavar="SECONDS", help="Longest wait.")
        create.add_argument("--paused", action="store_true", help="Create it paused.")

        listing = sub.add_parser("list", help="List triggers with their next run and last status.")
        listing.add_argument("--owner", metavar="USERNAME", help="Only this user's triggers.")
        listing.add_argument("--workflow", metavar="ID_OR_NAME", help="Only this workflow's triggers.")

        def with_trigger(name: str, help_text: str) -> CommandParser:
            action = sub.add_parser(name, help=help_text)
            action.add_argument("trigger", metavar="TRIGGER", help="Trigger id or name.")
            action.add_argument("--owner", metavar="USERNAME", help="Whose trigger, when several share the name.")
            return action

        with_trigger("show", "Show a trigger and its next runs.")
        with_trigger("pause", "Pause a trigger: slots while paused never run.").add_argument(
            "--reason", default="", help="A note saying why."
        )
        with_trigger("resume", "Resume a paused trigger from its next slot.")
        with_trigger("run", "Queue a manual execution now.").add_argument(
            "--inputs", metavar="JSON", help="Merged over the trigger's inputs for this run."
        )
        with_trigger("history", "Show a trigger's executions, newest first.").add_argument(
            "--limit", type=positive_int, default=20, metavar="N", help="How many (default 20)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['subcommand']}")(options)

    # --- subcommands ----------------------------------------------------------------------------

    def _create(self, options: dict[str, Any]) -> None:
        owner = user_get(options["owner"])
        workflow = workflow_get(options["workflow"], owner=owner)
        zone_name = options["timezone"]
        with errors_as_command_errors(_OPTIONS):
            zone = timing.zone(zone_name)
        schedule: dict[str, Any]
        if options["cron"] is not None:
            schedule = {"kind": TriggerKind.CRON, "cron": options["cron"]}
        elif options["run_at"] is not None:
            schedule = {"kind": TriggerKind.ONCE, "run_at": _parse_run_at(options["run_at"], zone)}
        elif options["in_seconds"] is not None:
            schedule = {"kind": TriggerKind.ONCE, "run_at": timezone.now() + timedelta(seconds=options["in_seconds"])}
        else:
            schedule = {"kind": TriggerKind.INTERVAL, "interval_seconds": options["every"]}
        inputs = parse_json_object(options["inputs"], option="--inputs")
        names = {**_OPTIONS, "run_at": "--in"} if options["in_seconds"] is not None else _OPTIONS
        with errors_as_command_errors(names):
            trigger = services.trigger_create(
                owner=owner,
                workflow=workflow,
                name=options["name"],
                timezone_name=zone_name,
                inputs=inputs,
                enabled=not options["paused"],
                max_attempts=options["max_attempts"],
                min_backoff_seconds=options["min_backoff"],
                max_backoff_seconds=options["max_backoff"],
                **schedule,
            )
        self.stdout.write(
            self.style.SUCCESS(f"Created trigger {trigger.pk} {trigger.name!r} for workflow {workflow.name!r}.")
        )
        self.stdout.write(f"Schedule: {trigger.description}")
        self.stdout.write(f"Next run: {_both(trigger.next_run_at, trigger)}")
        if not trigger.enabled:
            self.stdout.write(
                self.style.WARNING(f"Paused: it fires only after `manage.py trigger resume {trigger.pk}`.")
            )

    def _list(self, options: dict[str, Any]) -> None:
        triggers = Trigger.objects.all()
        owner = user_get(options["owner"]) if options["owner"] else None
        if owner is not None:
            triggers = triggers.filter(owner=owner)
        if options["workflow"]:
            triggers = triggers.filter(workflow=workflow_get(options["workflow"], owner=owner))
        rows = [
            (
                t.pk,
                t.name,
                t.owner.get_username(),
                t.workflow.name,
                t.kind,
                t.description,
                t.timezone,
                "enabled" if t.enabled else "paused",
                format_utc(t.next_run_at) if t.enabled else EMPTY,
                t.last_status,
            )
            for t in selectors.triggers_with_last_status(triggers.order_by("owner__username", "name", "id"))
        ]
        if not rows:
            self.stdout.write("No triggers.")
            return
        headers = ("ID", "NAME", "OWNER", "WORKFLOW", "KIND", "SCHEDULE", "TIMEZONE", "STATE", "NEXT RUN (UTC)", "LAST")
        self.stdout.write(table(headers, rows))

    def _show(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        workflow = trigger.workflow
        endpoint = redact_url(workflow.endpoint_url) if workflow.endpoint_url else "built-in endpoint"
        if trigger.enabled:
            state = "enabled"
        else:
            state = f"paused since {format_utc(trigger.paused_at)}"
            if trigger.pause_reason:
                state += f": {trigger.pause_reason}"
        schedule_rows: list[tuple[str, Any]] = {
            TriggerKind.CRON: [("Cron", trigger.cron)],
            TriggerKind.ONCE: [("Run at", _both(trigger.run_at, trigger))],
            TriggerKind.INTERVAL: [("Every", f"{trigger.interval_seconds} s")],
        }.get(trigger.kind, [])
        task = trigger.periodic_task
        rows: list[tuple[str, Any]] = [
            ("Owner", trigger.owner.get_username()),
            ("Workflow", f"{workflow.pk} {workflow.name!r} ({workflow.http_method} {endpoint})"),
            ("Kind", trigger.kind),
            *schedule_rows,
            ("Time zone", trigger.timezone),
            ("Schedule", trigger.description),
            ("Inputs", json.dumps(trigger.inputs, sort_keys=True)),
            ("State", state),
            ("Max attempts", trigger.max_attempts),
            ("Backoff", f"{trigger.min_backoff_seconds}-{trigger.max_backoff_seconds} s"),
            ("Next run", _both(trigger.next_run_at, trigger) if trigger.next_run_at else EMPTY),
            ("Last run", _both(trigger.last_run_at, trigger) if trigger.last_run_at else EMPTY),
            ("Executions", trigger.executions.count()),
            ("Created", format_utc(trigger.created_at)),
            ("Updated", format_utc(trigger.updated_at)),
            (
                "Periodic task",
                f"{task.name} ({'enabled' if task.enabled else 'disabled'})"
                if task
                else "missing (run `manage.py rebuild_beat`)",
            ),
        ]
        self.stdout.write(f"Trigger {trigger.pk} {trigger.name!r}")
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"  {label.ljust(width)}  {EMPTY if value in (None, '') else value}")
        try:
            upcoming = timing.upcoming(trigger.cadence, timezone.now(), _UPCOMING)
        except ScheduleError as exc:
            self.stdout.write(self.style.WARNING(f"Cannot compute the next runs: {exc}"))
            return
        note = "" if trigger.enabled else " (paused: these do not fire unless it is resumed)"
        self.stdout.write(f"Next {_UPCOMING} runs{note}:")
        for slot in upcoming:
            self.stdout.write(f"  {_both(slot, trigger)}")
        if not upcoming:
            self.stdout.write("  none")

    def _pause(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        with errors_as_command_errors(_OPTIONS):
            trigger = services.trigger_pause(trigger=trigger, reason=options["reason"])
        self.stdout.write(self.style.SUCCESS(f"Paused trigger {trigger.pk} {trigger.name!r}."))

    def _resume(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        with errors_as_command_errors(_OPTIONS):
            trigger = services.trigger_resume(trigger=trigger)
        self.stdout.write(self.style.SUCCESS(f"Resumed trigger {trigger.pk} {trigger.name!r}."))
        self.stdout.write(f"Next run: {_both(trigger.next_run_at, trigger)}")

    def _run(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        inputs = parse_json_object(options["inputs"], option="--inputs")
        try:
            with errors_as_command_errors(_OPTIONS):
                execution = services.trigger_run_now(trigger=trigger, inputs=inputs)
        except OperationalError as exc:
            # The execution is committed before the message is sent (on_commit); the recovery
            # task queues it again once its lease runs out, so it is late, not lost.
            raise CommandError(
                f"the execution was recorded but the broker could not be reached ({type(exc).__name__}); "
                "the recovery task will queue it when the broker is back."
            ) from None
        self.stdout.write(
            self.style.SUCCESS(f"Queued execution {execution.pk} of trigger {trigger.pk} {trigger.name!r}.")
        )

    def _history(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        rows = [
            (
                format_utc(e.scheduled_for),
                "manual" if e.manual else "schedule",
                e.status,
                e.attempts,
                e.http_status,
                e.duration_ms,
                e.run_id,
                _truncate(e.error),
                e.pk,
            )
            for e in selectors.trigger_history(trigger, limit=options["limit"])
        ]
        if not rows:
            self.stdout.write(f"Trigger {trigger.pk} {trigger.name!r} has no executions yet.")
            return
        headers = ("SLOT (UTC)", "BY", "STATUS", "ATTEMPTS", "HTTP", "DURATION MS", "RUN ID", "ERROR", "EXECUTION")
        self.stdout.write(table(headers, rows))


def _trigger(options: dict[str, Any]) -> Trigger:
    owner = user_get(options["owner"]) if options["owner"] else None
    return trigger_get(options["trigger"], owner=owner)


def _parse_run_at(text: str, zone: Any) -> datetime:
    """An ISO 8601 time; without an offset it is read in the trigger's time zone."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--run-at: {text!r} is not an ISO 8601 time; for example 2026-12-01T09:00 or 2026-12-01T09:00:00+01:00."
        ) from None
    return value.replace(tzinfo=zone) if timezone.is_naive(value) else value


def _both(value: datetime | None, trigger: Trigger) -> str:
    """UTC, and the trigger's local time when its zone is not UTC."""
    if value is None:
        return EMPTY
    if trigger.timezone == "UTC":
        return format_utc(value)
    return f"{format_utc(value)} ({format_local(value, timing.zone(trigger.timezone))}, {trigger.timezone})"


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 3] + "..."
