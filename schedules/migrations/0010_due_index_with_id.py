# The due index gains the trigger id, so a burst's batches read on from where the last one ended
# (schedules.dispatch._dispatch_batch). Built CONCURRENTLY under a new name before the old one
# goes: beat has a due index to read at every moment.

from django.db import migrations, models

from schedules.migration_operations import AddIndexConcurrently


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("schedules", "0009_lean_execution_indexes"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="trigger",
            index=models.Index(
                condition=models.Q(("completed_at__isnull", True), ("enabled", True), ("next_run_at__isnull", False)),
                fields=["next_run_at", "id"],
                name="trigger_due_next",
            ),
        ),
        migrations.RemoveIndex(
            model_name="trigger",
            name="trigger_due",
        ),
    ]
