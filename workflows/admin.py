"""Admin for workflows and the runs the built-in endpoint records; every write calls workflows.services."""

from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.paginator import InvalidPage
from django.db.models import Count, Field, ForeignKey, Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.decorators import method_decorator
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.views.decorators.debug import sensitive_post_parameters
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from scheduler_project.api import CappedPaginator

from . import services
from .engine.diagram import definition_svg
from .exceptions import RunStateError
from .fields import JSONFormField
from .models import (
    RUN_ACTIVE_STATUSES,
    STEP_HISTORY_FIELDS,
    ApiToken,
    AuditEvent,
    UserPreferences,
    Workflow,
    WorkflowRun,
    WorkflowStep,
    mask_token,
)
from .validators import validate_secret

SECRET_HELP = (
    "Leave blank to keep the current secret (a new workflow gets a generated one); a secret typed here "  # noqa: S105
    "replaces the old one at once. To switch with an overlap in which both verify, use the list's "
    "'Rotate signing secret' action: it shows the new secret once, the only place the admin ever shows one."
)
# What the form may change; ``secret`` comes from its own write-only field.
_FORM_FIELDS = (
    "name",
    "endpoint_url",
    "http_method",
    "headers",
    "timeout_seconds",
    "default_inputs",
    "is_active",
    "definition",
)


def copy_saved(obj: Model, saved: Model) -> None:
    """Turn the admin's form instance into the row a service saved (pk, defaults, timestamps).

    The admin logs and redirects with the object it passed to save_model, so it must be the
    saved row even though a service created or re-loaded its own instance.
    """
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


def add_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Put a model/service ValidationError on the form; keys the form has no field for go on top."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.error_dict.items():
        if name in form.fields or name == NON_FIELD_ERRORS:
            form.add_error(name, errors)
        else:
            form.add_error(None, [f"{name}: {message}" for message in ValidationError(errors).messages])


def pretty_json(value: Any) -> str:
    """JSON for a read-only admin field, indented inside <pre>."""
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


