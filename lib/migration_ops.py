"""Migration operations of the project's own."""

from typing import Any

from django.db import models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState


class AlterFields(Operation):
    """Several fields of one model altered, as that many `AlterField`s would (the same state, the
    same schema changes, if any), with the migration state's models rendered again once rather
    than once a field.

    Django re-renders a model, and every model related to it, after each `AlterField`: for the
    migrations that only set the fields' verbose names (a hundred and more fields, most on models
    that the others point at), that was two thirds of a `migrate` from an empty database, and of
    every test database's creation. A label changes no column: the schema editor alters a field
    only when the database sees a difference, as it does for `AlterField`."""

    def __init__(self, model_name: str, fields: list[tuple[str, models.Field]]) -> None:
        self.model_name = model_name
        self.fields = fields

    @property
    def model_name_lower(self) -> str:
        return self.model_name.lower()

    def deconstruct(self) -> tuple[str, list, dict[str, Any]]:
        return self.__class__.__qualname__, [], {"model_name": self.model_name, "fields": self.fields}

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        model_key = app_label, self.model_name_lower
        fields = state.models[model_key].fields
        delay = True
        for name, field in self.fields:
            # ProjectState.alter_field's bookkeeping, without its reload after each field.
            if getattr(state, "_relations", None) is not None:  # the relations, when already computed
                old_field = fields.pop(name)
                if old_field.is_relation:
                    state.resolve_model_field_relations(model_key, name, old_field)
                fields[name] = field
                if field.is_relation:
                    state.resolve_model_field_relations(model_key, name, field)
            else:
                fields[name] = field
            delay = delay and not field.is_relation and not _referenced(state, model_key, name, field)
        state.reload_model(*model_key, delay=delay)

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        to_model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, to_model):
            return
        from_model = from_state.apps.get_model(app_label, self.model_name)
        for name, _ in self.fields:
            schema_editor.alter_field(from_model, from_model._meta.get_field(name), to_model._meta.get_field(name))

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: ProjectState, to_state: ProjectState
    ) -> None:
        self.database_forwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"Alter {len(self.fields)} fields on {self.model_name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"alter_{self.model_name_lower}_fields"


def _referenced(state: ProjectState, model_key: tuple[str, str], name: str, field: models.Field) -> bool:
    from django.db.migrations.utils import field_is_referenced

    return field_is_referenced(state, model_key, (name, field))
