"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from tests.factories import TriggerFactory, UserFactory, WorkflowFactory


def pytest_report_header(config):
    return [
        f"database: {settings.DATABASES['default']['ENGINE']}",
        f"broker: {settings.CELERY_BROKER_URL.split('://')[0]}://",
    ]


def pytest_sessionstart(session):
    """In CI the suite must run against real PostgreSQL and Redis, never fall back silently."""
    if os.environ.get("SCHEDULER_REQUIRE_SERVICES") == "1":
        engine = settings.DATABASES["default"]["ENGINE"]
        broker = settings.CELERY_BROKER_URL
        if "postgresql" not in engine or not broker.startswith("redis://"):
            raise pytest.UsageError(
                f"SCHEDULER_REQUIRE_SERVICES=1 but database is {engine} and broker is {broker.split('://')[0]}: "
                "set DATABASE_URL to PostgreSQL and CELERY_BROKER_URL to Redis."
            )


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def workflow(user):
    return WorkflowFactory(owner=user)


@pytest.fixture
def trigger(workflow):
    return TriggerFactory(workflow=workflow)
