"""The audit trail: who created, changed, paused, resumed, ran or deleted what, and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schedules import dispatch
from schedules import services as schedule_services
from schedules.models import ExecutionStatus
from tests.factories import UserFactory, WorkflowFactory
from workflows import services
from workflows.exceptions import WorkflowInUse
from workflows.models import AuditEvent, Workflow

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


def events(obj):
    return list(AuditEvent.objects.filter(object_type=obj._meta.model_name, object_id=str(obj.pk)).order_by("at", "id"))


@pytest.fixture
def actor(db):
    return UserFactory(username="alice")


def make_trigger(workflow, actor, **extra):
    return schedule_services.trigger_create(
        owner=workflow.owner,
        workflow=workflow,
        name="Daily",
        kind="cron",
        cron="0 9 * * *",
        now=NOW,
        actor=actor,
        **extra,
    )


def test_workflow_create_and_update__recorded_with_actor_and_changes(actor):
    """Creating and changing a workflow record the actor and the changed fields."""
    workflow = services.workflow_create(owner=actor, name="Report", endpoint_url="", actor=actor)
    services.workflow_update(workflow=workflow, timeout_seconds=60, actor=actor)
    created, updated = events(workflow)
    assert (created.action, created.actor, created.owner) == ("created", actor, actor)
    assert updated.action == "updated"
    assert updated.changes == {"timeout_seconds": [30, 60]}


def test_workflow_update__secret_never_in_the_trail(actor):
    """A secret change is recorded as changed, never with its value."""
    workflow = services.workflow_create(owner=actor, name="Report", actor=actor)
    old = workflow.secret
    new = services.workflow_rotate_secret(workflow=workflow, overlap_seconds=0, actor=actor)
    services.workflow_update(workflow=workflow, secret=services.generate_secret(), actor=actor)
    text = str([event.changes for event in events(workflow)])
    assert old not in text and new not in text and workflow.secret not in text
    assert [event.action for event in events(workflow)] == ["created", "secret_rotated", "updated"]
    assert events(workflow)[-1].changes == {"secret": "changed"}


def test_workflow_update__no_change_records_nothing(actor):
    """Saving a workflow without changes adds no event."""
    workflow = services.workflow_create(owner=actor, name="Report", actor=actor)
    services.workflow_update(workflow=workflow, name="Report", actor=actor)
    assert [event.action for event in events(workflow)] == ["created"]


def test_workflow_delete__refused_while_triggers_point_at_it(actor):
    """A workflow with triggers is not deleted and nothing is recorded; without them it is."""
    workflow = WorkflowFactory(owner=actor)
    trigger = make_trigger(workflow, actor)
    with pytest.raises(WorkflowInUse, match="1 trigger"):
        services.workflow_delete(workflow=workflow, actor=actor)
    assert Workflow.objects.filter(pk=workflow.pk).exists()
    schedule_services.trigger_delete(trigger=trigger, actor=actor)
    pk = workflow.pk
    services.workflow_delete(workflow=workflow, actor=actor)
    assert not Workflow.objects.filter(pk=pk).exists()
    assert AuditEvent.objects.filter(object_type="workflow", object_id=str(pk), action="deleted").exists()


def test_trigger_lifecycle__every_action_recorded(actor):
    """Create, update, pause (with reason), resume, run now, backfill and delete each leave an event."""
    workflow = WorkflowFactory(owner=actor)
    trigger = make_trigger(workflow, actor)
    schedule_services.trigger_update(trigger=trigger, cron="0 10 * * *", now=NOW, actor=actor)
    schedule_services.trigger_pause(trigger=trigger, reason="holiday", by=actor, now=NOW)
    schedule_services.trigger_resume(trigger=trigger, now=NOW, actor=actor)
    execution = schedule_services.trigger_run_now(trigger=trigger, now=NOW, actor=actor)
    schedule_services.trigger_backfill(
        trigger=trigger, start=NOW - timedelta(days=2), end=NOW - timedelta(days=1), now=NOW, actor=actor
    )
    actions = [(event.action, event.actor) for event in events(trigger)]
    assert actions == [(name, actor) for name in ("created", "updated", "paused", "resumed", "ran", "backfilled")]
    updated, paused, ran = events(trigger)[1], events(trigger)[2], events(trigger)[4]
    assert updated.changes == {"cron": ["0 9 * * *", "0 10 * * *"]}
    assert paused.changes == {"reason": "holiday"}
    assert ran.changes == {"execution_id": str(execution.pk)}
    pk = trigger.pk
    schedule_services.trigger_delete(trigger=trigger, actor=actor)
    assert AuditEvent.objects.filter(object_type="trigger", object_id=str(pk), action="deleted", actor=actor).exists()


def test_trigger_auto_pause__recorded_without_actor(actor, monkeypatch):
    """An automatic pause after repeated failures is recorded as the scheduler's own (no actor)."""
    workflow = WorkflowFactory(owner=actor)
    trigger = make_trigger(workflow, actor, pause_after_failures=1)
    execution = schedule_services.trigger_run_now(trigger=trigger, now=NOW)
    execution.status = ExecutionStatus.FAILED
    dispatch._count_failure(execution, NOW)
    paused = [event for event in events(trigger) if event.action == "paused"]
    assert len(paused) == 1
    assert paused[0].actor is None
    assert "failed executions in a row" in paused[0].changes["reason"]


def test_audit_admin__lists_events_read_only(admin_client, actor):
    """Staff see the trail in the admin; it cannot be added to, changed or deleted there."""
    workflow = services.workflow_create(owner=actor, name="Report", actor=actor)
    response = admin_client.get("/admin/workflows/auditevent/")
    assert response.status_code == 200
    assert "Report" in response.content.decode()
    event = events(workflow)[0]
    assert admin_client.get("/admin/workflows/auditevent/add/").status_code == 403
    assert admin_client.post(f"/admin/workflows/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_audit_source__command_api_and_scheduler_are_told_apart(actor, client):
    """Events say where they came from: a management command, the API, or the scheduler itself."""
    from io import StringIO

    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("workflow", "create", "--owner", actor.username, "--name", "From CLI", stdout=StringIO())
    token = Token.objects.create(user=actor)
    response = client.post(
        "/api/workflows/",
        {"name": "From API"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert response.status_code == 201, response.content
    services.workflow_create(owner=actor, name="From code")
    sources = dict(AuditEvent.objects.filter(action="created").values_list("object_repr", "source"))
    assert sources == {"From CLI": "command", "From API": "api", "From code": "scheduler"}