class OwnedAdminMixin:
    """The ownership rule for the admin, in one place: superusers see and change everything; other
    staff see, change, delete and act on only what they own (``owner_field``, a lookup such as
    ``"trigger__owner"``), and foreign keys to owned models offer only their own rows.

    Filtering ``get_queryset`` is what hides other users' rows from changelists, actions and the
    change, delete and history pages (another user's URL gets the admin's "doesn't exist" answer);
    the object permission checks repeat the rule for any path that is handed an object directly.
    """

    owner_field = "owner"

    @staticmethod
    def sees_everything(request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def owned(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        """``queryset`` narrowed to the rows the user may see."""
        if self.sees_everything(request):
            return queryset
        return queryset.filter(**{self.owner_field: request.user})

    def owns(self, request: HttpRequest, obj: Model | None) -> bool:
        """Whether the user may act on ``obj`` (None: the model as a whole)."""
        if obj is None or self.sees_everything(request):
            return True
        *path, last = self.owner_field.split("__")
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                return False
        return getattr(obj, f"{last}_id", None) == request.user.pk

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return self.owned(request, super().get_queryset(request))

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_view_permission(request, obj) and self.owns(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_change_permission(request, obj) and self.owns(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_delete_permission(request, obj) and self.owns(request, obj)

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        # Filtering by owner would list every user's name; a non-superuser only has their own rows.
        filters = list(super().get_list_filter(request))
        return filters if self.sees_everything(request) else [name for name in filters if name != self.owner_field]

    def formfield_for_dbfield(self, db_field: Field, request: HttpRequest, **kwargs: Any) -> Any:
        # The admin prints help texts as HTML (|safe), and ours are plain text: a path such as
        # /api/workflows/<id>/runs/ lost its "<id>" as an unknown tag.
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        if formfield is not None and formfield.help_text:
            formfield.help_text = conditional_escape(formfield.help_text)
        return formfield

    def formfield_for_foreignkey(self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any) -> Any:
        # A foreign key to an owned model (a trigger's workflow, its fallback) offers only the user's
        # own rows, and the form refuses any other id posted ("Select a valid choice").
        formfield = super().formfield_for_foreignkey(db_field, request, **kwargs)
        site, model = self.admin_site, db_field.related_model
        related_admin = site.get_model_admin(model) if site.is_registered(model) else None
        if formfield is not None and isinstance(related_admin, OwnedAdminMixin):
            formfield.queryset = related_admin.owned(request, formfield.queryset)
        return formfield


# A primary key as the admin quotes it into a URL (ids, UUIDs): reverse() leaves these as they are.
_URL_SAFE_PK = re.compile(r"[A-Za-z0-9_-]+")
_PK_PLACEHOLDER = "pk-placeholder-0f1e2d"


class _Placeholder:
    def __init__(self, pk_attname: str) -> None:
        setattr(self, pk_attname, _PK_PLACEHOLDER)


class CappedChangeList(ChangeList):
    """The changelist of a CappedCountAdminMixin admin: a "next" link past the counted pages, and
    each row's link made from one reverse() per page (Django reverses the change URL per row)."""

    _change_url: tuple[str, str] | None = None

    def url_for_result(self, result: Model) -> str:
        pk = str(quote(getattr(result, self.pk_attname)))
        if not _URL_SAFE_PK.fullmatch(pk):
            return super().url_for_result(result)  # reverse() would escape it: let it
        if self._change_url is None:
            # A placeholder reversed once; the pattern is <path:object_id>/change/ for every row.
            self._change_url = tuple(super().url_for_result(_Placeholder(self.pk_attname)).split(_PK_PLACEHOLDER))
        before, after = self._change_url
        return f"{before}{pk}{after}"

    @property
    def next_page_url(self) -> str:
        """The next page's query string while the count is capped and a next page exists, else ""."""
        paginator = self.paginator
        if not getattr(paginator, "capped", False) or (self.show_all and self.can_show_all):
            return ""
        try:
            page = paginator.page(self.page_num)  # memoized: the page get_results already read
        except InvalidPage:
            return ""
        return self.get_query_string({PAGE_VAR: self.page_num + 1}) if page.has_next() else ""


class CappedCountAdminMixin:
    """Changelists of tables that grow to millions of rows (executions, and triggers by the 100,000).

    The admin counts the filtered rows on every page view, for its paginator, and without
    show_full_result_count = False the unfiltered table too: a COUNT(*) of 10 million rows takes
    seconds, the page itself milliseconds. CappedPaginator counts up to COUNT_LIMIT rows and the
    page then says "more than N" (admin/<app>/pagination.html), with a next link past the counted
    pages. Facets ("Show counts") are off: each would count the whole table per choice.
    """

    paginator = CappedPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CappedChangeList

    def action_checkbox(self, obj: Model) -> str:
        """Each row's checkbox, the same HTML as Django's, written directly: Django renders a
        CheckboxInput through the form template renderer, a template per row that took a fifth of
        a page of 50 triggers' time (bench/api_lists.py)."""
        label = format_html(gettext("Select this object for an action - {}"), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            label,
        )


class OwnedWorkflowFilter(admin.RelatedFieldListFilter):
    """A workflow filter that lists the user's workflows (a superuser's: every one) from the workflows table.

    RelatedOnlyFieldListFilter finds the workflows in use with a SELECT DISTINCT over the listed
    table on every page view (over every execution: seconds at 10 million rows). Secrets are not
    loaded (they are decrypted on load), only the names shown.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[Any, str]]:
        workflow_admin = model_admin.admin_site.get_model_admin(Workflow)
        ordering = self.field_admin_ordering(field, request, model_admin) or Workflow._meta.ordering
        workflows = workflow_admin.owned(request, Workflow.objects.all()).order_by(*ordering)
        return list(workflows.values_list("pk", "name"))  # the name is what str(workflow) shows

    def has_output(self) -> bool:
        # A filter without output is dropped with its parameter: a user with one workflow (no
        # choice to offer) following a link filtered by it would get the list unfiltered.
        return super().has_output() or bool(self.used_parameters)


class WorkflowAdminForm(forms.ModelForm):
    """The model form with a write-only secret: never rendered, blank keeps the current one."""

    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        validators=[validate_secret],
        help_text=SECRET_HELP,
    )

    class Meta:
        model = Workflow
        # Kept off the model part of the form, so the stored secret is never the field's
        # initial value and a blank entry never reaches the instance.
        exclude = ["secret"]  # noqa: DJ006 - the one field to keep out; the admin's fieldsets pick the rest
        field_classes = {"default_inputs": JSONFormField, "headers": JSONFormField, "definition": JSONFormField}

    def clean_headers(self) -> Any:
        # An emptied JSON box cleans to None; the column is NOT NULL and means "none".
        value = self.cleaned_data.get("headers")
        return {} if value is None else value

    def clean_default_inputs(self) -> Any:
        value = self.cleaned_data.get("default_inputs")
        return {} if value is None else value

    def clean_definition(self) -> Any:
        value = self.cleaned_data.get("definition")
        return {} if value is None else value

    def _post_clean(self) -> None:
        # Like auth's UserCreationForm: once the instance holds the form's values, run the
        # same full_clean the services run. The plain ModelForm skips the (owner, name)
        # constraint on change because owner is read-only there.
        super()._post_clean()
        if self._errors:
            return
        if self.cleaned_data.get("secret"):
            self.instance.secret = self.cleaned_data["secret"]
        try:
            self.instance.full_clean()
            services.definition_check(self.instance)
            # The services refuse an endpoint the SSRF guard would refuse: so does the form.
            if "endpoint_url" in self.changed_data or not self.instance.pk:
                services.endpoint_check(self.instance.endpoint_url)
        except ValidationError as exc:
            add_errors(self, exc)


@admin.register(Workflow)
class WorkflowAdmin(OwnedAdminMixin, admin.ModelAdmin):
    form = WorkflowAdminForm
    list_display = [
        "name",
        "owner",
        "endpoint",
        "http_method",
        "timeout_seconds",
        "is_active",
        "triggers_link",
        "updated_at",
    ]
    list_filter = ["is_active", "http_method", "owner"]
    list_select_related = ["owner"]
    search_fields = ["name", "endpoint_url"]
    readonly_fields = ["owner", "secret_overlap", "created_at", "updated_at", "definition_diagram"]
    actions = ["rotate_secrets"]

    @admin.display(description="Diagram")
    def definition_diagram(self, obj: Workflow) -> str:
        svg = definition_svg(obj.definition) if obj.definition else ""
        return mark_safe(svg) if svg else "—"  # noqa: S308 - built from escaped text (workflows.engine.diagram)

    @method_decorator(sensitive_post_parameters("secret"))
    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # A typed secret stays out of error reports (Django's debug page, admin error e-mails).
        return super().changeform_view(request, *args, **kwargs)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        return super().get_queryset(request).annotate(trigger_count=Count("triggers"))

    def get_form(
        self, request: HttpRequest, obj: Workflow | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None and not self.sees_everything(request):
            # No owner field for them: what they add is theirs, set before the form validates it.
            owner = request.user

            class OwnWorkflowForm(form):
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    super().__init__(*args, **kwargs)
                    self.instance.owner = owner

            return OwnWorkflowForm
        return form

    def get_readonly_fields(self, request: HttpRequest, obj: Workflow | None = None) -> list[str]:
        # The owner is chosen once, on add; the services have no way to move a workflow.
        readonly = list(super().get_readonly_fields(request, obj))
        return readonly if obj is not None else [name for name in readonly if name != "owner"]

    def get_fieldsets(self, request: HttpRequest, obj: Workflow | None = None) -> list[tuple[str | None, dict]]:
        fieldsets: list[tuple[str | None, dict]] = [
            (None, {"fields": ["owner", "name", "is_active"]}),
            ("Request", {"fields": ["endpoint_url", "http_method", "timeout_seconds", "headers", "secret"]}),
            ("Inputs", {"fields": ["default_inputs"]}),
            ("Built-in engine", {"fields": ["definition"]}),
        ]
        if obj is None and not self.sees_everything(request):
            fieldsets[0][1]["fields"].remove("owner")
        if obj is not None:
            fieldsets[1][1]["fields"].append("secret_overlap")
            fieldsets[3][1]["fields"].append("definition_diagram")
            fieldsets.append(("Timestamps", {"fields": ["created_at", "updated_at"]}))
        return fieldsets

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    def save_model(self, request: HttpRequest, obj: Workflow, form: forms.ModelForm, change: bool) -> None:
        fields = {name: form.cleaned_data[name] for name in _FORM_FIELDS if name in form.cleaned_data}
        fields["secret"] = form.cleaned_data.get("secret", "")
        if change:
            # The form has already put its values on ``obj``; workflow_update diffs against the
            # workflow it is given, so it gets the stored row, or the audit trail would see no change.
            stored = Workflow.objects.get(pk=obj.pk)
            copy_saved(obj, services.workflow_update(workflow=stored, actor=request.user, **fields))
        else:
            owner = form.cleaned_data.get("owner", request.user)
            saved = services.workflow_create(owner=owner, actor=request.user, **fields)
            copy_saved(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Workflow) -> None:
        # The delete page has already refused a workflow with triggers (they are PROTECTed).
        services.workflow_delete(workflow=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        for workflow in queryset:
            services.workflow_delete(workflow=workflow, actor=request.user)

    @admin.action(description="Rotate signing secret", permissions=["change"])
    def rotate_secrets(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> HttpResponse | None:
        """New secrets, shown once on the page this returns; the old ones verify for another day.

        The page is rendered here rather than put in a message: messages wait in a cookie or the
        session until shown, and a secret must not be stored anywhere but its encrypted column.
        """
        rotated = []
        for workflow in queryset.order_by("name", "id"):
            try:
                secret = services.workflow_rotate_secret(workflow=workflow, actor=request.user)
            except ValidationError as exc:
                messages.error(request, f"{workflow.name}: {' '.join(exc.messages)}")
                continue
            self.log_change(request, workflow, "Rotated the signing secret.")
            rotated.append(
                {
                    "workflow": workflow,
                    "secret": secret,
                    "url": reverse("admin:workflows_workflow_change", args=[workflow.pk]),
                }
            )
        if not rotated:
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "New signing secrets",
            "rotated": rotated,
            "overlap_hours": services.DEFAULT_OVERLAP_SECONDS // 3600,
        }
        response = TemplateResponse(request, "admin/workflows/workflow/rotated_secrets.html", context)
        add_never_cache_headers(response)
        return response

    @admin.display(description="Previous secret")
    def secret_overlap(self, obj: Workflow) -> str:
        if obj.valid_previous_secret() is None:
            return "None: only the current secret verifies."
        return f"Still verifies until {obj.previous_secret_expires_at:%Y-%m-%d %H:%M:%S %Z} (rotation overlap)."

    @admin.display(description="Endpoint")
    def endpoint(self, obj: Workflow) -> str:
        return obj.endpoint_url or "(built-in)"

    @admin.display(description="Triggers", ordering="trigger_count")
    def triggers_link(self, obj: Workflow) -> str:
        url = reverse("admin:schedules_trigger_changelist") + f"?workflow__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, obj.trigger_count)


class WorkflowStepInline(admin.TabularInline):
    """The run's path: one row per attempt of each step, in order."""

    model = WorkflowStep
    extra = 0
    can_delete = False
    fields = list(STEP_HISTORY_FIELDS)
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WorkflowRun)
class WorkflowRunAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Read-only: runs are recorded by the built-in endpoint and moved on by the engine, never edited."""

    owner_field = "workflow__owner"

    list_display = ["received_at", "id", "workflow", "status", "current_step", "idempotency_key"]
    list_filter = ["status", ("workflow", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["workflow"]
    search_fields = ["id", "idempotency_key"]
    # Skips a COUNT(*) of the whole table on every page.
    show_full_result_count = False
    fields = [
        "id",
        "workflow",
        "idempotency_key",
        "received_at",
        "status",
        "current_step",
        "started_at",
        "finished_at",
        "wake_at",
        "error",
        "path_diagram",
        "inputs_json",
        "payload_json",
        "context_json",
    ]
    readonly_fields = fields
    inlines = [WorkflowStepInline]
    actions = ["pause_runs", "resume_runs", "cancel_runs", "retry_runs"]

    @admin.display(description="Context")
    def context_json(self, obj: WorkflowRun) -> str:
        return pretty_json(obj.context)

    @admin.display(description="Path")
    def path_diagram(self, obj: WorkflowRun) -> str:
        """The definition the run started with, each step coloured by how its last attempt ended."""
        if not obj.definition:
            return "—"
        statuses: dict[str, str] = {}
        path: list[str] = []
        for step_id, status in obj.steps.order_by("seq", "attempt").values_list("step_id", "status"):
            statuses[step_id] = status
            if not path or path[-1] != step_id:
                path.append(step_id)
        for node_id, node in (obj.context or {}).get("nodes", {}).items():
            if node.get("status") in ("ready", "skipped"):
                statuses[node_id] = node["status"]
        current = obj.current_step if obj.status in RUN_ACTIVE_STATUSES else ""
        svg = definition_svg(obj.definition, statuses=statuses, path=path, current=current)
        return mark_safe(svg) if svg else "—"  # noqa: S308 - built from escaped text (workflows.engine.diagram)

    def has_control_permission(self, request: HttpRequest) -> bool:
        # Runs are never edited, but whoever may change workflows may steer their runs.
        return request.user.has_perm("workflows.change_workflow")

    def _control(self, request: HttpRequest, queryset: QuerySet[WorkflowRun], change: Any, done: str) -> None:
        for run in queryset.select_related("workflow"):
            try:
                saved = change(run=run, actor=request.user)
            except RunStateError as exc:
                messages.error(request, f"run {run.pk}: {exc}")
            else:
                messages.success(request, f"{done} run {run.pk} ({saved.get_status_display()}).")

    @admin.action(description="Pause selected runs", permissions=["control"])
    def pause_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._control(request, queryset, services.run_pause, "Paused")

    @admin.action(description="Resume selected runs", permissions=["control"])
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._control(request, queryset, services.run_resume, "Resumed")

    @admin.action(description="Cancel selected runs", permissions=["control"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._control(request, queryset, services.run_cancel, "Cancelled")

    @admin.action(description="Retry selected runs from their failed step", permissions=["control"])
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._control(request, queryset, services.run_retry, "Retried")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False

    @admin.display(description="Inputs")
    def inputs_json(self, obj: WorkflowRun) -> str:
        return pretty_json(obj.inputs)

    @admin.display(description="Payload")
    def payload_json(self, obj: WorkflowRun) -> str:
        return pretty_json(obj.payload)


@admin.register(AuditEvent)
class AuditEventAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """The audit trail, read-only: who did what to which workflow or trigger, and when.

    Non-superusers see the events of their own objects (the event's owner), whoever acted.
    """

    list_display = ["at", "actor_name", "action", "object_type", "object_repr", "owner"]
    list_filter = ["action", "object_type"]
    list_select_related = ["actor", "owner"]
    search_fields = ["object_repr", "object_id", "actor__username"]
    date_hierarchy = "at"
    readonly_fields = ["at", "actor", "owner", "action", "object_type", "object_id", "object_repr", "changes"]

    @admin.display(description="Who", ordering="actor__username")
    def actor_name(self, event: AuditEvent) -> str:
        return event.actor.get_username() if event.actor_id else "(scheduler)"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(UserPreferences)
class UserPreferencesAdmin(OwnedAdminMixin, admin.ModelAdmin):
    """Each user's web UI settings (the time zone its pages show times in); staff see their own."""

    owner_field = "user"
    list_display = ["user", "timezone", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "timezone"]
    readonly_fields = ["updated_at"]
    raw_id_fields = ["user"]

    def formfield_for_foreignkey(self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user" and not self.sees_everything(request):
            kwargs["queryset"] = db_field.related_model.objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        # Whose preferences they are is fixed once they exist.
        return [*self.readonly_fields, "user"] if obj is not None else self.readonly_fields


# DRF's token admin lists every key in full (and names tokens by key in titles, delete pages,
# messages and the admin log): ours is the same admin on a proxy that masks the key.
admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(TokenAdmin):
    """API tokens, with keys masked everywhere; the full key is shown once, on the page after adding
    it (like a new GitHub token). ``manage.py token create`` prints a new key the same single time."""

    list_display = ("masked_key", "user", "created")

    @admin.display(description="Key")
    def masked_key(self, obj: ApiToken) -> str:
        return mask_token(obj.key)

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        # Rendered into this response only: a message would carry the key in a cookie, and a
        # redirect would need it stored somewhere to show it again.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "API token created",
            "token": obj,
            "key": obj.key,
        }
        response = TemplateResponse(request, "admin/workflows/apitoken/created.html", context)
        add_never_cache_headers(response)
        return response
