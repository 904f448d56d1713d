"""`manage.py rebuild_beat`: re-create every trigger's PeriodicTask and delete orphans."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from schedules import beat


class Command(BaseCommand):
    help = "Re-create each trigger's beat entry (PeriodicTask) from the trigger and delete orphaned entries."

    def handle(self, *args: Any, **options: Any) -> None:
        counts = beat.rebuild()
        self.stdout.write(
            self.style.SUCCESS(
                f"Rebuilt beat entries: {counts['triggers']} triggers, {counts['repaired']} repaired, "
                f"{counts['orphans_deleted']} orphans deleted."
            )
        )
