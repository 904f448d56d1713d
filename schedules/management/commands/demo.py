"""`manage.py demo`: the README's one-command demo (admin user, workflow, every-minute trigger)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from schedules import services as schedule_services
from schedules.models import Trigger, TriggerKind
from workflows import services as workflow_services
from workflows.models import Workflow

from ._common import errors_as_command_errors

USERNAME = "admin"
PASSWORD = "admin"  # noqa: S105 - a documented local-only demo login
WORKFLOW_NAME = "Demo workflow"
TRIGGER_NAME = "Every minute"


class Command(BaseCommand):
    help = "Set up the demo: superuser admin/admin, 'Demo workflow' and an every-minute trigger (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--insecure-demo",
            action="store_true",
            help="Create admin/admin even with DEBUG off (a server others can reach gets a known login).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # With DEBUG off this is a deployment, maybe on a public port: a known superuser login
        # there is an open door, so it takes an explicit flag.
        if not settings.DEBUG and not options["insecure_demo"]:
            raise CommandError(
                "demo: DEBUG is off, and demo creates the superuser admin/admin; "
                "pass --insecure-demo if this server is private and that is what you want."
            )
        with errors_as_command_errors({}), transaction.atomic():
            user, user_created = self._user()
            workflow = Workflow.objects.filter(owner=user, name=WORKFLOW_NAME).first()
            workflow_created = workflow is None
            if workflow is None:
                # No endpoint_url: runs go to this service's own /api/workflows/<id>/runs/.
                workflow = workflow_services.workflow_create(owner=user, name=WORKFLOW_NAME)
            trigger = Trigger.objects.filter(owner=user, name=TRIGGER_NAME).first()
            trigger_created = trigger is None
            if trigger is None:
                trigger = schedule_services.trigger_create(
                    owner=user,
                    workflow=workflow,
                    name=TRIGGER_NAME,
                    kind=TriggerKind.CRON,
                    cron="* * * * *",
                    timezone_name="UTC",
                )
        if user_created:
            self.stdout.write(self.style.SUCCESS(f"Created superuser {USERNAME!r} with password {PASSWORD!r}."))
            self.stdout.write(
                self.style.WARNING(
                    "This login is for local use only: change it (manage.py changepassword admin) "
                    "before anyone else can reach this server."
                )
            )
        else:
            self.stdout.write(f"User {USERNAME!r} already exists; left unchanged.")
        self.stdout.write(
            f"{'Created' if workflow_created else 'Reusing'} workflow {workflow.pk} {workflow.name!r} "
            f"(calls {workflow.execution_url})."
        )
        self.stdout.write(
            f"{'Created' if trigger_created else 'Reusing'} trigger {trigger.pk} {trigger.name!r}: "
            f"{trigger.description}."
        )
        login = f"{USERNAME} / {PASSWORD}" if user_created else f"{USERNAME} (with its current password)"
        self.stdout.write(f"Admin: {settings.SCHEDULER_PUBLIC_BASE_URL}/admin/  login: {login}")

    def _user(self) -> tuple[Any, bool]:
        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: USERNAME}).first()
        if user is not None:
            return user, False
        user = user_model._default_manager.create_superuser(USERNAME, f"{USERNAME}@example.com", PASSWORD)
        return user, True
