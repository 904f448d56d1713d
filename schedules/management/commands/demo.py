"""`manage.py demo`: the README's one-command demo (admin user, workflow, every-minute trigger, and
one workflow per example in examples/ calling the demo target), with its examples run now on request."""

from __future__ import annotations

import argparse
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from schedules import services as schedule_services
from schedules.models import Trigger, TriggerKind
from workflows import demo
from workflows import services as workflow_services
from workflows.management.commands._common import parse_json_object
from workflows.models import RUN_FINISHED_STATUSES, RunStatus, StepStatus, Workflow, WorkflowRun

from ._common import errors_as_command_errors

USERNAME = "admin"
PASSWORD = "admin"  # noqa: S105 - a documented local-only demo login
WORKFLOW_NAME = "Demo workflow"
TRIGGER_NAME = "Every minute"
MAX_WAIT_SECONDS = 3600
POLL_SECONDS = 0.5
DETAIL_CHARS = 100


def wait_seconds(text: str) -> int:
    """argparse type for --wait: whole seconds, 1 to an hour (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_WAIT_SECONDS} seconds, not {value}")
    return value


class Command(BaseCommand):
    help = "Set up the demo: superuser admin/admin, 'Demo workflow' and an every-minute trigger (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--insecure-demo",
            action="store_true",
            help="Create admin/admin even with DEBUG off (a server others can reach gets a known login).",
        )
        names = ", ".join(example.name for example in demo.EXAMPLES)
        parser.add_argument(
            "--run",
            nargs="*",
            metavar="EXAMPLE",
            help=f"Start the examples now ({names}; none named: all). Needs web and a worker running.",
        )
        parser.add_argument(
            "--inputs",
            metavar="JSON",
            help="""With --run: inputs over the examples' defaults; '{"target": "fail"}' makes the demo target fail.""",
        )
        parser.add_argument(
            "--wait",
            type=wait_seconds,
            metavar="SECONDS",
            help="With --run: follow the runs, printing each step as it ends, until they end or this time is up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # With DEBUG off this is a deployment, maybe on a public port: a known superuser login
        # there is an open door, so it takes an explicit flag.
        if not settings.DEBUG and not options["insecure_demo"]:
            raise CommandError(
                "demo: DEBUG is off, and demo creates the superuser admin/admin; "
                "pass --insecure-demo if this server is private and that is what you want."
            )
        chosen = self._chosen(options)
        inputs = parse_json_object(options["inputs"], option="--inputs") or {}
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
            examples = self._examples(user) if settings.SCHEDULER_DEMO_TARGET else []
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
        if settings.SCHEDULER_DEMO_TARGET:
            for example, workflow, change in examples:
                self.stdout.write(f"{change} workflow {workflow.pk} {workflow.name!r} ({example.path.name}).")
            self.stdout.write(f"The examples call the demo target {demo.target_url()}/<call>.")
        else:
            self.stdout.write(
                "Examples not set up: the demo target is off (SCHEDULER_DEMO_TARGET, on by default only with "
                "DEBUG); set SCHEDULER_DEMO_TARGET=1 for web and workers to run them."
            )
        login = f"{USERNAME} / {PASSWORD}" if user_created else f"{USERNAME} (with its current password)"
        self.stdout.write(f"Admin: {settings.SCHEDULER_PUBLIC_BASE_URL}/admin/  login: {login}")
        if chosen:
            runs = self._start(user, examples, chosen, inputs)
            if options["wait"]:
                self._follow(runs, options["wait"])
            else:
                for _, run in runs:
                    self.stdout.write(f"Follow it: manage.py workflow run {run.pk}")

    def _chosen(self, options: dict[str, Any]) -> list[str]:
        """The examples --run names (all when it names none); checked before anything is written."""
        if options["run"] is None:
            for option in ("inputs", "wait"):
                if options[option] is not None:
                    raise CommandError(f"--{option}: only with --run (it applies to the runs --run starts).")
            return []
        names = [example.name for example in demo.EXAMPLES]
        for name in options["run"]:
            if name not in names:
                raise CommandError(f"--run: {name!r} is not an example; choose from {', '.join(names)}.")
        if not settings.SCHEDULER_DEMO_TARGET:
            raise CommandError(
                "--run: the demo target the examples call is off (SCHEDULER_DEMO_TARGET, on by default only "
                "with DEBUG); set SCHEDULER_DEMO_TARGET=1 for web and workers."
            )
        return [name for name in names if name in options["run"]] if options["run"] else names

    def _examples(self, user: Any) -> list[tuple[demo.Example, Workflow, str]]:
        """One workflow per example, its calls going to the demo target (created, or set back to it)."""
        made = []
        for example in demo.EXAMPLES:
            try:
                fields = {"definition": example.definition(demo.target_url()), "default_inputs": example.inputs}
            except (OSError, ValueError) as exc:
                raise CommandError(f"example {example.path}: cannot read it ({exc}).") from None
            workflow = Workflow.objects.filter(owner=user, name=example.workflow_name).first()
            if workflow is None:
                workflow = workflow_services.workflow_create(owner=user, name=example.workflow_name, **fields)
                change = "Created"
            elif any(getattr(workflow, name) != value for name, value in fields.items()) or workflow.endpoint_url:
                workflow = workflow_services.workflow_update(workflow=workflow, endpoint_url="", **fields)
                change = "Updated"
            else:
                change = "Reusing"
            made.append((example, workflow, change))
        return made

    def _start(
        self, user: Any, examples: list[tuple[demo.Example, Workflow, str]], chosen: list[str], inputs: dict[str, Any]
    ) -> list[tuple[str, WorkflowRun]]:
        runs = []
        for example, workflow, _ in examples:
            if example.name not in chosen:
                continue
            with errors_as_command_errors({"inputs": "--inputs", "workflow": "--run"}):
                run, _ = workflow_services.workflow_start(workflow=workflow, inputs=inputs, actor=user)
            self.stdout.write(f"Started run {run.pk} of {workflow.name!r} with inputs {run.inputs}.")
            runs.append((example.name, run))
        return runs

    def _follow(self, runs: list[tuple[str, WorkflowRun]], seconds: int) -> None:
        """Print each step of ``runs`` as it ends (or starts to wait), then each run's outcome, until all
        have ended; CommandError naming --wait if time runs out first."""
        deadline = time.monotonic() + seconds
        shown: dict[int, str] = {}
        ended: set[str] = set()
        width = max(len(name) for name, _ in runs)
        while True:
            for name, run in runs:
                if name in ended:
                    continue
                run.refresh_from_db()
                for step in run.steps.order_by("seq", "attempt"):
                    if step.status == StepStatus.RUNNING or shown.get(step.pk) == step.status:
                        continue
                    shown[step.pk] = step.status
                    self.stdout.write(f"{name:<{width}}  {self._step_line(step, run)}")
                if run.status in RUN_FINISHED_STATUSES:
                    ended.add(name)
                    style = self.style.SUCCESS if run.status == RunStatus.SUCCEEDED else self.style.ERROR
                    self.stdout.write(
                        style(f"{name:<{width}}  run {run.pk} {run.status}" + (f": {run.error}" if run.error else ""))
                    )
            if len(ended) == len(runs):
                outcomes = [run.status for _, run in runs]
                counts = ", ".join(f"{outcomes.count(status)} {status}" for status in dict.fromkeys(outcomes))
                self.stdout.write(f"All {len(runs)} runs ended: {counts}.")
                return
            if time.monotonic() > deadline:
                going = ", ".join(
                    f"{name} ({run.status}{', at ' + run.current_step if run.current_step else ''})"
                    for name, run in runs
                    if name not in ended
                )
                raise CommandError(
                    f"--wait: after {seconds}s still going: {going}. Are web and a worker running (bin/dev "
                    "starts both)? Follow them with manage.py workflow run RUN_ID."
                )
            time.sleep(POLL_SECONDS)

    @staticmethod
    def _step_line(step: Any, run: WorkflowRun) -> str:
        if step.status == StepStatus.WAITING:
            detail = f"until {run.wake_at:%H:%M:%S} UTC" if run.wake_at else ""
        else:
            detail = step.error or step.output_excerpt
        if len(detail) > DETAIL_CHARS:
            detail = detail[: DETAIL_CHARS - 3] + "..."
        return f"{step.step_id} ({step.action or 'end'}, try {step.attempt}) {step.status}  {detail}".rstrip()

    def _user(self) -> tuple[Any, bool]:
        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: USERNAME}).first()
        if user is not None:
            return user, False
        user = user_model._default_manager.create_superuser(USERNAME, f"{USERNAME}@example.com", PASSWORD)
        return user, True
