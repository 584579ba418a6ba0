"""Admin API: providers, catalog models and price versions. The rules for each (unique names and
slugs, URLs, price shapes) live in the services; the input serializers check the JSON types."""

from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from allocations import services
from allocations.cost_options import ALLOWED_OPTIONS, UNPRICED_TOOLS
from allocations.groups import ACCESS_FIELDS, model_access_update
from allocations.models import CatalogModel, ModelKind, Provider, ProviderKind
from allocations.requests import MemberAPIRequest
from allocations.selfservice import model_set_self_service
from lib.serializers import (
    DecimalInputField,
    RateLimitsInputMixin,
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    parse_input,
    split_limits,
)
from quota.models import PriceVersion
from quota.price_rows import price_row_add

from . import selectors as sel
from .base import PAGE_PARAMETERS, AdminAPIView, list_response, provider_by
from .selfservice import SelfServiceInputMixin, split_self_service
from .serializers import ModelOutput, PriceOutput, ProviderOutput, page_of


class ProviderList(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        name = StrictCharField(max_length=100)
        kind = serializers.ChoiceField(choices=ProviderKind.choices)
        base_url = StrictCharField(required=False, allow_blank=True, max_length=500, default="")
        api_key = StrictCharField(
            required=False, allow_blank=True, max_length=1000, default="", help_text="Write-only; stored encrypted."
        )
        api_version = StrictCharField(required=False, allow_blank=True, max_length=40, default="")

    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_of(ProviderOutput, "ProviderPage"))
    def get(self, request: MemberAPIRequest) -> Response:
        return list_response(request, Provider.objects.all(), ProviderOutput)

    @extend_schema(request=InputSerializer, responses={201: ProviderOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        provider = services.provider_create(**parse_input(self.InputSerializer, request), actor=request.user)
        return Response(ProviderOutput(provider).data, status=status.HTTP_201_CREATED)


MODELS = CatalogModel.objects.select_related("provider").prefetch_related("allowed_groups", "denied_groups")
OPTIONS_HELP = (
    "The request options that cost more than tokens this model lets through (each also needs its "
    "price in the price version in force): " + ", ".join(ALLOWED_OPTIONS) + "."
)


UNPRICED_HELP = (
    "A built-in tool this model does not allow and price: 'remove' takes it out of the request (the "
    "answer names it in x-gateway-removed-tools), 'refuse' answers 400 naming it."
)
EXTRA_CLIENT_HELP = (
    "Tool types beyond function, custom, local_shell, apply_patch and namespace that this model lets "
    "through as run by the client; any other unknown type is refused."
)


def _allowed_options_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(child=StrictCharField(max_length=64), help_text=OPTIONS_HELP, **kwargs)


def _unpriced_tools_field(**kwargs: Any) -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=UNPRICED_TOOLS, help_text=UNPRICED_HELP, **kwargs)


def _extra_client_tools_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(child=StrictCharField(max_length=64), help_text=EXTRA_CLIENT_HELP, **kwargs)


class ModelList(AdminAPIView):
    class InputSerializer(RateLimitsInputMixin, StrictInputSerializer):
        slug = StrictCharField(max_length=200)
        provider = StrictCharField(max_length=100, help_text="The provider's name or id.")
        upstream_name = StrictCharField(max_length=200)
        kind = serializers.ChoiceField(choices=ModelKind.choices)
        display_name = StrictCharField(required=False, allow_blank=True, max_length=200, default="")
        allowed_options = _allowed_options_field(required=False, default=list)
        unpriced_tools = _unpriced_tools_field(required=False, default="remove")
        extra_client_tools = _extra_client_tools_field(required=False, default=list)

    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_of(ModelOutput, "ModelPage"))
    def get(self, request: MemberAPIRequest) -> Response:
        return list_response(request, MODELS, ModelOutput)

    @extend_schema(request=InputSerializer, responses={201: ModelOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        limits, data = split_limits(parse_input(self.InputSerializer, request), CatalogModel.LIMIT_FIELDS)
        model = services.model_create(
            **{**data, "provider": provider_by(data["provider"])}, limits=limits, actor=request.user
        )
        return Response(ModelOutput(model).data, status=status.HTTP_201_CREATED)


class ModelDetail(AdminAPIView):
    class InputSerializer(SelfServiceInputMixin, RateLimitsInputMixin, StrictInputSerializer):
        """Organisation-wide rate limits, the active flag, the display name, the allowed options,
        the tool rules, unsupported parameters and self-service."""

        is_active = StrictBooleanField(required=False)
        display_name = StrictCharField(required=False, allow_blank=True, max_length=200)
        allowed_options = _allowed_options_field(required=False)
        unpriced_tools = _unpriced_tools_field(required=False)
        extra_client_tools = _extra_client_tools_field(required=False)
        drop_unsupported_params = StrictBooleanField(
            required=False, help_text="A 400 naming an unsupported parameter: the call is sent once more without it."
        )
        access = serializers.ChoiceField(choices=[("open", "open"), ("restricted", "restricted")], required=False)
        allowed_groups = serializers.ListField(child=StrictCharField(max_length=200), required=False)
        denied_groups = serializers.ListField(child=StrictCharField(max_length=200), required=False)

    @extend_schema(responses=ModelOutput)
    def get(self, request: MemberAPIRequest, model_id: str) -> Response:
        return Response(ModelOutput(sel.get_or_404(MODELS, model_id)).data)

    @extend_schema(request=InputSerializer, responses=ModelOutput)
    def patch(self, request: MemberAPIRequest, model_id: str) -> Response:
        model = sel.get_or_404(MODELS, model_id)
        self_service, changes = split_self_service(parse_input(self.InputSerializer, request))
        policy = {f: changes.pop(f) for f in ACCESS_FIELDS if f in changes}
        with transaction.atomic():  # a refused change leaves every field as it was
            if changes:
                model = services.model_update(model=model, changes=changes, actor=request.user)
            if self_service:
                model = model_set_self_service(model=model, changes=self_service, actor=request.user)
            if policy:
                model = model_access_update(model=model, changes=policy, actor=request.user)
        return Response(ModelOutput(model).data)


class PriceList(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        model = StrictCharField(max_length=200, help_text="The model's slug.")
        effective_from = StrictCharField(
            required=False, allow_null=True, allow_blank=True, help_text="ISO 8601; default now. Naive = UTC."
        )
        input_per_1m = DecimalInputField(required=False, allow_null=True)
        cached_input_per_1m = DecimalInputField(required=False, allow_null=True)
        output_per_1m = DecimalInputField(required=False, allow_null=True)
        audio_input_per_1m = DecimalInputField(required=False, allow_null=True)
        audio_output_per_1m = DecimalInputField(required=False, allow_null=True)
        unit = StrictCharField(required=False, allow_null=True, allow_blank=True)
        price_per_unit = DecimalInputField(required=False, allow_null=True)
        service_tier_multipliers = serializers.DictField(
            child=DecimalInputField(),
            required=False,
            allow_null=True,
            help_text='Token cost multiplier per service tier (flex, priority, scale), e.g. {"priority": "2"}.',
        )
        tool_call_prices = serializers.DictField(
            child=DecimalInputField(),
            required=False,
            allow_null=True,
            help_text='USD per call of each built-in tool, e.g. {"web_search": "0.01"}.',
        )
        image_prices = serializers.DictField(
            child=DecimalInputField(),
            required=False,
            allow_null=True,
            help_text='Unit image only: USD per image by "<size>/<quality>", e.g. {"1024x1792/hd": "0.12"}; '
            "a variant not listed costs price_per_unit.",
        )

    @extend_schema(
        parameters=[*PAGE_PARAMETERS, OpenApiParameter("model", str, description="A model's slug.")],
        responses=page_of(PriceOutput, "PricePage"),
    )
    def get(self, request: MemberAPIRequest) -> Response:
        queryset = PriceVersion.objects.select_related("model")
        if request.query_params.get("model"):
            queryset = queryset.filter(model__slug=request.query_params["model"])
        return list_response(request, queryset, PriceOutput)

    @extend_schema(request=InputSerializer, responses={201: PriceOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        version = price_row_add(parse_input(self.InputSerializer, request), actor=request.user)
        return Response(PriceOutput(version).data, status=status.HTTP_201_CREATED)
