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


class DropForeignKeyIndex(migrations.AlterField):
    """AlterField to ``db_index=False`` on a ForeignKey that only drops the field's index.

    Django's AlterField drops the foreign-key constraint and adds it back around the index change,
    and ADD CONSTRAINT ... FOREIGN KEY scans the whole table while blocking writes to it (and to the
    table it references): on millions of executions, minutes without dispatch or recorded outcomes.
    This drops only the index Django made for the field (DROP INDEX CONCURRENTLY on PostgreSQL, so
    writes go on; ``atomic = False`` in the migration); the state change is AlterField's.
    """

    def _index(self, schema_editor: Any, model: Any) -> str:
        field = model._meta.get_field(self.name)
        return schema_editor._create_index_name(model._meta.db_table, [field.column], suffix="")

    def _concurrently(self, schema_editor: Any) -> str:
        return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = schema_editor.quote_name(self._index(schema_editor, model))
            schema_editor.execute(f"DROP INDEX {self._concurrently(schema_editor)}IF EXISTS {index}")

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            column = schema_editor.quote_name(model._meta.get_field(self.name).column)
            index = schema_editor.quote_name(self._index(schema_editor, model))
            table = schema_editor.quote_name(model._meta.db_table)
            schema_editor.execute(
                f"CREATE INDEX {self._concurrently(schema_editor)}IF NOT EXISTS {index} ON {table} ({column})"
            )


class RemoveIndexConcurrently(migrations.RemoveIndex):
    """RemoveIndex, dropped with DROP INDEX CONCURRENTLY on PostgreSQL (and put back CONCURRENTLY
    when unapplied), so writes to a table of millions of executions go on meanwhile. As with
    AddIndexConcurrently, the migration sets ``atomic = False``. Other databases: a plain DROP INDEX.
    """

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = from_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            schema_editor.remove_index(model, index, concurrently=True)
        return None

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
            schema_editor.add_index(model, index, concurrently=True)
        return None
