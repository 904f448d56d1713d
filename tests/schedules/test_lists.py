"""The trigger and execution lists at scale (API and admin): queries per page, capped counts, stable order, indexes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from schedules.models import Execution, ExecutionOrigin, ExecutionStats, ExecutionStatus, Trigger
from tests.factories import UserFactory, WorkflowFactory

pytestmark = pytest.mark.django_db

ROWS = 55  # more than the larger page size compared
TRIGGERS = "admin:schedules_trigger_changelist"
EXECUTIONS = "admin:schedules_execution_changelist"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


def api_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def _triggers(owner, workflow, count: int, *, prefix: str = "t") -> list[Trigger]:
    """``count`` plain cron triggers, made in one INSERT (a list does not need their periodic tasks)."""
    now = timezone.now()
    return Trigger.objects.bulk_create(
        Trigger(
            owner=owner,
            workflow=workflow,
            name=f"{prefix}{index:03d}",
            cron="0 9 * * 1-5",
            timezone=["UTC", "Europe/Paris", "Asia/Kolkata"][index % 3],
            next_run_at=now + timedelta(hours=index),
        )
        for index in range(count)
    )


def _executions(triggers: list[Trigger], *, at=None, **fields) -> list[Execution]:
    """One execution per trigger; all at ``at`` (one slot), else a minute apart."""
    now = timezone.now()
    return Execution.objects.bulk_create(
        Execution(
            trigger=trigger,
            workflow=trigger.workflow,
            scheduled_for=at or now - timedelta(minutes=index),
            status=fields.get("status", ExecutionStatus.SUCCEEDED),
            origin=fields.get("origin", ExecutionOrigin.SCHEDULE),
        )
        for index, trigger in enumerate(triggers)
    )


@pytest.fixture
def many(user, workflow, other_user):
    """ROWS triggers of ``user`` with an execution and stats each, and a few of another user's."""
    triggers = _triggers(user, workflow, ROWS)
    _executions(triggers)
    ExecutionStats.objects.bulk_create(
        ExecutionStats(trigger=trigger, workflow=workflow, total=3, succeeded=3) for trigger in triggers
    )
    theirs = WorkflowFactory(owner=other_user)
    _executions(_triggers(other_user, theirs, 3, prefix="theirs"))
    return triggers


def _queries(client, url: str) -> tuple[int, object]:
    client.get(url)  # warm: sessions, content types, ...
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(captured), response


@pytest.fixture
def staff_api(db):
    return api_for(UserFactory(is_staff=True))


# --- Trigger list columns ------------------------------------------------------------------------


def test_trigger_list__finished_executions_add_up_the_stats_and_survive_pruning(user, trigger):
    """finished_executions is the sum of the trigger's stats rows (one per workflow), not the rows kept."""
    moved_from = WorkflowFactory(owner=trigger.owner)
    ExecutionStats.objects.create(trigger=trigger, workflow=trigger.workflow, total=4, succeeded=4)
    ExecutionStats.objects.create(trigger=trigger, workflow=moved_from, total=3, failed=3)
    _executions([trigger])
    Execution.objects.all().delete()  # pruned
    body = api_for(user).get(f"/api/triggers/{trigger.pk}/").json()
    assert body["finished_executions"] == 7
