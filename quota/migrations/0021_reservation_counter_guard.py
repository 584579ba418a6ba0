"""A reservation's counter is guarded by the counter's side (docs/DECISIONS.md, "A reservation's
counter is guarded where counters are deleted"): the foreign key's check at every admission's commit
(a FOR KEY SHARE lock and a WAL record on the counter row the admission has just updated) is
dropped, and a counter can only be deleted while no reservation names it.

Every statement that inserts a reservation writes its counter's row in the same statement (the
guarded UPDATE, or the one-group upsert), so the row lock orders it against a DELETE of that
counter: the trigger runs once the DELETE holds the row, when every admission that wrote the row
has committed and any later one waits (and then finds the row gone, writing nothing). A counter
deleted with its allocation has had its reservations deleted by the cascade just before, in the
same transaction; a reservation admitted between that cascade and the counter's DELETE makes the
deletion fail, as the foreign key's check at commit did.
"""

import django.db.models.deletion
from django.db import migrations, models

GUARD = (
    "CREATE FUNCTION quota_usagecounter_in_flight() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF EXISTS (SELECT 1 FROM quota_reservation WHERE counter_id = OLD.id) THEN"
    " RAISE EXCEPTION 'usage counter % is held by a call in flight', OLD.id"
    " USING ERRCODE = 'foreign_key_violation', TABLE = 'quota_reservation'; END IF;"
    " RETURN OLD; END $$",
    "CREATE TRIGGER quota_usagecounter_in_flight BEFORE DELETE ON quota_usagecounter"
    " FOR EACH ROW EXECUTE FUNCTION quota_usagecounter_in_flight()",
)
UNGUARD = (
    "DROP TRIGGER quota_usagecounter_in_flight ON quota_usagecounter",
    "DROP FUNCTION quota_usagecounter_in_flight()",
)


class Migration(migrations.Migration):
    dependencies = [("quota", "0020_reservation_and_rollup_indexes")]

    operations = [
        migrations.AlterField(
            model_name="reservation",
            name="counter",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="reservations",
                to="quota.usagecounter",
                verbose_name="counter",
            ),
        ),
        migrations.RunSQL(list(GUARD), reverse_sql=list(UNGUARD)),
    ]
