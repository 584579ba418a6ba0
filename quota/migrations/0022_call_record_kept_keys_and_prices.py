"""API keys and price versions are never deleted, and the database says so (docs/DECISIONS.md, "A
call record's key and price are kept by refusing their deletion"): a key is revoked, a price
version appended to, and no path of the application deletes either (the admin and the APIs offer
no deletion). A trigger now refuses any DELETE of either, as the audit log's refuses its own, so a
call record can never name a key or price that is gone, and the record's two foreign keys, whose
checks at every settlement's commit took a FOR KEY SHARE lock and a WAL record on the key's and the
price's rows, are dropped.

TRUNCATE stays allowed (test isolation; no application path issues it), as for the audit log.
"""

import django.db.models.deletion
from django.db import migrations, models

KEPT = {  # table -> message
    "allocations_apikey": "API keys are revoked, never deleted",
    "quota_priceversion": "price versions are append-only",
}
FORWARD = [
    sql
    for table, message in KEPT.items()
    for sql in (
        f"CREATE FUNCTION {table}_kept() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" RAISE EXCEPTION '{message}' USING ERRCODE = 'restrict_violation', TABLE = '{table}'; END $$",
        f"CREATE TRIGGER {table}_kept BEFORE DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_kept()",
    )
]
BACKWARD = [
    sql
    for table in KEPT
    for sql in (f"DROP TRIGGER {table}_kept ON {table}", f"DROP FUNCTION {table}_kept()")
]


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0016_auth_generation"),
        ("quota", "0021_reservation_counter_guard"),
    ]

    operations = [
        migrations.RunSQL(FORWARD, reverse_sql=BACKWARD),
        migrations.AlterField(
            model_name="callrecord",
            name="api_key",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="allocations.apikey",
                verbose_name="API key",
            ),
        ),
        migrations.AlterField(
            model_name="callrecord",
            name="price_version",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="quota.priceversion",
                verbose_name="price version",
            ),
        ),
    ]
