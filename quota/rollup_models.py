"""The daily rollup of call records: what every usage report reads instead of the records.

One row per day (the calendar day of `started_at` in GATEWAY_BILLING_TIMEZONE, the zone of the
monthly periods) × allocation × member × model × outcome, written by the same statement or
transaction that writes the call records it sums (quota.ledger.statements), so it is never behind
them. Rollups outlive the records: pruning a month of records keeps its rollups, and the rows keep
plain ids (no database constraint) so deleting an allocation, member or model leaves history alone.

Imported at the end of quota/models.py so the app registry (and migrations) see it.
"""

from typing import Any

from django.conf import settings
from django.db import models

from allocations.models import Allocation, CatalogModel


def _kept_id(to: type[models.Model] | str, **kwargs: Any) -> models.ForeignKey:
    """A reference that survives its row's deletion: joinable by the ORM, no constraint."""
    return models.ForeignKey(
        to, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", **kwargs
    )


class DailyRollup(models.Model):
    """Sums of the call records of one day and key. `cost_usd` sums the priced calls' costs only
    (`priced_calls` of them; a sum over no priced call is 0 here and null in reports), and
    `unpriced_calls` counts the calls that carried usage without a price (quota.models.UNPRICED)."""

    day = models.DateField()
    allocation = _kept_id(Allocation)
    member = _kept_id(settings.AUTH_USER_MODEL)
    model = _kept_id(CatalogModel)
    outcome = models.CharField(max_length=40)
    calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    audio_input_tokens = models.BigIntegerField(default=0)
    audio_output_tokens = models.BigIntegerField(default=0)
    quantity = models.DecimalField(max_digits=30, decimal_places=6, default=0)
    cost_usd = models.DecimalField(max_digits=30, decimal_places=9, default=0)
    priced_calls = models.BigIntegerField(default=0)
    unpriced_calls = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # NULLS NOT DISTINCT: a refusal without allocation, member or model has one row per day
            # like any other key, and the settlement's ON CONFLICT finds it.
            models.UniqueConstraint(
                fields=["day", "allocation", "member", "model", "outcome"],
                name="daily_rollup_once_per_key",
                nulls_distinct=False,
            ),
        ]
        indexes = [models.Index(fields=["allocation", "day"], name="daily_rollup_allocation_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.allocation_id} {self.outcome}: {self.calls}"
