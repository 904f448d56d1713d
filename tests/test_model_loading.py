"""scheduler_project.model_loading: rows made instances without Model.__init__, as Django makes them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import models
from django.db.models.signals import post_init

from scheduler_project.model_loading import from_db, plain_attnames
from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import TriggerFactory

pytestmark = pytest.mark.django_db


def _djangos(model: type[models.Model], pk) -> models.Model:
    """The row as Django's own from_db makes it (Model.__init__)."""
    names = [field.attname for field in model._meta.concrete_fields]
    values = model.objects.filter(pk=pk).values_list(*names).get()
    return models.Model.from_db.__func__(model, "default", names, values)


def _fields(instance: models.Model) -> dict:
    return {key: value for key, value in vars(instance).items() if key != "_state"}


def _filled_execution() -> Execution:
    trigger = TriggerFactory(inputs={"report": "daily", "n": [1, 2]}, max_runs=5)
    return Execution.objects.create(
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=datetime(2027, 1, 2, 9, 0, 0, 123456, tzinfo=UTC),
        status=ExecutionStatus.FAILED,
        attempts=2,
        http_status=503,
        error="HTTP 503",
        inputs={"a": "b"},
        metadata={"attempts": [{"attempt": 1}]},
        started_at=datetime(2027, 1, 2, 9, 0, 1, tzinfo=UTC),
    )


def test_loaded_rows_are_what_djangos_from_db_makes():
    execution = _filled_execution()
    for model, pk in ((Trigger, execution.trigger_id), (Execution, execution.pk)):
        ours, djangos = model.objects.get(pk=pk), _djangos(model, pk)
        assert plain_attnames(model) is not None, model  # the fast path is the one under test
        assert _fields(ours) == _fields(djangos), model
        assert list(_fields(ours)) == list(_fields(djangos)), model  # same attributes, same order
        assert (ours._state.adding, ours._state.db) == (djangos._state.adding, djangos._state.db) == (False, "default")
        assert ours._state.fields_cache == {}


def test_loaded_rows_behave_as_models():
    execution = _filled_execution()
    loaded = Execution.objects.select_related("trigger__workflow").get(pk=execution.pk)
    assert loaded.trigger.workflow.pk == execution.workflow_id  # related rows too, no query
    loaded.error = "changed"
    loaded.save(update_fields=["error"])
    loaded.refresh_from_db()
    assert loaded.error == "changed"
    trigger = Trigger.objects.get(pk=execution.trigger_id)
    trigger.workflow_id = trigger.workflow_id  # the foreign key's descriptor still works
    assert trigger.workflow.pk == execution.workflow_id
    assert trigger == execution.trigger and hash(trigger) == hash(execution.trigger)


def test_deferred_columns_and_init_receivers_get_djangos_own_path():
    execution = _filled_execution()
    partial = Trigger.objects.only("name").get(pk=execution.trigger_id)
    assert partial.get_deferred_fields()
    assert partial.max_runs == 5  # loaded on access, as Django does

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.pk)

    post_init.connect(receiver, sender=Execution)
    try:
        loaded = Execution.objects.get(pk=execution.pk)
    finally:
        post_init.disconnect(receiver, sender=Execution)
    assert seen == [loaded.pk]


def test_a_field_whose_descriptor_acts_on_assignment_gets_djangos_own_path():
    class Recorder:
        def __get__(self, instance, owner):
            return self if instance is None else instance.__dict__.get("name")

        def __set__(self, instance, value):
            instance.__dict__["name"] = value.upper()

    original = Trigger.__dict__["name"]
    plain_attnames.cache_clear()
    try:
        Trigger.name = Recorder()
        assert plain_attnames(Trigger) is None
        names = [field.attname for field in Trigger._meta.concrete_fields]
        values = [None] * len(names)
        values[names.index("name")] = "lower"
        made = from_db(Trigger, "default", names, values)
        assert made.name == "LOWER"  # through the descriptor: Model.__init__
        assert made._state.adding is False
    finally:
        Trigger.name = original
        plain_attnames.cache_clear()
