"""Admin for triggers and executions: every write and action calls schedules.services."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import available_timezones

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from kombu.exceptions import OperationalError

from workflows.admin import (
    CappedChangeList,
    CappedCountAdminMixin,
    OwnedAdminMixin,
    OwnedWorkflowFilter,
    add_errors,
    copy_saved,
    pretty_json,
)
from workflows.fields import JSONFormField

from . import services, timing
from .exceptions import ScheduleError
from .models import Execution, ExecutionStatus, Trigger, TriggerKind, TriggerStatus
from .selectors import (
    WORKFLOW_SECRETS,
    executions_by_id,
    executions_owned_by,
    trigger_describe,
    trigger_preview,
    trigger_timezones,
    triggers_with_last_status,
)

# The form's fieldsets; each field is passed to trigger_create / trigger_update by the same name.
_FIELDSETS: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    (None, ("name", "workflow", "enabled", "inputs")),
    (
        "Schedule",
        (
            "kind",
            "preset",
            "preset_time",
            "preset_day",
            "preset_minute",
            "cron",
            "timezone",
            "delay_minutes",
            "run_at",
            "interval_seconds",
            "dst_policy",
            "anchor_at",
        ),
    ),
    ("Bounds", ("start_at", "end_at", "max_runs")),
    ("Window & jitter", ("execution_window", "jitter_seconds")),
    ("When things go wrong", ("catchup", "catchup_window_seconds", "overlap", "priority")),
    (
        "Retries",
        (
            "max_attempts",
            "min_backoff_seconds",
            "max_backoff_seconds",
            "max_doublings",
            "max_retry_duration_seconds",
        ),
    ),
    ("Failures", ("pause_after_failures", "notify_emails", "notify_webhook_url", "fallback_workflow")),
    ("Retention", ("keep_succeeded", "keep_failed", "retention_days")),
)
# Ways to write a schedule that the form turns into cron or run_at (as the API's preset and
# delay_seconds, and the command's --preset and --in, do); they are not stored.
_SHORTCUT_FIELDS = ("preset", "preset_time", "preset_day", "preset_minute", "delay_minutes")
_FORM_FIELDS = tuple(name for _, names in _FIELDSETS for name in names if name not in _SHORTCUT_FIELDS)
# trigger_create takes these by name; the other form fields go in as its keyword options.
_SCHEDULE_FIELDS = services.SCHEDULE_FIELDS
_DATETIME_FIELDS = ("run_at", "anchor_at", "start_at", "end_at")
_UPCOMING_COUNT = 5
# The submit button that previews the form's values instead of saving them.
PREVIEW_BUTTON = "_preview"
_PREVIEW_ONLY = "preview_only"


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


def _utc(at: datetime) -> str:
    """The admin's one time format (Django's too, scheduler_project/formats): 2026-05-04 16:00:00 UTC."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _shown(at: datetime | None) -> str:
    """A time as the admin shows a DateTimeField (DATETIME_FORMAT, "Y-m-d H:i:s T", in the current
    zone), made with strftime: Django's formatting looks the format up and builds a formatter per
    value, a tenth of a page of 50 executions' time."""
    return "" if at is None else f"{timezone.localtime(at):%Y-%m-%d %H:%M:%S %Z}"


def _when(at: datetime | None, zone_name: str) -> str:
    """'2026-05-04 16:00:00 UTC' plus, for other zones, the same instant in the trigger's zone."""
    if at is None:
        return ""
    utc = _utc(at)
    if zone_name == "UTC":
        return utc
    try:
        zone = timing.zone(zone_name)
    except ScheduleError:
        return utc
    local = f"{at.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}"
    return format_html('{}<br><small title="{}">{}</small>', utc, zone_name, local)


# Badge colours (schedules/static/schedules/admin.css) by trigger status and execution status.
_BADGES = {
    TriggerStatus.ACTIVE: "ok",
    TriggerStatus.PAUSED: "warn",
    TriggerStatus.COMPLETED: "muted",
    ExecutionStatus.SUCCEEDED: "ok",
    ExecutionStatus.FAILED: "bad",
    ExecutionStatus.SKIPPED: "muted",
    ExecutionStatus.QUEUED: "info",
    ExecutionStatus.RUNNING: "info",
    ExecutionStatus.RETRYING: "warn",
}
_ERROR_EXCERPT = 70


