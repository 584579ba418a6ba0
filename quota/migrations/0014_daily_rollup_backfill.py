"""Builds the daily rollups of the call records already written (later ones are rolled up as they
are written). Backwards: the rollups are emptied."""

from django.db import migrations


def build(apps, schema_editor):
    # The live module's SQL (it reads only the tables this migration knows): the same statement as
    # `manage.py rebuild_rollups`.
    from quota.rollups import record_days, rollups_rebuild

    days = record_days()
    if days is not None:
        rollups_rebuild(first_day=days[0], last_day=days[1])


def empty(apps, schema_editor):
    apps.get_model("quota", "DailyRollup").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("quota", "0013_daily_rollup")]

    operations = [migrations.RunPython(build, empty)]
