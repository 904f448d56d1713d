"""scheduler_project.lookups: ``field__any`` and ``Row``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.db.models import F, Value
from django.db.models.lookups import GreaterThan
from django.test.utils import CaptureQueriesContext

from scheduler_project.lookups import Row, array_literal
from schedules.models import Execution, Trigger
from tests.factories import TriggerFactory

pytestmark = pytest.mark.django_db


def execution_of(trigger: Trigger, hour: int) -> Execution:
    return Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=datetime(2027, 1, 1, hour, tzinfo=UTC)
    )


def test_any__same_rows_as_in_for_ids_uuids_and_foreign_keys():
    first, second, third = TriggerFactory(), TriggerFactory(), TriggerFactory()
    executions = [execution_of(trigger, hour) for hour, trigger in enumerate((first, second, third, first))]
    picked = [first.pk, third.pk]
    assert set(Trigger.objects.filter(pk__any=picked)) == set(Trigger.objects.filter(pk__in=picked)) == {first, third}
    assert set(Execution.objects.filter(trigger_id__any=picked)) == {executions[0], executions[2], executions[3]}
    assert set(Execution.objects.filter(trigger__any=[second.pk])) == {executions[1]}
    uuids = [executions[1].pk, str(executions[2].pk)]
    assert set(Execution.objects.filter(pk__any=uuids)) == {executions[1], executions[2]}
    assert not Execution.objects.filter(pk__any=[]).exists()
    assert Trigger.objects.filter(pk__any=picked).update(name=F("name")) == 2


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="ANY(array) is PostgreSQL's; elsewhere it is IN")
def test_any__one_array_parameter_whatever_the_length():
    """The statement's text is the same for 3 ids or 300: one placeholder."""
    statements = []
    for count in (3, 300):
        with CaptureQueriesContext(connection) as captured:
            list(Trigger.objects.filter(pk__any=list(range(count))))
        statements.append(captured.captured_queries[0]["sql"].split("= ANY(")[0])
    assert statements[0] == statements[1]
    assert "IN (" not in statements[0]


def test_array_literal__ids_uuids_and_aware_datetimes_only():
    ids = [1, 22, 333]
    uuids = [uuid.UUID(int=1), uuid.uuid4()]
    times = [
        datetime(2027, 1, 1, 9, 30, 15, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, tzinfo=ZoneInfo("Asia/Kolkata")),
    ]
    assert array_literal(ids) == "{1,22,333}"
    assert array_literal(uuids) == "{" + ",".join(str(value) for value in uuids) + "}"
    assert array_literal(times) == "{2027-01-01T09:30:15.123456+00:00,1969-12-31T23:00:00+05:30}"
    assert array_literal([]) == "{}"
    # Anything that would need quoting or a type of its own: none (the caller sends a list).
    for values in (["a"], [1, None], [True], [1.5], [datetime(2027, 1, 1)], [str(uuids[0])]):
        assert array_literal(values) is None, values


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="array literals are PostgreSQL's")
def test_any__literal_reads_back_the_same_values():
    """Ids, UUIDs and datetimes sent as one literal find what a list of parameters finds."""
    triggers = [TriggerFactory() for _ in range(3)]
    executions = [execution_of(trigger, hour) for hour, trigger in enumerate(triggers)]
    with CaptureQueriesContext(connection) as captured:
        found = set(Execution.objects.filter(pk__any=[executions[0].pk, str(executions[2].pk)]))
    assert found == {executions[0], executions[2]}
    assert "::uuid[])" in captured.captured_queries[0]["sql"]
    slots = [executions[1].scheduled_for.astimezone(ZoneInfo("America/Los_Angeles")), executions[2].scheduled_for]
    with CaptureQueriesContext(connection) as captured:
        found = set(Execution.objects.filter(scheduled_for__any=slots))
    assert found == {executions[1], executions[2]}
    assert "::timestamp with time zone[])" in captured.captured_queries[0]["sql"]
    # Text columns stay a list of parameters (quoting is psycopg's job there).
    assert set(Trigger.objects.filter(name__any=[triggers[1].name, "it's \\ {odd}"])) == {triggers[1]}
    with connection.cursor() as cursor:
        literal = array_literal(slots)
        cursor.execute("SELECT unnest(%s::timestamptz[])", [literal])
        assert [row[0] for row in cursor.fetchall()] == slots


def test_row__compares_as_a_row():
    """(next_run_at, id) > (t, i): later times, and the same time with a higher id."""
    when = datetime(2027, 1, 1, 9, tzinfo=UTC)
    triggers = [TriggerFactory() for _ in range(3)]
    Trigger.objects.filter(pk__in=[t.pk for t in triggers]).update(next_run_at=when)
    later = TriggerFactory()
    Trigger.objects.filter(pk=later.pk).update(next_run_at=datetime(2027, 1, 1, 10, tzinfo=UTC))
    after = Trigger.objects.filter(
        GreaterThan(Row(F("next_run_at"), F("id")), Row(Value(when), Value(triggers[0].pk)))
    ).order_by("next_run_at", "id")
    assert list(after) == [triggers[1], triggers[2], later]
