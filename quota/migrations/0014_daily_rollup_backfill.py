"""Once built the daily rollups of the call records already written. The rollups' key has since
gained the calls' groups, so they are built by 0016_daily_rollup_group_ids_backfill with that key
(the live module's SQL names the column, which does not exist yet at this point). Backwards: the
rollups are emptied."""

from django.db import migrations


def empty(apps, schema_editor):
    apps.get_model("quota", "DailyRollup").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("quota", "0013_daily_rollup")]

    operations = [migrations.RunPython(migrations.RunPython.noop, empty)]
