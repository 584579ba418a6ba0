"""Who may use what: members, providers, the model catalog, allocations, keys and the audit trail."""

import hashlib
import uuid
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import TextChoices


class MemberManager(UserManager["Member"]):
    def get_by_natural_key(self, username):
        return self.get(**{self.model.USERNAME_FIELD: (username or "").casefold()})


class Member(AbstractUser):
    """A person (or service) of the organisation. Usernames are case-folded on save."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The `sub` of the single sign-on identity this member signs in as (portal.sso): set at the
    # first SSO sign-in, or by a superuser in admin for a staff account; matched on afterwards.
    sso_subject = models.CharField(
        "SSO subject", max_length=255, unique=True, null=True, blank=True, help_text="The identity provider's `sub`."
    )

    objects: ClassVar[MemberManager] = MemberManager()

    def save(self, *args, **kwargs):
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

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=ProviderKind.choices)
    base_url = models.URLField(max_length=500, blank=True)
    api_version = models.CharField(max_length=40, blank=True)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    key_fingerprint = models.CharField(max_length=12, blank=True, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return self.name

    @property
    def is_active(self):
        return self.status == self.Status.ACTIVE

    @staticmethod
    def fingerprint(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()[:12]


class RateLimits(models.Model):
    """Requests per minute, tokens per minute and calls in flight; null = no limit. On an allocation
    they bound its member; on a catalogue model, every allocation of that model together
    (quota.ratelimit enforces both, across processes)."""

    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    tpm_limit = models.PositiveBigIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    max_parallel = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])

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

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.CharField(max_length=200, unique=True)
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    upstream_name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=ModelKind.choices)
    display_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    # The request options that cost more than tokens this model lets through (names from
    # allocations.cost_options.ALLOWED_OPTIONS, sorted); each also needs a price (quota.options).
    allowed_options = models.JSONField(default=list, blank=True)
    # A built-in tool the model does not allow and price: removed from the request before it goes
    # upstream (named in the answer's x-gateway-removed-tools header), or the call refused with 400.
    unpriced_tools = models.CharField(
        max_length=8, choices=[("remove", "remove"), ("refuse", "refuse")], default="remove"
    )
    # Tool types beyond the known client tools that this model lets through as run by the client
    # (allocations.cost_options.extra_client_tools_clean); any other unknown type is refused.
    extra_client_tools = models.JSONField(default=list, blank=True)
    # Who may call it (allocations.model_access): open to all but denied groups, or restricted to
    # allowed groups; a denied group always wins.
    access = models.CharField(max_length=12, choices=[("open", "open"), ("restricted", "restricted")], default="open")
    allowed_groups = models.ManyToManyField("allocations.Group", related_name="allowed_models", blank=True)
    denied_groups = models.ManyToManyField("allocations.Group", related_name="denied_models", blank=True)
    # Self-service: members who may use the model claim an allocation of it from the portal's
    # catalogue, with these caps (null = none).
    self_service = models.BooleanField(default=False, help_text="Members may claim it from the catalogue.")
    self_service_quota_tokens = models.BigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0)], help_text="Token quota of a claim; blank = none."
    )
    self_service_cost_usd = models.DecimalField(
        max_digits=20,
        decimal_places=9,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Monthly cost cap (USD) of a claim; blank = none.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "model"

    def __str__(self):
        return self.slug

    @property
    def bare_name(self) -> str:
        return self.slug.rsplit("/", 1)[-1]


class DeploymentQuerySet(models.QuerySet):
    def in_order(self):
        """Priority first (lower first), then the order they were added: the first is the model's
        own provider and upstream name."""
        return self.order_by("priority", "created_at", "id")


class Deployment(models.Model):
    """One provider account serving a catalogue model under an upstream name. A model has one or
    more; calls go to an active one of the best priority, chosen by weight (quota.routing)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    upstream_name = models.CharField(max_length=200)
    weight = models.PositiveIntegerField(default=1)
    priority = models.PositiveSmallIntegerField(default=0, help_text="Lower first.")
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    tpm_limit = models.PositiveBigIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    active = models.BooleanField(default=True)
    # Why the gateway took it out (the provider refused its key), blank when an admin did.
    disabled_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["model", "priority", "created_at"])]

    def __str__(self):
        return f"{self.provider} / {self.upstream_name}"


class AllocationQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status=Allocation.Status.ACTIVE)

    def owned_by(self, member):
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

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="allocations")
    model = models.ForeignKey(CatalogModel, on_delete=models.PROTECT, related_name="allocations")
    display_name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    quota_tokens_per_month = models.BigIntegerField(null=True, blank=True)
    quota_cost_usd_per_month = models.DecimalField(max_digits=20, decimal_places=9, null=True, blank=True)
    is_service_allocation = models.BooleanField(default=False)
    quota_locked = models.BooleanField(default=False)
    paused_by = models.CharField(max_length=8, choices=PausedBy.choices, blank=True)
    status_reason = models.CharField(max_length=500, blank=True)
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.ADMIN)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AllocationQuerySet.as_manager()

    class Meta:
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

    def __str__(self):
        return f"{self.display_name or self.model.slug} ({self.member.username})"

    @property
    def is_active(self):
        return self.status == self.Status.ACTIVE


class ApiKeyQuerySet(models.QuerySet):
    def live(self):
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A member's bearer key. Only its SHA-256 is stored; `prefix` is what lists show."""

    PLAINTEXT_PREFIX = "sk-gw-"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    allocations = models.ManyToManyField(Allocation, through="ApiKeyScope", related_name="api_keys")
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self):
        return self.revoked_at is not None

    def is_expired(self, now) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @staticmethod
    def hash(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiKeyScope(models.Model):
    """One allocation in a key's scope. `model` is denormalised so the database enforces one per model."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="scopes")
    allocation = models.ForeignKey(Allocation, on_delete=models.CASCADE, related_name="key_scopes")
    model = models.ForeignKey(CatalogModel, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "model"], name="apikey_one_allocation_per_model"),
            models.UniqueConstraint(fields=["api_key", "allocation"], name="apikey_allocation_once"),
        ]


class AdminTokenQuerySet(models.QuerySet):
    def usable(self, now):
        return self.filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now), revoked_at__isnull=True)


class AdminToken(models.Model):
    """Bearer token for the admin API, made by `manage.py create_admin_token` or in admin. Stored hashed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="admin_tokens")
    prefix = models.CharField(max_length=12)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = AdminTokenQuerySet.as_manager()

    def __str__(self):
        return f"{self.prefix}… ({self.user})"


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AuditEvent.Immutable("audit events are append-only")

    def delete(self):
        raise AuditEvent.Immutable("audit events are append-only")


class AuditEvent(models.Model):
    """Append-only record of a change. The database refuses UPDATE and DELETE (see migration)."""

    class Immutable(Exception):
        pass

    id = models.BigAutoField(primary_key=True)
    # PROTECT: members are disabled, never deleted, once they have acted.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=150, default="system")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["target_type", "target_id", "created_at"])]

    def __str__(self):
        return f"{self.action} {self.target_type}:{self.target_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise self.Immutable("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
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

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device_code_hash = models.CharField(max_length=64, unique=True)
    user_code = models.CharField(max_length=8, unique=True)
    label = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    interval_s = models.PositiveIntegerField(default=5)
    last_polled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    member = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    key_encrypted = models.TextField(blank=True, editable=False)
    model_slug = models.CharField(max_length=200, blank=True)
    requested_from = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "device sign-in"

    def __str__(self):
        return f"{self.user_code[:4]}-{self.user_code[4:]} ({self.status})"


class Invitation(models.Model):
    """A single-use link that lets a member set their password and sign in. Stored hashed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invitations")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"invitation of {self.member_id} until {self.expires_at:%Y-%m-%d %H:%M}"


class ReclaimLock(models.Model):
    """An admin revoked the member's self-service allocation of this model: the member may not
    claim it again until an admin unlocks (which deletes the lock)."""

    member = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reclaim_locks")
    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="+")
    locked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["member", "model"], name="reclaim_lock_once")]

    def __str__(self):
        return f"re-claim lock {self.member_id} / {self.model_id}"


# Groups and their rules live in their own module; imported here so Django registers them.
from .group_models import Group, GroupRule  # noqa: E402, F401
