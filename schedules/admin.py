"""Admin for triggers and executions: every write and action calls schedules.services."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import available_timezones

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from kombu.exceptions import OperationalError

from workflows.admin import add_errors, copy_saved, pretty_json

from . import services, timing
from .exceptions import ScheduleError
from .models import Execution, ExecutionStatus, Trigger
from .selectors import triggers_with_last_status

# Fields the form edits; each is passed to trigger_create / trigger_update by the same name.
_FORM_FIELDS = (
    "name",
    "workflow",
    "kind",
    "cron",
    "timezone",
    "run_at",
    "interval_seconds",
    "inputs",
    "enabled",
    "max_attempts",
    "min_backoff_seconds",
    "max_backoff_seconds",
)
_SCHEDULE_FIELDS = ("kind", "cron", "timezone", "run_at", "interval_seconds")
_UPCOMING_COUNT = 5


def _error_text(exc: Exception) -> str:
    """A ValidationError or ScheduleError as one line for messages.error."""
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            return "; ".join(
                f"{name}: {' '.join(ValidationError(errors).messages)}" for name, errors in exc.error_dict.items()
            )
        return " ".join(exc.messages)
    field = getattr(exc, "field", None)
    return f"{field}: {exc}" if field else str(exc)


def _when(at: datetime | None, zone_name: str) -> str:
    """'2026-05-04 16:00 UTC' plus, for other zones, the same instant in the trigger's zone."""
    if at is None:
        return ""
    utc = f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    if zone_name == "UTC":
        return utc
    try:
        zone = timing.zone(zone_name)
    except ScheduleError:
        return utc
    return format_html("{}<br><small>{} {}</small>", utc, f"{at.astimezone(zone):%Y-%m-%d %H:%M}", zone_name)


class TriggerAdminForm(forms.ModelForm):
    """The model form, plus the checks the services run before saving (run_at in the past, ...)."""

    class Meta:
        model = Trigger
        fields = list(_FORM_FIELDS)
        widgets = {"timezone": forms.Select(choices=[(name, name) for name in sorted(available_timezones())])}
        help_texts = {"run_at": "For kind once: when to run, in UTC, e.g. 2026-12-01 09:00."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The schedule as stored, to tell trigger_validate whether this edit changes it.
        self._schedule_before = (
            {name: getattr(self.instance, name) for name in _SCHEDULE_FIELDS} if self.instance.pk else None
        )

    def clean_inputs(self) -> Any:
        # An emptied JSON box cleans to None; the column is NOT NULL and {} means "none".
        value = self.cleaned_data.get("inputs")
        return {} if value is None else value

    def clean_run_at(self) -> datetime | None:
        # The admin's date/time boxes drop microseconds; an untouched run_at must stay the
        # stored value, or every save would look like a schedule change ("must be in the future").
        value = self.cleaned_data.get("run_at")
        stored = self.instance.run_at if self.instance.pk else None
        if value is not None and stored is not None and value == stored.replace(microsecond=0):
            return stored
        return value

    def _post_clean(self) -> None:
        # Like auth's UserCreationForm: once the instance holds the form's values, run the
        # services' own checks, so what they would refuse in save_model is a form error here.
        super()._post_clean()
        if self._errors:
            return
        trigger = self.instance
        if self._schedule_before is None:
            # A trigger belongs to its workflow's owner (Trigger.clean insists on it).
            trigger.owner = trigger.workflow.owner
            changed = True
        else:
            changed = any(getattr(trigger, name) != value for name, value in self._schedule_before.items())
        try:
            services.trigger_validate(trigger=trigger, schedule_changed=changed)
        except ValidationError as exc:
            add_errors(self, exc)
        except ScheduleError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, str(exc))


def _for_each(
    request: HttpRequest,
    queryset: QuerySet[Trigger],
    action: Callable[[Trigger], Any],
    done: Callable[[Trigger, Any], str],
) -> None:
    """Run ``action`` per trigger; report each success or the error (never a 500)."""
    for trigger in queryset:
        try:
            result = action(trigger)
        except (ScheduleError, ValidationError) as exc:
            messages.error(request, f"{trigger.name}: {_error_text(exc)}")
        else:
            messages.success(request, done(trigger, result))


