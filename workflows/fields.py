"""A text field kept encrypted in the database (Fernet, keys from SCHEDULER_SECRET_KEYS) and plaintext in Python."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

from .exceptions import SecretUndecryptable


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
