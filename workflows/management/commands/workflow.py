"""`manage.py workflow create|list`: create and list workflows from the shell."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandParser

from workflows import services
from workflows.models import HttpMethod, Workflow

from ._common import (
    command_error,
    parse_json_object,
    positive_int,
    redact_url,
    table,
    user_get,
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
}


class Command(BaseCommand):
    help = "Create or list workflows (the HTTP endpoints triggers call)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{create,list}")

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

        listing = sub.add_parser("list", help="List workflows (secrets are never shown).")
        listing.add_argument("--owner", metavar="USERNAME", help="Only this user's workflows.")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['subcommand']}")(options)

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