@admin.register(Trigger)
class TriggerAdmin(admin.ModelAdmin):
    form = TriggerAdminForm
    list_display = [
        "name",
        "workflow",
        "kind",
        "schedule",
        "timezone",
        "state",
        "next_run",
        "last_status",
        "executions_link",
    ]
    list_filter = ["kind", "enabled", "timezone", "workflow"]
    list_select_related = ["workflow", "owner"]
    search_fields = ["name", "cron", "workflow__name"]
    readonly_fields = [
        "owner",
        "schedule",
        "upcoming",
        "next_run_at",
        "last_run_at",
        "periodic_task",
        "pause_reason",
        "paused_at",
        "created_at",
        "updated_at",
    ]
    actions = ["pause_triggers", "resume_triggers", "run_triggers_now"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Trigger]:
        # Per-user filtering for non-superuser staff belongs here (a later issue).
        return triggers_with_last_status(super().get_queryset(request))

    def get_fieldsets(self, request: HttpRequest, obj: Trigger | None = None) -> list[tuple[str | None, dict]]:
        fieldsets: list[tuple[str | None, dict]] = [
            (None, {"fields": ["name", "workflow", "enabled", "inputs"]}),
            ("Schedule", {"fields": ["kind", "cron", "timezone", "run_at", "interval_seconds"]}),
            ("Retries", {"fields": ["max_attempts", "min_backoff_seconds", "max_backoff_seconds"]}),
        ]
        if obj is not None:
            fieldsets[0][1]["fields"].insert(1, "owner")
            fieldsets[1][1]["fields"] += ["schedule", "upcoming"]
            fieldsets.append(
                (
                    "State",
                    {
                        "fields": [
                            "next_run_at",
                            "last_run_at",
                            "pause_reason",
                            "paused_at",
                            "periodic_task",
                            "created_at",
                            "updated_at",
                        ]
                    },
                )
            )
        return fieldsets

    # --- Writes go through the services -----------------------------------------------------

    def save_model(self, request: HttpRequest, obj: Trigger, form: forms.ModelForm, change: bool) -> None:
        if change:
            fields = {name: form.cleaned_data[name] for name in form.changed_data if name in _FORM_FIELDS}
            saved = services.trigger_update(trigger=obj, **fields)
        else:
            fields = {name: form.cleaned_data[name] for name in _FORM_FIELDS}
            fields["timezone_name"] = fields.pop("timezone")
            saved = services.trigger_create(owner=obj.owner, **fields)
        copy_saved(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Trigger) -> None:
        services.trigger_delete(trigger=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        for trigger in queryset:
            services.trigger_delete(trigger=trigger)

    # --- Actions ----------------------------------------------------------------------------

    @admin.action(description="Pause selected triggers", permissions=["change"])
    def pause_triggers(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        reason = f"paused from admin by {request.user.get_username()}"
        _for_each(
            request,
            queryset,
            lambda trigger: services.trigger_pause(trigger=trigger, reason=reason),
            lambda trigger, _: f"Paused {trigger.name}.",
        )

    @admin.action(description="Resume selected triggers", permissions=["change"])
    def resume_triggers(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        _for_each(
            request,
            queryset,
            lambda trigger: services.trigger_resume(trigger=trigger),
            lambda trigger, saved: f"Resumed {trigger.name}; next run {_when(saved.next_run_at, 'UTC') or 'none'}.",
        )

    @admin.action(description="Run selected triggers now", permissions=["change"])
    def run_triggers_now(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        for trigger in queryset:
            try:
                execution = services.trigger_run_now(trigger=trigger)
            except (ScheduleError, ValidationError) as exc:
                messages.error(request, f"{trigger.name}: {_error_text(exc)}")
            except OperationalError:
                # The execution was committed before the broker refused the message (on_commit);
                # the recovery task sends it again once its lease runs out.
                messages.warning(
                    request, f"{trigger.name}: run recorded, but the broker is unreachable; it starts once it is back."
                )
            else:
                url = reverse("admin:schedules_execution_change", args=[execution.pk])
                messages.success(
                    request,
                    format_html('Queued a run of {} (<a href="{}">execution {}</a>).', trigger.name, url, execution.pk),
                )

    # --- Columns ----------------------------------------------------------------------------

    @admin.display(description="Schedule")
    def schedule(self, obj: Trigger) -> str:
        return obj.description

    @admin.display(description="State", ordering="enabled")
    def state(self, obj: Trigger) -> str:
        if obj.enabled:
            return "Enabled"
        return f"Paused ({obj.pause_reason})" if obj.pause_reason else "Paused"

    @admin.display(description="Next run", ordering="next_run_at")
    def next_run(self, obj: Trigger) -> str:
        # A paused trigger keeps its stored next_run_at, but it will not run then.
        return _when(obj.next_run_at, obj.timezone) if obj.enabled else "(paused)"

    @admin.display(description="Last status", ordering="last_status")
    def last_status(self, obj: Trigger) -> str | None:
        # Annotated by selectors.triggers_with_last_status in get_queryset.
        return ExecutionStatus(obj.last_status).label if obj.last_status else None

    @admin.display(description="Executions", ordering="execution_count")
    def executions_link(self, obj: Trigger) -> str:
        url = reverse("admin:schedules_execution_changelist") + f"?trigger__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, obj.execution_count)

    @admin.display(description="Next slots")
    def upcoming(self, obj: Trigger) -> str:
        try:
            slots = timing.upcoming(obj.cadence, timezone.now(), _UPCOMING_COUNT)
        except ScheduleError:
            return "(invalid schedule)"
        if not slots:
            return "none"
        return format_html_join("", "<div>{}</div>", ((_when(slot, obj.timezone),) for slot in slots))


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    """Read-only history. Delete keeps Django's permission check (superusers, or staff granted
    schedules.delete_execution): deleting a trigger deletes its executions, and the admin only
    allows that to users who may delete them."""

    list_display = [
        "scheduled_for",
        "trigger",
        "workflow",
        "status",
        "attempts",
        "http_status",
        "duration_ms",
        "run_id",
        "manual",
        "started_at",
        "finished_at",
    ]
    list_filter = [
        "status",
        "manual",
        ("workflow", admin.RelatedOnlyFieldListFilter),
        ("trigger", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["trigger", "workflow"]
    search_fields = ["id", "run_id", "error"]
    # Skips a COUNT(*) of the whole table on every page.
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "trigger", "workflow", "scheduled_for", "manual", "status"]}),
        ("Calls", {"fields": ["attempts", "http_status", "duration_ms", "run_id", "error", "attempt_log"]}),
        (
            "Timing",
            {"fields": ["created_at", "started_at", "finished_at", "next_attempt_at", "lease_expires_at"]},
        ),
        ("Data", {"fields": ["inputs_json", "metadata_json"]}),
    ]
    readonly_fields = ["attempt_log", "inputs_json", "metadata_json"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Execution | None = None) -> bool:
        return False

    @admin.display(description="Attempt log")
    def attempt_log(self, obj: Execution) -> str:
        attempts = obj.metadata.get("attempts") if isinstance(obj.metadata, dict) else None
        if not attempts:
            return "-"
        rows = (
            (
                entry.get("attempt", ""),
                entry.get("started_at", ""),
                entry.get("http_status") or "",
                entry.get("duration_ms") or "",
                entry.get("error", ""),
                entry.get("retry_in_seconds") or "",
            )
            for entry in attempts
            if isinstance(entry, dict)
        )
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html(
            "<table><thead><tr><th>#</th><th>Started</th><th>HTTP</th><th>ms</th><th>Error</th>"
            "<th>Retry in (s)</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )

    @admin.display(description="Inputs")
    def inputs_json(self, obj: Execution) -> str:
        return pretty_json(obj.inputs)

    @admin.display(description="Metadata")
    def metadata_json(self, obj: Execution) -> str:
        return pretty_json(obj.metadata)
