"""Migration operations of our own (imported by the migrations; keep them stable)."""

from __future__ import annotations

from typing import Any

from django.db import migrations


class AddIndexConcurrently(migrations.AddIndex):
    """AddIndex, built with CREATE INDEX CONCURRENTLY on PostgreSQL, so writes go on meanwhile.

    A plain CREATE INDEX on a table of millions of executions blocks every write to it (workers
    recording outcomes, beat dispatching) for as long as the build takes. CONCURRENTLY cannot run
    in a transaction: a migration using this sets ``atomic = False``. If a build fails (e.g.
    interrupted), PostgreSQL leaves an INVALID index behind: DROP INDEX it and migrate again.
    Other databases get a plain CREATE INDEX.
    """

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)
        return None

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)
        return None
