"""Admin API: allocations (create with the default key shown once, change, state actions)."""

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response

from allocations import services
from allocations.models import Allocation
from allocations.requests import MemberAPIRequest
from lib.serializers import (
    DecimalInputField,
    RateLimitsInputMixin,
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    WholeNumberInputField,
    parse_input,
    split_limits,
)
from quota.price_rows import model_by_slug

from . import selectors as sel
from .base import PAGE_PARAMETERS, AdminAPIView, list_response, member_by
from .serializers import AllocationCreatedOutput, AllocationOutput, page_of

ALLOCATIONS = Allocation.objects.select_related("member", "model")


def _output(allocation: Allocation) -> dict:
    return AllocationOutput(sel.allocations_with_usage([allocation])[0]).data


class AllocationList(AdminAPIView):
    class InputSerializer(RateLimitsInputMixin, StrictInputSerializer):
        member = StrictCharField(max_length=150, help_text="A username or a member id.")
        model = StrictCharField(max_length=200, help_text="A model's slug.")
        display_name = StrictCharField(required=False, allow_blank=True, max_length=200, default="")
        quota_tokens_per_month = WholeNumberInputField(required=False, allow_null=True, default=None)
        quota_cost_usd_per_month = DecimalInputField(required=False, allow_null=True, default=None)
        is_service_allocation = StrictBooleanField(required=False, default=False)

    @extend_schema(
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter("member", str, description="A username or a member id."),
            OpenApiParameter("model", str, description="A model's slug."),
            OpenApiParameter("status", str, enum=Allocation.Status.values),
        ],
        responses=page_of(AllocationOutput, "AllocationPage"),
    )
    def get(self, request: MemberAPIRequest) -> Response:
        queryset = ALLOCATIONS
        params = request.query_params
        if params.get("member"):
            queryset = queryset.filter(member=member_by(params["member"]))
        if params.get("model"):
            queryset = queryset.filter(model__slug=params["model"])
        if params.get("status"):
            queryset = queryset.filter(status=params["status"])
        return list_response(request, queryset, AllocationOutput, prepare=sel.allocations_with_usage)

    @extend_schema(request=InputSerializer, responses={201: AllocationCreatedOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        limits, data = split_limits(parse_input(self.InputSerializer, request), Allocation.LIMIT_FIELDS)
        allocation, key, plaintext = services.allocation_create(
            **{**data, "member": member_by(data["member"]), "model": model_by_slug(data["model"])},
            limits=limits,
            actor=request.user,
        )
        body = {**_output(allocation), "key": plaintext, "key_id": str(key.pk)}
        return Response(body, status=status.HTTP_201_CREATED)


class AllocationDetail(AdminAPIView):
    class InputSerializer(RateLimitsInputMixin, StrictInputSerializer):
        quota_tokens_per_month = WholeNumberInputField(required=False, allow_null=True)
        quota_cost_usd_per_month = DecimalInputField(required=False, allow_null=True)
        is_service_allocation = StrictBooleanField(required=False)
        quota_locked = StrictBooleanField(required=False)
        note = StrictCharField(required=False, allow_blank=True, trim_whitespace=False, max_length=10_000)
        display_name = StrictCharField(required=False, allow_blank=True, max_length=200)

    @extend_schema(responses=AllocationOutput)
    def get(self, request: MemberAPIRequest, allocation_id: str) -> Response:
        return Response(_output(sel.get_or_404(ALLOCATIONS, allocation_id)))

    @extend_schema(request=InputSerializer, responses=AllocationOutput)
    def patch(self, request: MemberAPIRequest, allocation_id: str) -> Response:
        allocation = sel.get_or_404(ALLOCATIONS, allocation_id)
        changes = parse_input(self.InputSerializer, request)
        allocation = services.allocation_update(allocation=allocation, changes=changes, actor=request.user)
        return Response(_output(allocation))


ACTIONS = {
    "pause": lambda a, actor: services.allocation_pause(allocation=a, by="admin", actor=actor),
    "resume": lambda a, actor: services.allocation_resume(allocation=a, by="admin", actor=actor),
    "revoke": lambda a, actor: services.allocation_revoke(allocation=a, actor=actor),
    "unquarantine": lambda a, actor: services.allocation_unquarantine(allocation=a, actor=actor),
}


class AllocationAction(AdminAPIView):
    @extend_schema(
        request=None,
        responses=AllocationOutput,
        parameters=[OpenApiParameter("action", str, OpenApiParameter.PATH, enum=list(ACTIONS))],
    )
    def post(self, request: MemberAPIRequest, allocation_id: str, action: str) -> Response:
        if action not in ACTIONS:
            raise Http404
        allocation = sel.get_or_404(ALLOCATIONS, allocation_id)
        ACTIONS[action](allocation, request.user)
        return Response(_output(sel.get_or_404(ALLOCATIONS, allocation_id)))
