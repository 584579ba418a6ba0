"""The daily rollup of call records: what every usage report reads instead of the records.

One row per day (the calendar day of `started_at` in GATEWAY_BILLING_TIMEZONE, the zone of the
monthly periods) × allocation × member × model × outcome × API key × the groups the calls counted toward
(`CallRecord.group_ids`, fixed at admission: a member's groups rarely change, so this barely
multiplies the rows, and the group reports unnest it over rollups instead of records), written by the same statement or
transaction that writes the call records it sums (quota.ledger.statements), so it is never behind
them. Rollups outlive the records: pruning a month of records keeps its rollups, and the rows keep
plain ids (no database constraint) so deleting an allocation, member or model leaves history alone.

Imported at the end of quota/models.py so the app registry (and migrations) see it.
"""

from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models

from allocations.models import Allocation, ApiKey, CatalogModel


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
    allocation = _kept_id(Allocation, db_index=False)  # read through (allocation, day) below
    member = _kept_id(settings.AUTH_USER_MODEL)
    model = _kept_id(CatalogModel)
    outcome = models.CharField(max_length=40)
    # The key the calls came with (per-key spend on the member page); a member rarely has more
    # than one live key per allocation, so this barely multiplies the rows either.
    api_key = _kept_id(ApiKey, db_index=False)  # read with the member's rows, never alone
    # The call records' `group_ids` as written (sorted by id: the key snapshot lists a member's
    # groups in id order); groups deleted since stay named here, as in the records.
    group_ids = ArrayField(models.UUIDField(), default=list, blank=True, db_default=[])
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
                fields=["day", "allocation", "member", "model", "outcome", "api_key", "group_ids"],
                name="daily_rollup_once_per_key",
                nulls_distinct=False,
            ),
        ]
        indexes = [models.Index(fields=["allocation", "day"], name="daily_rollup_allocation_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.allocation_id} {self.outcome}: {self.calls}"


class HourlyRollup(models.Model):
    """Sums of the call records of one hour (`hour`: its start, an hour of the billing timezone)
    and key, kept for the last few days only (quota.rollups.HOURLY_KEEP; older rows are deleted
    by beat): what the overview by hour and the anomaly check read instead of the records. Keyed
    and summed only as those need: no API key, no tokens. Written by the same statements as
    DailyRollup."""

    hour = models.DateTimeField()
    # Read by hour range (the constraint's index) only: no index of their own to write.
    allocation = _kept_id(Allocation, db_index=False)
    member = _kept_id(settings.AUTH_USER_MODEL, db_index=False)
    model = _kept_id(CatalogModel, db_index=False)
    outcome = models.CharField(max_length=40)
    group_ids = ArrayField(models.UUIDField(), default=list, blank=True, db_default=[])
    calls = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=30, decimal_places=9, default=0)
    priced_calls = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "allocation", "member", "model", "outcome", "group_ids"],
                name="hourly_rollup_once_per_key",
                nulls_distinct=False,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.hour} {self.allocation_id} {self.outcome}: {self.calls}"


class MonthCheck(models.Model):
    """A closed month's call records counted once against its daily rollups, day by day, by beat
    (`quota.call_record_months_check`, a day after the month ends; quota.retention.check_month).
    Stored only when every day's records equal its rollups' calls. The prune trusts it while the
    month's rollups still add up to `records` (a sum over rollup rows, no read of the records): a
    record written into the month since (a late settlement) adds to its rollups by the same
    statement, the sums part, and the prune counts the month again."""

    month = models.DateField(unique=True)  # the first of the month, billing timezone
    records = models.BigIntegerField()
    checked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.month:%Y-%m}: {self.records} records checked {self.checked_at:%Y-%m-%d %H:%M}"
