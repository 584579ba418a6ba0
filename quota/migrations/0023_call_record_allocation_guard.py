"""A call record's allocation is guarded on the allocation's side (docs/DECISIONS.md, "A call
record's allocation is guarded where allocations are deleted"): the foreign key's check at every
settlement's commit is dropped, and an allocation can only be deleted while no record names it.

`quota_allocation_recorded`, a BEFORE DELETE row trigger on the allocations, refuses the deletion
when a record names the allocation (read by `callrecord (allocation_id, started_at)`), as Django's
PROTECT does at collection and the key's check did at commit. It runs once the DELETE holds the
allocation's row. A settlement with a reservation is ordered against the deletion by that
reservation's row: the cascade deletes it first (the settlement then writes nothing), or the
settlement holds it and the cascade waits for its commit, after which the trigger sees its record.
A record without a reservation (a refusal) locks the allocation's row itself
(`quota_record_allocation_held`, in its INSERT's statement: quota.ledger.sync), which the DELETE
waits for, or which finds the row gone and fails the statement, as the key did.
"""

import django.db.models.deletion
from django.db import migrations, models

GUARD = (
    "CREATE FUNCTION quota_allocation_recorded() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF EXISTS (SELECT 1 FROM quota_callrecord WHERE allocation_id = OLD.id) THEN"
    " RAISE EXCEPTION 'allocation % has call records', OLD.id"
    " USING ERRCODE = 'foreign_key_violation', TABLE = 'quota_callrecord'; END IF;"
    " RETURN OLD; END $$",
    "CREATE TRIGGER quota_allocation_recorded BEFORE DELETE ON allocations_allocation"
    " FOR EACH ROW EXECUTE FUNCTION quota_allocation_recorded()",
    # A record's statement passes its allocation id and how many rows its FOR KEY SHARE of that
    # allocation found: none (the allocation is gone) fails the statement, as the key's check did.
    "CREATE FUNCTION quota_record_allocation_held(held_allocation uuid, held_rows bigint) RETURNS boolean"
    " LANGUAGE plpgsql AS $$ BEGIN"
    " IF held_allocation IS NOT NULL AND held_rows = 0 THEN"
    " RAISE EXCEPTION 'allocation % does not exist', held_allocation"
    " USING ERRCODE = 'foreign_key_violation', TABLE = 'quota_callrecord'; END IF;"
    " RETURN true; END $$",
)
UNGUARD = (
    "DROP TRIGGER quota_allocation_recorded ON allocations_allocation",
    "DROP FUNCTION quota_allocation_recorded()",
    "DROP FUNCTION quota_record_allocation_held(uuid, bigint)",
)


class Migration(migrations.Migration):
    dependencies = [("quota", "0022_call_record_kept_keys_and_prices")]

    operations = [
        migrations.RunSQL(list(GUARD), reverse_sql=list(UNGUARD)),
        migrations.AlterField(
            model_name="callrecord",
            name="allocation",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="call_records",
                to="allocations.allocation",
                verbose_name="allocation",
            ),
        ),
    ]
