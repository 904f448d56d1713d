"""PostgreSQL timestamps parsed by psycopg's C loader, with Django's own result.

Django's psycopg backend registers a timestamptz loader of its own (it sets the zone Django
expects on each value), derived from psycopg's pure-Python loader: every datetime of every row is
parsed by a regular expression in Python, even with psycopg's C extension installed (Django ticket
#36960; psycopg's C loaders cannot be subclassed, psycopg issue #1273). Beat reads four per due
trigger (40,000 in a burst of 10,000), an admin page of 50 triggers some 650.

``install()`` (called by the schedules app) replaces, on each new PostgreSQL connection, Django's
loader with a subclass of it that has the C loader psycopg registers by default parse the text
and then does what Django's does (``replace(tzinfo=self.timezone)``). Same class hierarchy, same
``timezone`` attribute (Django compares it before each cursor), same values: a test compares them.
Without the C extension nothing changes.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db.backends.signals import connection_created


def install() -> None:
    connection_created.connect(_use_c_parser, dispatch_uid="scheduler_project.pg_timestamps")


def _use_c_parser(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor != "postgresql":
        return
    from psycopg.pq import Format

    adapters = connection.connection.adapters
    oid = adapters.types["timestamptz"].oid
    django_loader = adapters.get_loader(oid, Format.TEXT)
    fast = c_parsed(django_loader)
    if fast is not None and fast is not django_loader:
        adapters.register_loader(oid, fast)


@functools.cache
def c_parsed(django_loader: type) -> type | None:
    """``django_loader`` parsing with psycopg's C timestamptz loader; None if there is none (or
    ``django_loader`` is not Django's)."""
    import psycopg
    from django.db.backends.postgresql.psycopg_any import BaseTzLoader
    from psycopg.pq import Format
    from psycopg.types.datetime import TimestamptzLoader

    if getattr(django_loader, "c_parsed", False):
        return django_loader
    if not issubclass(django_loader, BaseTzLoader):
        return None
    c_loader = psycopg.adapters.get_loader(psycopg.adapters.types["timestamptz"].oid, Format.TEXT)
    if c_loader is None or c_loader is TimestamptzLoader or issubclass(c_loader, TimestamptzLoader):
        return None  # psycopg's pure-Python implementation: nothing faster to use

    class CParsedTzLoader(django_loader):  # type: ignore[valid-type, misc]
        c_parsed = True

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._parse = c_loader(oid, context).load

        def load(self, data: Any) -> Any:
            return self._parse(data).replace(tzinfo=self.timezone)

    CParsedTzLoader.__name__ = CParsedTzLoader.__qualname__ = f"CParsed{django_loader.__name__}"
    return CParsedTzLoader
