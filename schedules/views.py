"""The self-service web UI (/app/): a user's schedules, their history and actions, and their workflows.

Thin views, as the API: forms check the shape of the input, schedules.services make every change,
selectors do the reads, and a service's error becomes a form field error or a message here.
Ownership is the API's rule (``owned``): another user's schedule or workflow is a 404.

The workflow pages live here rather than in workflows/ because they show executions, and
``workflows`` never imports ``schedules``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import time, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from scheduler_project.api import owned
from workflows.models import Workflow, WorkflowRun, WorkflowStep
from workflows.services import user_set_timezone, user_timezone

from . import selectors, services, timing
from .exceptions import ScheduleError
from .forms import BackfillForm, PauseForm, PreferencesForm, RunNowForm, ScheduleForm, add_service_error
from .models import UNFINISHED_STATUSES, Execution, Trigger, TriggerStatus

PAGE_SIZE = 25
HISTORY_PAGE_SIZE = 25
CHART_EXECUTIONS = 40
PREVIEW_COUNT = 5
_SECRETS = ("secret", "previous_secret")


def page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A UI page: login required, and times shown in the user's own zone (one query)."""

    @login_required
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            zone = timing.zone(user_timezone(request.user))
        except ScheduleError:  # a zone a later tzdata dropped: show UTC rather than fail
            zone = timing.zone("UTC")
        request.user_zone = zone  # type: ignore[attr-defined]
        timezone.activate(request.user_zone)  # type: ignore[attr-defined]
        try:
            return view(request, *args, **kwargs)
        finally:
            timezone.deactivate()

    return wrapper


def _triggers(request: HttpRequest) -> QuerySet[Trigger]:
    return owned(Trigger.objects.all(), request.user)


def _trigger(request: HttpRequest, pk: int) -> Trigger:
    """The user's trigger (staff: anyone's), else 404, with what its pages show loaded in the same query."""
    queryset = _triggers(request).select_related("workflow", "paused_by", "fallback_workflow", "owner")
    secrets = [f"{workflow}__{name}" for workflow in ("workflow", "fallback_workflow") for name in _SECRETS]
    return get_object_or_404(queryset.defer(*secrets), pk=pk)


def _workflows(request: HttpRequest) -> QuerySet[Workflow]:
    return owned(Workflow.objects.all(), request.user).defer(*_SECRETS)


def _paginate_ids(request: HttpRequest, queryset: QuerySet[Any], size: int) -> tuple[Page, list[Any]]:
    """One page of ``queryset``: its ids paged first, then that page's rows loaded with their annotations
    (as the API does: the subqueries then run for the rows shown only, not for those OFFSET skips)."""
    paginator = Paginator(queryset.values_list("pk", flat=True), size)
    page_obj = paginator.get_page(request.GET.get("page"))
    ids = list(page_obj.object_list)
    rows = queryset.order_by().in_bulk(ids)
    return page_obj, [rows[pk] for pk in ids if pk in rows]


def _query_string(request: HttpRequest, **changes: Any) -> str:
    params = {key: value for key, value in request.GET.items() if key != "page"}
    params.update({key: value for key, value in changes.items() if value is not None})
    return urlencode(params)


# --- Schedules --------------------------------------------------------------------------------


@require_GET
@page
def trigger_list(request: HttpRequest) -> HttpResponse:
    """My schedules: search by name, filter by status and workflow, 25 a page."""
    queryset = selectors.triggers_with_last_execution(_triggers(request)).select_related("paused_by")
    search = request.GET.get("q", "").replace("\x00", "").strip()[:200]  # PostgreSQL refuses NUL
    status = request.GET.get("status", "")
    workflow_id = request.GET.get("workflow", "")
    if search:
        queryset = queryset.filter(Q(name__icontains=search) | Q(workflow__name__icontains=search))
    if status == TriggerStatus.COMPLETED:
        queryset = queryset.filter(completed_at__isnull=False)
    elif status in (TriggerStatus.ACTIVE, TriggerStatus.PAUSED):
        queryset = queryset.filter(completed_at__isnull=True, enabled=status == TriggerStatus.ACTIVE)
    else:
        status = ""
    if workflow_id.isdigit() and len(workflow_id) <= 18:
        queryset = queryset.filter(workflow_id=int(workflow_id))
    else:
        workflow_id = ""
    page_obj, triggers = _paginate_ids(request, queryset.order_by("name", "pk"), PAGE_SIZE)
    return render(
        request,
        "schedules/trigger_list.html",
        {
            "page_obj": page_obj,
            "triggers": triggers,
            "search": search,
            "status": status,
            "statuses": TriggerStatus.choices,
            "workflow_id": workflow_id,
            "workflows": list(_workflows(request).only("pk", "name")),
            "query": _query_string(request),
            "now": timezone.now(),
        },
    )


