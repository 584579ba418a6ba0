"""How much: price versions, call records, per-period usage counters and in-flight reservations."""

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Self

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils.translation import gettext_lazy as _

from allocations.models import Allocation, ApiKey, CatalogModel


def money_field(**kwargs: Any) -> models.DecimalField:
    """The one column shape for USD amounts and prices: 15 integer digits, 1e-9 resolution."""
    return models.DecimalField(max_digits=24, decimal_places=9, **kwargs)


class PriceUnit(models.TextChoices):
    IMAGE = "image"
    PAGE = "page"
    SECOND = "second"
    MINUTE = "minute"
    CHARACTER = "character"
    QUERY = "query"
    REQUEST = "request"


class PriceVersionQuerySet(models.QuerySet["PriceVersion"]):
    def in_force(self, *, model: CatalogModel | uuid.UUID | str, at: dt.datetime) -> "PriceVersion | None":
        found = self.filter(model=model, effective_from__lte=at)  # type: ignore[misc]  # a model, its id or its text
        return found.order_by("-effective_from", "-id").first()


class PriceVersion(models.Model):
    """Append-only. Token prices are per 1M tokens; a unit price is per `unit`."""

    model = models.ForeignKey(CatalogModel, on_delete=models.PROTECT, related_name="prices", verbose_name=_("model"))
    effective_from = models.DateTimeField(verbose_name=_("effective from"))
    input_per_1m = money_field(null=True, blank=True, verbose_name=_("input per 1M tokens"))
    cached_input_per_1m = money_field(null=True, blank=True, verbose_name=_("cached input per 1M tokens"))
    output_per_1m = money_field(null=True, blank=True, verbose_name=_("output per 1M tokens"))
    audio_input_per_1m = money_field(null=True, blank=True, verbose_name=_("audio input per 1M tokens"))
    audio_output_per_1m = money_field(null=True, blank=True, verbose_name=_("audio output per 1M tokens"))
    unit = models.CharField(max_length=16, choices=PriceUnit.choices, blank=True, verbose_name=_("unit"))
    price_per_unit = money_field(null=True, blank=True, verbose_name=_("price per unit"))
    # Cost-bearing request options (allocations.cost_options), token prices only. Decimal strings:
    # the token cost's multiplier per service tier ({"priority": "2", "flex": "0.5"}) and the USD
    # price of one call per built-in tool ({"web_search": "0.01"}). An option without its price
    # here is refused even where the model allows it.
    service_tier_multipliers = models.JSONField(default=dict, blank=True, verbose_name=_("service tier multipliers"))
    tool_call_prices = models.JSONField(default=dict, blank=True, verbose_name=_("tool call prices"))
    # Unit price "image" only: the USD price of one image by what was made, keyed "<size>/<quality>"
    # ({"1024x1024/standard": "0.04", "1024x1792/hd": "0.12"}); an image made at a size and
    # quality not listed costs `price_per_unit`.
    image_prices = models.JSONField(default=dict, blank=True, verbose_name=_("image prices"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    objects = PriceVersionQuerySet.as_manager()

    class Meta:
        verbose_name = _("price version")
        verbose_name_plural = _("price versions")
        indexes = [models.Index(fields=["model", "-effective_from"])]

    def __str__(self) -> str:
        return f"{self.model.slug} from {self.effective_from:%Y-%m-%d %H:%M}"

    @property
    def is_unit_price(self) -> bool:
        return bool(self.unit)

    def tier_multiplier(self, tier: str) -> Decimal | None:
        value = (self.service_tier_multipliers or {}).get(tier)
        return None if value is None else Decimal(value)

    def tool_call_price(self, tool: str) -> Decimal | None:
        value = (self.tool_call_prices or {}).get(tool)
        return None if value is None else Decimal(value)


class Outcome(models.TextChoices):
    SUCCESS = "success"
    CLIENT_CANCELLED = "client_cancelled"
    UPSTREAM_ERROR = "upstream_error"
    GATEWAY_ERROR = "gateway_error"
    REJECTED_UNAUTHENTICATED = "rejected_unauthenticated"
    REJECTED_BAD_REQUEST = "rejected_bad_request"
    REJECTED_MODEL_MISMATCH = "rejected_model_mismatch"
    REJECTED_REVOKED = "rejected_revoked"
    REJECTED_PAUSED = "rejected_paused"
    REJECTED_QUARANTINED = "rejected_quarantined"
    REJECTED_QUOTA_EXCEEDED = "rejected_quota_exceeded"
    REJECTED_COST_QUOTA_EXCEEDED = "rejected_cost_quota_exceeded"
    REJECTED_QUOTA_BUSY = "rejected_quota_busy"
    REJECTED_MODEL_KIND = "rejected_model_kind"
    REJECTED_RATE_LIMITED = "rejected_rate_limited"
    REJECTED_MODEL_FORBIDDEN = "rejected_model_forbidden"
    REJECTED_GROUP_QUOTA_EXCEEDED = "rejected_group_quota_exceeded"
    REJECTED_GROUP_COST_QUOTA_EXCEEDED = "rejected_group_cost_quota_exceeded"


# Every value CallRecord.endpoint takes: the /v1 endpoints (proxy.registry, same names) and realtime
# sessions. Lists filter on these fixed names instead of asking the table which values it holds.
CALL_ENDPOINTS = (
    "chat.completions",
    "responses",
    "embeddings",
    "images.generations",
    "images.edits",
    "audio.speech",
    "audio.transcriptions",
    "moderations",
    "rerank",
    "ocr",
    "realtime",
)


class CloseReason(models.TextChoices):
    NORMAL = "normal"
    CLIENT_ABORT = "client_abort"
    REVOKED = "revoked"
    COST_EXCEEDED = "cost_exceeded"
    QUOTA_EXCEEDED = "quota_exceeded"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_ERROR = "upstream_error"
    SHUTDOWN = "shutdown"


# A call record carries usage when it metered tokens or a quantity: what "used this month" sums
# (SPEC 5, whatever the outcome; a rejected call carries none). An unpriced one is shown as
# "unpriced", never as $0 (SPEC 4). CallRecord.carries_usage is the same rule for one row.
CARRIES_USAGE = models.Q(input_tokens__gt=0) | models.Q(output_tokens__gt=0) | models.Q(quantity__gt=0)
UNPRICED = models.Q(priced=False) & CARRIES_USAGE


class CallRecordQuerySet(models.QuerySet):
    def in_period(self, start: dt.datetime, end: dt.datetime) -> Self:
        return self.filter(started_at__gte=start, started_at__lt=end)

    def carrying_usage(self) -> Self:
        return self.filter(CARRIES_USAGE)

    def unpriced(self) -> Self:
        return self.filter(UNPRICED)


class CallRecord(models.Model):
    """One row per proxied call or realtime session, rejects included."""

    id = models.BigAutoField(primary_key=True, verbose_name=_("ID"))
    request_id = models.CharField(max_length=64, verbose_name=_("request ID"))
    # Foreign keys without their single-column indexes (see Meta): the composites serve the
    # allocation, member and model lookups, and nothing deletes keys or price versions (they are
    # revoked, or appended to), so no query needs an index on those two. The database refuses to
    # delete either (quota 0022), so those two carry no constraint: a record cannot name one that
    # is gone, and no settlement checks them at its commit (docs/DECISIONS.md, "A call record's key
    # and price are kept by refusing their deletion"). The allocation carries none either: the
    # allocation's side refuses its deletion while a record names it (quota 0023, docs/DECISIONS.md,
    # "A call record's allocation is guarded where allocations are deleted"), and neither do the
    # member and the model: a record's member is its key's, its model its allocation's, each kept by
    # that row's own key, and their deletion is refused while a record names them (quota 0024,
    # docs/DECISIONS.md, "A call record's member and model are kept by the keys above them").
    allocation = models.ForeignKey(
        Allocation,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="call_records",
        db_index=False,
        db_constraint=False,
        verbose_name=_("allocation"),
    )
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
        verbose_name=_("API key"),
    )
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
        verbose_name=_("member"),
    )
    model = models.ForeignKey(
        CatalogModel,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
        verbose_name=_("model"),
    )
    endpoint = models.CharField(max_length=64, verbose_name=_("endpoint"))
    started_at = models.DateTimeField(verbose_name=_("started at"))
    finished_at = models.DateTimeField(null=True, blank=True, verbose_name=_("finished at"))
    status_code = models.PositiveSmallIntegerField(null=True, blank=True, verbose_name=_("status code"))
    outcome = models.CharField(max_length=40, choices=Outcome.choices, verbose_name=_("outcome"))
    input_tokens = models.BigIntegerField(default=0, verbose_name=_("input tokens"))
    output_tokens = models.BigIntegerField(default=0, verbose_name=_("output tokens"))
    cached_tokens = models.BigIntegerField(default=0, verbose_name=_("cached tokens"))
    reasoning_tokens = models.BigIntegerField(default=0, verbose_name=_("reasoning tokens"))
    audio_input_tokens = models.BigIntegerField(default=0, verbose_name=_("audio input tokens"))
    audio_output_tokens = models.BigIntegerField(default=0, verbose_name=_("audio output tokens"))
    quantity = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True, verbose_name=_("quantity"))
    unit = models.CharField(max_length=16, blank=True, verbose_name=_("unit"))
    cost_usd = money_field(null=True, blank=True, verbose_name=_("cost (USD)"))
    priced = models.BooleanField(default=False, verbose_name=_("priced"))
    price_version = models.ForeignKey(
        PriceVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
        verbose_name=_("price version"),
    )
    estimated = models.BooleanField(default=False, verbose_name=_("estimated"))
    error_code = models.CharField(max_length=64, blank=True, verbose_name=_("error code"))
    error_message = models.CharField(max_length=1000, blank=True, verbose_name=_("error message"))
    is_stream = models.BooleanField(default=False, verbose_name=_("streamed"))
    # What a cost beyond tokens was billed from: the service tier whose multiplier applied (blank:
    # none reported nor asked) and the built-in tool calls counted, {"web_search": 2}.
    service_tier = models.CharField(max_length=16, blank=True, verbose_name=_("service tier"))
    tool_calls = models.JSONField(default=dict, blank=True, verbose_name=_("tool calls"))
    close_reason = models.CharField(
        max_length=20, choices=CloseReason.choices, blank=True, verbose_name=_("close reason")
    )
    # The deployment (allocations.Deployment) whose attempt served the call, kept as a plain id so a
    # deleted deployment leaves its history alone; and the upstream attempts made (0: none went out).
    deployment_id = models.UUIDField(null=True, blank=True, verbose_name=_("deployment ID"))
    attempts = models.PositiveSmallIntegerField(default=0, verbose_name=_("attempts"))
    # The member's groups (allocations.Group ids) this call counted toward when it was admitted:
    # what a group's spend sums (GroupUsageCounter, reconcile_usage, usage by group).
    group_ids = ArrayField(models.UUIDField(), default=list, blank=True, db_default=[], verbose_name=_("groups"))
    # A stream's time to first token: from the call's start to its first event relayed to the client
    # (null for answers that are not streamed, and for streams that relayed nothing). The total
    # latency is finished_at - started_at.
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, verbose_name=_("time to first token (ms)"))

    objects = CallRecordQuerySet.as_manager()

    class Meta:
        # Every index is written on every call: each one here serves a query the gateway runs.
        # request_id: exact lookups (the admin search, the in-doubt and sweeper checks), a plain
        # btree (no pattern-ops twin: nothing searches by prefix). (x, started_at): a member's,
        # an allocation's or a model's calls in a period, newest first. started_at: the lists and
        # every period scan. (outcome, started_at) only for the outcomes other than success (a tenth
        # of the calls): a list filtered to a rare outcome finds its rows, or none, at once.
        verbose_name = _("call record")
        verbose_name_plural = _("call records")
        indexes = [
            models.Index(fields=["request_id"], name="callrecord_request_id"),
            models.Index(fields=["allocation", "started_at"]),
            models.Index(fields=["member", "started_at"]),
            models.Index(fields=["model", "started_at"], name="callrecord_model_started"),
            models.Index(fields=["started_at"]),
            models.Index(
                fields=["outcome", "started_at"], name="callrecord_outcome_rare", condition=~models.Q(outcome="success")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.outcome}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def carries_usage(self) -> bool:
        return bool(self.input_tokens > 0 or self.output_tokens > 0 or (self.quantity or 0) > 0)

    @property
    def latency_ms(self) -> int | None:
        """The whole call, from its start to its settlement (None: not finished)."""
        if self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


class UsageCounter(models.Model):
    """Used and reserved totals of one allocation in one billing period: the O(1) quota check."""

    allocation = models.ForeignKey(
        Allocation, on_delete=models.CASCADE, related_name="usage_counters", verbose_name=_("allocation")
    )
    period_start = models.DateField(verbose_name=_("period start"))
    tokens_used = models.BigIntegerField(default=0, verbose_name=_("tokens used"))
    cost_used = money_field(default=0, verbose_name=_("cost used"))
    tokens_reserved = models.BigIntegerField(default=0, verbose_name=_("tokens reserved"))
    cost_reserved = money_field(default=0, verbose_name=_("cost reserved"))
    calls = models.BigIntegerField(default=0, verbose_name=_("calls"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("usage counter")
        verbose_name_plural = _("usage counters")
        constraints = [
            models.UniqueConstraint(fields=["allocation", "period_start"], name="usage_counter_once_per_period"),
        ]


class Reservation(models.Model):
    """Headroom held by a call in flight; deleted when the call settles, swept when it was abandoned."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    # No secondary index (docs/DECISIONS.md, "Reservations keep their primary key only"): every
    # call writes a row and deletes it by id; what reads by counter or by expiry (deleting an
    # allocation, the sweeper once a minute, the metrics) reads the calls in flight, a small table.
    # No database constraint either: the counter's side guards it (quota 0021, a trigger refuses to
    # delete a counter that a reservation names), since every admission writes the counter's row in
    # the statement that inserts the reservation (docs/DECISIONS.md, "A reservation's counter is
    # guarded where counters are deleted").
    counter = models.ForeignKey(
        UsageCounter,
        on_delete=models.CASCADE,
        related_name="reservations",
        db_index=False,
        db_constraint=False,
        verbose_name=_("counter"),
    )
    request_id = models.CharField(max_length=64, verbose_name=_("request ID"))
    tokens = models.BigIntegerField(default=0, verbose_name=_("tokens"))
    cost = money_field(default=0, verbose_name=_("cost"))
    created_at = models.DateTimeField(verbose_name=_("created at"))
    expires_at = models.DateTimeField(verbose_name=_("expires at"))
    # What the sweeper needs to write the call record of a session whose worker died (realtime).
    context = models.JSONField(default=dict, blank=True, verbose_name=_("context"))
    # The member's groups the call counts toward, and the GroupUsageCounter rows of the capped ones,
    # on which the same tokens and cost are held (quota.ledger.groups).
    group_ids = ArrayField(models.UUIDField(), default=list, blank=True, db_default=[], verbose_name=_("groups"))
    group_counter_ids = ArrayField(models.BigIntegerField(), default=list, blank=True, db_default=[])

    class Meta:
        verbose_name = _("reservation")
        verbose_name_plural = _("reservations")


class GroupUsageCounter(models.Model):
    """Used and reserved totals of one group (allocations.Group) in one billing period: every call
    of a member counts toward each of the member's groups; a capped group's headroom is held by the
    calls in flight as an allocation's is (quota.ledger.groups)."""

    group = models.ForeignKey("allocations.Group", on_delete=models.CASCADE, related_name="usage_counters")
    period_start = models.DateField()
    tokens_used = models.BigIntegerField(default=0)
    cost_used = money_field(default=0)
    tokens_reserved = models.BigIntegerField(default=0)
    cost_reserved = money_field(default=0)
    calls = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "period_start"], name="group_usage_counter_once_per_period"),
        ]


# The pool and anomaly models live in their own module; imported here so Django registers them.
from .pool_models import AnomalyConfig, PoolConfig, RebalanceEntry, RebalanceLog  # noqa: E402, F401
from .rollup_models import DailyRollup, HourlyRollup, MonthCheck  # noqa: E402, F401
