"""Who may call what: the read side of every proxied call and realtime session (SPEC 3 steps 3-5).

`key_scope` turns a bearer key into an immutable snapshot of its owner, its scope and each scoped
allocation's model and provider. Snapshots are cached per process and keyed by the auth generation
(lib.cache), so any admin change is seen by every process on its next call, and the
request path pays one cache read instead of several queries.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from lib.bounded import BoundedCache
from lib.cache import auth_generation

from . import crypto
from .exceptions import (
    AllocationPaused,
    AllocationQuarantined,
    AllocationRevoked,
    GatewayError,
    ModelForbidden,
    ModelMismatch,
    Unauthorized,
)
from .model_access import access_decide
from .model_access import member_may_use as member_may_use  # the one "usable" decision
from .models import Allocation, ApiKey, ApiKeyScope, CatalogModel, Deployment, Group, Provider


@dataclass(frozen=True)
class ProviderInfo:
    id: str
    kind: str
    base_url: str
    api_version: str
    api_key: str
    is_active: bool

    def __repr__(self) -> str:  # never print the credential
        return f"ProviderInfo(id={self.id!r}, kind={self.kind!r})"


@dataclass(frozen=True)
class DeploymentInfo:
    """One deployment a call may be routed to (quota.routing): only active ones of active providers
    are in a snapshot."""

    id: str
    provider: ProviderInfo
    upstream_name: str
    weight: int
    priority: int
    # (("d:<id>", rpm, tpm, None),) when the deployment has a limit, else (): quota.ratelimit's shape.
    limits: tuple[tuple[str, int | None, int | None, int | None], ...] = ()


@dataclass(frozen=True)
class ScopedAllocation:
    allocation_id: str
    status: str
    token_cap: int | None
    cost_cap: Decimal | None
    model_id: str
    model_slug: str
    model_kind: str
    model_active: bool
    upstream_name: str
    provider: ProviderInfo
    # (scope name, rpm, tpm, max_parallel) for the allocation, then its model, each only when it
    # has a limit; empty when neither is limited (quota.ratelimit is then never asked).
    limits: tuple[tuple[str, int | None, int | None, int | None], ...] = ()
    # The model's cost-bearing request options switched on (allocations.cost_options).
    allowed_options: frozenset[str] = frozenset()
    # A built-in tool not allowed and priced is refused (True) or removed from the request (False).
    refuse_unpriced_tools: bool = False
    # Tool types beyond the known client tools that pass as run by the client.
    extra_client_tools: frozenset[str] = frozenset()
    # A 400 naming a parameter the upstream does not support: sent once more without it.
    drop_unsupported_params: bool = False
    # The model's usable deployments in priority order; `provider` and `upstream_name` above are the
    # first one's (or, with none usable, the model's own with the provider marked inactive), and
    # `deployment_id` names the deployment they came from (quota.routing swaps all three).
    deployments: tuple[DeploymentInfo, ...] = ()
    deployment_id: str | None = None
    # Why the member may not use the model (allocations.model_access), or None when they may:
    # decided when the snapshot is loaded, so a warm call pays nothing for it.
    forbidden: str | None = None


@dataclass(frozen=True)
class GroupBudget:
    """One of the key's member's groups, as its calls count toward it (SPEC 10, group budgets):
    each call's usage is added to every group of the member; a group with a cap also holds each
    call's reservation (quota.ledger.groups). None: no cap."""

    id: str
    slug: str
    name: str
    token_cap: int | None
    cost_cap: Decimal | None

    @property
    def capped(self) -> bool:
        return self.token_cap is not None or self.cost_cap is not None


@dataclass(frozen=True)
class KeyScope:
    key_id: str
    member_id: str
    allocations: tuple[ScopedAllocation, ...]
    expires_at: datetime | None = None
    # The member's groups, by id: loaded with the snapshot, so a warm call's admission reserves
    # on the capped ones without a query of its own (a group or membership change bumps the
    # auth generation).
    groups: tuple[GroupBudget, ...] = ()

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def check_expiry(self, now: datetime) -> None:
        if self.expires_at is not None and self.expired(now):
            raise Unauthorized(f"this API key expired at {self.expires_at.isoformat()}")

    def resolve(self, model_name: str) -> ScopedAllocation:
        """By slug, or by bare name when exactly one model in scope has it; else ModelMismatch."""
        usable = [a for a in self.allocations if a.model_active]
        for a in usable:
            if a.model_slug == model_name:
                return a
        bare = [a for a in usable if a.model_slug.rsplit("/", 1)[-1] == model_name]
        if len(bare) == 1:
            return bare[0]
        allowed = ", ".join(sorted(a.model_slug for a in usable)) or "none"
        raise ModelMismatch(f"this key may not call model '{model_name}'; it may call: {allowed}")


