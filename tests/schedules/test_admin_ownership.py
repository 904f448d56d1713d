"""Ownership in the admin: non-superuser staff see and change only their own objects; superusers see all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from schedules import services
from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from tests.schedules.test_admin import _change_form, _form
from workflows import services as workflow_services
from workflows.models import AuditEvent, Workflow, WorkflowRun

pytestmark = pytest.mark.django_db

MODELS = ("workflow", "trigger", "execution", "run", "event")
URL_NAMES = {
    "workflow": "workflows_workflow",
    "trigger": "schedules_trigger",
    "execution": "schedules_execution",
    "run": "workflows_workflowrun",
    "event": "workflows_auditevent",
}


def _objects(owner) -> dict[str, object]:
    """One of each owned kind for ``owner``: workflow, trigger, failed execution, run and audit event."""
    workflow = WorkflowFactory(owner=owner)
    trigger = TriggerFactory(workflow=workflow)
    execution = Execution.objects.create(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=timezone.now() - timedelta(minutes=5),
        status=ExecutionStatus.FAILED,
    )
    run = WorkflowRun.objects.create(workflow=workflow, idempotency_key=f"key-{owner.pk}", payload={})
    event = workflow_services.audit_record(actor=owner, action="updated", obj=workflow)
    return {"workflow": workflow, "trigger": trigger, "execution": execution, "run": run, "event": event}


@pytest.fixture
def staff(db):
    """Staff, not superuser, with every permission of the two apps."""
    user = UserFactory(username="staffer", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=["workflows", "schedules"]))
    return user


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def mine(staff):
    return _objects(staff)


@pytest.fixture
def theirs(other_user):
    return _objects(other_user)


def _changelist(name: str) -> str:
    return reverse(f"admin:{URL_NAMES[name]}_changelist")


def _url(name: str, view: str, obj) -> str:
    return reverse(f"admin:{URL_NAMES[name]}_{view}", args=[obj.pk])


def _refetch(obj):
    return type(obj).objects.get(pk=obj.pk)


# --- What they see ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_admin_ownership__changelist_shows_only_own_objects(staff_client, mine, theirs, name):
    """Each changelist lists the staff user's own objects and none of another user's."""
    response = staff_client.get(_changelist(name))
    assert response.status_code == 200
    listed = response.context["cl"].result_list
    assert mine[name].pk in {obj.pk for obj in listed}
    if name == "event":  # creating the trigger recorded one more of theirs
        assert {event.owner_id for event in listed} == {mine["workflow"].owner_id}
    else:
        assert [obj.pk for obj in listed] == [mine[name].pk]


@pytest.mark.parametrize("name", MODELS)
def test_admin_ownership__superuser_sees_everything(admin_client, mine, theirs, name):
    """A superuser's changelists list every user's objects, and another user's page opens."""
    response = admin_client.get(_changelist(name))
    assert {obj.pk for obj in response.context["cl"].result_list} >= {mine[name].pk, theirs[name].pk}
    assert admin_client.get(_url(name, "change", theirs[name])).status_code == 200


@pytest.mark.parametrize("name", MODELS)
def test_admin_ownership__own_object_pages_open(staff_client, mine, name):
    """The staff user's own objects open on their change and history pages."""
    for view in ("change", "history"):
        assert staff_client.get(_url(name, view, mine[name])).status_code == 200, view


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("view", ["change", "delete", "history"])
def test_admin_ownership__other_users_object_url_does_not_exist(staff_client, theirs, name, view):
    """Another user's change, delete or history URL gets the admin's "doesn't exist" redirect."""
    response = staff_client.get(_url(name, view, theirs[name]))
    if (name, view) == ("event", "delete"):
        assert response.status_code == 403  # nobody deletes audit events, own or not
        return
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")
    assert str(theirs[name]) not in staff_client.get(response["Location"]).content.decode()


def test_admin_ownership__filters_name_no_other_users_or_their_workflows(staff_client, mine, theirs, other_user):
    """The list filters offer neither another user's name nor their workflows."""
    for name in ("workflow", "trigger", "execution", "run"):
        content = staff_client.get(_changelist(name)).content.decode()
        assert theirs["workflow"].name not in content, name
        assert other_user.username not in content, name
    assert mine["workflow"].name in staff_client.get(_changelist("trigger")).content.decode()


