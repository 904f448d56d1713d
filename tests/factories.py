"""factory_boy factories for the models; triggers go through the services so beat stays in sync."""

from __future__ import annotations

from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from schedules import services as schedule_services
from schedules.models import Trigger
from workflows.models import Workflow


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")

    @factory.post_generation
    def password(self, create, extracted, **kwargs):
        self.set_password(extracted or "password")
        if create:
            self.save(update_fields=["password"])


class WorkflowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workflow

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"workflow {n}")
    endpoint_url = "http://127.0.0.1:9/run"
    timeout_seconds = 5


class TriggerFactory(factory.Factory):
    """Builds triggers with services.trigger_create (so each has its PeriodicTask)."""

    class Meta:
        model = Trigger

    owner = factory.LazyAttribute(lambda o: o.workflow.owner)
    workflow = factory.SubFactory(WorkflowFactory)
    name = factory.Sequence(lambda n: f"trigger {n}")
    kind = "cron"
    cron = "0 9 * * 1-5"

    @classmethod
    def _create(cls, model_class, **kwargs):
        kind = kwargs.pop("kind")
        extra = {}
        if kind == "cron":
            extra["cron"] = kwargs.pop("cron")
        else:
            kwargs.pop("cron", None)
        if kind == "once":
            extra["run_at"] = kwargs.pop("run_at", timezone.now() + timedelta(hours=1))
        if kind == "interval":
            extra["interval_seconds"] = kwargs.pop("interval_seconds", 60)
        if "timezone" in kwargs:
            extra["timezone_name"] = kwargs.pop("timezone")
        return schedule_services.trigger_create(kind=kind, **extra, **kwargs)
