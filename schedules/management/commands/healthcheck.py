"""`manage.py healthcheck web|beat`: exit 0 when healthy, 1 with the reason (docker-compose checks)."""

from __future__ import annotations

from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from schedules import selectors
from workflows.management.commands._common import positive_int, redact_url

TIMEOUT_SECONDS = 5


class Command(BaseCommand):
    help = "Check that the web server answers or that beat ticks; exit 1 with the reason if not."
    # Runs every few seconds in a container: skip the system checks, they are the web's job.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="component", required=True, metavar="{web,beat}")
        web = sub.add_parser("web", help="GET a URL; healthy on 200.")
        web.add_argument("--url", help="Default: SCHEDULER_PUBLIC_BASE_URL + /admin/login/.")
        beat = sub.add_parser("beat", help="Healthy when beat's heartbeat file is recent.")
        beat.add_argument(
            "--max-age", type=positive_int, default=selectors.BEAT_STALE_SECONDS, metavar="SECONDS", help="Default 60."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["component"] == "web":
            self._web(options["url"] or f"{settings.SCHEDULER_PUBLIC_BASE_URL}/admin/login/")
        else:
            self._beat(options["max_age"])

    def _web(self, url: str) -> None:
        shown = redact_url(url)
        try:
            with requests.Session() as session:
                # The check is about this server: ignore HTTP(S)_PROXY from the environment.
                session.trust_env = False
                # Exactly this URL must answer 200: a redirect (to https, to a login page) is not healthy.
                # Behind a TLS-terminating proxy (SECURE_PROXY_SSL_HEADER) ask as the proxy does, so the
                # HTTPS redirect (SECURE_SSL_REDIRECT) leaves this direct, plain-HTTP check alone.
                headers = {}
                if settings.SECURE_PROXY_SSL_HEADER:
                    meta_name, value = settings.SECURE_PROXY_SSL_HEADER
                    headers[meta_name.removeprefix("HTTP_").replace("_", "-")] = value
                response = session.get(url, timeout=TIMEOUT_SECONDS, allow_redirects=False, headers=headers)
        except requests.RequestException as exc:
            raise CommandError(f"web: cannot reach {shown} ({type(exc).__name__}).") from None
        if response.status_code != 200:
            raise CommandError(f"web: {shown} answered HTTP {response.status_code}, expected 200.")
        self.stdout.write(f"web ok: {shown} answered 200 in {response.elapsed.total_seconds() * 1000:.0f} ms.")

    def _beat(self, max_age: int) -> None:
        age = selectors.beat_heartbeat_age()
        if age is None:
            raise CommandError(
                f"beat: no heartbeat yet ({settings.SCHEDULER_BEAT_HEARTBEAT_FILE} is missing); is celery beat running?"
            )
        if age > max_age:
            raise CommandError(f"beat: last heartbeat {age:.0f} s ago, more than --max-age {max_age} s.")
        self.stdout.write(f"beat ok: last heartbeat {age:.0f} s ago.")
