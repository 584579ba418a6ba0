"""Output serializers of the admin API: the JSON shape of each object, written once for lists,
details and the OpenAPI schema. Input serializers sit in the view that takes them (HackSoft style)."""

from rest_framework import serializers

from allocations.models import Allocation, CatalogModel, Group, Member
from lib.serializers import MoneyField, money_str
from quota.group_budgets import spend_of
from quota.models import PriceVersion

from .selfservice import SelfServiceOutputMixin


class RateLimitsOutputMixin(serializers.Serializer):
    rpm_limit = serializers.IntegerField(allow_null=True)
    tpm_limit = serializers.IntegerField(allow_null=True)
    max_parallel = serializers.IntegerField(allow_null=True)


RATES = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m", "audio_output_per_1m")


class MemberOutput(serializers.Serializer):
    id = serializers.UUIDField()
    username = serializers.CharField()
    email = serializers.CharField()
    is_active = serializers.BooleanField()
    is_staff = serializers.BooleanField()
    is_superuser = serializers.BooleanField()
    date_joined = serializers.DateTimeField()
    groups = serializers.SerializerMethodField()

    def get_groups(self, member: Member) -> list[str]:
        return sorted(g.slug for g in member.org_groups.all())


class AdminTokenOutput(serializers.Serializer):
    id = serializers.UUIDField()
    prefix = serializers.CharField()
    user = serializers.CharField(source="user.username")
    user_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class ProviderOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    kind = serializers.CharField()
    kind_label = serializers.CharField(source="get_kind_display")
    base_url = serializers.CharField()
    api_version = serializers.CharField()
    status = serializers.CharField()
    fingerprint = serializers.CharField(source="key_fingerprint", help_text="First 12 hex of SHA-256 of the key.")
    created_at = serializers.DateTimeField()


class ModelOutput(SelfServiceOutputMixin, RateLimitsOutputMixin, serializers.Serializer):
    id = serializers.UUIDField()
    slug = serializers.CharField()
    provider = serializers.CharField(source="provider.name")
    provider_id = serializers.UUIDField()
    provider_kind = serializers.CharField(source="provider.kind")
    upstream_name = serializers.CharField()
    kind = serializers.CharField()
    display_name = serializers.CharField()
    is_active = serializers.BooleanField()
    allowed_options = serializers.ListField(child=serializers.CharField())
    unpriced_tools = serializers.CharField()
    extra_client_tools = serializers.ListField(child=serializers.CharField())
    drop_unsupported_params = serializers.BooleanField()
    access = serializers.CharField()
    allowed_groups = serializers.SerializerMethodField()
    denied_groups = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_allowed_groups(self, model: CatalogModel) -> list[str]:
        return sorted(g.slug for g in model.allowed_groups.all())

    def get_denied_groups(self, model: CatalogModel) -> list[str]:
        return sorted(g.slug for g in model.denied_groups.all())


class DeploymentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    model_id = serializers.UUIDField()
    provider = serializers.CharField(source="provider.name")
    provider_id = serializers.UUIDField()
    upstream_name = serializers.CharField()
    weight = serializers.IntegerField()
    priority = serializers.IntegerField()
    rpm_limit = serializers.IntegerField(allow_null=True)
    tpm_limit = serializers.IntegerField(allow_null=True)
    active = serializers.BooleanField()
    disabled_reason = serializers.CharField(help_text="Why the gateway took it out; blank when active or an admin did.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ProviderTestOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    status = serializers.IntegerField(allow_null=True, help_text="The provider's HTTP status; null: no answer.")
    latency_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(help_text="Blank when ok; redacted (no key, no base URL).")


class PriceOutput(serializers.Serializer):
    id = serializers.CharField()
    model = serializers.CharField(source="model.slug")
    effective_from = serializers.DateTimeField()
    input_per_1m = MoneyField(allow_null=True)
    cached_input_per_1m = MoneyField(allow_null=True)
    output_per_1m = MoneyField(allow_null=True)
    audio_input_per_1m = MoneyField(allow_null=True)
    audio_output_per_1m = MoneyField(allow_null=True)
    unit = serializers.SerializerMethodField()
    price_per_unit = MoneyField(allow_null=True)
    service_tier_multipliers = serializers.DictField(child=serializers.CharField())
    tool_call_prices = serializers.DictField(child=serializers.CharField())
    image_prices = serializers.DictField(child=serializers.CharField())
    created_at = serializers.DateTimeField()

    def get_unit(self, price: PriceVersion) -> str | None:
        return price.unit or None


class AllocationOutput(RateLimitsOutputMixin, serializers.Serializer):
    """An allocation with this month's usage, attached by selectors.allocations_with_usage."""

    id = serializers.UUIDField()
    member = serializers.UUIDField(source="member_id")
    member_username = serializers.CharField(source="member.username")
    model = serializers.CharField(source="model.slug")
    display_name = serializers.CharField()
    status = serializers.CharField()
    paused_by = serializers.SerializerMethodField()
    status_reason = serializers.CharField()
    quota_tokens_per_month = serializers.IntegerField(allow_null=True)
    tokens_used_this_month = serializers.IntegerField()
    quota_cost_usd_per_month = MoneyField(allow_null=True)
    cost_used_this_month = MoneyField()
    near_cap = serializers.BooleanField()
    is_service_allocation = serializers.BooleanField()
    origin = serializers.CharField(help_text="admin, or self_service for a claim from the catalogue.")
    quota_locked = serializers.BooleanField()
    note = serializers.CharField()
    key_prefixes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_paused_by(self, allocation: Allocation) -> str | None:
        return allocation.paused_by or None


class AllocationCreatedOutput(AllocationOutput):
    key = serializers.CharField(help_text="The default key's plaintext, shown once.")
    key_id = serializers.UUIDField()


class AuditOutput(serializers.Serializer):
    id = serializers.CharField(source="pk")
    action = serializers.CharField()
    actor = serializers.CharField(source="actor_label")
    actor_id = serializers.UUIDField(allow_null=True)
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    source_ip = serializers.IPAddressField(allow_null=True)
    request_id = serializers.CharField()
    created_at = serializers.DateTimeField()


def page_of(item: type[serializers.Serializer], name: str) -> type[serializers.Serializer]:
    """The keyset page around a list: `{results: [...], next: cursor | null}`."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "results": item(many=True),
            "next": serializers.CharField(allow_null=True, help_text="Cursor of the next page; null on the last."),
        },
    )


class GroupOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    quota_cost_usd_per_month = MoneyField(
        allow_null=True, help_text="The group's monthly cost cap (null: none): its members' calls stop at it."
    )
    quota_tokens_per_month = serializers.IntegerField(
        allow_null=True, help_text="The group's monthly token cap (null: none)."
    )
    cost_used_this_month = serializers.SerializerMethodField(help_text="Decimal string.")
    tokens_used_this_month = serializers.SerializerMethodField()
    members = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_cost_used_this_month(self, group: Group) -> str:
        return money_str(spend_of(group).cost_used) or ""

    def get_tokens_used_this_month(self, group: Group) -> int:
        return spend_of(group).tokens_used

    def get_members(self, group: Group) -> list[str]:
        return sorted(m.username for m in group.members.all())


class GroupRuleOutput(serializers.Serializer):
    id = serializers.UUIDField()
    order = serializers.IntegerField()
    matcher = serializers.CharField()
    pattern = serializers.CharField()
    group = serializers.CharField(source="group.slug")
    group_id = serializers.UUIDField()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()
