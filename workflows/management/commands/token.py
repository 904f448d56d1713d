"""`manage.py token create|revoke USERNAME`: the API token a user sends as `Authorization: Token <key>`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from ._common import user_get


class Command(BaseCommand):
    help = "Create (print) or revoke a user's API token."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{create,revoke}")
        create = sub.add_parser("create", help="Create the user's token and print it (shown only here).")
        create.add_argument("username", metavar="USERNAME")
        create.add_argument(
            "--replace", action="store_true", help="Replace an existing token (the old one stops working at once)."
        )
        revoke = sub.add_parser("revoke", help="Delete the user's token: requests with it get 401 from now on.")
        revoke.add_argument("username", metavar="USERNAME")

    def handle(self, *args: Any, **options: Any) -> None:
        user = user_get(options["username"], option="USERNAME")
        if options["subcommand"] == "create":
            with transaction.atomic():
                existing = Token.objects.select_for_update().filter(user=user)
                if existing.exists() and not options["replace"]:
                    raise CommandError(
                        f"{user.get_username()} already has a token; `token revoke {user.get_username()}` first, "
                        "or pass --replace."
                    )
                existing.delete()
                token = Token.objects.create(user=user)
            # Only the key on stdout, so scripts can capture it: TOKEN=$(manage.py token create alice)
            self.stdout.write(token.key)
            self.stderr.write(
                f"Created the API token of {user.get_username()}; send it as 'Authorization: Token <key>'."
            )
            return
        deleted, _ = Token.objects.filter(user=user).delete()
        if not deleted:
            raise CommandError(f"{user.get_username()} has no token.")
        self.stdout.write(f"Revoked the API token of {user.get_username()}.")