STATUS_ERRORS: dict[str, GatewayError] = {
    Allocation.Status.REVOKED: AllocationRevoked("this allocation has been revoked"),
    Allocation.Status.QUARANTINED: AllocationQuarantined("this allocation is quarantined; ask an admin"),
    Allocation.Status.PAUSED: AllocationPaused("this allocation is paused"),
}


def allocation_check_status(entry: ScopedAllocation) -> None:
    """Step 5's allocation status, then step 5a: whether its member may use its model."""
    error = STATUS_ERRORS.get(entry.status)
    if error is not None:
        raise type(error)(error.message)
    if entry.forbidden is not None:
        raise ModelForbidden(entry.forbidden)


# (auth generation, {key hash: KeyScope or None}), shared by the threads and the event loop of a
# process. A snapshot is stored only under the generation read before it was loaded, so a change
# committed meanwhile is caught by the next bump (lib.cache).
_snapshots: tuple[int | None, dict] = (None, {})
_CACHE_MAX = 10_000


def _snapshot(key_hash: str) -> KeyScope | None:
    key = ApiKey.objects.select_related("member").filter(key_hash=key_hash).first()
    if key is None or key.is_revoked or not key.member.is_active:
        return None
    scopes = list(
        ApiKeyScope.objects.filter(api_key=key)
        .select_related("allocation", "model", "model__provider")
        .prefetch_related("model__allowed_groups", "model__denied_groups")
    )
    served = _deployments({s.model_id for s in scopes})
    budgets = _group_budgets(key.member_id)
    groups = {g.id: g.slug for g in budgets}
    entries = []
    for s in scopes:
        a, m = s.allocation, s.model
        # A model without deployment rows (made before they existed, outside the services) is
        # served by its own provider and upstream name.
        deployments = served.get(m.pk) or ()
        first = deployments[0] if deployments else None
        if m.pk not in served:
            first = DeploymentInfo(
                id="", provider=_provider_info(m.provider), upstream_name=m.upstream_name, weight=1, priority=0
            )
            deployments = (first,)
        entries.append(
            ScopedAllocation(
                allocation_id=str(a.pk),
                status=a.status,
                token_cap=a.quota_tokens_per_month,
                cost_cap=a.quota_cost_usd_per_month,
                model_id=str(m.pk),
                model_slug=m.slug,
                model_kind=m.kind,
                model_active=m.is_active,
                upstream_name=first.upstream_name if first else m.upstream_name,
                limits=_limits(a, m),
                allowed_options=frozenset(m.allowed_options or ()),
                refuse_unpriced_tools=m.unpriced_tools == "refuse",
                extra_client_tools=frozenset(m.extra_client_tools or ()),
                drop_unsupported_params=m.drop_unsupported_params,
                forbidden=_forbidden(m, groups),
                provider=first.provider if first else _provider_info(m.provider, usable=False),
                deployments=deployments,
                deployment_id=(first.id or None) if first else None,
            )
        )
    return KeyScope(
        key_id=str(key.pk),
        member_id=str(key.member_id),
        allocations=tuple(entries),
        expires_at=key.expires_at,
        groups=budgets,
    )


def _group_budgets(member_id: uuid.UUID) -> tuple[GroupBudget, ...]:
    rows = (
        Group.objects.filter(members=member_id)
        .order_by("pk")
        .values_list("pk", "slug", "name", "quota_tokens_per_month", "quota_cost_usd_per_month")
    )
    return tuple(
        GroupBudget(id=str(pk), slug=slug, name=name, token_cap=tokens, cost_cap=cost)
        for pk, slug, name, tokens, cost in rows
    )


