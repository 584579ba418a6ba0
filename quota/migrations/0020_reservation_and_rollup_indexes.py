"""Indexes nothing reads on a hot path (docs/DECISIONS.md, "Reservations keep their primary key
only"): the reservation's counter and expiry indexes (every call wrote both and deleted the row by
its primary key; the readers by counter or by expiry read the calls in flight), and the daily
rollup's index on `allocation_id` alone, which `(allocation_id, day)` already serves.

Plain SQL for the database: Django's AlterField would drop and re-add the reservation's foreign key
to drop its index; dropping the index is all it takes.
"""

import django.db.models.deletion
from django.db import migrations, models

DROPPED = {  # index -> (table, definition), for the way back
    "quota_reservation_counter_id_5e4d4d82": ("quota_reservation", "(counter_id)"),
    "quota_reservation_expires_at_e005a0aa": ("quota_reservation", "(expires_at)"),
    "quota_dailyrollup_allocation_id_193e86d0": ("quota_dailyrollup", "(allocation_id)"),
}


class Migration(migrations.Migration):
    dependencies = [
        ("allocations", "0016_auth_generation"),
        ("quota", "0019_group_hold_whole"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    [f'DROP INDEX IF EXISTS "{name}"' for name in DROPPED],
                    reverse_sql=[
                        f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" {columns}'
                        for name, (table, columns) in DROPPED.items()
                    ],
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="dailyrollup",
                    name="allocation",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="allocations.allocation",
                    ),
                ),
                migrations.AlterField(
                    model_name="reservation",
                    name="counter",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="reservations",
                        to="quota.usagecounter",
                        verbose_name="counter",
                    ),
                ),
                migrations.AlterField(
                    model_name="reservation",
                    name="expires_at",
                    field=models.DateTimeField(verbose_name="expires at"),
                ),
            ],
        ),
    ]
