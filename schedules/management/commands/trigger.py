"""`manage.py trigger ...`: create, change, preview, pause, resume, run, backfill and inspect triggers."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from kombu.exceptions import OperationalError

from schedules import selectors, services, timing
from schedules.models import CatchupPolicy, DstPolicy, OverlapPolicy, Priority, Trigger, TriggerKind
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
from workflows.services import audit_source

from ._common import CLEAR, errors_as_command_errors, int_or_none, non_negative_int, parse_time, trigger_get

# Model field (or service argument) -> the option that sets it, so errors name what the user typed.
_OPTIONS = {
    "owner": "--owner",
    "workflow": "--workflow",
    "name": "--name",
    "kind": "--cron/--preset/--run-at/--in/--every",
    "cron": "--cron",
    "timezone": "--timezone",
    "run_at": "--run-at",
    "delay_seconds": "--in",
    "interval_seconds": "--every",
    "inputs": "--inputs",
    "dst_policy": "--dst-policy",
    "anchor_at": "--anchor-at",
    "start_at": "--start-at",
    "end_at": "--end-at",
    "max_runs": "--max-runs",
    "jitter_seconds": "--jitter",
    "execution_window": "--window",
    "catchup": "--catchup",
    "catchup_window_seconds": "--catchup-window",
    "overlap": "--overlap",
    "priority": "--priority",
    "pause_after_failures": "--pause-after-failures",
    "notify_emails": "--notify-emails",
    "notify_webhook_url": "--notify-webhook",
    "fallback_workflow": "--fallback-workflow",
    "max_attempts": "--max-attempts",
    "min_backoff_seconds": "--min-backoff",
    "max_backoff_seconds": "--max-backoff",
    "max_doublings": "--max-doublings",
    "max_retry_duration_seconds": "--max-retry-duration",
    "keep_succeeded": "--keep-succeeded",
    "keep_failed": "--keep-failed",
    "retention_days": "--retention-days",
    # timing.preset_cron's parameters
    "preset": "--preset",
    "minute": "--minute",
    "time": "--at",
    "day": "--day",
    # services.trigger_backfill's
    "start": "--start",
    "end": "--end",
}
# Options whose value goes to the model field unchanged (CLEAR becomes None): dest -> field.
_PLAIN_FIELDS = {
    "dst_policy": "dst_policy",
    "max_runs": "max_runs",
    "jitter": "jitter_seconds",
    "catchup": "catchup",
    "catchup_window": "catchup_window_seconds",
    "overlap": "overlap",
    "priority": "priority",
    "pause_after_failures": "pause_after_failures",
    "notify_emails": "notify_emails",
    "notify_webhook": "notify_webhook_url",
    "max_attempts": "max_attempts",
    "min_backoff": "min_backoff_seconds",
    "max_backoff": "max_backoff_seconds",
    "max_doublings": "max_doublings",
    "max_retry_duration": "max_retry_duration_seconds",
    "keep_succeeded": "keep_succeeded",
    "keep_failed": "keep_failed",
    "retention_days": "retention_days",
}
_TIME_FIELDS = {"anchor_at": "anchor_at", "start_at": "start_at", "end_at": "end_at"}
_SCHEDULE_DESTS = ("cron", "preset", "run_at", "in_seconds", "every")
_SCHEDULE_FIELDS = services.SCHEDULE_FIELDS
_KIND_FIELDS = {TriggerKind.CRON: ("cron",), TriggerKind.ONCE: ("run_at",), TriggerKind.INTERVAL: ("interval_seconds",)}
_UPCOMING = 5
_ERROR_WIDTH = 60
_REASONS = {
    "outside_window": "skipped: outside the execution window, as is every slot until the next one listed",
    "paused": "paused: does not run unless resumed",
    "workflow_inactive": "skipped: the workflow is inactive",
}
_RULE_LABELS = {
    "bounds": "Bounds",
    "max_runs": "Max runs",
    "window": "Window",
    "jitter": "Jitter",
    "dst_policy": "DST",
    "catchup": "Catch-up",
    "overlap": "Overlap",
    "priority": "Priority",
    "retries": "Retries",
    "failures": "Failures",
    "notifications": "Notifications",
    "retention": "Retention",
}
_SUBCOMMANDS = "create,update,list,show,describe,preview,pause,resume,run,backfill,history,stats"


class Command(BaseCommand):
    help = "Create, change, preview, pause, resume, run and backfill triggers, and show their rules, history and stats."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar=f"{{{_SUBCOMMANDS}}}")

        create = sub.add_parser("create", help="Create a trigger (and its beat entry).")
        create.add_argument("--owner", required=True, metavar="USERNAME", help="The user who owns it.")
        create.add_argument("--workflow", required=True, metavar="ID_OR_NAME", help="One of the owner's workflows.")
        create.add_argument("--name", required=True, help="Unique per owner, e.g. 'Weekday morning report'.")
        _add_schedule_options(create, required=True)
        create.add_argument(
            "--timezone", default="UTC", metavar="TZ", help="IANA zone the schedule is read in, e.g. Europe/Paris."
        )
        create.add_argument("--inputs", metavar="JSON", help="Merged over the workflow's inputs, e.g. '{\"a\": 1}'.")
        _add_rule_options(create)
        create.add_argument("--paused", action="store_true", help="Create it paused.")

        update = sub.add_parser("update", help="Change a trigger: only the options given change.")
        _add_trigger_argument(update)
        update.add_argument("--name", help="A new name.")
        update.add_argument("--workflow", metavar="ID_OR_NAME", help="Call another of the owner's workflows.")
        _add_schedule_options(update, required=False)
        update.add_argument("--timezone", metavar="TZ", help="IANA zone the schedule is read in.")
        update.add_argument("--inputs", metavar="JSON", help="Replaces the trigger's inputs ('{}' clears them).")
        _add_rule_options(update)

        preview = sub.add_parser(
            "preview",
            help="The next runs of a trigger, of a trigger with some options changed, or of one not saved yet "
            "(give --workflow and a schedule instead of TRIGGER). Nothing is saved.",
        )
        preview.add_argument("trigger", nargs="?", metavar="TRIGGER", help="Trigger id or name.")
        preview.add_argument("--owner", metavar="USERNAME", help="Whose trigger or workflow, when names are shared.")
        preview.add_argument("--workflow", metavar="ID_OR_NAME", help="For a trigger not saved yet: its workflow.")
        _add_schedule_options(preview, required=False)
        preview.add_argument("--timezone", metavar="TZ", help="IANA zone the schedule is read in (default UTC).")
        _add_rule_options(preview)
        _add_count(preview)

        listing = sub.add_parser("list", help="List triggers with their status, runs, next run and last status.")
        listing.add_argument("--owner", metavar="USERNAME", help="Only this user's triggers.")
        listing.add_argument("--workflow", metavar="ID_OR_NAME", help="Only this workflow's triggers.")

        _add_count(_add_trigger_argument(sub.add_parser("show", help="Show a trigger: fields, rules, next runs.")))
        _add_count(_add_trigger_argument(sub.add_parser("describe", help="Every rule of a trigger in words.")))
        pause = _add_trigger_argument(sub.add_parser("pause", help="Pause a trigger: slots while paused never run."))
        pause.add_argument("--reason", default="", help="A note saying why.")
        pause.add_argument("--by", metavar="USERNAME", help="Who paused it (recorded; default: nobody).")
        _add_trigger_argument(sub.add_parser("resume", help="Resume a paused trigger from its next slot."))
        _add_trigger_argument(sub.add_parser("run", help="Queue a manual execution now.")).add_argument(
            "--inputs", metavar="JSON", help="Merged over the trigger's inputs for this run."
        )
        backfill = _add_trigger_argument(
            sub.add_parser("backfill", help="Run the slots of a past range that have no execution yet.")
        )
        backfill.add_argument(
            "--start", required=True, metavar="ISO8601", help="From this time, e.g. 2026-05-01T00:00 (trigger's zone)."
        )
        backfill.add_argument("--end", required=True, metavar="ISO8601", help="Up to this time, not in the future.")
        backfill.add_argument(
            "--overlap",
            choices=services.BACKFILL_OVERLAP,
            default="buffer_all",
            help="buffer_all (default): one after another; allow: side by side; buffer_one: the first and one "
            "waiting; skip: only what does not overlap.",
        )
        _add_trigger_argument(
            sub.add_parser("history", help="Show a trigger's executions, newest first.")
        ).add_argument("--limit", type=positive_int, default=20, metavar="N", help="How many (default 20).")
        stats = _add_trigger_argument(sub.add_parser("stats", help="Counts, success rate, durations, next runs."))
        stats.add_argument("--last", type=positive_int, default=10, metavar="N", help="Latest statuses to show.")
        stats.add_argument("--next", type=positive_int, default=_UPCOMING, metavar="N", help="Next runs to show.")

    def handle(self, *args: Any, **options: Any) -> None:
        with audit_source("command"):
            getattr(self, f"_{options['subcommand']}")(options)

    # --- create, update, preview ----------------------------------------------------------------

    def _create(self, options: dict[str, Any]) -> None:
        owner = user_get(options["owner"])
        workflow = workflow_get(options["workflow"], owner=owner)
        zone_name = options["timezone"]
        with errors_as_command_errors(_OPTIONS):
            zone = timing.zone(zone_name)
            schedule = _schedule(options, zone)
        fields = _rule_fields(options, zone, owner=owner)
        inputs = parse_json_object(options["inputs"], option="--inputs")
        with errors_as_command_errors(_OPTIONS):
            trigger = services.trigger_create(
                owner=owner,
                workflow=workflow,
                name=options["name"],
                timezone_name=zone_name,
                inputs=inputs,
                enabled=not options["paused"],
                **schedule,
                **fields,
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

    def _update(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        fields = _changes(options, trigger, now=timezone.now())
        if not fields:
            raise CommandError("give at least one option to change (see `manage.py trigger update --help`).")
        with errors_as_command_errors(_OPTIONS):
            trigger = services.trigger_update(trigger=trigger, **fields)
        changed = ", ".join(sorted({_OPTIONS.get(name, name) for name in fields if name != "kind"}))
        self.stdout.write(self.style.SUCCESS(f"Updated trigger {trigger.pk} {trigger.name!r}: {changed}."))
        self.stdout.write(f"Schedule: {trigger.description}")
        self.stdout.write(f"Status:   {trigger.status}")
        self.stdout.write(f"Next run: {_both(trigger.next_run_at, trigger)}")

    def _preview(self, options: dict[str, Any]) -> None:
        now = timezone.now()
        if options["trigger"]:
            # A saved trigger, or (with options) what `update` would make of it: the options are
            # applied to the loaded instance, which is never saved.
            trigger = _trigger(options)
            before = {name: getattr(trigger, name) for name in _SCHEDULE_FIELDS}
            fields = _changes(options, trigger, now=now)
            for name, value in fields.items():
                setattr(trigger, name, value)
            changed = any(getattr(trigger, name) != value for name, value in before.items())
            title = f"Trigger {trigger.pk} {trigger.name!r}" + (" with the changes given (not saved)" if fields else "")
        else:
            trigger = _unsaved_trigger(options, now=now)  # validated as it is built
            fields, changed = {}, True
            title = "Trigger not saved yet"
        if fields:
            with errors_as_command_errors(_OPTIONS):
                services.trigger_validate(trigger=trigger, schedule_changed=changed, now=now)
        with errors_as_command_errors(_OPTIONS):
            items = selectors.trigger_preview(trigger, count=options["count"], now=now)
        self.stdout.write(title)
        self.stdout.write(f"  Schedule  {trigger.description}")
        self._runs(items, trigger, options["count"])

    # --- reads ----------------------------------------------------------------------------------

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
                t.status,
                _runs_text(t),
                format_utc(t.next_run_at) if t.status == "active" else EMPTY,
                t.last_status,
            )
            for t in selectors.triggers_with_last_status(triggers.order_by("owner__username", "name", "id"))
        ]
        if not rows:
            self.stdout.write("No triggers.")
            return
        headers = (
            "ID",
            "NAME",
            "OWNER",
            "WORKFLOW",
            "KIND",
            "SCHEDULE",
            "TIMEZONE",
            "STATUS",
            "RUNS",
            "NEXT RUN (UTC)",
            "LAST",
        )
        self.stdout.write(table(headers, rows))

    def _show(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        workflow = trigger.workflow
        endpoint = redact_url(workflow.endpoint_url) if workflow.endpoint_url else "built-in endpoint"
        schedule_rows: list[tuple[str, Any]] = {
            TriggerKind.CRON: [("Cron", trigger.cron)],
            TriggerKind.ONCE: [("Run at", _both(trigger.run_at, trigger))],
            TriggerKind.INTERVAL: [
                ("Every", f"{trigger.interval_seconds} s"),
                ("Anchor", _both(trigger.anchor_at, trigger) if trigger.anchor_at else "the Unix epoch"),
            ],
        }.get(trigger.kind, [])
        task = trigger.periodic_task
        description = selectors.trigger_describe(trigger, count=options["count"])
        rows: list[tuple[str, Any]] = [
            ("Owner", trigger.owner.get_username()),
            ("Workflow", f"{workflow.pk} {workflow.name!r} ({workflow.http_method} {endpoint})"),
            ("Kind", trigger.kind),
            *schedule_rows,
            ("Time zone", trigger.timezone),
            ("Schedule", trigger.description),
            ("Inputs", json.dumps(trigger.inputs, sort_keys=True)),
            ("State", description["state"]),
            ("Runs", _runs_text(trigger)),
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
        self._rows(rows)
        self.stdout.write("Rules:")
        self._rows([(_RULE_LABELS[name], text) for name, text in description["rules"].items()])
        self._runs(description["next_runs"], trigger, options["count"])

    def _describe(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        description = selectors.trigger_describe(trigger, count=options["count"])
        self.stdout.write(f"Trigger {trigger.pk} {trigger.name!r}")
        self._rows(
            [
                ("Schedule", description["schedule"]),
                ("State", description["state"]),
                *((_RULE_LABELS[name], text) for name, text in description["rules"].items()),
            ]
        )
        self._runs(description["next_runs"], trigger, options["count"])

    def _history(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        rows = [
            (
                format_utc(e.scheduled_for),
                e.origin,
                e.status + (f" ({e.skip_reason})" if e.skip_reason else ""),
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

    def _stats(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        figures = selectors.trigger_stats(trigger, last=options["last"], next_count=options["next"])
        self.stdout.write(f"Trigger {trigger.pk} {trigger.name!r} (counts include pruned executions)")
        self._rows(stats_rows(figures, last=options["last"]))
        self.stdout.write("Next runs:")
        for slot in figures["next_runs"]:
            self.stdout.write(f"  {_both(slot, trigger)}")
        if not figures["next_runs"]:
            self.stdout.write(f"  none ({trigger.status})")

    # --- actions --------------------------------------------------------------------------------

    def _pause(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        by = user_get(options["by"], option="--by") if options["by"] else None
        with errors_as_command_errors(_OPTIONS):
            trigger = services.trigger_pause(trigger=trigger, reason=options["reason"], by=by)
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

    def _backfill(self, options: dict[str, Any]) -> None:
        trigger = _trigger(options)
        zone = trigger.cadence.zone
        start = parse_time(options["start"], zone, option="--start")
        end = parse_time(options["end"], zone, option="--end")
        with errors_as_command_errors(_OPTIONS):
            report = services.trigger_backfill(trigger=trigger, start=start, end=end, overlap=options["overlap"])
        self.stdout.write(
            self.style.SUCCESS(
                f"Backfilled trigger {trigger.pk} {trigger.name!r} from {_both(start, trigger)} "
                f"to {_both(end, trigger)}: {report.created} execution(s) queued, {report.existing} slot(s) "
                f"already had one, {report.skipped} skipped."
            )
        )
        for execution_id in report.execution_ids:
            self.stdout.write(f"  {execution_id}")

    # --- output ---------------------------------------------------------------------------------

    def _rows(self, rows: list[tuple[str, Any]]) -> None:
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"  {label.ljust(width)}  {EMPTY if value in (None, '') else value}")

    def _runs(self, items: list[dict[str, Any]], trigger: Trigger, count: int) -> None:
        self.stdout.write(f"Next {count} runs:")
        for item in items:
            reason = _REASONS.get(item["reason"], item["reason"])
            self.stdout.write(f"  {_both(item['at'], trigger)}" + (f"  [{reason}]" if reason else ""))
        if not items:
            self.stdout.write(f"  none ({trigger.status})" if trigger.pk else "  none")


def _add_trigger_argument(parser: CommandParser) -> CommandParser:
    parser.add_argument("trigger", metavar="TRIGGER", help="Trigger id or name.")
    parser.add_argument("--owner", metavar="USERNAME", help="Whose trigger, when several share the name.")
    return parser


def _add_count(parser: CommandParser) -> None:
    parser.add_argument(
        "--count", type=positive_int, default=_UPCOMING, metavar="N", help=f"Runs to list (default {_UPCOMING})."
    )


def _add_schedule_options(parser: CommandParser, *, required: bool) -> None:
    when = parser.add_mutually_exclusive_group(required=required)
    when.add_argument("--cron", metavar="EXPR", help="5-field cron or @daily etc., e.g. '0 9 * * MON-FRI'.")
    when.add_argument(
        "--preset",
        choices=timing.PRESETS,
        help="A cron schedule without writing cron: hourly --minute M, daily/weekdays --at HH:MM, "
        "weekly --day DAY --at HH:MM (DAY 0-6 or MON..SUN), monthly --day 1-31 --at HH:MM.",
    )
    when.add_argument(
        "--run-at", metavar="ISO8601", help="Run once at this time, e.g. 2026-12-01T09:00 (read in --timezone)."
    )
    when.add_argument(
        "--in", dest="in_seconds", type=positive_int, metavar="SECONDS", help="Run once, this many seconds from now."
    )
    when.add_argument(
        "--every", type=positive_int, metavar="SECONDS", help="Run every SECONDS (from --anchor-at, or the epoch)."
    )
    parser.add_argument("--at", metavar="HH:MM", help="With --preset daily, weekdays, weekly, monthly: the time.")
    parser.add_argument("--minute", metavar="M", help="With --preset hourly: minute past the hour, 0-59.")
    parser.add_argument("--day", metavar="D", help="With --preset weekly: 0-6 or MON..SUN; monthly: 1-31.")
    parser.add_argument("--dst-policy", choices=DstPolicy.values, help="Cron only: what DST gaps and repeats do.")
    parser.add_argument("--anchor-at", metavar="ISO8601|none", help="With --every: slots are anchor + k * interval.")
    parser.add_argument("--start-at", metavar="ISO8601|none", help="No slot before this time.")
    parser.add_argument("--end-at", metavar="ISO8601|none", help="No slot after this time; then it completes.")


def _add_rule_options(parser: CommandParser) -> None:
    parser.add_argument("--max-runs", type=int_or_none(1), metavar="N|none", help="Complete after N scheduled runs.")
    parser.add_argument(
        "--jitter", type=non_negative_int, metavar="SECONDS", help="Delay each slot's call by a random 0..N s (0-3600)."
    )
    parser.add_argument(
        "--window",
        metavar="JSON",
        help='Days (0=Sunday) and local time ranges slots may run in, e.g. \'{"days": [1, 2, 3, 4, 5], '
        '"ranges": [["09:00", "17:00"]]}\'; \'{}\' means always.',
    )
    parser.add_argument("--catchup", choices=CatchupPolicy.values, help="Missed slots: skip, latest or all.")
    parser.add_argument(
        "--catchup-window", type=non_negative_int, metavar="SECONDS", help="With --catchup all: how far back."
    )
    parser.add_argument("--overlap", choices=OverlapPolicy.values, help="While the previous run is unfinished.")
    parser.add_argument("--priority", choices=Priority.values, help="The queue its executions run on.")
    parser.add_argument(
        "--pause-after-failures", type=int_or_none(1), metavar="N|none", help="Pause after N failures in a row."
    )
    parser.add_argument("--notify-emails", metavar="ADDRESSES", help="Comma-separated; '' clears.")
    parser.add_argument("--notify-webhook", metavar="URL", help="Gets a signed JSON POST per event; '' clears.")
    parser.add_argument(
        "--fallback-workflow", metavar="ID_OR_NAME|none", help="Runs (same inputs) when an execution finally fails."
    )
    parser.add_argument("--max-attempts", type=positive_int, metavar="N", help="Calls per slot, 1-20.")
    parser.add_argument("--min-backoff", type=positive_int, metavar="SECONDS", help="First retry wait.")
    parser.add_argument("--max-backoff", type=positive_int, metavar="SECONDS", help="Longest retry wait.")
    parser.add_argument("--max-doublings", type=non_negative_int, metavar="N", help="Waits double N times (0-30).")
    parser.add_argument(
        "--max-retry-duration", type=non_negative_int, metavar="SECONDS", help="Stop retrying after this; 0: never."
    )
    parser.add_argument(
        "--keep-succeeded", type=int_or_none(0), metavar="N|none", help="Keep the last N succeeded; none: default."
    )
    parser.add_argument(
        "--keep-failed", type=int_or_none(0), metavar="N|none", help="Keep the last N failed; none: default."
    )
    parser.add_argument(
        "--retention-days", type=int_or_none(1), metavar="N|none", help="Drop executions older than N days."
    )


def _schedule(options: dict[str, Any], zone: Any) -> dict[str, Any]:
    """The kind and its field from whichever of --cron/--preset/--run-at/--in/--every was given ({} if none)."""
    preset_params = {
        name: options[dest] for dest, name in (("at", "time"), ("minute", "minute"), ("day", "day")) if options[dest]
    }
    if preset_params and options["preset"] is None:
        option = _OPTIONS[next(iter(preset_params))]
        raise CommandError(f"{option}: only goes with --preset.")
    if options["cron"] is not None:
        return {"kind": TriggerKind.CRON, "cron": options["cron"]}
    if options["preset"] is not None:
        return {"kind": TriggerKind.CRON, "cron": timing.preset_cron(options["preset"], **preset_params)}
    if options["run_at"] is not None:
        return {"kind": TriggerKind.ONCE, "run_at": parse_time(options["run_at"], zone, option="--run-at")}
    if options["in_seconds"] is not None:
        return {"kind": TriggerKind.ONCE, "delay_seconds": options["in_seconds"]}
    if options["every"] is not None:
        return {"kind": TriggerKind.INTERVAL, "interval_seconds": options["every"]}
    return {}


def _rule_fields(options: dict[str, Any], zone: Any, *, owner: Any) -> dict[str, Any]:
    """Model field -> value for every rule option given ('none' -> None)."""
    fields: dict[str, Any] = {}
    for dest, name in _PLAIN_FIELDS.items():
        if options.get(dest) is not None:
            fields[name] = None if options[dest] is CLEAR else options[dest]
    for dest, name in _TIME_FIELDS.items():
        text = options.get(dest)
        if text is not None:
            option = _OPTIONS[name]
            fields[name] = None if text.strip().lower() == "none" else parse_time(text, zone, option=option)
    if options.get("window") is not None:
        fields["execution_window"] = parse_json_object(options["window"], option="--window")
    fallback = options.get("fallback_workflow")
    if fallback is not None:
        fields["fallback_workflow"] = (
            None
            if fallback.strip().lower() == "none"
            else workflow_get(fallback, owner=owner, option="--fallback-workflow")
        )
    return fields


def _changes(options: dict[str, Any], trigger: Trigger, *, now: datetime) -> dict[str, Any]:
    """The fields `update` (or a what-if preview) changes: only those whose option was given."""
    fields: dict[str, Any] = {}
    if options.get("timezone") is not None:
        fields["timezone"] = options["timezone"]
    with errors_as_command_errors(_OPTIONS):
        zone = timing.zone(fields.get("timezone", trigger.timezone))
        schedule = _schedule(options, zone)
    if schedule:
        kind = schedule.pop("kind")
        if "delay_seconds" in schedule:
            schedule = {"run_at": now + timedelta(seconds=schedule.pop("delay_seconds"))}
        # Switching kind clears the old kind's fields (the model refuses a cron on a once trigger).
        for name in ("cron", "run_at", "interval_seconds", "anchor_at"):
            keep = name in schedule or (name == "anchor_at" and kind == TriggerKind.INTERVAL)
            if not keep and getattr(trigger, name) not in (None, "") and options.get(name) is None:
                schedule[name] = "" if name == "cron" else None
        fields.update(kind=kind, **schedule)
    fields.update(_rule_fields(options, zone, owner=trigger.owner))
    if options.get("name") is not None:
        fields["name"] = options["name"]
    if options.get("workflow") is not None:
        fields["workflow"] = workflow_get(options["workflow"], owner=trigger.owner)
    if options.get("inputs") is not None:
        fields["inputs"] = parse_json_object(options["inputs"], option="--inputs")
    return fields


def _unsaved_trigger(options: dict[str, Any], *, now: datetime) -> Trigger:
    """The trigger `create` would make of the options (services.trigger_build), not saved."""
    if not options["workflow"]:
        raise CommandError(
            "--workflow: needed to preview a trigger that is not saved yet (its owner and retry defaults apply); "
            "or give TRIGGER to preview a saved one."
        )
    if not any(options[dest] is not None for dest in _SCHEDULE_DESTS):
        raise CommandError("one of --cron, --preset, --run-at, --in, --every is needed without TRIGGER.")
    owner = user_get(options["owner"]) if options["owner"] else None
    workflow = workflow_get(options["workflow"], owner=owner)
    zone_name = options["timezone"] or "UTC"
    with errors_as_command_errors(_OPTIONS):
        zone = timing.zone(zone_name)
        return services.trigger_build(
            owner=workflow.owner,
            workflow=workflow,
            # Unique, so the (owner, name) check never trips over one of the owner's real triggers.
            name=f"preview {uuid.uuid4().hex[:12]}",
            timezone_name=zone_name,
            now=now,
            **_schedule(options, zone),
            **_rule_fields(options, zone, owner=workflow.owner),
        )


def stats_rows(figures: dict[str, Any], *, last: int) -> list[tuple[str, Any]]:
    """trigger_stats / workflow_stats figures as (label, value) rows."""
    rate = figures["success_rate"]
    avg, p95 = figures["avg_duration_ms"], figures["p95_duration_ms"]
    return [
        ("Total", figures["total"]),
        ("Succeeded", figures["succeeded"]),
        ("Failed", figures["failed"]),
        ("Skipped", figures["skipped"]),
        ("Success rate", EMPTY if rate is None else f"{rate:.1%}"),
        ("Avg duration", EMPTY if avg is None else f"{avg:.0f} ms"),
        ("p95 duration", EMPTY if p95 is None else f"{p95:.0f} ms"),
        (
            f"Last {last}",
            ", ".join(figures["last_statuses"]) + " (newest first)" if figures["last_statuses"] else EMPTY,
        ),
    ]


def _trigger(options: dict[str, Any]) -> Trigger:
    owner = user_get(options["owner"]) if options["owner"] else None
    return trigger_get(options["trigger"], owner=owner)


def _runs_text(trigger: Trigger) -> str:
    if trigger.max_runs is None:
        return str(trigger.run_count)
    return f"{trigger.run_count}/{trigger.max_runs} ({trigger.runs_remaining} left)"


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