def _provider_info(provider: Provider, *, usable: bool = True) -> ProviderInfo:
    return ProviderInfo(
        id=str(provider.pk),
        kind=provider.kind,
        base_url=provider.base_url,
        api_version=provider.api_version,
        api_key=crypto.provider_api_key(provider),
        is_active=usable and provider.is_active,
    )


def _deployments(model_ids: set) -> dict:
    """{model id: its usable deployments (active, of an active provider), in priority order}."""
    rows = Deployment.objects.in_order().filter(model_id__in=model_ids).select_related("provider")
    providers: dict = {}
    served: dict = {}
    for d in rows:
        served.setdefault(d.model_id, ())
        if not (d.active and d.provider.is_active):
            continue
        info = providers.get(d.provider_id) or providers.setdefault(d.provider_id, _provider_info(d.provider))
        limits = ((f"d:{d.pk}", d.rpm_limit, d.tpm_limit, None),) if d.rpm_limit or d.tpm_limit else ()
        deployment = DeploymentInfo(
            id=str(d.pk),
            provider=info,
            upstream_name=d.upstream_name,
            weight=d.weight,
            priority=d.priority,
            limits=limits,
        )
        served[d.model_id] = (*served.get(d.model_id, ()), deployment)
    return served


def _forbidden(model: CatalogModel, member_groups: dict[str, str]) -> str | None:
    return access_decide(
        model_slug=model.slug,
        access=model.access,
        member_groups=member_groups,
        allowed={str(g.pk) for g in model.allowed_groups.all()},
        denied={str(g.pk) for g in model.denied_groups.all()},
    ).refusal


def _limits(allocation: Allocation, model: CatalogModel) -> tuple:
    named = ((f"a:{allocation.pk}", allocation.limits()), (f"m:{model.pk}", model.limits()))
    return tuple((name, *limits) for name, limits in named if any(v is not None for v in limits))


def key_digest(plaintext: str) -> str:
    """The key's lookup digest (ApiKey.hash): what a call carries instead of hashing it again."""
    return ApiKey.hash(plaintext)


def key_scope(
    plaintext: str, *, generation: int | None = None, now: datetime | None = None, digest: str = ""
) -> KeyScope:
    """Raises Unauthorized for an unknown, revoked or expired key or a disabled member. A caller that
    already read the auth generation for this call passes it, saving a cache round-trip; one that
    holds the key's digest (key_digest of this plaintext) passes it, saving the hash."""
    if not plaintext.startswith(ApiKey.PLAINTEXT_PREFIX):
        raise Unauthorized("invalid API key")
    if generation is None:
        generation = auth_generation()
    global _snapshots
    held, cache = _snapshots
    if held != generation:
        cache = BoundedCache(_CACHE_MAX)
        _snapshots = (generation, cache)  # one assignment: readers see the old pair or the new one
    key_hash = digest or ApiKey.hash(plaintext)
    try:
        scope = cache[key_hash]
    except KeyError:
        scope = cache[key_hash] = _snapshot(key_hash)
    if scope is None:
        raise Unauthorized("invalid API key")
    scope.check_expiry(now or timezone.now())
    return scope


def key_scope_cached(plaintext: str, *, generation: int, now: datetime, digest: str = "") -> KeyScope | None:
    """The cached snapshot of a key under `generation`, or None (not cached, unknown, expired or
    refused): no database access, for the event loop's fast path (quota.admission); a None sends
    the call through key_scope on an accounting thread."""
    held, cache = _snapshots
    if held != generation:
        return None
    scope = cache.get(digest or ApiKey.hash(plaintext))
    if scope is None or scope.expired(now):
        return None
    return scope


def key_scope_held(plaintext: str) -> str | None:
    """The key's digest when this process holds a snapshot of it (it was valid at the last auth
    generation the process saw), else None. No shared-cache read and no database: the door check
    of every call; the preflight that follows still checks the key against the current generation."""
    digest = ApiKey.hash(plaintext)
    return digest if _snapshots[1].get(digest) is not None else None


def key_touch(*, key_id: str, now: datetime | None = None, every_s: int = 60) -> None:
    """Throttled last_used_at: at most one write per key per `every_s`."""
    now = now or timezone.now()
    ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gt=now - timedelta(seconds=every_s)).update(last_used_at=now)
