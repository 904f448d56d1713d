"""scheduler_project.pg_timestamps: timestamps parsed by psycopg's C loader, Django's values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection

from schedules.models import Trigger
from tests.factories import TriggerFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's loaders: PostgreSQL only"),
]

# Timestamps with fractions of every length, the range's ends (a day in: every zone tried can
# show them), offsets of whole hours and of minutes, before 1970, a DST change, NULL.
LITERALS = [
    "2026-12-07 09:00:00+00",
    "2026-12-07 09:00:00.000001+00",
    "2026-12-07 09:00:00.5+00",
    "2026-12-07 09:00:00.123456+00",
    "0001-01-02 00:00:00+00",
    "9999-12-30 23:59:59.999999+00",
    "2026-03-08 01:59:59.999999-08",
    "2026-03-08 03:00:00-07",
    "1969-12-31 23:59:59.75+05:30",
    "1900-01-01 00:00:00+05:53:28",
    None,
]


def _timestamptz_loader(adapters) -> type:
    from psycopg.pq import Format

    return adapters.get_loader(adapters.types["timestamptz"].oid, Format.TEXT)


def test_connection_reads_timestamps_with_the_c_parser_when_psycopg_has_one():
    import psycopg
    from django.db.backends.postgresql.psycopg_any import BaseTzLoader

    connection.ensure_connection()
    loader = _timestamptz_loader(connection.connection.adapters)
    assert issubclass(loader, BaseTzLoader)  # Django's, so its per-cursor zone check still works
    assert loader.timezone is connection.timezone
    assert getattr(loader, "c_parsed", False) is (psycopg.pq.__impl__ != "python")


def test_values_are_the_ones_djangos_own_loader_reads():
    from django.db.backends.postgresql.psycopg_any import register_tzloader

    sql = "SELECT v::timestamptz FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, n) ORDER BY n"
    for zone in ("UTC", "America/Los_Angeles", "Asia/Kolkata"):
        with connection.cursor() as cursor:
            cursor.execute(f"SET TIME ZONE '{zone}'")
            cursor.execute(sql, [LITERALS])
            ours = [row[0] for row in cursor.fetchall()]
            # Django's own loader, registered on this cursor only.
            register_tzloader(connection.timezone, cursor.cursor)
            assert not getattr(_timestamptz_loader(cursor.cursor.adapters), "c_parsed", False)
            cursor.execute(sql, [LITERALS])
            djangos = [row[0] for row in cursor.fetchall()]
            cursor.execute("SET TIME ZONE 'UTC'")
        assert ours == djangos, zone
        assert [value.tzinfo if value else None for value in ours] == [
            value.tzinfo if value else None for value in djangos
        ], zone
        if zone == "UTC":  # the session zone Django sets (in others both read the wall time as UTC)
            assert ours[1] == datetime(2026, 12, 7, 9, 0, 0, 1, tzinfo=UTC)


def test_models_read_back_what_they_saved():
    at = datetime(2027, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    trigger = TriggerFactory()
    Trigger.objects.filter(pk=trigger.pk).update(next_run_at=at, last_run_at=None)
    read = Trigger.objects.get(pk=trigger.pk)
    assert read.next_run_at == at
    assert read.next_run_at.tzinfo is connection.timezone
    assert read.last_run_at is None
