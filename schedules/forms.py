"""Forms of the web UI (/app/): they check the shape of the input and turn it into the services'
keyword arguments; every rule stays in schedules.services, whose errors land on the fields here."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import available_timezones

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from scheduler_project.api import NON_FIELD as API_NON_FIELD
from scheduler_project.api import django_validation_errors, has_nul
from workflows.models import Workflow
from workflows.validators import validate_json_object

from . import timing
from .exceptions import ScheduleError
from .models import CatchupPolicy, OverlapPolicy, Trigger, TriggerKind

MODE_ONCE, MODE_REGULAR = "once", "regular"
WHEN_AT, WHEN_IN = "at", "in"
PRESET_CRON, PRESET_INTERVAL = "cron", "interval"
PRESET_CHOICES = [
    ("hourly", "Every hour"),
    ("daily", "Every day"),
    ("weekdays", "Every weekday (Monday to Friday)"),
    ("weekly", "Every week"),
    ("monthly", "Every month"),
    (PRESET_INTERVAL, "Every N minutes"),
    (PRESET_CRON, "Cron expression (advanced)"),
]
WEEKDAY_CHOICES = [("1", "Monday"), ("2", "Tuesday"), ("3", "Wednesday"), ("4", "Thursday"), ("5", "Friday")]
WEEKDAY_CHOICES += [("6", "Saturday"), ("0", "Sunday")]
WINDOW_DAY_CHOICES = [(value, label[:3]) for value, label in WEEKDAY_CHOICES]
MAX_DELAY_MINUTES = 10 * 365 * 24 * 60


def zone_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted(available_timezones())]


def add_service_error(form: forms.BaseForm, exc: ValidationError | ScheduleError, aliases: dict[str, str]) -> None:
    """Put a service's ValidationError / ScheduleError on the form field it names (``aliases`` maps the
    service's field names to this form's); a name the form has no field for goes on top, prefixed."""
    if isinstance(exc, ScheduleError):
        items: dict[str, list[str]] = {exc.field or NON_FIELD_ERRORS: [str(exc)]}
    else:
        # The API's translation: a per-owner unique name lands on "name", in its words.
        items = {
            NON_FIELD_ERRORS if name == API_NON_FIELD else name: messages
            for name, messages in django_validation_errors(exc).items()
        }
    for name, messages in items.items():
        target = aliases.get(name, name)
        if target in form.fields:
            form.add_error(target, messages)
        elif name == NON_FIELD_ERRORS:
            form.add_error(None, messages)
        else:
            form.add_error(None, [f"{name}: {message}" for message in messages])


def parse_json_object(text: str) -> dict[str, Any]:
    """A JSON object from a text box ('' is {}); ValidationError naming what is wrong and where."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    if not isinstance(value, dict):
        raise ValidationError(f'must be a JSON object, e.g. {{"report": "weekly"}}, not {type(value).__name__}.')
    if has_nul(value):  # PostgreSQL's jsonb cannot store one (the API's refuse_nul)
        raise ValidationError("must not contain NUL characters (\\u0000).")
    validate_json_object(value)  # what the database can store: Unicode text, not too deep
    return value