def test_admin_ownership__object_permissions_refuse_other_users_objects(staff, mine, theirs):
    """The admins' object checks say no for another user's object and yes for the user's own."""
    request = RequestFactory().get("/admin/")
    request.user = staff
    for name, model in (("workflow", Workflow), ("trigger", Trigger), ("execution", Execution), ("run", WorkflowRun)):
        model_admin = admin.site.get_model_admin(model)
        assert model_admin.has_view_permission(request, mine[name]), name
        assert not model_admin.has_view_permission(request, theirs[name]), name
        assert not model_admin.has_delete_permission(request, theirs[name]), name
        assert not model_admin.has_change_permission(request, theirs[name]), name
    event_admin = admin.site.get_model_admin(AuditEvent)
    assert event_admin.has_view_permission(request, mine["event"])
    assert not event_admin.has_view_permission(request, theirs["event"])


# --- What they change ---------------------------------------------------------------------------


def test_admin_ownership__changing_other_users_trigger_fails(staff_client, theirs):
    """Posting a change to another user's trigger redirects and leaves it as it was."""
    trigger = theirs["trigger"]
    response = staff_client.post(_url("trigger", "change", trigger), _change_form(trigger, name="Hijacked"))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:index")
    assert _refetch(trigger).name == trigger.name


def test_admin_ownership__changing_other_users_workflow_fails(staff_client, theirs):
    """Posting a change to another user's workflow redirects and leaves it as it was."""
    workflow = theirs["workflow"]
    data = {"name": "Hijacked", "endpoint_url": "", "http_method": "POST", "timeout_seconds": "30"}
    response = staff_client.post(
        _url("workflow", "change", workflow), {**data, "headers": "{}", "default_inputs": "{}"}
    )
    assert response.status_code == 302
    assert _refetch(workflow).name == workflow.name