def _badge(status: str, label: str, title: str = "") -> str:
    return format_html('<span class="ws-badge ws-{}" title="{}">{}</span>', _BADGES.get(status, "muted"), title, label)


def _excerpt(text: str, limit: int = _ERROR_EXCERPT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _execution_status(execution: Execution) -> str:
    """A coloured status, with why it was skipped or is waiting, and the error on hover and in brief."""
    badge = _badge(execution.status, ExecutionStatus(execution.status).label, execution.error)
    reason = execution.get_skip_reason_display() or execution.wait_reason
    if reason:
        return format_html("{}<br><small>{}</small>", badge, reason)
    if execution.error and execution.status in (ExecutionStatus.FAILED, ExecutionStatus.RETRYING):
        return format_html(
            '{}<br><small class="ws-error" title="{}">{}</small>', badge, execution.error, _excerpt(execution.error)
        )
    return badge


_PRESET_LABELS = {
    "hourly": "Every hour, at a minute past",
    "daily": "Every day, at a time",
    "weekdays": "Weekdays (Monday to Friday), at a time",
    "weekly": "Every week, on a day, at a time",
    "monthly": "Every month, on a day, at a time",
}


class TriggerAdminForm(forms.ModelForm):
    """The model form, plus the checks the services run before saving (run_at in the past, ...).

    A cron schedule can be picked from the presets and a once trigger set to run in N minutes; both
    become the stored cron or run_at here, by the same rules as the API and the commands.
    """

    preset = forms.ChoiceField(
        required=False,
        choices=[("", "(none: write a cron expression)"), *((name, _PRESET_LABELS[name]) for name in timing.PRESETS)],
        help_text="For kind cron, instead of writing a cron expression; the cron below is then made from it.",
    )
    preset_time = forms.CharField(
        required=False,
        label="At (HH:MM)",
        widget=forms.TextInput(attrs={"placeholder": "09:00", "size": 6}),
        help_text="With a daily, weekdays, weekly or monthly preset: the time in the trigger's zone, e.g. 09:00.",
    )
    preset_day = forms.CharField(
        required=False,
        label="Day",
        widget=forms.TextInput(attrs={"size": 6}),
        help_text="With a weekly preset: MON..SUN or 0-6 (0 = Sunday); with a monthly preset: 1-31.",
    )
    preset_minute = forms.CharField(
        required=False,
        label="Minute past the hour",
        widget=forms.TextInput(attrs={"size": 4}),
        help_text="With the hourly preset: 0-59.",
    )
    delay_minutes = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=services.MAX_DELAY_SECONDS // 60,
        label="Or run once in N minutes",
        help_text="For kind once, instead of a run at time: from the moment you save, e.g. 10.",
    )

    class Meta:
        model = Trigger
        fields = list(_FORM_FIELDS)
        field_classes = {"inputs": JSONFormField, "execution_window": JSONFormField}
        widgets = {"timezone": forms.Select(choices=[(name, name) for name in sorted(available_timezones())])}
        help_texts = {
            "run_at": "For kind once: when to run, in UTC, e.g. 2026-12-01 09:00.",
            "anchor_at": "For kind interval: slots are anchor + k * interval (in UTC). Blank: the Unix epoch.",
            "start_at": "No slot before this time (UTC), e.g. 2026-12-01 00:00.",
            "end_at": "No slot after this time (UTC); then the trigger completes.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Stored fields a shortcut filled in (the save passes them on as changed).
        self.derived_fields: set[str] = set()
        # The schedule as stored, to tell trigger_validate whether this edit changes it.
        self._schedule_before = (
            {name: getattr(self.instance, name) for name in _SCHEDULE_FIELDS} if self.instance.pk else None
        )
        fallback = self.fields.get("fallback_workflow")
        if fallback is not None and self.instance.pk:
            # Trigger.clean insists on one of the owner's workflows; offer only those.
            fallback.queryset = fallback.queryset.filter(owner_id=self.instance.owner_id)

    def clean_inputs(self) -> Any:
        # An emptied JSON box cleans to None; the column is NOT NULL and {} means "none".
        value = self.cleaned_data.get("inputs")
        return {} if value is None else value

    def clean_execution_window(self) -> Any:
        value = self.cleaned_data.get("execution_window")
        return {} if value is None else value

    def clean(self) -> dict[str, Any]:
        # The admin's date/time boxes drop microseconds; an untouched time must stay the stored
        # value, or every save would look like a schedule change (run_at: "must be in the future").
        cleaned = super().clean()
        if self.instance.pk:
            for name in _DATETIME_FIELDS:
                value, stored = cleaned.get(name), getattr(self.instance, name)
                if value is not None and stored is not None and value == stored.replace(microsecond=0):
                    cleaned[name] = stored
        self._apply_preset(cleaned)
        self._apply_delay(cleaned)
        return cleaned

    def _apply_preset(self, cleaned: dict[str, Any]) -> None:
        params = {name: cleaned.get(f"preset_{name}") for name in ("time", "day", "minute")}
        given = {name: value.strip() for name, value in params.items() if value and value.strip()}
        preset = cleaned.get("preset")
        if not preset:
            for name in given:
                self.add_error(f"preset_{name}", "only goes with a preset.")
            return
        if cleaned.get("kind") != TriggerKind.CRON:
            self.add_error("preset", f"only for kind cron, not {cleaned.get('kind') or 'none'}.")
        elif "cron" in self.changed_data and cleaned.get("cron"):
            self.add_error("preset", "give a preset or a cron expression, not both.")
        else:
            try:
                cleaned["cron"] = timing.preset_cron(preset, **given)
            except ScheduleError as exc:
                self.add_error(f"preset_{exc.field}" if exc.field in params else "preset", str(exc))
            else:
                self.derived_fields.add("cron")

    def _apply_delay(self, cleaned: dict[str, Any]) -> None:
        minutes = cleaned.get("delay_minutes")
        if minutes is None:
            return
        if cleaned.get("kind") != TriggerKind.ONCE:
            self.add_error("delay_minutes", f"only for kind once, not {cleaned.get('kind') or 'none'}.")
        elif "run_at" in self.changed_data and cleaned.get("run_at"):
            self.add_error("delay_minutes", "give a run at time or a number of minutes, not both.")
        else:
            cleaned["run_at"] = timezone.now() + timedelta(minutes=minutes)
            self.derived_fields.add("run_at")

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
        else:
            if PREVIEW_BUTTON in self.data:
                # What these values would do, shown instead of saving them: the admin saves only a
                # valid form, so a marker error (removed again in render_change_form) keeps it unsaved.
                self.preview = trigger_describe(trigger, count=_UPCOMING_COUNT)
                self.add_error(None, ValidationError("Preview only: nothing was saved.", code=_PREVIEW_ONLY))


def _drop_preview_marker(form: TriggerAdminForm) -> None:
    """Remove the "preview only" error that kept a previewed form from saving; keep any other."""
    kept = [error for error in form.errors[NON_FIELD_ERRORS].as_data() if error.code != _PREVIEW_ONLY]
    del form.errors[NON_FIELD_ERRORS]
    if kept:
        form.add_error(None, kept)


def _preview_tables(preview: dict[str, Any], zone_name: str) -> dict[str, str]:
    return {"rules": _rules_table(preview), "runs": preview_table(preview["next_runs"], zone_name)}


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


class StatusFilter(admin.SimpleListFilter):
    """Trigger.status is a property; these are the conditions it reads."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(TriggerStatus.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> QuerySet[Trigger]:
        value = self.value()
        if value == TriggerStatus.ACTIVE:
            return queryset.filter(enabled=True, completed_at__isnull=True)
        if value == TriggerStatus.PAUSED:
            return queryset.filter(enabled=False, completed_at__isnull=True)
        if value == TriggerStatus.COMPLETED:
            return queryset.filter(completed_at__isnull=False)
        return queryset


class TimezoneFilter(admin.SimpleListFilter):
    """The time zones the user's triggers use (a superuser's: all), found without reading every trigger."""

    title = "timezone"
    parameter_name = "timezone"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        owner = None if model_admin.sees_everything(request) else request.user
        return [(zone, zone) for zone in trigger_timezones(owner=owner)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> QuerySet[Trigger]:
        return queryset.filter(timezone=self.value()) if self.value() else queryset


class ChosenTriggerFilter(admin.RelatedFieldListFilter):
    """The execution list's trigger filter: shown once a trigger is chosen (the trigger list's
    executions links choose one), naming just that trigger, and only if the user may see it.

    Listing every trigger would put 100,000 links in the sidebar, and RelatedOnlyFieldListFilter
    finds the triggers that have executions with a SELECT DISTINCT over every execution.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[Any, str]]:
        if not self.lookup_val:
            return []
        trigger_admin = model_admin.admin_site.get_model_admin(Trigger)
        try:
            chosen = trigger_admin.owned(request, Trigger.objects.filter(pk__in=self.lookup_val).only("pk", "name"))
            return [(trigger.pk, str(trigger)) for trigger in chosen]
        except (ValueError, ValidationError):
            return []  # not an id: the changelist answers the bad lookup itself

    def has_output(self) -> bool:
        # Also when the chosen trigger is not the user's (nothing to name): a filter without
        # output is dropped, and the admin would then list every execution unfiltered.
        return bool(self.used_parameters)


