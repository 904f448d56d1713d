"""`manage.py workflow create|list|set-definition|start|run|rotate-secret|reencrypt-secrets`: workflows,
their built-in engine definitions, runs and secrets.

A workflow's execution stats are `manage.py execution stats --workflow W` (schedules owns executions)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from workflows import services
from workflows.exceptions import RunStateError, SecretUndecryptable
from workflows.models import HttpMethod, Workflow, WorkflowRun
from workflows.services import audit_source

from ._common import (
    command_error,
    format_utc,
    parse_json_object,
    positive_int,
    redact_url,
    table,
    user_get,
    workflow_get,
)

# Model field -> the option that sets it, so errors name what the user typed.
_OPTIONS = {
    "owner": "--owner",
    "name": "--name",
    "endpoint_url": "--url",
    "http_method": "--method",
    "timeout_seconds": "--timeout",
    "default_inputs": "--inputs",
    "headers": "--headers",
    "definition": "--definition",
}


def parse_time(text: str, *, option: str) -> datetime:
    """An ISO 8601 time with its offset."""
    value = parse_datetime(text.strip())
    if value is None or timezone.is_naive(value):
        raise CommandError(f"{option}: {text!r} is not a time with an offset, e.g. 2027-01-04T09:00:00Z.")
    return value


def read_definition(path: str, *, option: str) -> dict[str, Any]:
    """The JSON object in the file at ``path`` (``-``: standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{option}: cannot read {path}: {exc}") from None
    value = parse_json_object(text, option=option)
    assert value is not None
    return value


def overlap_seconds(text: str) -> int:
    """argparse type: seconds the old secret keeps verifying, 0 to a week."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value <= services.MAX_OVERLAP_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 0-{services.MAX_OVERLAP_SECONDS} seconds (7 days), not {value}")
    return value


class Command(BaseCommand):
    help = "Create or list workflows (the HTTP endpoints triggers call) and manage their signing secrets."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="subcommand",
            required=True,
            metavar="{create,list,set-definition,start,run,rotate-secret,reencrypt-secrets}",
        )

        create = sub.add_parser("create", help="Create a workflow and print its signing secret (once).")
        create.add_argument("--owner", required=True, metavar="USERNAME", help="The user who owns it.")
        create.add_argument("--name", required=True, help="Unique per owner, e.g. 'Daily sales report'.")
        create.add_argument(
            "--url",
            default="",
            help="Execution endpoint (http/https). Default: this service's /api/workflows/<id>/runs/.",
        )
        create.add_argument(
            "--method", type=str.upper, choices=HttpMethod.values, default=HttpMethod.POST, help="Default POST."
        )
        create.add_argument("--timeout", type=positive_int, metavar="SECONDS", help="Per-call deadline, 1-300 s.")
        create.add_argument("--inputs", metavar="JSON", help='Default inputs, e.g. \'{"region": "us"}\'.')
        create.add_argument("--headers", metavar="JSON", help='Extra headers, e.g. \'{"X-Team": "growth"}\'.')
        create.add_argument(
            "--definition",
            metavar="FILE",
            help="A JSON file with what the built-in engine runs (README 'Built-in workflow engine'); - reads stdin.",
        )

        define = sub.add_parser(
            "set-definition", help="Replace a workflow's built-in engine definition with a JSON file ({} removes it)."
        )
        define.add_argument("workflow", metavar="WORKFLOW", help="The workflow's id or name.")
        define.add_argument("file", metavar="FILE", help="The JSON file; - reads stdin.")
        define.add_argument("--owner", metavar="USERNAME", help="The owner, when several users have that name.")

        start = sub.add_parser(
            "start", help="Start a run of a workflow with a definition now or later, without a trigger."
        )
        start.add_argument("workflow", metavar="WORKFLOW", help="The workflow's id or name.")
        start.add_argument("--owner", metavar="USERNAME", help="The owner, when several users have that name.")
        when = start.add_mutually_exclusive_group()
        when.add_argument("--in", dest="delay", type=int, metavar="SECONDS", help="Start in this many seconds.")
        when.add_argument("--at", metavar="TIME", help="Start at this time, e.g. 2027-01-04T09:00:00Z.")
        start.add_argument("--inputs", metavar="JSON", help='Inputs over the defaults, e.g. \'{"stream": "tuesday"}\'.')
        start.add_argument("--priority", choices=["high", "normal", "low"], default="normal")

        run = sub.add_parser(
            "run", help="Show a run of the built-in engine (its status and each step's attempts), or steer it."
        )
        run.add_argument("run_id", metavar="RUN_ID", help="The run's id (a UUID).")
        steer = run.add_mutually_exclusive_group()
        steer.add_argument("--pause", action="store_true", help="Send no more steps until it is resumed.")
        steer.add_argument("--resume", action="store_true", help="Carry on from where it was paused.")
        steer.add_argument("--cancel", action="store_true", help="End it as cancelled.")
        steer.add_argument("--retry", action="store_true", help="Run a failed run again from its failed step.")
        steer.add_argument("--move-to", metavar="TIME", help="Move a queued run's start, e.g. 2027-01-04T09:00:00Z.")

        listing = sub.add_parser("list", help="List workflows (secrets are never shown).")
        listing.add_argument("--owner", metavar="USERNAME", help="Only this user's workflows.")

        rotate = sub.add_parser(
            "rotate-secret",
            help="Give a workflow a new signing secret and print it (once); the old one verifies during the overlap.",
        )
        rotate.add_argument("workflow", metavar="WORKFLOW", help="The workflow's id or name.")
        rotate.add_argument("--owner", metavar="USERNAME", help="The owner, when several users have that name.")
        rotate.add_argument(
            "--overlap",
            type=overlap_seconds,
            default=services.DEFAULT_OVERLAP_SECONDS,
            metavar="SECONDS",
            help="How long the old secret still verifies, 0 (not at all) to 604800 (7 days). Default 86400.",
        )

        sub.add_parser(
            "reencrypt-secrets",
            help="Re-encrypt every stored secret with the first key in SCHEDULER_SECRET_KEYS (after adding a key).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with audit_source("command"):
            getattr(self, f"_{options['subcommand'].replace('-', '_')}")(options)

    def _create(self, options: dict[str, Any]) -> None:
        owner = user_get(options["owner"])
        fields: dict[str, Any] = {"endpoint_url": options["url"], "http_method": options["method"]}
        if options["timeout"] is not None:
            fields["timeout_seconds"] = options["timeout"]
        inputs = parse_json_object(options["inputs"], option="--inputs")
        if inputs is not None:
            fields["default_inputs"] = inputs
        headers = parse_json_object(options["headers"], option="--headers")
        if headers is not None:
            fields["headers"] = headers
        if options["definition"] is not None:
            fields["definition"] = read_definition(options["definition"], option="--definition")
        try:
            workflow = services.workflow_create(owner=owner, name=options["name"], **fields)
        except ValidationError as exc:
            raise command_error(exc, _OPTIONS) from None
        self.stdout.write(self.style.SUCCESS(f"Created workflow {workflow.pk} {workflow.name!r}."))
        endpoint = (
            redact_url(workflow.endpoint_url) if workflow.endpoint_url else f"built-in ({workflow.execution_url})"
        )
        self.stdout.write(f"Endpoint:       {workflow.http_method} {endpoint}")
        self.stdout.write(f"Signing secret: {workflow.secret}")
        self.stdout.write(
            self.style.WARNING(
                "This secret is shown only now and will not be shown again: store it where your endpoint "
                "verifies Standard Webhooks signatures."
            )
        )

    def _set_definition(self, options: dict[str, Any]) -> None:
        owner = user_get(options["owner"]) if options["owner"] else None
        workflow = workflow_get(options["workflow"], owner=owner, option="WORKFLOW")
        definition = read_definition(options["file"], option="FILE")
        try:
            services.workflow_update(workflow=workflow, definition=definition)
        except ValidationError as exc:
            raise command_error(exc, {"definition": "FILE"}) from None
        what = f"a {definition['type']} definition" if definition else "no definition (runs are only recorded)"
        self.stdout.write(self.style.SUCCESS(f"Workflow {workflow.pk} {workflow.name!r} now has {what}."))

    def _start(self, options: dict[str, Any]) -> None:
        owner = user_get(options["owner"]) if options["owner"] else None
        workflow = workflow_get(options["workflow"], owner=owner, option="WORKFLOW")
        try:
            run, _ = services.workflow_start(
                workflow=workflow,
                inputs=parse_json_object(options["inputs"], option="--inputs"),
                delay_seconds=options["delay"],
                run_at=parse_time(options["at"], option="--at") if options["at"] else None,
                priority=options["priority"],
            )
        except ValidationError as exc:
            raise command_error(
                exc, {"workflow": "WORKFLOW", "delay_seconds": "--in", "run_at": "--at", "inputs": "--inputs"}
            ) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Run {run.pk} of workflow {workflow.pk} {workflow.name!r} starts {format_utc(run.wake_at)}."
            )
        )
        self.stdout.write(f"Follow it with: manage.py workflow run {run.pk}")

    def _run(self, options: dict[str, Any]) -> None:
        try:
            run = WorkflowRun.objects.select_related("workflow").filter(pk=options["run_id"]).first()
        except ValidationError:
            run = None
        if run is None:
            raise CommandError(f"RUN_ID: there is no run {options['run_id']!r}.")
        for change in ("pause", "resume", "cancel", "retry"):
            if options[change]:
                try:
                    run = getattr(services, f"run_{change}")(run=run)
                except RunStateError as exc:
                    raise CommandError(f"--{change}: {exc}") from None
        if options["move_to"]:
            try:
                run = services.run_move(run=run, run_at=parse_time(options["move_to"], option="--move-to"))
            except RunStateError as exc:
                raise CommandError(f"--move-to: {exc}") from None
            except ValidationError as exc:
                raise command_error(exc, {"run_at": "--move-to"}) from None
        self.stdout.write(f"Run {run.pk} of workflow {run.workflow_id} {run.workflow.name!r}")
        self.stdout.write(
            f"Status: {run.get_status_display()}" + (f" at step {run.current_step}" if run.current_step else "")
        )
        if run.wake_at:
            self.stdout.write(f"Wakes:  {format_utc(run.wake_at)}")
        if run.error:
            self.stdout.write(f"Error:  {run.error}")
        rows = [
            (
                step.seq,
                step.step_id,
                step.action or "(end)",
                step.attempt,
                step.status,
                format_utc(step.started_at),
                format_utc(step.finished_at) if step.finished_at else "",
                step.error[:80],
            )
            for step in run.steps.order_by("seq", "attempt")
        ]
        if rows:
            self.stdout.write(table(("#", "STEP", "ACTION", "TRY", "STATUS", "STARTED", "FINISHED", "ERROR"), rows))

    def _rotate_secret(self, options: dict[str, Any]) -> None:
        owner = user_get(options["owner"]) if options["owner"] else None
        workflow = workflow_get(options["workflow"], owner=owner, option="WORKFLOW")
        try:
            secret = services.workflow_rotate_secret(workflow=workflow, overlap_seconds=options["overlap"])
        except ValidationError as exc:
            raise command_error(exc, {"overlap_seconds": "--overlap", "secret": "WORKFLOW"}) from None
        self.stdout.write(
            self.style.SUCCESS(f"Rotated the signing secret of workflow {workflow.pk} {workflow.name!r}.")
        )
        self.stdout.write(f"Signing secret: {secret}")
        if workflow.previous_secret_expires_at is not None:
            self.stdout.write(
                f"Until {format_utc(workflow.previous_secret_expires_at)} calls also carry a signature made with "
                "the old secret, and the built-in endpoint accepts either; after that only the new one."
            )
        else:
            self.stdout.write("The old secret no longer verifies.")
        self.stdout.write(
            self.style.WARNING(
                "This secret is shown only now and will not be shown again: store it where your endpoint "
                "verifies Standard Webhooks signatures."
            )
        )

    def _reencrypt_secrets(self, options: dict[str, Any]) -> None:
        try:
            count = services.workflow_secrets_reencrypt()
        except SecretUndecryptable as exc:
            raise CommandError(f"{exc}; nothing after it was re-encrypted.") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Re-encrypted the secrets of {count} workflow(s) with the first key in SCHEDULER_SECRET_KEYS; "
                "keys after it can now be removed."
            )
        )

    def _list(self, options: dict[str, Any]) -> None:
        workflows = Workflow.objects.select_related("owner").order_by("owner__username", "name", "id")
        if options["owner"]:
            workflows = workflows.filter(owner=user_get(options["owner"]))
        rows = [
            (
                w.pk,
                w.name,
                w.owner.get_username(),
                w.http_method,
                redact_url(w.endpoint_url) if w.endpoint_url else "built-in",
                f"{w.timeout_seconds}s",
                "active" if w.is_active else "inactive",
            )
            for w in workflows
        ]
        if not rows:
            self.stdout.write("No workflows.")
            return
        self.stdout.write(table(("ID", "NAME", "OWNER", "METHOD", "ENDPOINT", "TIMEOUT", "STATE"), rows))