def test_admin_ownership__changing_own_workflow_and_trigger_works(staff_client, staff, mine):
    """The staff user edits their own workflow and trigger; the trail names them."""
    workflow, trigger = mine["workflow"], mine["trigger"]
    data = {"name": "Mine renamed", "endpoint_url": "", "http_method": "POST", "timeout_seconds": "30"}
    response = staff_client.post(
        _url("workflow", "change", workflow), {**data, "headers": "{}", "default_inputs": "{}"}
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    response = staff_client.post(_url("trigger", "change", trigger), _change_form(trigger, name="Trigger renamed"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert (_refetch(workflow).name, _refetch(trigger).name) == ("Mine renamed", "Trigger renamed")
    updated = AuditEvent.objects.filter(action="updated", source="admin")
    assert {(event.object_type, event.actor) for event in updated} == {("workflow", staff), ("trigger", staff)}


@pytest.mark.parametrize("name", ["workflow", "trigger", "execution"])
def test_admin_ownership__deleting_other_users_object_fails(staff_client, theirs, name):
    """Confirming the delete of another user's object redirects and deletes nothing."""
    obj = theirs["execution"] if name == "execution" else theirs[name]
    if name == "workflow":
        services.trigger_delete(trigger=theirs["trigger"])  # else the workflow is protected anyway
    response = staff_client.post(_url(name, "delete", obj), {"post": "yes"})
    assert response.status_code == 302
    assert type(obj).objects.filter(pk=obj.pk).exists()


def test_admin_ownership__deleting_own_trigger_with_executions_works(staff_client, mine):
    """The staff user may delete their own trigger, executions and all."""
    response = staff_client.post(_url("trigger", "delete", mine["trigger"]), {"post": "yes"})
    assert response.status_code == 302
    assert not Trigger.objects.filter(pk=mine["trigger"].pk).exists()
    assert not Execution.objects.filter(pk=mine["execution"].pk).exists()


@pytest.mark.parametrize(
    ("name", "action", "extra"),
    [
        ("trigger", "pause_triggers", {}),
        ("trigger", "run_triggers_now", {}),
        (
            "trigger",
            "backfill_triggers",
            {"apply": "1", "start": "2026-01-01T00:00", "end": "2026-01-02T00:00", "overlap": "allow"},
        ),
        ("trigger", "delete_selected", {"post": "yes"}),
        ("execution", "retry_executions", {}),
        ("workflow", "rotate_secrets", {}),
        ("workflow", "delete_selected", {"post": "yes"}),
    ],
)
def test_admin_ownership__actions_on_other_users_ids_do_nothing(staff_client, theirs, name, action, extra):
    """An action posted with another user's ids changes nothing of theirs."""
    if name == "workflow" and action == "delete_selected":
        services.trigger_delete(trigger=theirs["trigger"])
    target = theirs[name]
    before = _refetch(target)
    executions = Execution.objects.count()
    events = AuditEvent.objects.count()
    response = staff_client.post(_changelist(name), {"action": action, "_selected_action": [target.pk], **extra})
    assert response.status_code in (200, 302)
    after = _refetch(target)
    for field in type(target)._meta.concrete_fields:
        assert getattr(after, field.attname) == getattr(before, field.attname), field.name
    assert Execution.objects.count() == executions
    assert AuditEvent.objects.count() == events


def test_admin_ownership__resume_on_other_users_ids_does_nothing(staff_client, theirs):
    """Resuming another user's paused trigger leaves it paused."""
    services.trigger_pause(trigger=theirs["trigger"], reason="theirs")
    staff_client.post(_changelist("trigger"), {"action": "resume_triggers", "_selected_action": [theirs["trigger"].pk]})
    assert not _refetch(theirs["trigger"]).enabled


def test_admin_ownership__actions_act_only_on_own_of_a_mixed_selection(staff_client, mine, theirs):
    """Selecting one's own trigger and another user's pauses only one's own."""
    response = staff_client.post(
        _changelist("trigger"),
        {"action": "pause_triggers", "_selected_action": [mine["trigger"].pk, theirs["trigger"].pk]},
    )
    assert response.status_code == 302
    assert not _refetch(mine["trigger"]).enabled
    assert _refetch(theirs["trigger"]).enabled


# --- The trigger form's choices -----------------------------------------------------------------


def test_admin_ownership__trigger_form_offers_only_own_workflows(staff_client, mine, theirs):
    """The add and change forms offer only the user's workflows, for the workflow and its fallback."""
    for url in (reverse("admin:schedules_trigger_add"), _url("trigger", "change", mine["trigger"])):
        form = staff_client.get(url).context["adminform"].form
        for field in ("workflow", "fallback_workflow"):
            choices = set(form.fields[field].queryset)
            assert theirs["workflow"] not in choices, (url, field)
        assert mine["workflow"] in set(form.fields["workflow"].queryset)


@pytest.mark.parametrize("field", ["workflow", "fallback_workflow"])
def test_admin_ownership__trigger_form_refuses_other_users_workflow(staff_client, mine, theirs, field):
    """Another user's workflow posted anyway is an error on that field; no trigger is created."""
    data = {**_form(mine["workflow"], name="Sneaky"), field: theirs["workflow"].pk}
    response = staff_client.post(reverse("admin:schedules_trigger_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Select a valid choice" in errors[field][0]
    assert not Trigger.objects.filter(name="Sneaky").exists()


def test_admin_ownership__trigger_change_refuses_other_users_workflow(staff_client, mine, theirs):
    """Moving one's trigger to another user's workflow is a workflow field error; the trigger stays."""
    trigger = mine["trigger"]
    data = {**_change_form(trigger), "workflow": theirs["workflow"].pk}
    response = staff_client.post(_url("trigger", "change", trigger), data)
    assert response.status_code == 200
    assert "workflow" in response.context["adminform"].form.errors
    assert _refetch(trigger).workflow == mine["workflow"]


def test_admin_ownership__trigger_added_by_staff_is_theirs(staff_client, staff, mine):
    """A trigger added by the staff user belongs to them, and the audit trail says they made it."""
    response = staff_client.post(reverse("admin:schedules_trigger_add"), _form(mine["workflow"], name="Mine too"))
    assert response.status_code == 302, response.content.decode()
    trigger = Trigger.objects.get(name="Mine too")
    assert trigger.owner == staff
    event = AuditEvent.objects.get(object_type="trigger", object_id=str(trigger.pk), action="created")
    assert (event.actor, event.source) == (staff, "admin")


# --- The workflow form's owner ------------------------------------------------------------------


def test_admin_ownership__workflow_add_has_no_owner_field_and_is_theirs(staff_client, staff, other_user):
    """Staff add workflows only for themselves: no owner field, and an owner posted anyway is ignored."""
    add = reverse("admin:workflows_workflow_add")
    assert "owner" not in staff_client.get(add).context["adminform"].form.fields
    data = {
        "name": "Staff workflow",
        "endpoint_url": "",
        "http_method": "POST",
        "timeout_seconds": "30",
        "headers": "{}",
        "default_inputs": "{}",
        "is_active": "on",
        "owner": other_user.pk,
    }
    response = staff_client.post(add, data)
    assert response.status_code == 302, response.content.decode()
    workflow = Workflow.objects.get(name="Staff workflow")
    assert workflow.owner == staff
    event = AuditEvent.objects.get(object_type="workflow", object_id=str(workflow.pk), action="created")
    assert (event.actor, event.owner, event.source) == (staff, staff, "admin")


def test_admin_ownership__superuser_still_chooses_the_owner(admin_client, other_user):
    """A superuser's add form has the owner field and may create a workflow for someone else."""
    add = reverse("admin:workflows_workflow_add")
    assert "owner" in admin_client.get(add).context["adminform"].form.fields
    data = {
        "name": "For someone",
        "endpoint_url": "",
        "http_method": "POST",
        "timeout_seconds": "30",
        "headers": "{}",
        "default_inputs": "{}",
        "owner": other_user.pk,
    }
    assert admin_client.post(add, data).status_code == 302
    assert Workflow.objects.get(name="For someone").owner == other_user


# --- Who did it ---------------------------------------------------------------------------------


def test_admin_ownership__admin_actions_record_the_acting_user(
    staff_client, staff, mine, django_capture_on_commit_callbacks
):
    """Pause, resume, run now, backfill, retry, rotate and delete from the admin record the staff user, source admin."""
    trigger, workflow = mine["trigger"], mine["workflow"]
    trigger_list, workflow_list = _changelist("trigger"), _changelist("workflow")
    with django_capture_on_commit_callbacks(execute=False):
        for action, extra in (
            ("pause_triggers", {}),
            ("resume_triggers", {}),
            ("run_triggers_now", {}),
            ("backfill_triggers", {"apply": "1", "start": "2026-01-01T00:00", "end": "2026-01-01T02:00"}),
        ):
            data = {"action": action, "_selected_action": [trigger.pk], "overlap": "allow", **extra}
            assert staff_client.post(trigger_list, data).status_code == 302, action
        staff_client.post(
            _changelist("execution"), {"action": "retry_executions", "_selected_action": [mine["execution"].pk]}
        )
        staff_client.post(workflow_list, {"action": "rotate_secrets", "_selected_action": [workflow.pk]})
    trigger_pk, workflow_pk = trigger.pk, workflow.pk
    assert staff_client.post(_url("trigger", "delete", trigger), {"post": "yes"}).status_code == 302
    assert staff_client.post(_url("workflow", "delete", workflow), {"post": "yes"}).status_code == 302
    assert not Workflow.objects.filter(pk=workflow_pk).exists()
    recorded = AuditEvent.objects.filter(source="admin").order_by("at", "id")
    assert [(event.action, event.object_type) for event in recorded] == [
        ("paused", "trigger"),
        ("resumed", "trigger"),
        ("ran", "trigger"),
        ("backfilled", "trigger"),
        ("retried", "trigger"),
        ("secret_rotated", "workflow"),
        ("deleted", "trigger"),
        ("deleted", "workflow"),
    ]
    assert {event.actor for event in recorded} == {staff}
    assert {event.object_id for event in recorded if event.object_type != "execution"} == {
        str(trigger_pk),
        str(workflow_pk),
    }


def test_user_preferences_admin__staff_see_and_set_only_their_own(staff_client, staff, other_user, admin_client):
    """UserPreferences is in the admin: a superuser sees everyone's; other staff see only their own and
    cannot make a row for someone else."""
    from workflows.models import UserPreferences

    UserPreferences.objects.create(user=staff, timezone="Europe/Paris")
    theirs = UserPreferences.objects.create(user=other_user, timezone="Asia/Tokyo")
    changelist = reverse("admin:workflows_userpreferences_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "Europe/Paris" in page and "Asia/Tokyo" in page
    page = staff_client.get(changelist).content.decode()
    assert "Europe/Paris" in page and "Asia/Tokyo" not in page
    assert staff_client.get(reverse("admin:workflows_userpreferences_change", args=[theirs.pk])).status_code == 302
    theirs.delete()
    response = staff_client.post(
        reverse("admin:workflows_userpreferences_add"), {"user": other_user.pk, "timezone": "UTC"}
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not UserPreferences.objects.filter(user=other_user).exists()
