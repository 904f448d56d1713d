"""The workflows admin: writes go through workflows.services and the secret is write-only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from workflows.models import Workflow, WorkflowRun, generate_secret

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:workflows_workflow_changelist"


def _change_url(workflow: Workflow) -> str:
    return reverse("admin:workflows_workflow_change", args=[workflow.pk])


def _form(workflow: Workflow | None = None, **overrides: object) -> dict[str, object]:
    """POST data for the workflow change form, from a workflow's current values."""
    data: dict[str, object] = {
        "name": workflow.name if workflow else "Nightly export",
        "is_active": "on",
        "endpoint_url": workflow.endpoint_url if workflow else "https://n8n.example.com/webhook/abc",
        "http_method": "POST",
        "timeout_seconds": "30",
        "headers": '{"X-Team": "growth"}',
        "secret": "",
        "default_inputs": '{"region": "us"}',
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


@pytest.fixture
def secret_workflow(user):
    return WorkflowFactory(owner=user, secret=generate_secret())


def test_workflow_admin__changelist_shows_columns(admin_client, workflow):
    """The workflow list renders with its endpoint, method, timeout and a triggers link."""
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    content = response.content.decode()
    for text in (workflow.name, workflow.endpoint_url, "Endpoint", "Http method", "Timeout seconds", "Triggers"):
        assert text in content
    assert f"?workflow__id__exact={workflow.pk}" in content


def test_workflow_admin__secret_never_rendered(admin_client, secret_workflow):
    """The stored secret appears on no admin page: list, change, add, history, delete."""
    secret = secret_workflow.secret
    urls = [
        reverse(CHANGELIST),
        _change_url(secret_workflow),
        reverse("admin:workflows_workflow_add"),
        reverse("admin:workflows_workflow_history", args=[secret_workflow.pk]),
        reverse("admin:workflows_workflow_delete", args=[secret_workflow.pk]),
    ]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        content = response.content.decode()
        assert secret not in content, url
        assert secret.removeprefix("whsec_") not in content, url


def test_workflow_admin__change_form_has_write_only_secret_field(admin_client, secret_workflow):
    """The change form offers an empty password box for the secret with the keep-it help text."""
    content = admin_client.get(_change_url(secret_workflow)).content.decode()
    assert 'type="password" name="secret"' in content
    assert "Leave blank to keep the current secret (a new workflow gets a generated one)" in content


def test_workflow_admin__add_generates_secret_when_blank(admin_client, user):
    """Adding a workflow with a blank secret stores a generated whsec_ secret and the JSON fields."""
    response = admin_client.post(reverse("admin:workflows_workflow_add"), _form(owner=user.pk))
    assert response.status_code == 302, response.content.decode()
    workflow = Workflow.objects.get(name="Nightly export")
    assert workflow.owner == user
    assert workflow.secret.startswith("whsec_")
    assert workflow.headers == {"X-Team": "growth"}
    assert workflow.default_inputs == {"region": "us"}


def test_workflow_admin__add_with_secret_stores_it(admin_client, user):
    """A secret typed on add is the one stored."""
    secret = generate_secret()
    response = admin_client.post(reverse("admin:workflows_workflow_add"), _form(owner=user.pk, secret=secret))
    assert response.status_code == 302
    assert Workflow.objects.get(name="Nightly export").secret == secret


def test_workflow_admin__blank_secret_keeps_current(admin_client, secret_workflow):
    """Saving the change form with a blank secret keeps the stored secret and saves the rest."""
    before = secret_workflow.secret
    response = admin_client.post(_change_url(secret_workflow), _form(secret_workflow, name="Renamed"))
    assert response.status_code == 302, response.content.decode()
    secret_workflow.refresh_from_db()
    assert secret_workflow.name == "Renamed"
    assert secret_workflow.secret == before


def test_workflow_admin__new_secret_replaces_current_and_stays_out_of_history(admin_client, secret_workflow):
    """A new secret replaces the stored one; the history page names the change, not the value."""
    secret = generate_secret()
    response = admin_client.post(_change_url(secret_workflow), _form(secret_workflow, secret=secret))
    assert response.status_code == 302
    secret_workflow.refresh_from_db()
    assert secret_workflow.secret == secret
    history = admin_client.get(reverse("admin:workflows_workflow_history", args=[secret_workflow.pk]))
    assert secret not in history.content.decode()


def test_workflow_admin__invalid_secret_shows_field_error_without_echo(admin_client, secret_workflow):
    """A malformed secret is a form error on the secret field and the typed value is not echoed."""
    typed = "not-a-webhook-secret-1234"
    response = admin_client.post(_change_url(secret_workflow), _form(secret_workflow, secret=typed))
    assert response.status_code == 200
    assert "secret" in response.context["adminform"].form.errors
    assert typed not in response.content.decode()


def test_workflow_admin__reserved_header_shows_field_error(admin_client, workflow):
    """A header the scheduler sets itself is refused on the headers field, nothing saved."""
    response = admin_client.post(_change_url(workflow), _form(workflow, headers='{"Idempotency-Key": "x"}'))
    assert response.status_code == 200
    assert "headers" in response.context["adminform"].form.errors
    workflow.refresh_from_db()
    assert workflow.headers == {}


def test_workflow_admin__emptied_json_box_saves_empty_object(admin_client, workflow):
    """Clearing the headers and inputs boxes stores {} rather than failing on NOT NULL."""
    response = admin_client.post(_change_url(workflow), _form(workflow, headers="", default_inputs=""))
    assert response.status_code == 302, response.content.decode()
    workflow.refresh_from_db()
    assert workflow.headers == {}
    assert workflow.default_inputs == {}


def test_workflow_admin__duplicate_name_on_change_is_form_error(admin_client, user, workflow):
    """Renaming to another of the owner's workflow names is a form error, not a 500."""
    other = WorkflowFactory(owner=user)
    response = admin_client.post(_change_url(workflow), _form(workflow, name=other.name))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    workflow.refresh_from_db()
    assert workflow.name != other.name


def test_workflow_admin__delete_with_triggers_is_refused(admin_client, workflow):
    """A workflow that still has triggers cannot be deleted (they must go through trigger_delete first)."""
    TriggerFactory(workflow=workflow)
    response = admin_client.post(reverse("admin:workflows_workflow_delete", args=[workflow.pk]), {"post": "yes"})
    assert response.status_code == 200
    assert "Cannot delete" in response.content.decode()
    assert Workflow.objects.filter(pk=workflow.pk).exists()


def test_workflow_admin__changelist_queries_do_not_grow_per_row(admin_client, django_assert_max_num_queries):
    """Listing many workflows (owners, trigger counts) takes a fixed number of queries."""
    for _ in range(8):
        WorkflowFactory(owner=UserFactory())
    with django_assert_max_num_queries(8):
        response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200


def test_workflow_run_admin__changelist_and_detail_are_read_only(admin_client, workflow):
    """Runs list with their idempotency key; the detail page shows the payload and cannot be edited."""
    run = WorkflowRun.objects.create(
        workflow=workflow, idempotency_key="key-123", inputs={"a": 1}, payload={"inputs": {"a": 1}}
    )
    response = admin_client.get(reverse("admin:workflows_workflowrun_changelist"))
    assert response.status_code == 200
    assert "key-123" in response.content.decode()
    detail = admin_client.get(reverse("admin:workflows_workflowrun_change", args=[run.pk]))
    assert detail.status_code == 200
    assert "&quot;inputs&quot;" in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()
    assert admin_client.get(reverse("admin:workflows_workflowrun_add")).status_code == 403


def test_workflow_admin__writes_record_the_acting_user(admin_client, admin_user, user):
    """Add, change, rotate and delete in the admin each leave an audit event naming the admin user, source admin."""
    from workflows.models import AuditEvent

    response = admin_client.post(reverse("admin:workflows_workflow_add"), _form(owner=user.pk, endpoint_url=""))
    assert response.status_code == 302, response.content.decode()
    workflow = Workflow.objects.get(name="Nightly export")
    response = admin_client.post(_change_url(workflow), _form(workflow, name="Renamed"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    admin_client.post(reverse(CHANGELIST), {"action": "rotate_secrets", "_selected_action": [workflow.pk]})
    pk = workflow.pk
    assert admin_client.post(reverse("admin:workflows_workflow_delete", args=[pk]), {"post": "yes"}).status_code == 302
    assert not Workflow.objects.filter(pk=pk).exists()
    events = AuditEvent.objects.filter(object_type="workflow", object_id=str(pk)).order_by("at", "id")
    assert [(e.action, e.actor, e.owner, e.source) for e in events] == [
        (action, admin_user, user, "admin") for action in ("created", "updated", "secret_rotated", "deleted")
    ]
    assert events[1].changes == {"name": ["Nightly export", "Renamed"]}


def test_workflow_admin__help_text_is_shown_as_text(admin_client):
    """A help text naming a path with <id> shows it as written, not swallowed as an HTML tag."""
    content = admin_client.get(reverse("admin:workflows_workflow_add")).content.decode()
    assert "/api/workflows/&lt;id&gt;/runs/" in content
    assert "/api/workflows/<id>/runs/" not in content
