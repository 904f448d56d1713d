"""Model instances made from database rows without Model.__init__.

Django makes each loaded row an instance with ``cls(*values)``: ``Model.__init__`` sends
``pre_init`` and ``post_init`` and sets every field through ``setattr``. For the rows beat reads
in a burst (a trigger has 45 columns) that was a tenth of its CPU. ``from_db`` here builds the
same instance as Django unpickles one (``__new__``, then the instance's ``__dict__``), which is
what ``__init__`` ends with when nothing listens to those signals and no field has a descriptor of
its own that acts on assignment. When any of that is not so (a receiver, such a field, a row with
deferred columns), it is Django's own ``from_db``. A test compares both, field by field.

    class Trigger(models.Model):
        @classmethod
        def from_db(cls, db, field_names, values):
            return from_db(cls, db, field_names, values)
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import models
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init


def from_db(cls: type[models.Model], db: str, field_names: Any, values: Any) -> models.Model:
    attnames = plain_attnames(cls)
    if attnames is None or len(values) != len(attnames) or pre_init.has_listeners(cls) or post_init.has_listeners(cls):
        return models.Model.from_db.__func__(cls, db, field_names, values)  # type: ignore[attr-defined]
    new = cls.__new__(cls)
    new.__dict__.update(zip(attnames, values, strict=True))
    state = new._state = ModelState()
    state.adding = False
    state.db = db
    return new


@functools.cache
def plain_attnames(cls: type[models.Model]) -> tuple[str, ...] | None:
    """The model's columns' attribute names in field order, or None if setting one through its
    descriptor does more than store it (then only ``__init__`` makes the instance right)."""
    attnames = []
    for field in cls._meta.concrete_fields:
        descriptor = getattr(cls, field.attname, None)
        # DeferredAttribute has no __set__ (assignment stores the value); ForeignKeyDeferredAttribute's
        # only forgets a cached related object, which a new instance does not have.
        if type(descriptor) not in (DeferredAttribute, ForeignKeyDeferredAttribute):
            return None
        attnames.append(field.attname)
    return tuple(attnames)
