"""Models of the adaptive token pool and of anomaly quarantine (SPEC section 8).

Imported at the end of quota/models.py so the app registry (and migrations) see them.
"""

from datetime import datetime
from decimal import Decimal
from typing import Self

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from allocations.models import Allocation


class SingletonModel(models.Model):
    """One row, pk=1, created on first read."""

    SINGLETON_PK = 1

    class Meta:
        abstract = True

    @classmethod
    def load(cls) -> Self:
        row, _created = cls.objects.get_or_create(pk=cls.SINGLETON_PK)  # type: ignore[attr-defined]  # each concrete one's
        return row


class PoolConfig(SingletonModel):
    total_tokens_per_month = models.BigIntegerField(
        default=0,
        help_text=_("T: tokens per month shared by reserved and pool allocations. 0 switches the pool off."),
        verbose_name=_("total tokens per month"),
    )
    floor_per_allocation = models.BigIntegerField(
        default=0,
        help_text=_("Minimum monthly token quota every pool allocation gets."),
        verbose_name=_("floor per allocation"),
    )
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("pool config")
        verbose_name_plural = _("pool config")
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

    id = models.BigAutoField(primary_key=True, verbose_name=_("ID"))
    created_at = models.DateTimeField(db_index=True, verbose_name=_("created at"))
    trigger = models.CharField(max_length=16, choices=Trigger.choices, verbose_name=_("trigger"))
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("actor"),
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, verbose_name=_("outcome"))
    reason = models.CharField(max_length=500, blank=True, verbose_name=_("reason"))
    # Set only for scheduled runs ("2026-12"): the unique index makes two beats run once per period.
    period_key = models.CharField(max_length=16, null=True, blank=True, unique=True, verbose_name=_("period key"))
    usage_period_start = models.DateField(verbose_name=_("usage period start"))
    total_tokens = models.BigIntegerField(verbose_name=_("total tokens"))
    floor_per_allocation = models.BigIntegerField(verbose_name=_("floor per allocation"))
    reserved_tokens = models.BigIntegerField(verbose_name=_("reserved tokens"))
    distributable_tokens = models.BigIntegerField(verbose_name=_("distributable tokens"))
    pool_size = models.IntegerField(verbose_name=_("pool size"))
    total_usage = models.BigIntegerField(verbose_name=_("total usage"))
    cold_start = models.BooleanField(default=False, verbose_name=_("cold start"))
    skipped = models.IntegerField(default=0, verbose_name=_("skipped"))

    class Meta:
        verbose_name = _("rebalance log")
        verbose_name_plural = _("rebalance logs")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"rebalance {self.created_at:%Y-%m-%d %H:%M} ({self.outcome})"


class RebalanceEntry(models.Model):
    log = models.ForeignKey(RebalanceLog, on_delete=models.CASCADE, related_name="entries", verbose_name=_("log"))
    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="+", verbose_name=_("allocation"))
    quota_before = models.BigIntegerField(null=True, blank=True, verbose_name=_("quota before"))
    quota_after = models.BigIntegerField(null=True, blank=True, verbose_name=_("quota after"))
    usage = models.BigIntegerField(default=0, verbose_name=_("usage"))
    reason = models.CharField(max_length=200, verbose_name=_("reason"))
    applied = models.BooleanField(default=False, verbose_name=_("applied"))

    class Meta:
        verbose_name = _("rebalance entry")
        verbose_name_plural = _("rebalance entries")

    def __str__(self) -> str:
        return f"{self.allocation_id}: {self.quota_before} -> {self.quota_after}"


class AnomalyConfig(SingletonModel):
    enabled = models.BooleanField(default=True, verbose_name=_("enabled"))
    paused_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_("Detection is off until this time, then resumes by itself."),
        verbose_name=_("paused until"),
    )
    min_calls = models.PositiveIntegerField(
        default=100, help_text=_("Calls in the last hour needed to quarantine."), verbose_name=_("min calls")
    )
    multiplier = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        default=Decimal("10"),
        help_text=_("× the hourly baseline of the previous 23 h."),
        verbose_name=_("multiplier"),
    )
    sparse_baseline_calls = models.PositiveIntegerField(
        default=200,
        help_text=_("A baseline with fewer calls than this is sparse: the absolute threshold applies."),
        verbose_name=_("sparse baseline calls"),
    )
    sparse_absolute_calls = models.PositiveIntegerField(
        default=10000,
        help_text=_("Calls in the last hour that quarantine when the baseline is sparse."),
        verbose_name=_("sparse absolute calls"),
    )
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("anomaly config")
        verbose_name_plural = _("anomaly config")

    def __str__(self) -> str:
        return "Anomaly quarantine"

    def active_at(self, now: datetime) -> bool:
        return self.enabled and (self.paused_until is None or now >= self.paused_until)
