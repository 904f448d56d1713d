"""API tokens in the admin: the key is shown once, when it is made, and masked everywhere after."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from rest_framework.authtoken.models import Token

from workflows.models import ApiToken, mask_token

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:workflows_apitoken_changelist"


def test_token_admin__add_shows_the_key_once(admin_client, user):
    """Adding a token answers a page with the full key; the list, change, delete and history pages,
    the admin's home page and the admin log never show it again."""
    response = admin_client.post(reverse("admin:workflows_apitoken_add"), {"user": user.pk, "_save": "Save"})
    assert response.status_code == 200
    token = Token.objects.get(user=user)
    content = response.content.decode()
    assert f'value="{token.key}"' in content and "only time it is shown" in content
    assert response.headers["Cache-Control"].startswith("max-age=0")
    pages = [
        reverse(CHANGELIST),
        reverse("admin:workflows_apitoken_change", args=[user.pk]),
        reverse("admin:workflows_apitoken_delete", args=[user.pk]),
        reverse("admin:workflows_apitoken_history", args=[user.pk]),
        reverse("admin:index"),
    ]
    for url in pages:
        page = admin_client.get(url)
        assert page.status_code == 200, url
        assert token.key not in page.content.decode(), url
    assert mask_token(token.key) in admin_client.get(reverse(CHANGELIST)).content.decode()
    assert [entry.object_repr for entry in LogEntry.objects.all()] == [f"{user} ({token.key[:4]}…)"]


def test_token_admin__drf_token_admin_is_replaced(admin_client):
    """DRF's own token admin, which lists keys in full, is not registered."""
    from django.contrib import admin
    from rest_framework.authtoken.models import TokenProxy

    assert not admin.site.is_registered(TokenProxy)
    assert admin.site.is_registered(ApiToken)
    assert admin_client.get("/admin/authtoken/tokenproxy/").status_code == 404


def test_token_admin__delete_removes_the_token(admin_client, user):
    """Deleting from the admin deletes the token (the proxy maps the user id to the token)."""
    Token.objects.create(user=user)
    response = admin_client.post(reverse("admin:workflows_apitoken_delete", args=[user.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Token.objects.filter(user=user).exists()


def test_token_admin__migration_masks_keys_already_in_the_admin_log(admin_user, user):
    """Keys the admin log recorded before (DRF named tokens by their key) are cut to their first characters."""
    token = Token.objects.create(user=user)
    LogEntry.objects.create(
        user=admin_user,
        content_type=ContentType.objects.get(app_label="authtoken", model="tokenproxy"),
        object_id=str(user.pk),
        object_repr=token.key,
        action_flag=ADDITION,
    )
    migration = importlib.import_module("workflows.migrations.0006_api_token")
    migration.mask_logged_token_keys(apps, None)
    assert LogEntry.objects.get().object_repr == f"{token.key[:4]}…"


def test_mask_token__keeps_only_the_first_characters():
    """A key shows as its first four characters and an ellipsis; an empty key as nothing."""
    assert mask_token("3f9a" + "0" * 36) == "3f9a…"
    assert mask_token("") == ""
