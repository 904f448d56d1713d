"""`manage.py execution show|retry EXECUTION_ID` and `execution stats [--workflow W] [--owner U]`."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from kombu.exceptions import OperationalError

from schedules import services
from schedules.selectors import owner_stats, workflow_stats
from workflows.management.commands._common import EMPTY, format_utc, positive_int, table, user_get, workflow_get
from workflows.services import audit_source

from ._common import errors_as_command_errors, execution_get

_OPTIONS = {"status": "EXECUTION_ID", "workflow": "EXECUTION_ID"}


class Command(BaseCommand):
    help = "Show an execution (attempts, why it skipped or waits) or retry a failed one."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{show,retry,stats}")
        show = sub.add_parser("show", help="An execution's fields and attempt log.")
        show.add_argument("execution", metavar="EXECUTION_ID", help="Its id (a UUID, see `trigger history`).")
        retry = sub.add_parser("retry", help="Run a failed execution again as a new execution (origin retry).")
        retry.add_argument("execution", metavar="EXECUTION_ID", help="A failed execution's id.")
        stats = sub.add_parser(
            "stats",
            help="Counts, success rate and durations: of a workflow (all its triggers), of a user's executions "
            "(--owner alone), or of every execution (neither).",
        )
        stats.add_argument("--workflow", metavar="WORKFLOW", help="The workflow's id or name.")
        stats.add_argument(
            "--owner", metavar="USERNAME", help="Alone: all of this user's executions; with --workflow: whose workflow."
        )
        stats.add_argument("--last", type=positive_int, default=10, metavar="N", help="Latest statuses to show.")
        stats.add_argument("--next", type=positive_int, default=5, metavar="N", help="Next runs to show.")

    def handle(self, *args: Any, **options: Any) -> None:
        with audit_source("command"):
            getattr(self, f"_{options['subcommand']}")(options)

    def _show(self, options: dict[str, Any]) -> None:
        execution = execution_get(options["execution"])
        trigger = execution.trigger
        rows: list[tuple[str, Any]] = [
            ("Trigger", f"{trigger.pk} {trigger.name!r}"),
            ("Workflow", f"{execution.workflow_id} {execution.workflow.name!r}"),
            ("Slot", format_utc(execution.scheduled_for)),
            ("Origin", execution.origin),
            ("Status", execution.status),
            ("Skip reason", execution.skip_reason),
            ("Wait reason", execution.wait_reason),
            ("Retry of", execution.retry_of_id),
            ("Fallback of", execution.fallback_of_id),
            ("Attempts", execution.attempts),
            ("HTTP status", execution.http_status),
            ("Duration", f"{execution.duration_ms} ms" if execution.duration_ms is not None else None),
            ("Run id", execution.run_id),
            ("Error", execution.error),
            ("Jitter", f"{execution.jitter_seconds} s" if execution.jitter_seconds else None),
            ("Due", format_utc(execution.due_at)),
            ("Created", format_utc(execution.created_at)),
            ("Started", format_utc(execution.started_at)),
            ("Finished", format_utc(execution.finished_at)),
            ("Next attempt", format_utc(execution.next_attempt_at)),
            ("Inputs", json.dumps(execution.inputs, sort_keys=True)),
        ]
        retries = list(execution.retries.values_list("pk", flat=True))
        if retries:
            rows.append(("Retried as", ", ".join(str(pk) for pk in retries)))
        self.stdout.write(f"Execution {execution.pk}")
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"  {label.ljust(width)}  {EMPTY if value in (None, '') else value}")
        attempts = execution.metadata.get("attempts") if isinstance(execution.metadata, dict) else None
        if attempts:
            self.stdout.write("Attempts:")
            self.stdout.write(_attempt_table(attempts))

    def _retry(self, options: dict[str, Any]) -> None:
        execution = execution_get(options["execution"])
        try:
            with errors_as_command_errors(_OPTIONS):
                retry = services.execution_retry(execution=execution)
        except OperationalError as exc:
            raise CommandError(
                f"the retry was recorded but the broker could not be reached ({type(exc).__name__}); "
                "the recovery task will queue it when the broker is back."
            ) from None
        self.stdout.write(self.style.SUCCESS(f"Queued execution {retry.pk}, a retry of {execution.pk}."))

    def _stats(self, options: dict[str, Any]) -> None:
        from .trigger import stats_rows

        owner = user_get(options["owner"]) if options["owner"] else None
        if options["workflow"]:
            workflow = workflow_get(options["workflow"], owner=owner, option="--workflow")
            figures = workflow_stats(workflow, last=options["last"], next_count=options["next"])
            title = f"Workflow {workflow.pk} {workflow.name!r}, all its triggers"
        elif owner is not None:
            figures = owner_stats(owner, last=options["last"], next_count=options["next"])
            title = f"All executions of {owner.get_username()}'s triggers"
        else:
            figures = owner_stats(_Everyone(), last=options["last"], next_count=options["next"])
            title = "All executions"
        self.stdout.write(f"{title} (counts include pruned executions)")
        rows = stats_rows(figures, last=options["last"])
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"  {label.ljust(width)}  {value}")
        self.stdout.write("Next runs:")
        for run in figures["next_runs"]:
            self.stdout.write(f"  {format_utc(run['at'])}  trigger {run['trigger_id']} {run['trigger']!r}")
        if not figures["next_runs"]:
            self.stdout.write("  none")


class _Everyone:
    """owner_stats' view of a caller who sees every user's executions (as staff do)."""

    is_staff = True


def _attempt_table(attempts: list[Any]) -> str:
    rows = [
        (
            entry.get("attempt"),
            entry.get("started_at"),
            entry.get("http_status"),
            entry.get("duration_ms"),
            entry.get("error"),
            entry.get("retry_in_seconds"),
        )
        for entry in attempts
        if isinstance(entry, dict)
    ]
    return table(("#", "STARTED", "HTTP", "MS", "ERROR", "RETRY IN S"), rows)
