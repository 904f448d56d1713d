"""The `user` management command: the owners of workflows and triggers."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient


def run(*args: str, stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", StringIO(stdin))
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_user_create__api_only_user_then_token_reaches_the_api():
    """The README's path: user create, token create, and the token is accepted by the API."""
    out = run("user", "create", "alice", "--email", "alice@example.com")
    alice = get_user_model().objects.get(username="alice")
    assert not alice.has_usable_password() and not alice.is_staff and alice.email == "alice@example.com"
    assert "Created user 'alice'" in out and "token create alice" in out
    token = StringIO()
    call_command("token", "create", "alice", stdout=token, stderr=StringIO())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.getvalue().strip()}")
    assert client.get("/api/workflows/").status_code == 200


@pytest.mark.django_db
def test_user_create__staff_with_password_from_stdin_can_log_in(monkeypatch, client):
    out = run(
        "user", "create", "bob", "--staff", "--password-stdin", stdin="a long pass phrase 42\n", monkeypatch=monkeypatch
    )
    assert "Created staff user 'bob'" in out
    assert client.login(username="bob", password="a long pass phrase 42")  # noqa: S106
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("user", "create", "bob", "--staff"), None, "--password-stdin: a staff user logs in"),
        (("user", "create", "bob", "--password-stdin"), "\n", "--password-stdin: standard input has no password"),
        (("user", "create", "bob", "--password-stdin"), "123\n", "--password-stdin: "),
        (("user", "create", "bob smith!"), None, "USERNAME: "),
        (("user", "create", "bob", "--email", "not-an-address"), None, "--email: "),
    ],
)
def test_user_create__bad_input_names_the_option_and_creates_nothing(monkeypatch, args, stdin, message):
    with pytest.raises(CommandError) as caught:
        run(*args, stdin=stdin if stdin is not None else "", monkeypatch=monkeypatch)
    assert str(caught.value).startswith(message)
    assert not get_user_model().objects.exists()


@pytest.mark.django_db
def test_user_create__existing_username_is_refused(user):
    with pytest.raises(CommandError, match=r"^USERNAME: A user with that username already exists"):
        run("user", "create", user.username)
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_user_list__shows_role_and_token(user):
    call_command("token", "create", user.username, stdout=StringIO(), stderr=StringIO())
    run("user", "create", "carol")
    lines = run("user", "list").splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "ACTIVE", "TOKEN"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows[user.username] == ["user", "yes", "yes"] and rows["carol"] == ["user", "yes", "no"]
