"""Output serializers of the member API (SPEC section 7): one shape per object for the responses
and the OpenAPI schema. Input serializers sit in the view that takes them (HackSoft style)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from allocations.models import ApiKey
from lib.serializers import MoneyField, UnderscoreNamesMixin
from quota.models import CallRecord
from quota.selectors import price_describe

from .cards import AllocationCard


class AllocationCardOutput(serializers.Serializer):
    """Reads an AllocationCard (portal.cards.allocation_cards)."""

    id = serializers.UUIDField(source="allocation.pk")
    model = serializers.CharField(source="allocation.model.slug")
    display_name = serializers.CharField(source="allocation.display_name")
    status = serializers.CharField(source="allocation.status")
    quota_tokens_per_month = serializers.IntegerField(source="allocation.quota_tokens_per_month", allow_null=True)
    tokens_used_this_month = serializers.IntegerField(source="tokens_used")
    quota_cost_usd_per_month = MoneyField(source="allocation.quota_cost_usd_per_month", allow_null=True)
    cost_used_this_month = MoneyField(source="cost_used")
    near_cap = serializers.BooleanField()
    key_prefixes = serializers.ListField(child=serializers.CharField())
    price = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_price(self, card: AllocationCard) -> dict | None:
        return price_describe(card.price)


class KeyOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    allocations = serializers.SerializerMethodField()
    is_default = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    rotated_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)

    def get_allocations(self, key: ApiKey) -> list[str]:
        return [str(s.allocation_id) for s in key.scopes.all()]


class KeyWithPlaintextOutput(KeyOutput):
    key = serializers.CharField(help_text="The plaintext key, shown once.")


class CallOutput(serializers.Serializer):
    id = serializers.IntegerField()
    request_id = serializers.CharField()
    allocation = serializers.UUIDField(source="allocation_id", allow_null=True)
    model = serializers.CharField(source="model.slug", allow_null=True, default=None)
    endpoint = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    status_code = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    quantity = serializers.SerializerMethodField()
    unit = serializers.CharField()
    cost_usd = serializers.SerializerMethodField()
    priced = serializers.BooleanField()
    estimated = serializers.BooleanField()
    is_stream = serializers.BooleanField()
    close_reason = serializers.CharField()
    error_code = serializers.CharField()
    service_tier = serializers.CharField(help_text="The service tier billed (blank: none reported nor asked).")
    tool_calls = serializers.DictField(
        child=serializers.IntegerField(), help_text="Built-in tool calls billed per call, by tool."
    )

    def get_quantity(self, record: CallRecord) -> str | None:
        return None if record.quantity is None else f"{record.quantity.normalize():f}"

    @extend_schema_field({"type": "string", "format": "decimal", "nullable": True})
    def get_cost_usd(self, record: CallRecord) -> str | None:
        return (
            MoneyField().to_representation(record.cost_usd) if record.priced and record.cost_usd is not None else None
        )


class UsageRowOutput(serializers.Serializer):
    day = serializers.DateField(required=False)
    allocation = serializers.CharField(required=False)
    display_name = serializers.CharField(required=False)
    model = serializers.CharField(required=False, allow_null=True)
    calls = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost_usd = serializers.CharField(allow_null=True, help_text="null when every call that carried usage was unpriced")
    unpriced_calls = serializers.IntegerField()


class UsageOutput(UnderscoreNamesMixin, serializers.Serializer):
    """The member's usage in a period of days, grouped by day, model or allocation."""

    from_ = serializers.DateField()
    to = serializers.DateField()
    group_by = serializers.CharField()
    results = UsageRowOutput(many=True)
