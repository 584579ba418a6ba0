"""Call records keep only the indexes a query needs (docs/DECISIONS.md, "Call-record indexes").

Plain SQL for the database: Django's AlterField would drop and re-add each foreign key to drop its
index, validating the key over the whole table five times; dropping an index is all it takes. The
new indexes are built before the old ones go, so no lookup is ever without one.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models



DROPPED = {  # index -> its definition, for the way back
    "quota_callrecord_allocation_id_bfe402cb": "(allocation_id)",
    "quota_callrecord_api_key_id_30bda199": "(api_key_id)",
    "quota_callrecord_member_id_c839f172": "(member_id)",
    "quota_callrecord_model_id_aff01e2f": "(model_id)",
    "quota_callrecord_price_version_id_dbbffc1a": "(price_version_id)",
    "quota_callrecord_request_id_0d16bc50": "(request_id)",
    "quota_callrecord_request_id_0d16bc50_like": "(request_id varchar_pattern_ops)",
}
ADDED = {
    "callrecord_request_id": "(request_id)",
    "callrecord_model_started": "(model_id, started_at)",
    "callrecord_outcome_rare": "(outcome, started_at) WHERE NOT (outcome = 'success')",
}


def _create(indexes):
    return [f'CREATE INDEX IF NOT EXISTS "{name}" ON "quota_callrecord" {columns}' for name, columns in indexes.items()]


def _drop(indexes):
    return [f'DROP INDEX IF EXISTS "{name}"' for name in indexes]


class Migration(migrations.Migration):

    dependencies = [
        ('allocations', '0013_groups_and_model_access'),
        ('quota', '0007_model_forbidden_outcome'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(_create(ADDED), reverse_sql=_drop(ADDED)),
                migrations.RunSQL(_drop(DROPPED), reverse_sql=_create(DROPPED)),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='callrecord',
                    name='allocation',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='call_records', to='allocations.allocation'),
                ),
                migrations.AlterField(
                    model_name='callrecord',
                    name='api_key',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='allocations.apikey'),
                ),
                migrations.AlterField(
                    model_name='callrecord',
                    name='member',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='callrecord',
                    name='model',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='allocations.catalogmodel'),
                ),
                migrations.AlterField(
                    model_name='callrecord',
                    name='price_version',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='quota.priceversion'),
                ),
                migrations.AlterField(
                    model_name='callrecord',
                    name='request_id',
                    field=models.CharField(max_length=64),
                ),
                migrations.AddIndex(
                    model_name='callrecord',
                    index=models.Index(fields=['request_id'], name='callrecord_request_id'),
                ),
                migrations.AddIndex(
                    model_name='callrecord',
                    index=models.Index(fields=['model', 'started_at'], name='callrecord_model_started'),
                ),
                migrations.AddIndex(
                    model_name='callrecord',
                    index=models.Index(
                        condition=models.Q(('outcome', 'success'), _negated=True),
                        fields=['outcome', 'started_at'],
                        name='callrecord_outcome_rare',
                    ),
                ),
            ],
        ),
    ]