def _schedule_form_page(request: HttpRequest, form: ScheduleForm, trigger: Trigger | None) -> HttpResponse:
    return render(
        request,
        "schedules/trigger_form.html",
        {"form": form, "trigger": trigger, "has_workflows": form.fields["workflow"].queryset.exists()},
    )


@require_http_methods(["GET", "POST"])
@page
def trigger_create(request: HttpRequest) -> HttpResponse:
    zone = request.user_zone  # type: ignore[attr-defined]
    tomorrow = timezone.localtime(timezone.now(), zone).date() + timedelta(days=1)
    # "Run this tomorrow at 9 AM" is the usual one-off: offered, in the user's zone.
    initial: dict[str, Any] = {"timezone": zone.key, "run_date": tomorrow, "run_time": time(9, 0)}
    if request.GET.get("workflow", "").isdigit():  # "Schedule it" on a workflow's page
        initial["workflow"] = request.GET["workflow"][:18]
    form = ScheduleForm(request.POST or None, owner=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            fields = form.service_fields(now=timezone.now())
            trigger = services.trigger_create(owner=request.user, actor=request.user, **fields)
        except (ValidationError, ScheduleError) as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Schedule {trigger.name!r} created.")
            return redirect("ui:trigger-detail", pk=trigger.pk)
    return _schedule_form_page(request, form, None)


@require_http_methods(["GET", "POST"])
@page
def trigger_edit(request: HttpRequest, pk: int) -> HttpResponse:
    trigger = _trigger(request, pk)
    form = ScheduleForm(
        request.POST or None, owner=trigger.owner, trigger=trigger, initial=ScheduleForm.initial_for(trigger)
    )
    if request.method == "POST" and form.is_valid():
        try:
            fields = form.service_fields(now=timezone.now())
            trigger = services.trigger_update(trigger=trigger, actor=request.user, **fields)
        except (ValidationError, ScheduleError) as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Schedule {trigger.name!r} saved.")
            return redirect("ui:trigger-detail", pk=trigger.pk)
    return _schedule_form_page(request, form, trigger)


@require_POST
@page
def trigger_preview(request: HttpRequest) -> HttpResponse:
    """The live preview of the create / edit form: the schedule in words and its next runs, or the
    errors the form would show (an HTML fragment the page puts in place; nothing is saved)."""
    data = request.POST.copy()
    # A unique name: uniqueness is a save-time concern, not the preview's.
    data["name"] = f"preview {uuid.uuid4().hex[:12]}"
    owner = request.user
    editing = request.GET.get("trigger", "")
    if editing.isdigit() and len(editing) <= 18:
        owner = _trigger(request, int(editing)).owner  # staff editing someone's: their workflows
    form = ScheduleForm(data, owner=owner)
    described = None
    now = timezone.now()
    if form.is_valid():
        try:
            fields = form.service_fields(now=now)
            trigger = services.trigger_build(owner=owner, now=now, **fields)
        except (ValidationError, ScheduleError) as exc:
            form.add_service_error(exc)
        else:
            described = selectors.trigger_describe(trigger, count=PREVIEW_COUNT, now=now)
    errors = [
        (form.fields[name].label or name.replace("_", " ").capitalize() if name in form.fields else "", message)
        for name, messages_ in form.errors.items()
        if name != "name"
        for message in messages_
    ]
    return render(request, "schedules/_preview.html", {"described": described, "errors": errors, "now": now})


def _chart(executions: list[Execution]) -> dict[str, Any]:
    """Bars for the SVG chart: one per execution in CHART_EXECUTIONS fixed slots, newest on the right,
    height the duration (a short stub for runs without one), colour the outcome."""
    width, height, gap = 600, 120, 2
    longest = max((execution.duration_ms or 0 for execution in executions), default=0) or 1
    bar = (width - gap * CHART_EXECUTIONS) / CHART_EXECUTIONS
    offset = CHART_EXECUTIONS - len(executions)
    bars = []
    for index, execution in enumerate(executions):
        duration = execution.duration_ms or 0
        size = max(height * duration / longest, 4)
        bars.append(
            {
                "x": round((offset + index) * (bar + gap), 1),
                "y": round(height - size, 1),
                "w": round(bar, 1),
                "h": round(size, 1),
                "status": execution.status,
                "title": f"{timezone.localtime(execution.scheduled_for):%Y-%m-%d %H:%M %Z}: {execution.status}"
                + (f", {duration} ms" if execution.duration_ms is not None else ""),
            }
        )
    return {"bars": bars, "width": width, "height": height, "longest_ms": longest if executions else 0}


def _history(request: HttpRequest, trigger: Trigger) -> dict[str, Any]:
    executions = Execution.objects.filter(trigger=trigger).select_related("workflow").order_by("-scheduled_for", "-pk")
    executions = executions.defer(*(f"workflow__{name}" for name in _SECRETS))
    paginator = Paginator(executions, HISTORY_PAGE_SIZE)
    history = paginator.get_page(request.GET.get("page"))
    unfinished = any(execution.status in UNFINISHED_STATUSES for execution in history.object_list)
    return {"history": history, "unfinished": unfinished, "trigger": trigger}


@require_GET
@page
def trigger_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One schedule: its rules in words, next runs, stats, chart, history and actions."""
    trigger = _trigger(request, pk)
    now = timezone.now()
    recent = list(
        Execution.objects.filter(trigger=trigger)
        .order_by("-scheduled_for", "-pk")
        .only("pk", "scheduled_for", "status", "duration_ms")[:CHART_EXECUTIONS]
    )
    recent.reverse()
    context = {
        "trigger": trigger,
        "described": selectors.trigger_describe(trigger, count=PREVIEW_COUNT, now=now),
        "stats": selectors.trigger_stats(trigger, last=0, next_count=0, now=now),
        "chart": _chart(recent),
        "pause_form": PauseForm(),
        "run_form": RunNowForm(),
        "backfill_form": BackfillForm(),
        "now": now,
        **_history(request, trigger),
    }
    return render(request, "schedules/trigger_detail.html", context)


@require_GET
@page
def trigger_history(request: HttpRequest, pk: int) -> HttpResponse:
    """The history table alone: the detail page reloads it while an execution is unfinished."""
    trigger = _trigger(request, pk)
    return render(request, "schedules/_history.html", {**_history(request, trigger), "now": timezone.now()})


def _action_error(request: HttpRequest, exc: ValidationError | ScheduleError) -> None:
    """A service's refusal as a message naming the field, e.g. "end: must not be in the future"."""
    if isinstance(exc, ScheduleError):
        text = f"{exc.field}: {exc}" if exc.field else str(exc)
    elif hasattr(exc, "error_dict"):
        text = "; ".join(
            f"{name}: {' '.join(ValidationError(errors).messages)}" for name, errors in exc.error_dict.items()
        )
    else:
        text = " ".join(exc.messages)
    messages.error(request, text)


def _form_error(request: HttpRequest, form: Any) -> None:
    messages.error(request, "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()))


@require_POST
@page
def trigger_pause(request: HttpRequest, pk: int) -> HttpResponse:
    trigger = _trigger(request, pk)
    form = PauseForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
        return redirect("ui:trigger-detail", pk=trigger.pk)
    try:
        services.trigger_pause(trigger=trigger, reason=form.cleaned_data["reason"], by=request.user)
    except ScheduleError as exc:
        _action_error(request, exc)
    else:
        messages.success(request, f"Schedule {trigger.name!r} paused.")
    return redirect("ui:trigger-detail", pk=trigger.pk)


@require_POST
@page
def trigger_resume(request: HttpRequest, pk: int) -> HttpResponse:
    trigger = _trigger(request, pk)
    try:
        services.trigger_resume(trigger=trigger, actor=request.user)
    except ScheduleError as exc:
        _action_error(request, exc)
    else:
        messages.success(request, f"Schedule {trigger.name!r} resumed.")
    return redirect("ui:trigger-detail", pk=trigger.pk)


@require_POST
@page
def trigger_run_now(request: HttpRequest, pk: int) -> HttpResponse:
    trigger = _trigger(request, pk)
    form = RunNowForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
        return redirect("ui:trigger-detail", pk=trigger.pk)
    try:
        services.trigger_run_now(trigger=trigger, inputs=form.cleaned_data["inputs"], actor=request.user)
    except (ValidationError, ScheduleError) as exc:
        _action_error(request, exc)
    else:
        messages.success(request, "Run queued: it appears in the history below.")
    return redirect(reverse("ui:trigger-detail", kwargs={"pk": trigger.pk}) + "#history")


@require_POST
@page
def trigger_backfill(request: HttpRequest, pk: int) -> HttpResponse:
    trigger = _trigger(request, pk)
    form = BackfillForm(request.POST)
    if not form.is_valid():
        _form_error(request, form)
        return redirect("ui:trigger-detail", pk=trigger.pk)
    try:
        report = services.trigger_backfill(trigger=trigger, actor=request.user, **form.cleaned_data)
    except (ValidationError, ScheduleError) as exc:
        _action_error(request, exc)
    else:
        messages.success(
            request,
            f"Backfill: {report.created} runs queued, {report.skipped} skipped, "
            f"{report.existing} slots already had a run.",
        )
    return redirect(reverse("ui:trigger-detail", kwargs={"pk": trigger.pk}) + "#history")


@require_POST
@page
def execution_retry(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """Run a failed execution again (a new execution with the same inputs)."""
    executions = owned(Execution.objects.all(), request.user, "trigger__owner")
    execution = get_object_or_404(executions.select_related("trigger", "workflow"), pk=pk)
    try:
        services.execution_retry(execution=execution, actor=request.user)
    except (ValidationError, ScheduleError) as exc:
        _action_error(request, exc)
    else:
        messages.success(request, "Retry queued: it appears in the history below.")
    return redirect(reverse("ui:trigger-detail", kwargs={"pk": execution.trigger_id}) + "#history")


@require_http_methods(["GET", "POST"])
@page
def trigger_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: ask to confirm; POST: delete the schedule and its history."""
    trigger = _trigger(request, pk)
    if request.method == "POST":
        name = trigger.name
        services.trigger_delete(trigger=trigger, actor=request.user)
        messages.success(request, f"Schedule {name!r} deleted.")
        return redirect("ui:trigger-list")
    return render(request, "schedules/trigger_delete.html", {"trigger": trigger})


# --- Workflows --------------------------------------------------------------------------------


def _public_url(url: str) -> str:
    """Scheme, host and path only: a query string or user info may carry a token."""
    if not url:
        return ""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


@require_GET
@page
def workflow_list(request: HttpRequest) -> HttpResponse:
    paginator = Paginator(_workflows(request).order_by("name", "pk"), PAGE_SIZE)
    page_obj = paginator.get_page(request.GET.get("page"))
    rows = [{"workflow": workflow, "url": _public_url(workflow.endpoint_url)} for workflow in page_obj.object_list]
    return render(request, "schedules/workflow_list.html", {"page_obj": page_obj, "rows": rows})


@require_GET
@page
def workflow_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A workflow: its schedules, its recent executions and (built-in engine) the runs it received."""
    workflow = get_object_or_404(_workflows(request), pk=pk)
    triggers = list(
        selectors.triggers_with_last_execution(_triggers(request).filter(workflow=workflow)).order_by("name", "pk")[
            :PAGE_SIZE
        ]
    )
    executions = list(
        Execution.objects.filter(workflow=workflow).select_related("trigger").order_by("-scheduled_for", "-pk")[:25]
    )
    # The built-in engine's runs with their steps (one query for all the runs' steps).
    steps = WorkflowStep.objects.order_by("seq", "attempt").defer("input")
    runs = list(
        WorkflowRun.objects.filter(workflow=workflow)
        .defer("payload", "context", "definition")
        .prefetch_related(Prefetch("steps", queryset=steps))
        .order_by("-received_at")[:10]
    )
    return render(
        request,
        "schedules/workflow_detail.html",
        {
            "workflow": workflow,
            "url": _public_url(workflow.endpoint_url),
            "triggers": triggers,
            "executions": executions,
            "runs": runs,
            "stats": selectors.workflow_stats(workflow, last=0, next_count=5),
            "now": timezone.now(),
        },
    )


# --- Preferences -----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@page
def preferences(request: HttpRequest) -> HttpResponse:
    form = PreferencesForm(request.POST or None, initial={"timezone": request.user_zone.key})  # type: ignore[attr-defined]
    if request.method == "POST" and form.is_valid():
        try:
            user_set_timezone(user=request.user, timezone_name=form.cleaned_data["timezone"])
        except ValidationError as exc:
            add_service_error(form, exc, {})
        else:
            messages.success(request, f"Times are now shown in {form.cleaned_data['timezone']}.")
            return redirect("ui:preferences")
    return render(request, "schedules/preferences.html", {"form": form, "now": timezone.now()})


def index(request: HttpRequest) -> HttpResponse:
    return redirect("ui:trigger-list")