class ScheduleForm(forms.Form):
    """Create or edit a schedule: "run once" (a date and time, or in N minutes) or "run regularly"
    (a preset, every N minutes, or cron), inputs as JSON, and the advanced options."""

    name = forms.CharField(max_length=200, help_text="For example: Weekday morning report.")
    workflow = forms.ModelChoiceField(queryset=Workflow.objects.none(), empty_label=None)
    mode = forms.ChoiceField(
        choices=[(MODE_ONCE, "Run once"), (MODE_REGULAR, "Run regularly")],
        widget=forms.RadioSelect,
        initial=MODE_REGULAR,
        label="When",
    )
    when = forms.ChoiceField(
        choices=[(WHEN_AT, "At a date and time"), (WHEN_IN, "In N minutes")],
        widget=forms.RadioSelect,
        initial=WHEN_AT,
        required=False,
        label="Run once",
    )
    run_date = forms.DateField(required=False, label="Date", widget=forms.DateInput(attrs={"type": "date"}))
    run_time = forms.TimeField(
        required=False, label="Time", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    delay_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_DELAY_MINUTES, label="In how many minutes", initial=1
    )
    preset = forms.ChoiceField(choices=PRESET_CHOICES, required=False, initial="daily", label="Repeat")
    time = forms.CharField(
        required=False, initial="09:00", label="At", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    minute = forms.IntegerField(required=False, min_value=0, max_value=59, initial=0, label="Minute past the hour")
    weekday = forms.ChoiceField(choices=WEEKDAY_CHOICES, required=False, label="On")
    month_day = forms.IntegerField(required=False, min_value=1, max_value=31, initial=1, label="Day of the month")
    interval_minutes = forms.IntegerField(required=False, min_value=1, initial=15, label="Every how many minutes")
    cron = forms.CharField(
        required=False,
        max_length=200,
        label="Cron expression",
        help_text="Minute hour day-of-month month day-of-week, e.g. 0 9 * * MON-FRI.",
    )
    timezone = forms.CharField(
        max_length=64,
        label="Time zone",
        widget=forms.Select(choices=()),
        help_text="The schedule is read in this zone.",
    )
    inputs = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "data-json": "object"}),
        initial="{}",
        help_text='A JSON object merged over the workflow\'s default inputs, e.g. {"report": "weekly"}.',
    )
    # Advanced
    max_attempts = forms.IntegerField(
        required=False, min_value=1, max_value=20, label="Attempts per run", help_text="Blank: the workflow's default."
    )
    min_backoff_seconds = forms.IntegerField(required=False, min_value=1, label="First retry after (seconds)")
    max_backoff_seconds = forms.IntegerField(required=False, min_value=1, label="Longest wait between retries (s)")
    overlap = forms.ChoiceField(
        choices=OverlapPolicy.choices, initial=OverlapPolicy.SKIP, label="While a run is unfinished"
    )
    catchup = forms.ChoiceField(choices=CatchupPolicy.choices, initial=CatchupPolicy.LATEST, label="Missed runs")
    window_days = forms.MultipleChoiceField(
        choices=WINDOW_DAY_CHOICES, required=False, widget=forms.CheckboxSelectMultiple, label="Only on"
    )
    window_start = forms.TimeField(
        required=False, label="Only from", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    window_end = forms.TimeField(
        required=False, label="until", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    pause_after_failures = forms.IntegerField(
        required=False, min_value=1, label="Pause after failures in a row", help_text="Blank: never."
    )
    notify_emails = forms.CharField(
        required=False, max_length=1000, label="E-mail on failure", help_text="Comma-separated addresses."
    )

    # The services' field names that this form shows under another name.
    ALIASES = {
        "run_at": "run_date",
        "delay_seconds": "delay_minutes",
        "interval_seconds": "interval_minutes",
        "day": "weekday",
        "execution_window": "window_days",
        "kind": "mode",
        "timezone_name": "timezone",
    }

    def __init__(self, *args: Any, owner: Any, trigger: Trigger | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["workflow"].queryset = Workflow.objects.filter(owner=owner).defer("secret", "previous_secret")
        self.fields["timezone"].widget.choices = zone_choices()
        self.trigger = trigger

    @classmethod
    def initial_for(cls, trigger: Trigger) -> dict[str, Any]:
        """The form's values for an existing trigger."""
        zone = timing.zone(trigger.timezone)
        initial: dict[str, Any] = {
            "name": trigger.name,
            "workflow": trigger.workflow_id,
            "timezone": trigger.timezone,
            "inputs": json.dumps(trigger.inputs, indent=2, ensure_ascii=False),
            "max_attempts": trigger.max_attempts,
            "min_backoff_seconds": trigger.min_backoff_seconds,
            "max_backoff_seconds": trigger.max_backoff_seconds,
            "overlap": trigger.overlap,
            "catchup": trigger.catchup,
            "pause_after_failures": trigger.pause_after_failures,
            "notify_emails": trigger.notify_emails,
        }
        if trigger.kind == TriggerKind.ONCE:
            local = trigger.run_at.astimezone(zone)
            initial.update(mode=MODE_ONCE, when=WHEN_AT, run_date=local.date(), run_time=local.time().replace(second=0))
        elif trigger.kind == TriggerKind.INTERVAL:
            initial.update(mode=MODE_REGULAR, preset=PRESET_INTERVAL, interval_minutes=trigger.interval_seconds // 60)
        else:
            initial.update(mode=MODE_REGULAR, **_preset_of(timing.normalize_cron(trigger.cron)), cron=trigger.cron)
        window = trigger.execution_window or {}
        if window:
            initial["window_days"] = [str(day) for day in window.get("days", [])]
            ranges = window.get("ranges") or []
            if ranges:
                initial["window_start"], initial["window_end"] = ranges[0]
        return initial

    def clean_inputs(self) -> dict[str, Any]:
        return parse_json_object(self.cleaned_data.get("inputs", ""))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("mode") == MODE_ONCE:
            if data.get("when") == WHEN_IN:
                if data.get("delay_minutes") is None and "delay_minutes" not in self.errors:
                    self.add_error("delay_minutes", "is required: in how many minutes should it run?")
            elif not self.errors.get("run_date") and (data.get("run_date") is None or data.get("run_time") is None):
                self.add_error("run_date", "a date and a time are required to run once at a given moment.")
        return data

    def service_fields(self, *, now: datetime) -> dict[str, Any]:
        """The cleaned form as trigger_create / trigger_update keywords (cron from a preset, run_at from
        date and time, or now + N minutes). Raises ScheduleError naming the field for a bad preset value."""
        data = self.cleaned_data
        fields: dict[str, Any] = {
            "name": data["name"],
            "workflow": data["workflow"],
            "timezone_name": data["timezone"],
            "inputs": data["inputs"],
            "cron": "",
            "run_at": None,
            "interval_seconds": None,
            "overlap": data["overlap"],
            "catchup": data["catchup"],
            "pause_after_failures": data.get("pause_after_failures"),
            "notify_emails": data.get("notify_emails", ""),
            "execution_window": self._window(),
        }
        for name in ("max_attempts", "min_backoff_seconds", "max_backoff_seconds"):
            value = data.get(name)
            if value is not None:
                fields[name] = value
            elif self.trigger is not None:
                fields[name] = getattr(data["workflow"], name)  # blank: back to the workflow's default
        if data["mode"] == MODE_ONCE:
            fields["kind"] = TriggerKind.ONCE
            if data.get("when") == WHEN_IN:
                fields["run_at"] = now + timedelta(minutes=data["delay_minutes"])
            else:
                zone = timing.zone(data["timezone"])
                fields["run_at"] = datetime.combine(data["run_date"], data["run_time"]).replace(tzinfo=zone)
                kept = self.trigger.run_at if self.trigger is not None else None
                if kept is not None and kept.replace(second=0, microsecond=0) == fields["run_at"]:
                    # The form shows minutes: an unchanged time keeps its seconds (else an edit of the
                    # name alone would move an "in N minutes" schedule, or refuse a past one).
                    fields["run_at"] = kept
            return fields
        preset = data.get("preset") or PRESET_CRON
        if preset == PRESET_INTERVAL:
            if data.get("interval_minutes") is None:
                raise ScheduleError("is required: every how many minutes?", field="interval_minutes")
            fields["kind"] = TriggerKind.INTERVAL
            fields["interval_seconds"] = data["interval_minutes"] * 60
            return fields
        fields["kind"] = TriggerKind.CRON
        if preset == PRESET_CRON:
            fields["cron"] = data.get("cron", "").strip()
        else:
            params: dict[str, Any] = {
                "hourly": {"minute": data.get("minute")},
                "daily": {"time": data.get("time")},
                "weekdays": {"time": data.get("time")},
                "weekly": {"day": data.get("weekday") or None, "time": data.get("time")},
                "monthly": {"day": data.get("month_day"), "time": data.get("time")},
            }[preset]
            if preset == "monthly" and params["day"] is None:
                raise ScheduleError("the monthly preset needs a day of the month, 1-31.", field="month_day")
            fields["cron"] = timing.preset_cron(preset, **params)
        return fields

    def _window(self) -> dict[str, Any]:
        data = self.cleaned_data
        days = [int(day) for day in data.get("window_days") or []]
        start, end = data.get("window_start"), data.get("window_end")
        if not days and start is None and end is None:
            return {}
        window: dict[str, Any] = {"days": sorted(days) if days else list(range(7))}
        if start is not None or end is not None:
            window["ranges"] = [[f"{start:%H:%M}" if start else "00:00", f"{end:%H:%M}" if end else "24:00"]]
        return window

    def add_service_error(self, exc: ValidationError | ScheduleError) -> None:
        aliases = dict(self.ALIASES)
        if self.cleaned_data.get("mode") == MODE_ONCE and self.cleaned_data.get("when") == WHEN_IN:
            aliases["run_at"] = "delay_minutes"
        if self.cleaned_data.get("preset") == "monthly":
            aliases["day"] = "month_day"
        if self.cleaned_data.get("preset") not in (PRESET_CRON, PRESET_INTERVAL, None, ""):
            aliases["cron"] = "preset"
        add_service_error(self, exc, aliases)


_PRESET_PATTERNS = (
    (re.compile(r"^(\d+) \* \* \* \*$"), "hourly"),
    (re.compile(r"^(\d+) (\d+) \* \* \*$"), "daily"),
    (re.compile(r"^(\d+) (\d+) \* \* 1-5$"), "weekdays"),
    (re.compile(r"^(\d+) (\d+) \* \* ([0-6])$"), "weekly"),
    (re.compile(r"^(\d+) (\d+) (\d+) \* \*$"), "monthly"),
)


def _preset_of(cron: str) -> dict[str, Any]:
    """The preset and its values a (numeric) cron expression is, else {"preset": "cron"}."""
    for pattern, preset in _PRESET_PATTERNS:
        match = pattern.match(cron)
        if not match:
            continue
        if preset == "hourly":
            return {"preset": preset, "minute": int(match[1])}
        values: dict[str, Any] = {"preset": preset, "time": f"{int(match[2]):02d}:{int(match[1]):02d}"}
        if preset == "weekly":
            values["weekday"] = match[3]
        if preset == "monthly":
            values["month_day"] = int(match[3])
        return values
    return {"preset": PRESET_CRON}


class PauseForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500, label="Reason", help_text="e.g. vendor outage")


class RunNowForm(forms.Form):
    inputs = forms.CharField(
        required=False,
        label="Input overrides",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "data-json": "object"}),
        help_text="Optional JSON object merged over the schedule's inputs for this run only.",
    )

    def clean_inputs(self) -> dict[str, Any] | None:
        value = parse_json_object(self.cleaned_data.get("inputs", ""))
        return value or None


class BackfillForm(forms.Form):
    start = forms.DateTimeField(
        label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
    )
    end = forms.DateTimeField(
        label="To", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
    )
    overlap = forms.ChoiceField(
        choices=[
            ("buffer_all", "One after another"),
            ("allow", "Side by side"),
            ("buffer_one", "First, plus one waiting"),
            ("skip", "Only what does not overlap"),
        ],
        initial="buffer_all",
    )


class PreferencesForm(forms.Form):
    timezone = forms.CharField(
        max_length=64, label="Your time zone", widget=forms.Select(choices=()), help_text="Pages show times in it."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["timezone"].widget.choices = zone_choices()
