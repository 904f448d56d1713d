"""`manage.py user create|list`: the people who own workflows and triggers.

An API-only user needs no password: `user create alice`, then `token create alice`. Staff users
log in to the admin with a password read from standard input (never from the command line, where
it would end up in the shell history and the process list)."""

from __future__ import annotations

import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services

from ._common import command_error, table

_OPTIONS = {"username": "USERNAME", "email": "--email", "password": "--password-stdin"}


class Command(BaseCommand):
    help = "Create or list users (owners of workflows and triggers)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{create,list}")
        create = sub.add_parser("create", help="Create a user (API-only unless it gets a password).")
        create.add_argument("username", metavar="USERNAME")
        create.add_argument("--email", default="", metavar="ADDRESS")
        create.add_argument("--staff", action="store_true", help="May log in to the admin (needs a password).")
        create.add_argument("--superuser", action="store_true", help="Staff who sees and changes everything.")
        create.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from the first line of standard input (needed to log in to the admin).",
        )
        sub.add_parser("list", help="List users with their role and whether they have an API token.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "list":
            self._list()
            return
        staff = options["staff"] or options["superuser"]
        password = None
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("--password-stdin: standard input has no password on its first line.")
        elif staff:
            raise CommandError(
                "--password-stdin: a staff user logs in to the admin with a password; "
                'pipe one in, e.g. `read -rs PW && echo "$PW" | manage.py user create bob --staff --password-stdin`.'
            )
        try:
            user = services.user_create(
                username=options["username"],
                email=options["email"],
                is_staff=options["staff"],
                is_superuser=options["superuser"],
                password=password,
            )
        except ValidationError as exc:
            raise command_error(exc, _OPTIONS) from None
        role = "superuser" if user.is_superuser else "staff user" if user.is_staff else "user"
        name = user.get_username()
        self.stdout.write(f"Created {role} {name!r}.")
        if password is None:
            self.stdout.write(f"It has no password (API only): `manage.py token create {name}` prints its API token.")

    def _list(self) -> None:
        user_model = get_user_model()
        users = user_model._default_manager.order_by(user_model.USERNAME_FIELD).select_related("auth_token")
        rows = []
        for user in users:
            role = "superuser" if user.is_superuser else "staff" if user.is_staff else "user"
            rows.append(
                (
                    user.get_username(),
                    role,
                    "yes" if user.is_active else "no",
                    "yes" if hasattr(user, "auth_token") else "no",
                )
            )
        self.stdout.write(table(("USERNAME", "ROLE", "ACTIVE", "TOKEN"), rows))
