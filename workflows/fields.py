"""Fields: a text field kept encrypted in the database (Fernet, keys from SCHEDULER_SECRET_KEYS)
and plaintext in Python; the admin's JSON form field."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.forms.fields import InvalidJSONInput

from .exceptions import SecretUndecryptable
from .validators import MAX_JSON_DEPTH


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    """The configured keys: the first encrypts, every one decrypts (key rotation)."""
    return _fernet(tuple(settings.SCHEDULER_SECRET_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        # Never the value itself: it could be a secret stored in plaintext.
        raise SecretUndecryptable(
            "a stored secret cannot be decrypted with any key in SCHEDULER_SECRET_KEYS "
            "(was the key that encrypted it removed from the list?)"
        ) from None


def reencrypt(token: str) -> str:
    """The same plaintext encrypted with the first key (MultiFernet.rotate)."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUndecryptable("a stored secret cannot be decrypted with any key in SCHEDULER_SECRET_KEYS") from None


class EncryptedTextField(models.TextField):
    """Encrypts on the way to the database and decrypts on the way back; an empty string stays empty.

    Fernet tokens are randomised (the same plaintext never encrypts twice alike), so the
    database cannot compare them: only ``isnull`` lookups exist.
    """

    description = "Text encrypted at rest with the keys in SCHEDULER_SECRET_KEYS"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if not value:
            return value
        return decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if not value:
            return value
        return encrypt(value)

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name != "isnull":
            return None
        return super().get_lookup(lookup_name)


class JSONFormField(forms.JSONField):
    """Django's JSON form field, with JSON nested too deep for Python's parser as a field error
    (forms.JSONField lets the RecursionError through: a 500). Deep but parseable JSON and unpaired
    surrogates are refused by the model field's validators (validate_storable_json)."""

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise ValidationError(f"is nested deeper than {MAX_JSON_DEPTH} levels.", code="invalid") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:  # the form shown again with the error: the text as typed
            return InvalidJSONInput(data)
