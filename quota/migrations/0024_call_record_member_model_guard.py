"""A call record's member and model are guarded where members and models are deleted (docs/DECISIONS.md,
"A call record's member and model are kept by the keys above them"): their foreign keys, whose
checks at every settlement's commit took a FOR KEY SHARE lock and a WAL record on the member's and
the model's rows, are dropped, and the deletion is refused instead.

Every record's member is its API key's member and its model its allocation's (quota.admission.plan
`Plan.identity`, from the key's scope). A key is never deleted (quota 0022) and keeps its member by
its own foreign key; an allocation is not deleted while a record names it (quota 0023) and keeps its
model by its own: so a member or model a record names is never deletable, whatever commits
concurrently. The triggers below say it once more where the rows are deleted (a member's or model's
records read by `callrecord (member_id, started_at)` / `(model_id, started_at)`), so a record
written outside that rule still cannot be left naming a row that is gone; Django's `on_delete` is
PROTECT, as the database's answer is.

With no foreign key left on the call records, dropping a pruned month takes no lock on members and
models (quota.partitions.drop_detached).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

GUARDED = {  # the referenced table -> the record's column
    "allocations_member": "member_id",
    "allocations_catalogmodel": "model_id",
}
GUARD = [
    sql
    for table, column in GUARDED.items()
    for sql in (
        f"CREATE FUNCTION {table}_recorded() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF EXISTS (SELECT 1 FROM quota_callrecord WHERE {column} = OLD.id) THEN"
        f" RAISE EXCEPTION '% has call records', OLD.id"
        f" USING ERRCODE = 'foreign_key_violation', TABLE = 'quota_callrecord'; END IF;"
        f" RETURN OLD; END $$",
        f"CREATE TRIGGER {table}_recorded BEFORE DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_recorded()",
    )
]
UNGUARD = [
    sql
    for table in GUARDED
    for sql in (f"DROP TRIGGER {table}_recorded ON {table}", f"DROP FUNCTION {table}_recorded()")
]


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0016_auth_generation"),
        ("quota", "0023_call_record_allocation_guard"),
    ]

    operations = [
        migrations.RunSQL(GUARD, reverse_sql=UNGUARD),
        migrations.AlterField(
            model_name="callrecord",
            name="member",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
                verbose_name="member",
            ),
        ),
        migrations.AlterField(
            model_name="callrecord",
            name="model",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="allocations.catalogmodel",
                verbose_name="model",
            ),
        ),
    ]