_OVERLAP_HELP = {
    "buffer_all": "one after another, oldest first",
    "allow": "side by side (concurrency limits apply)",
    "buffer_one": "the first, and one more waiting; the rest skipped",
    "skip": "only what does not overlap; the rest skipped",
}


class BackfillForm(forms.Form):
    """The backfill action's intermediate page: a past range and how its slots may overlap."""

    start = forms.DateTimeField(
        label="Start (UTC)",
        help_text="Slots at or after this time, e.g. 2026-05-01 00:00.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    end = forms.DateTimeField(
        label="End (UTC)",
        help_text="Slots up to this time, which must not be in the future.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    overlap = forms.ChoiceField(
        choices=[(value, f"{value}: {_OVERLAP_HELP.get(value, value)}") for value in services.BACKFILL_OVERLAP],
        initial="buffer_all",
        help_text="How the backfilled runs wait for each other and for the trigger's unfinished execution.",
    )


class TriggerChangeList(CappedChangeList):
    """A page of triggers, each with its last outcome (``last_run``) loaded in one query for the page."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = list(self.result_list)
        outcomes = executions_by_id(trigger.last_outcome_id for trigger in self.result_list)
        executions = reverse("admin:schedules_execution_changelist")
        for trigger in self.result_list:
            trigger.last_outcome = outcomes.get(trigger.last_outcome_id)
            trigger.executions_url = f"{executions}?trigger__id__exact={trigger.pk}"


@admin.register(Trigger)
class TriggerAdmin(CappedCountAdminMixin, OwnedAdminMixin, admin.ModelAdmin):
    form = TriggerAdminForm
    # What a glance needs, within 1,400 px beside the admin's sidebar: the schedule in words names
    # its kind and zone, so kind and zone are filters, not columns (priority likewise).
    list_display = [
        "name",
        "workflow",
        "schedule",
        "status_column",
        "next_run",
        "last_run",
        "runs",
        "executions_link",
    ]
    # The workflow filter names only the user's own workflows (a superuser's: all).
    list_filter = [StatusFilter, "kind", "priority", TimezoneFilter, ("workflow", OwnedWorkflowFilter)]
    list_select_related = ["workflow", "owner"]
    # Sortable by the columns an index orders (trigger_name_id, next_run_at); any other would sort
    # every trigger (100,000) to show a page. Last status and executions are subqueries per row.
    sortable_by = ["name", "next_run"]
    search_fields = ["name", "cron", "workflow__name"]
    readonly_fields = [
        "owner",
        "schedule",
        "rules",
        "preview",
        "status_column",
        "run_count",
        "runs_remaining",
        "completed_at",
        "consecutive_failures",
        "next_run_detail",
        "last_run_detail",
        "periodic_task",
        "pause_reason",
        "paused_at",
        "paused_by",
        "created_at",
        "updated_at",
    ]
    actions = ["pause_triggers", "resume_triggers", "run_triggers_now", "backfill_triggers"]

    class Media:
        css = {"all": ["schedules/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Trigger]:
        return triggers_with_last_status(super().get_queryset(request), last_outcome=True)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TriggerChangeList

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Trigger | None = None,
    ) -> HttpResponse:
        form = context["adminform"].form
        preview = getattr(form, "preview", None)
        if preview is not None:
            # The form is valid; it only carries the preview marker (see TriggerAdminForm._post_clean).
            _drop_preview_marker(form)
            context["errors"] = helpers.AdminErrorList(form, [])
            context["trigger_preview"] = _preview_tables(preview, form.instance.timezone)
        if self.has_change_permission(request, obj) if change else self.has_add_permission(request):
            context["preview_button"] = PREVIEW_BUTTON
            context["preview_url"] = self._preview_url(obj)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    # --- The form's live preview ------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.preview_view)
        return [
            path("preview/", view, name="schedules_trigger_preview"),
            path("<path:object_id>/preview/", view, name="schedules_trigger_preview_change"),
            *super().get_urls(),
        ]

    def _preview_url(self, obj: Trigger | None) -> str:
        if obj is None:
            return reverse("admin:schedules_trigger_preview")
        return reverse("admin:schedules_trigger_preview_change", args=[obj.pk])

    def preview_view(self, request: HttpRequest, object_id: str | None = None) -> HttpResponse:
        """The add/change form's values, checked as a save would check them and described (rules and
        next runs) without saving: the HTML fragment the form's live preview shows as the user types."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = None
        if object_id is not None:
            obj = self.get_object(request, unquote(object_id))
            if obj is None or not self.has_change_permission(request, obj):
                raise Http404("No such trigger.")
        elif not self.has_add_permission(request):
            raise PermissionDenied
        form_class = self.get_form(request, obj, change=obj is not None)
        data = request.POST.copy()
        data[PREVIEW_BUTTON] = "1"
        form = form_class(data, instance=obj)
        form.is_valid()
        preview = getattr(form, "preview", None)
        if preview is not None:
            _drop_preview_marker(form)
        errors = [
            (form[name].label if name in form.fields else "", message)
            for name, messages_ in form.errors.items()
            for message in messages_
        ]
        context = {
            "trigger_preview": _preview_tables(preview, form.instance.timezone) if preview and not errors else None,
            "preview_errors": errors,
        }
        return TemplateResponse(request, "admin/schedules/trigger/preview.html", context)

    def get_fieldsets(self, request: HttpRequest, obj: Trigger | None = None) -> list[tuple[str | None, dict]]:
        fieldsets: list[tuple[str | None, dict]] = [(title, {"fields": list(names)}) for title, names in _FIELDSETS]
        if obj is not None:
            fieldsets[0][1]["fields"].insert(1, "owner")
            fieldsets[1][1]["fields"] += ["schedule", "preview"]
            fieldsets.insert(1, ("What it does", {"fields": ["rules"]}))
            fieldsets.append(
                (
                    "State",
                    {
                        "fields": [
                            "status_column",
                            "run_count",
                            "runs_remaining",
                            "completed_at",
                            "consecutive_failures",
                            "next_run_detail",
                            "last_run_detail",
                            "pause_reason",
                            "paused_at",
                            "paused_by",
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
            changed = {*form.changed_data, *form.derived_fields}
            fields = {name: form.cleaned_data[name] for name in _FORM_FIELDS if name in changed}
            saved = services.trigger_update(trigger=obj, actor=request.user, **fields)
        else:
            fields = {name: form.cleaned_data[name] for name in _FORM_FIELDS}
            fields["timezone_name"] = fields.pop("timezone")
            saved = services.trigger_create(owner=obj.owner, actor=request.user, **fields)
        copy_saved(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Trigger) -> None:
        services.trigger_delete(trigger=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        for trigger in queryset:
            services.trigger_delete(trigger=trigger, actor=request.user)

    # --- Actions ----------------------------------------------------------------------------

    @admin.action(description="Pause selected triggers", permissions=["change"])
    def pause_triggers(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        reason = f"paused from admin by {request.user.get_username()}"
        _for_each(
            request,
            queryset,
            lambda trigger: services.trigger_pause(trigger=trigger, reason=reason, by=request.user),
            lambda trigger, _: f"Paused {trigger.name}.",
        )

    @admin.action(description="Resume selected triggers", permissions=["change"])
    def resume_triggers(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        _for_each(
            request,
            queryset,
            lambda trigger: services.trigger_resume(trigger=trigger, actor=request.user),
            lambda trigger, saved: f"Resumed {trigger.name}; next run {_when(saved.next_run_at, 'UTC') or 'none'}.",
        )

    @admin.action(description="Run selected triggers now", permissions=["change"])
    def run_triggers_now(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        for trigger in queryset:
            try:
                execution = services.trigger_run_now(trigger=trigger, actor=request.user)
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

    @admin.action(description="Backfill…", permissions=["change"])
    def backfill_triggers(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> HttpResponse | None:
        """Ask for a past range (an intermediate page, like delete's), then backfill each trigger."""
        if "apply" in request.POST:
            form = BackfillForm(request.POST)
            if form.is_valid():
                for trigger in queryset:
                    self._backfill(request, trigger, form.cleaned_data)
                return None
        else:
            form = BackfillForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Backfill triggers",
            "form": form,
            "triggers": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "max_slots": settings.SCHEDULER_BACKFILL_MAX_SLOTS,
        }
        return TemplateResponse(request, "admin/schedules/trigger/backfill.html", context)

    def _backfill(self, request: HttpRequest, trigger: Trigger, data: dict[str, Any]) -> None:
        try:
            report = services.trigger_backfill(
                trigger=trigger, start=data["start"], end=data["end"], overlap=data["overlap"], actor=request.user
            )
        except (ScheduleError, ValidationError) as exc:
            messages.error(request, f"{trigger.name}: {_error_text(exc)}")
            return
        text = (
            f"{trigger.name}: backfill queued {report.created} execution(s); {report.existing} slot(s) already had "
            f"one, {report.skipped} skipped (outside the window or overlapping)."
        )
        if report.created or report.skipped:
            url = (
                reverse("admin:schedules_execution_changelist")
                + f"?trigger__id__exact={trigger.pk}&origin__exact=backfill"
            )
            messages.success(request, format_html('{} <a href="{}">See them</a>.', text, url))
        else:
            messages.info(request, text if report.existing else f"{trigger.name}: no slots in that range.")

    # --- Columns ----------------------------------------------------------------------------

    @admin.display(description="Schedule")
    def schedule(self, obj: Trigger) -> str:
        return obj.description

    @admin.display(description="Status")
    def status_column(self, obj: Trigger) -> str:
        status = obj.status
        badge = _badge(status, TriggerStatus(status).label)
        if status == TriggerStatus.PAUSED and obj.pause_reason:
            return format_html("{}<br><small>{}</small>", badge, obj.pause_reason)
        return badge

    @admin.display(description="Runs")
    def runs(self, obj: Trigger) -> str:
        if obj.max_runs is None:
            return str(obj.run_count)
        return f"{obj.run_count} / {obj.max_runs} ({obj.runs_remaining} left)"

    @admin.display(description="Runs remaining")
    def runs_remaining(self, obj: Trigger) -> str:
        return "no limit" if obj.max_runs is None else str(obj.runs_remaining)

    @admin.display(description="Next run", ordering="next_run_at")
    def next_run(self, obj: Trigger) -> str:
        # A paused trigger keeps its stored next_run_at, but it will not run then.
        if obj.completed_at is not None:
            return "(completed)"
        return _when(obj.next_run_at, obj.timezone) if obj.enabled else "(paused)"

    @admin.display(description="Next run at")
    def next_run_detail(self, obj: Trigger) -> str:
        if obj.completed_at is not None:
            return "(completed)"
        when = _when(obj.next_run_at, obj.timezone) or "none"
        return when if obj.enabled else format_html("{}<br><small>(paused: it does not run then)</small>", when)

    @admin.display(description="Last run at")
    def last_run_detail(self, obj: Trigger) -> str:
        return _when(obj.last_run_at, obj.timezone) or "never"

    # Last run and executions are not sortable: each is a subquery per trigger, and sorting on
    # one evaluates it for every trigger in the table before the page can be cut.
    @admin.display(description="Last run")
    def last_run(self, obj: Trigger) -> str:
        """The newest execution that succeeded or failed (TriggerChangeList loads them), not a skip."""
        execution = getattr(obj, "last_outcome", None)
        if execution is None:
            return "-"
        at = execution.finished_at or execution.started_at or execution.scheduled_for
        return format_html("{}<br><small>{}</small>", _execution_status(execution), _utc(at))

    @admin.display(description="Executions")
    def executions_link(self, obj: Trigger) -> str:
        # The finished executions the stats counted (pruning does not lower it); the link lists those kept.
        url = getattr(obj, "executions_url", None)  # TriggerChangeList sets it, one reverse() a page
        if url is None:
            url = reverse("admin:schedules_execution_changelist") + f"?trigger__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, obj.finished_executions)

    @admin.display(description="Rules")
    def rules(self, obj: Trigger) -> str:
        return _rules_table(trigger_describe(obj, count=0))

    @admin.display(description="Next runs")
    def preview(self, obj: Trigger) -> str:
        try:
            items = trigger_preview(obj, count=_UPCOMING_COUNT)
        except ScheduleError as exc:
            return f"(invalid schedule: {exc})"
        return preview_table(items, obj.timezone)


_RULE_LABELS = {
    "bounds": "Bounds",
    "max_runs": "Max runs",
    "window": "Execution window",
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
_PREVIEW_REASONS = {
    "": "runs",
    "outside_window": "skipped: outside the execution window (and every slot until the next one listed)",
    "paused": "does not run while paused",
    "workflow_inactive": "skipped: the workflow is inactive",
}


def _rules_table(description: dict[str, Any]) -> str:
    """A trigger_describe result's state and rules as a two-column table."""
    rows = [
        ("Schedule", description["schedule"]),
        ("Status", description["state"]),
        *((_RULE_LABELS[name], text) for name, text in description["rules"].items()),
    ]
    return format_html("<table>{}</table>", format_html_join("", '<tr><th scope="row">{}</th><td>{}</td></tr>', rows))


def preview_table(items: list[dict[str, Any]], zone_name: str) -> str:
    """A trigger_preview list as a table: UTC, local time, and whether it runs."""
    if not items:
        return "none"
    if zone_name == "UTC":
        # One time column: a UTC trigger's local time is the UTC time again.
        rows = ((_utc(item["at"]), _PREVIEW_REASONS.get(item["reason"], item["reason"])) for item in items)
        return format_html(
            "<table><thead><tr><th>When (UTC)</th><th></th></tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td></tr>", rows),
        )
    rows = (
        (
            _utc(item["at"]),
            f"{item['local']:%Y-%m-%d %H:%M:%S %Z}",
            _PREVIEW_REASONS.get(item["reason"], item["reason"]),
        )
        for item in items
    )
    return format_html(
        "<table><thead><tr><th>UTC</th><th>{}</th><th></th></tr></thead><tbody>{}</tbody></table>",
        zone_name,
        format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
    )


@admin.register(Execution)
class ExecutionAdmin(CappedCountAdminMixin, OwnedAdminMixin, admin.ModelAdmin):
    """Read-only history. Delete keeps Django's permission check (superusers, or staff granted
    schedules.delete_execution): deleting a trigger deletes its executions, and the admin only
    allows that to users who may delete them. Retrying needs permission to change triggers (it
    runs the workflow, as the triggers' "run now" does). Non-superusers see their own triggers' executions."""

    owner_field = "trigger__owner"

    # Within 1,400 px: why it was skipped or waits, and the error, sit under the status; the
    # workflow, run id and finish time are on the execution's page (and the workflow a filter).
    list_display = [
        "scheduled_column",
        "trigger_column",
        "status_column",
        "attempts",
        "http_status",
        "duration",
        "started_column",
    ]
    list_filter = [
        "status",
        "origin",
        "skip_reason",
        ("workflow", OwnedWorkflowFilter),
        ("trigger", ChosenTriggerFilter),
    ]
    list_select_related = ["trigger", "workflow"]
    # Sorted by slot only (newest first, the index execution_slot): any other column would sort
    # every execution of the list (millions) to show a page.
    sortable_by = ["scheduled_column"]
    search_fields = ["id", "run_id", "error"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "trigger",
                    "workflow",
                    "scheduled_for",
                    "origin",
                    "manual",
                    "status",
                    "skip_reason",
                    "wait_reason",
                    "retry_of",
                    "fallback_of",
                ]
            },
        ),
        ("Calls", {"fields": ["attempts", "http_status", "duration_ms", "run_id", "error", "attempt_log"]}),
        (
            "Timing",
            {
                "fields": [
                    "created_at",
                    "due_at",
                    "jitter_seconds",
                    "started_at",
                    "finished_at",
                    "next_attempt_at",
                    "lease_expires_at",
                ]
            },
        ),
        ("Data", {"fields": ["inputs_json", "metadata_json"]}),
    ]
    readonly_fields = ["attempt_log", "inputs_json", "metadata_json", "retry_of", "fallback_of"]
    actions = ["retry_executions"]

    class Media:
        css = {"all": ["schedules/admin.css"]}

    @admin.display(description="Scheduled for", ordering="scheduled_for")
    def scheduled_column(self, obj: Execution) -> str:
        return _shown(obj.scheduled_for)

    @admin.display(description="Started at")
    def started_column(self, obj: Execution) -> str:
        return _shown(obj.started_at) or "-"

    @admin.display(description="Trigger")
    def trigger_column(self, obj: Execution) -> str:
        """The trigger, and under it where the execution came from (schedule, run now, backfill, ...)."""
        return format_html("{}<br><small>{}</small>", obj.trigger, obj.get_origin_display())

    @admin.display(description="Status")
    def status_column(self, obj: Execution) -> str:
        return _execution_status(obj)

    @admin.display(description="Duration")
    def duration(self, obj: Execution) -> str:
        if obj.duration_ms is None:
            return "-"
        return f"{obj.duration_ms} ms" if obj.duration_ms < 1000 else f"{obj.duration_ms / 1000:.1f} s"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Execution]:
        # The workflows' secrets are decrypted on load; no execution page shows them.
        return super().get_queryset(request).select_related("trigger", "workflow").defer(*WORKFLOW_SECRETS)

    def owned(self, request: HttpRequest, queryset: QuerySet[Execution]) -> QuerySet[Execution]:
        # The rows of the trigger__owner rule, found the fast way (see the selector).
        if self.sees_everything(request):
            return queryset
        return executions_owned_by(request.user, queryset)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Execution | None = None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("schedules.change_trigger")

    @admin.action(description="Retry failed executions", permissions=["retry"])
    def retry_executions(self, request: HttpRequest, queryset: QuerySet[Execution]) -> None:
        """Each failed one runs again as a new execution (origin retry); others are reported, not retried."""
        others = 0
        for execution in queryset.select_related("trigger", "workflow"):
            if execution.status != ExecutionStatus.FAILED:
                others += 1
                continue
            try:
                retry = services.execution_retry(execution=execution, actor=request.user)
            except (ScheduleError, ValidationError) as exc:
                messages.error(request, f"{execution}: {_error_text(exc)}")
            except OperationalError:
                messages.warning(
                    request, f"{execution}: retry recorded, but the broker is unreachable; it starts once it is back."
                )
            else:
                url = reverse("admin:schedules_execution_change", args=[retry.pk])
                messages.success(
                    request,
                    format_html(
                        'Queued a retry of {} (<a href="{}">execution {}</a>).', execution.trigger, url, retry.pk
                    ),
                )
        if others:
            messages.warning(
                request, f"{others} selected execution(s) not retried: only failed executions can be retried."
            )

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
