"""Models of the adaptive token pool and of anomaly quarantine (SPEC section 8).

Imported at the end of quota/models.py so the app registry (and migrations) see them.
"""

from datetime import datetime
from decimal import Decimal
from typing import Self

from django.conf import settings
from django.db import models

from allocations.models import Allocation


class SingletonModel(models.Model):
    """One row, pk=1, created on first read."""

    SINGLETON_PK = 1

    class Meta:
        abstract = True

    @classmethod
    def load(cls) -> Self:
        row, _ = cls.objects.get_or_create(pk=cls.SINGLETON_PK)  # type: ignore[attr-defined]  # each concrete one's
        return row


class PoolConfig(SingletonModel):
    total_tokens_per_month = models.BigIntegerField(
        default=0, help_text="T: tokens per month shared by reserved and pool allocations. 0 switches the pool off."
    )
    floor_per_allocation = models.BigIntegerField(
        default=0, help_text="Minimum monthly token quota every pool allocation gets."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "pool config"
        verbose_name_plural = "pool config"
        constraints = [
            models.CheckConstraint(condition=models.Q(total_tokens_per_month__gte=0), name="pool_total_non_negative"),
            models.CheckConstraint(condition=models.Q(floor_per_allocation__gte=0), name="pool_floor_non_negative"),
        ]

    def __str__(self) -> str:
        return f"Pool: T={self.total_tokens_per_month}, floor={self.floor_per_allocation}"


class RebalanceLog(models.Model):
    """One rebalance attempt that reached the database: applied, or refused."""

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        COMMAND = "command"
        ADMIN = "admin"
        API = "api"

    class Outcome(models.TextChoices):
        APPLIED = "applied"
        REFUSED = "refused"

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(db_index=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=500, blank=True)
    # Set only for scheduled runs ("2026-12"): the unique index makes two beats run once per period.
    period_key = models.CharField(max_length=16, null=True, blank=True, unique=True)
    usage_period_start = models.DateField()
    total_tokens = models.BigIntegerField()
    floor_per_allocation = models.BigIntegerField()
    reserved_tokens = models.BigIntegerField()
    distributable_tokens = models.BigIntegerField()
    pool_size = models.IntegerField()
    total_usage = models.BigIntegerField()
    cold_start = models.BooleanField(default=False)
    skipped = models.IntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"rebalance {self.created_at:%Y-%m-%d %H:%M} ({self.outcome})"


class RebalanceEntry(models.Model):
    log = models.ForeignKey(RebalanceLog, on_delete=models.CASCADE, related_name="entries")
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="+")
    quota_before = models.BigIntegerField(null=True, blank=True)
    quota_after = models.BigIntegerField(null=True, blank=True)
    usage = models.BigIntegerField(default=0)
    reason = models.CharField(max_length=200)
    applied = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "rebalance entries"

    def __str__(self) -> str:
        return f"{self.allocation_id}: {self.quota_before} -> {self.quota_after}"


class AnomalyConfig(SingletonModel):
    enabled = models.BooleanField(default=True)
    paused_until = models.DateTimeField(
        null=True, blank=True, help_text="Detection is off until this time, then resumes by itself."
    )
    min_calls = models.PositiveIntegerField(default=100, help_text="Calls in the last hour needed to quarantine.")
    multiplier = models.DecimalField(
        max_digits=8, decimal_places=2, default=Decimal("10"), help_text="× the hourly baseline of the previous 23 h."
    )
    sparse_baseline_calls = models.PositiveIntegerField(
        default=200, help_text="A baseline with fewer calls than this is sparse: the absolute threshold applies."
    )
    sparse_absolute_calls = models.PositiveIntegerField(
        default=10000, help_text="Calls in the last hour that quarantine when the baseline is sparse."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "anomaly config"
        verbose_name_plural = "anomaly config"

    def __str__(self) -> str:
        return "Anomaly quarantine"

    def active_at(self, now: datetime) -> bool:
        return self.enabled and (self.paused_until is None or now >= self.paused_until)
