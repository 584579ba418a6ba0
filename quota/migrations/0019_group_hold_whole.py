from django.db import migrations

# The text as of this migration (quota.ledger.groups.HOLD_WHOLE_FUNCTION), kept here so that a later
# change of it comes with a migration of its own.
CREATE = (
    "CREATE OR REPLACE FUNCTION quota_group_hold_whole(groups_held bigint, reservations bigint, held bigint[])"
    " RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $$ BEGIN"
    " IF groups_held > reservations THEN RAISE EXCEPTION 'a group reserved without its allocation: undone'"
    " USING ERRCODE = 'QG001'; END IF; RETURN held; END $$"
)


class Migration(migrations.Migration):
    dependencies = [("quota", "0018_month_check")]

    operations = [
        migrations.RunSQL(CREATE, reverse_sql="DROP FUNCTION quota_group_hold_whole(bigint, bigint, bigint[])"),
    ]
