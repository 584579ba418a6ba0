"""The database itself refuses to change or delete an audit event (PostgreSQL), superusers included.

TRUNCATE stays allowed: it is what test isolation uses, and no application path issues it."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION allocations_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER allocations_auditevent_no_update_delete
    BEFORE UPDATE OR DELETE ON allocations_auditevent
    FOR EACH ROW EXECUTE FUNCTION allocations_auditevent_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS allocations_auditevent_no_update_delete ON allocations_auditevent;
DROP FUNCTION IF EXISTS allocations_auditevent_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("allocations", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
