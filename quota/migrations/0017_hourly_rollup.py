"""The hourly rollups of the call records (quota.rollup_models.HourlyRollup), built for the window
they keep from the records of the last days; later records are rolled up as they are written."""

import django.contrib.postgres.fields
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def build(apps, schema_editor):
    # The live module's SQL (it reads only the tables this migration knows).
    from quota.rollups import hourly_rollups_rebuild_window

    hourly_rollups_rebuild_window()


class Migration(migrations.Migration):

    dependencies = [
        ('allocations', '0015_catalogmodel_drop_unsupported_params'),
        ('quota', '0016_daily_rollup_key_and_groups_backfill'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='HourlyRollup',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('hour', models.DateTimeField()),
                ('outcome', models.CharField(max_length=40)),
                ('group_ids', django.contrib.postgres.fields.ArrayField(base_field=models.UUIDField(), blank=True, db_default=[], default=list, size=None)),
                ('calls', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=9, default=0, max_digits=30)),
                ('priced_calls', models.BigIntegerField(default=0)),
                ('allocation', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='allocations.allocation')),
                ('member', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('model', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='allocations.catalogmodel')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('hour', 'allocation', 'member', 'model', 'outcome', 'group_ids'), name='hourly_rollup_once_per_key', nulls_distinct=False)],
            },
        ),
        # Room in each page for the in-place (HOT) updates of a busy hour, as the daily rollups.
        migrations.RunSQL(
            "ALTER TABLE quota_hourlyrollup SET (fillfactor = 70)",
            "ALTER TABLE quota_hourlyrollup RESET (fillfactor)",
        ),
        migrations.RunPython(build, migrations.RunPython.noop),
    ]
