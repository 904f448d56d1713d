# Indexes for the trigger and execution lists (API and admin) at 100k triggers / 10M executions:
# each matches a list's default order, alone or after one of its common filters, so a page reads
# its rows off the index instead of sorting the table (see Trigger.Meta and Execution.Meta).
#
# On PostgreSQL they are built with CREATE INDEX CONCURRENTLY: a plain CREATE INDEX on a table of
# millions of executions blocks every write to it (the workers recording executions) for as long
# as the build takes. CONCURRENTLY cannot run in a transaction, hence atomic = False. If a build
# fails (e.g. interrupted), PostgreSQL leaves an INVALID index behind: DROP INDEX it and migrate
# again. Other databases get a plain CREATE INDEX.

from django.db import migrations, models

from schedules.migration_operations import AddIndexConcurrently


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('schedules', '0007_dispatch_ledger'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='trigger',
            index=models.Index(fields=['name', 'id'], name='trigger_name_id'),
        ),
        AddIndexConcurrently(
            model_name='trigger',
            index=models.Index(fields=['timezone', 'owner'], name='trigger_timezone_owner'),
        ),
        AddIndexConcurrently(
            model_name='execution',
            index=models.Index(fields=['-scheduled_for', '-id'], name='execution_slot'),
        ),
        AddIndexConcurrently(
            model_name='execution',
            index=models.Index(fields=['workflow', '-scheduled_for', '-id'], name='execution_workflow_slot'),
        ),
        AddIndexConcurrently(
            model_name='execution',
            index=models.Index(condition=models.Q(('status', 'succeeded'), _negated=True), fields=['status', '-scheduled_for', '-id'], name='execution_status_slot'),
        ),
        AddIndexConcurrently(
            model_name='execution',
            index=models.Index(condition=models.Q(('origin', 'schedule'), _negated=True), fields=['origin', '-scheduled_for', '-id'], name='execution_origin_slot'),
        ),
    ]
