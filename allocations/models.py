"""Who may use what: members, providers, the model catalog, allocations, keys and the audit trail."""

import hashlib
import uuid
from datetime import datetime
from typing import Any, ClassVar, NoReturn, Self

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import TextChoices
from django.utils.translation import gettext_lazy as _


class MemberManager(UserManager["Member"]):
    def get_by_natural_key(self, username: str | None) -> "Member":
        return self.get(**{self.model.USERNAME_FIELD: (username or "").casefold()})


class Member(AbstractUser):
    """A person (or service) of the organisation. Usernames are case-folded on save."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    # The `sub` of the single sign-on identity this member signs in as (portal.sso): set at the
    # first SSO sign-in, or by a superuser in admin for a staff account; matched on afterwards.
    sso_subject = models.CharField(
        _("SSO subject"),
        max_length=255,
        unique=True,
        null=True,
        blank=True,
        help_text=_("The identity provider's `sub`."),
    )

    objects: ClassVar[MemberManager] = MemberManager()

    class Meta:
        verbose_name = _("member")
        verbose_name_plural = _("members")

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.username = (self.username or "").casefold()
        self.email = (self.email or "").casefold()
        super().save(*args, **kwargs)


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible"
    AZURE = "azure", "Azure OpenAI"
    SIMULATED = "simulated", "Simulated (built-in, no network)"


class Provider(models.Model):
    class Status(TextChoices):  # not models.TextChoices: CatalogModel's related_name="models" shadows it here
        ACTIVE = "active"
        DISABLED = "disabled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    name = models.CharField(max_length=100, unique=True, verbose_name=_("name"))
    kind = models.CharField(max_length=16, choices=ProviderKind.choices, verbose_name=_("kind"))
    base_url = models.URLField(max_length=500, blank=True, verbose_name=_("base URL"))
    api_version = models.CharField(max_length=40, blank=True, verbose_name=_("API version"))
    api_key_encrypted = models.TextField(blank=True, editable=False, verbose_name=_("API key (encrypted)"))
    key_fingerprint = models.CharField(max_length=12, blank=True, editable=False, verbose_name=_("key fingerprint"))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, verbose_name=_("status"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("provider")
        verbose_name_plural = _("providers")

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @staticmethod
    def fingerprint(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()[:12]


class RateLimits(models.Model):
    """Requests per minute, tokens per minute and calls in flight; null = no limit. On an allocation
    they bound its member; on a catalogue model, every allocation of that model together
    (quota.ratelimit enforces both, across processes)."""

    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name=_("RPM limit")
    )
    tpm_limit = models.PositiveBigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name=_("TPM limit")
    )
    max_parallel = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name=_("max parallel")
    )

    LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "max_parallel")

    class Meta:
        abstract = True

    def limits(self) -> tuple[int | None, int | None, int | None]:
        return (self.rpm_limit, self.tpm_limit, self.max_parallel)


class ModelKind(models.TextChoices):
    CHAT = "chat"
    EMBEDDING = "embedding"
    IMAGE = "image"
    TTS = "tts"
    STT = "stt"
    OCR = "ocr"
    RERANK = "rerank"
    MODERATION = "moderation"
    REALTIME = "realtime"


class CatalogModel(RateLimits):
    """A model as clients call it (`slug`), mapped to one provider's upstream name or deployment."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    slug = models.CharField(max_length=200, unique=True, verbose_name=_("slug"))
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models", verbose_name=_("provider"))
    upstream_name = models.CharField(max_length=200, verbose_name=_("upstream name"))
    kind = models.CharField(max_length=16, choices=ModelKind.choices, verbose_name=_("kind"))
    display_name = models.CharField(max_length=200, blank=True, verbose_name=_("display name"))
    is_active = models.BooleanField(default=True, verbose_name=_("active"))
    # The request options that cost more than tokens this model lets through (names from
    # allocations.cost_options.ALLOWED_OPTIONS, sorted); each also needs a price (quota.options).
    allowed_options = models.JSONField(default=list, blank=True, verbose_name=_("allowed options"))
    # A built-in tool the model does not allow and price: removed from the request before it goes
    # upstream (named in the answer's x-gateway-removed-tools header), or the call refused with 400.
    unpriced_tools = models.CharField(
        max_length=8,
        choices=[("remove", "remove"), ("refuse", "refuse")],
        default="remove",
        verbose_name=_("unpriced tools"),
    )
    # Tool types beyond the known client tools that this model lets through as run by the client
    # (allocations.cost_options.extra_client_tools_clean); any other unknown type is refused.
    extra_client_tools = models.JSONField(default=list, blank=True, verbose_name=_("extra client tools"))
    # When the upstream answers 400 naming a request parameter it does not support, the call goes
    # once more to the same deployment without it (proxy.unsupported), and the answer says so.
    drop_unsupported_params = models.BooleanField(
        default=False,
        verbose_name=_("drop unsupported parameters"),
        help_text=_(
            "When the upstream refuses a request parameter it does not support, send the call once more without it."
        ),
    )
    # Who may call it (allocations.model_access): open to all but denied groups, or restricted to
    # allowed groups; a denied group always wins.
    access = models.CharField(
        max_length=12,
        choices=[("open", "open"), ("restricted", "restricted")],
        default="open",
        verbose_name=_("access"),
    )
    allowed_groups = models.ManyToManyField(
        "allocations.Group", related_name="allowed_models", blank=True, verbose_name=_("allowed groups")
    )
    denied_groups = models.ManyToManyField(
        "allocations.Group", related_name="denied_models", blank=True, verbose_name=_("denied groups")
    )
    # Self-service: members who may use the model claim an allocation of it from the portal's
    # catalogue, with these caps (null = none).
    self_service = models.BooleanField(
        default=False, help_text=_("Members may claim it from the catalogue."), verbose_name=_("self-service")
    )
    self_service_quota_tokens = models.BigIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text=_("Token quota of a claim; blank = none."),
        verbose_name=_("self-service token quota"),
    )
    self_service_cost_usd = models.DecimalField(
        max_digits=20,
        decimal_places=9,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text=_("Monthly cost cap (USD) of a claim; blank = none."),
        verbose_name=_("self-service cost cap (USD)"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("model")
        verbose_name_plural = _("models")

    def __str__(self) -> str:
        return self.slug

    @property
    def bare_name(self) -> str:
        return self.slug.rsplit("/", 1)[-1]


class DeploymentQuerySet(models.QuerySet):
    def in_order(self) -> Self:
        """Priority first (lower first), then the order they were added: the first is the model's
        own provider and upstream name."""
        return self.order_by("priority", "created_at", "id")


class Deployment(models.Model):
    """One provider account serving a catalogue model under an upstream name. A model has one or
    more; calls go to an active one of the best priority, chosen by weight (quota.routing)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    model = models.ForeignKey(
        CatalogModel, on_delete=models.CASCADE, related_name="deployments", verbose_name=_("model")
    )
    provider = models.ForeignKey(
        Provider, on_delete=models.PROTECT, related_name="deployments", verbose_name=_("provider")
    )
    upstream_name = models.CharField(max_length=200, verbose_name=_("upstream name"))
    weight = models.PositiveIntegerField(default=1, verbose_name=_("weight"))
    priority = models.PositiveSmallIntegerField(default=0, help_text=_("Lower first."), verbose_name=_("priority"))
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name=_("RPM limit")
    )
    tpm_limit = models.PositiveBigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name=_("TPM limit")
    )
    active = models.BooleanField(default=True, verbose_name=_("active"))
    # Why the gateway took it out (the provider refused its key), blank when an admin did.
    disabled_reason = models.CharField(max_length=200, blank=True, verbose_name=_("disabled reason"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        verbose_name = _("deployment")
        verbose_name_plural = _("deployments")
        indexes = [models.Index(fields=["model", "priority", "created_at"])]

    def __str__(self) -> str:
        return f"{self.provider} / {self.upstream_name}"


class AllocationQuerySet(models.QuerySet):
    def active(self) -> Self:
        return self.filter(status=Allocation.Status.ACTIVE)

    def owned_by(self, member: Member) -> Self:
        return self.filter(member=member)


class Allocation(RateLimits):
    """A member's grant of one model with optional monthly token quota and USD cost cap."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        QUARANTINED = "quarantined"
        REVOKED = "revoked"

    class PausedBy(models.TextChoices):
        ADMIN = "admin"
        MEMBER = "member"

    class Origin(models.TextChoices):
        ADMIN = "admin"
        SELF_SERVICE = "self_service"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="allocations", verbose_name=_("member")
    )
    model = models.ForeignKey(
        CatalogModel, on_delete=models.PROTECT, related_name="allocations", verbose_name=_("model")
    )
    display_name = models.CharField(max_length=200, blank=True, verbose_name=_("display name"))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, verbose_name=_("status"))
    quota_tokens_per_month = models.BigIntegerField(null=True, blank=True, verbose_name=_("token quota per month"))
    quota_cost_usd_per_month = models.DecimalField(
        max_digits=20, decimal_places=9, null=True, blank=True, verbose_name=_("cost cap (USD per month)")
    )
    is_service_allocation = models.BooleanField(default=False, verbose_name=_("service allocation"))
    quota_locked = models.BooleanField(default=False, verbose_name=_("quota locked"))
    paused_by = models.CharField(max_length=8, choices=PausedBy.choices, blank=True, verbose_name=_("paused by"))
    status_reason = models.CharField(max_length=500, blank=True, verbose_name=_("status reason"))
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.ADMIN, verbose_name=_("origin"))
    note = models.TextField(blank=True, verbose_name=_("note"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    objects = AllocationQuerySet.as_manager()

    class Meta:
        verbose_name = _("allocation")
        verbose_name_plural = _("allocations")
        indexes = [models.Index(fields=["member", "status"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(quota_tokens_per_month__isnull=True) | models.Q(quota_tokens_per_month__gte=0),
                name="allocation_token_quota_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(quota_cost_usd_per_month__isnull=True) | models.Q(quota_cost_usd_per_month__gte=0),
                name="allocation_cost_cap_non_negative",
            ),
            # Two claims of one model at once make one allocation: the second insert fails here.
            models.UniqueConstraint(
                fields=["member", "model"],
                condition=models.Q(origin="self_service") & ~models.Q(status="revoked"),
                name="allocation_one_live_claim_per_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.display_name or self.model.slug} ({self.member.username})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiKeyQuerySet(models.QuerySet):
    def live(self) -> Self:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A member's bearer key. Only its SHA-256 is stored; `prefix` is what lists show."""

    PLAINTEXT_PREFIX = "sk-gw-"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys", verbose_name=_("member")
    )
    name = models.CharField(max_length=100, verbose_name=_("name"))
    prefix = models.CharField(max_length=12, db_index=True, verbose_name=_("prefix"))
    key_hash = models.CharField(max_length=64, unique=True, verbose_name=_("key hash"))
    allocations = models.ManyToManyField(
        Allocation, through="ApiKeyScope", related_name="api_keys", verbose_name=_("allocations")
    )
    is_default = models.BooleanField(default=False, verbose_name=_("default"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    rotated_at = models.DateTimeField(null=True, blank=True, verbose_name=_("rotated at"))
    revoked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("revoked at"))
    last_used_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last used at"))
    expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("expires at"))

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @staticmethod
    def hash(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiKeyScope(models.Model):
    """One allocation in a key's scope. `model` is denormalised so the database enforces one per model."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="scopes", verbose_name=_("API key"))
    allocation = models.ForeignKey(
        Allocation, on_delete=models.CASCADE, related_name="key_scopes", verbose_name=_("allocation")
    )
    model = models.ForeignKey(CatalogModel, on_delete=models.PROTECT, related_name="+", verbose_name=_("model"))

    class Meta:
        verbose_name = _("API key scope")
        verbose_name_plural = _("API key scopes")
        constraints = [
            models.UniqueConstraint(fields=["api_key", "model"], name="apikey_one_allocation_per_model"),
            models.UniqueConstraint(fields=["api_key", "allocation"], name="apikey_allocation_once"),
        ]


class AdminTokenQuerySet(models.QuerySet):
    def usable(self, now: datetime) -> Self:
        return self.filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now), revoked_at__isnull=True)


class AdminToken(models.Model):
    """Bearer token for the admin API, made by `manage.py create_admin_token` or in admin. Stored hashed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="admin_tokens", verbose_name=_("user")
    )
    prefix = models.CharField(max_length=12, verbose_name=_("prefix"))
    token_hash = models.CharField(max_length=64, unique=True, verbose_name=_("token hash"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    expires_at = models.DateTimeField(null=True, blank=True, verbose_name=_("expires at"))
    last_used_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last used at"))
    revoked_at = models.DateTimeField(null=True, blank=True, verbose_name=_("revoked at"))

    objects = AdminTokenQuerySet.as_manager()

    class Meta:
        verbose_name = _("admin token")
        verbose_name_plural = _("admin tokens")

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AuditEvent.Immutable("audit events are append-only")

    def delete(self) -> NoReturn:
        raise AuditEvent.Immutable("audit events are append-only")


class AuditEvent(models.Model):
    """Append-only record of a change. The database refuses UPDATE and DELETE (see migration)."""

    class Immutable(Exception):
        pass

    id = models.BigAutoField(primary_key=True, verbose_name=_("ID"))
    # PROTECT: members are disabled, never deleted, once they have acted.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("actor"),
    )
    actor_label = models.CharField(max_length=150, default="system", verbose_name=_("actor label"))
    action = models.CharField(max_length=64, db_index=True, verbose_name=_("action"))
    target_type = models.CharField(max_length=64, verbose_name=_("target type"))
    target_id = models.CharField(max_length=64, verbose_name=_("target ID"))
    before = models.JSONField(null=True, blank=True, verbose_name=_("before"))
    after = models.JSONField(null=True, blank=True, verbose_name=_("after"))
    source_ip = models.GenericIPAddressField(null=True, blank=True, verbose_name=_("source IP"))
    request_id = models.CharField(max_length=64, blank=True, verbose_name=_("request ID"))
    created_at = models.DateTimeField(db_index=True, verbose_name=_("created at"))

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        indexes = [models.Index(fields=["target_type", "target_id", "created_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise self.Immutable("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise self.Immutable("audit events are append-only")


class DeviceAuthorization(models.Model):
    """One OAuth device authorization grant (RFC 8628): a command-line tool's request for a key,
    approved or denied by a signed-in member in the portal. The device code is stored hashed; the
    key minted on approval waits here encrypted (Fernet) until the device collects it, once."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        DELIVERED = "delivered"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    device_code_hash = models.CharField(max_length=64, unique=True, verbose_name=_("device code hash"))
    user_code = models.CharField(max_length=8, unique=True, verbose_name=_("user code"))
    label = models.CharField(max_length=100, blank=True, verbose_name=_("label"))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, verbose_name=_("status"))
    interval_s = models.PositiveIntegerField(default=5, verbose_name=_("poll interval (s)"))
    last_polled_at = models.DateTimeField(null=True, blank=True, verbose_name=_("last polled at"))
    expires_at = models.DateTimeField(verbose_name=_("expires at"))
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        verbose_name=_("member"),
    )
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", verbose_name=_("API key")
    )
    key_encrypted = models.TextField(blank=True, editable=False, verbose_name=_("key encrypted"))
    model_slug = models.CharField(max_length=200, blank=True, verbose_name=_("model slug"))
    requested_from = models.GenericIPAddressField(null=True, blank=True, verbose_name=_("requested from"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    decided_at = models.DateTimeField(null=True, blank=True, verbose_name=_("decided at"))
    delivered_at = models.DateTimeField(null=True, blank=True, verbose_name=_("delivered at"))

    class Meta:
        verbose_name = _("device sign-in")
        verbose_name_plural = _("device sign-ins")

    def __str__(self) -> str:
        return f"{self.user_code[:4]}-{self.user_code[4:]} ({self.status})"


class Invitation(models.Model):
    """A single-use link that lets a member set their password and sign in. Stored hashed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name=_("ID"))
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invitations", verbose_name=_("member")
    )
    token_hash = models.CharField(max_length=64, unique=True, verbose_name=_("token hash"))
    expires_at = models.DateTimeField(verbose_name=_("expires at"))
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("created by"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    used_at = models.DateTimeField(null=True, blank=True, verbose_name=_("used at"))

    class Meta:
        verbose_name = _("invitation")
        verbose_name_plural = _("invitations")

    def __str__(self) -> str:
        return f"invitation of {self.member_id} until {self.expires_at:%Y-%m-%d %H:%M}"


class ReclaimLock(models.Model):
    """An admin revoked the member's self-service allocation of this model: the member may not
    claim it again until an admin unlocks (which deletes the lock)."""

    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reclaim_locks", verbose_name=_("member")
    )
    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="+", verbose_name=_("model"))
    locked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("locked by"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("reclaim lock")
        verbose_name_plural = _("reclaim locks")
        constraints = [models.UniqueConstraint(fields=["member", "model"], name="reclaim_lock_once")]

    def __str__(self) -> str:
        return f"re-claim lock {self.member_id} / {self.model_id}"


# Groups and their rules live in their own module; imported here so Django registers them.
from .group_models import Group, GroupRule  # noqa: E402, F401
