"""The member API (`/api/me/`, SPEC section 7): session auth with CSRF, the shared error envelope.

Every object is looked up through the member's own rows, so another member's id answers 404
for every endpoint and verb.
"""

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from allocations import services
from allocations.exceptions import ScopeForbidden
from allocations.models import Allocation, Member
from allocations.requests import MemberAPIRequest
from lib.pages import parse_limit
from lib.serializers import (
    QueryCheckedAPIView,
    StrictAwareDateTimeField,
    StrictCharField,
    StrictInputSerializer,
    parse_input,
)

from . import cards, selectors
from .serializers import AllocationCardOutput, CallOutput, KeyOutput, KeyWithPlaintextOutput, UsageOutput

ALLOCATION_PARAMETER = OpenApiParameter("allocation", str, description="One of the member's allocation ids.")


class MemberAPIView(QueryCheckedAPIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]


def _card(member: Member, allocation: Allocation) -> dict:
    return AllocationCardOutput(cards.allocation_cards(member=member, allocations=[allocation])[0]).data


def _results(items: type[serializers.Serializer]) -> type[serializers.Serializer]:
    return type(f"{items.__name__}List", (serializers.Serializer,), {"results": items(many=True)})


class AllocationList(MemberAPIView):
    @extend_schema(responses=_results(AllocationCardOutput))
    def get(self, request: MemberAPIRequest) -> Response:
        found = cards.allocation_cards(member=request.user)
        return Response({"results": AllocationCardOutput(found, many=True).data})


class AllocationDetail(MemberAPIView):
    @extend_schema(responses=AllocationCardOutput)
    def get(self, request: MemberAPIRequest, allocation_id: str) -> Response:
        allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
        return Response(_card(request.user, allocation))


class AllocationPause(MemberAPIView):
    @extend_schema(request=None, responses=AllocationCardOutput)
    def post(self, request: MemberAPIRequest, allocation_id: str) -> Response:
        allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
        services.allocation_pause(allocation=allocation, by=Allocation.PausedBy.MEMBER, actor=request.user)
        return Response(_card(request.user, allocation))


class AllocationResume(MemberAPIView):
    @extend_schema(request=None, responses=AllocationCardOutput)
    def post(self, request: MemberAPIRequest, allocation_id: str) -> Response:
        allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
        services.allocation_resume(allocation=allocation, by=Allocation.PausedBy.MEMBER, actor=request.user)
        return Response(_card(request.user, allocation))


def _allocation_filter(member: Member, value: str | None) -> Allocation | None:
    if not value:
        return None
    selectors.parse_uuid(value, field_name="allocation")
    return selectors.allocation_owned(member=member, allocation_id=value)


class Usage(MemberAPIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("from", str, description="YYYY-MM-DD; default: the first day of this month."),
            OpenApiParameter("to", str, description="YYYY-MM-DD, inclusive; default: today."),
            OpenApiParameter("group_by", str, enum=["day", "model", "allocation"]),
            ALLOCATION_PARAMETER,
        ],
        responses=UsageOutput,
    )
    def get(self, request: MemberAPIRequest) -> Response:
        params = request.query_params
        period = selectors.period_parse(from_=params.get("from"), to=params.get("to"))
        group_by = params.get("group_by") or "day"
        allocation = _allocation_filter(request.user, params.get("allocation"))
        results = selectors.usage_grouped(member=request.user, period=period, group_by=group_by, allocation=allocation)
        return Response(
            {
                "from": period.first_day.isoformat(),
                "to": period.last_day.isoformat(),
                "group_by": group_by,
                "results": results,
            }
        )


class Calls(MemberAPIView):
    @extend_schema(
        parameters=[
            ALLOCATION_PARAMETER,
            OpenApiParameter("from", str, description="YYYY-MM-DD"),
            OpenApiParameter("to", str, description="YYYY-MM-DD, inclusive"),
            OpenApiParameter("cursor", str, description="The `next` of the previous page."),
            OpenApiParameter("limit", int, description="1 to 200, default 50."),
        ],
        responses=type("CallPage", (_results(CallOutput),), {"next": serializers.CharField(allow_null=True)}),
    )
    def get(self, request: MemberAPIRequest) -> Response:
        params = request.query_params
        allocation = _allocation_filter(request.user, params.get("allocation"))
        period = None
        if params.get("from") or params.get("to"):
            period = selectors.period_parse(from_=params.get("from"), to=params.get("to"))
        records, next_cursor = selectors.calls_page(
            member=request.user,
            allocation=allocation,
            period=period,
            cursor=params.get("cursor"),
            limit=parse_limit(params.get("limit")),
        )
        return Response({"results": CallOutput(records, many=True).data, "next": next_cursor})


def _owned_allocations(member: Member, ids: Iterable[object]) -> list[Allocation]:
    unique = list(dict.fromkeys(ids))
    for i in unique:
        selectors.parse_uuid(i, field_name="allocations")
    # An id that is not the member's own is "not found", exactly as if it did not exist.
    return [selectors.allocation_owned(member=member, allocation_id=i) for i in unique]


owned_allocations = _owned_allocations  # also the device sign-in's choice of allocations


class KeyName(StrictInputSerializer):
    name = StrictCharField(max_length=100)
    expires_at = StrictAwareDateTimeField(
        required=False, allow_null=True, help_text="ISO 8601 with a time zone; null: the key never expires."
    )


class KeyList(MemberAPIView):
    class InputSerializer(KeyName):
        allocations = serializers.ListField(child=StrictCharField(), allow_empty=False, help_text="Allocation ids.")

    @extend_schema(responses=_results(KeyOutput))
    def get(self, request: MemberAPIRequest) -> Response:
        return Response({"results": KeyOutput(selectors.keys_of(member=request.user), many=True).data})

    @extend_schema(request=InputSerializer, responses={201: KeyWithPlaintextOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        data = parse_input(self.InputSerializer, request)
        allocations = _owned_allocations(request.user, data["allocations"])
        try:
            key, plaintext = services.api_key_create(
                member=request.user,
                name=data["name"],
                allocations=allocations,
                expires_at=data.get("expires_at"),
                actor=request.user,
            )
        except ScopeForbidden:  # pragma: no cover - _owned_allocations already 404s
            raise Http404 from None
        return Response({**KeyOutput(key).data, "key": plaintext}, status=status.HTTP_201_CREATED)


class KeyDetail(MemberAPIView):
    class InputSerializer(KeyName):
        """A new name, a new expiry, or both."""

        name = StrictCharField(max_length=100, required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if "name" not in attrs and "expires_at" not in attrs:
                raise serializers.ValidationError({"name": ["This field is required."]})
            return attrs

    @extend_schema(responses=KeyOutput)
    def get(self, request: MemberAPIRequest, key_id: str) -> Response:
        return Response(KeyOutput(selectors.key_owned(member=request.user, key_id=key_id)).data)

    @extend_schema(request=InputSerializer, responses=KeyOutput)
    def patch(self, request: MemberAPIRequest, key_id: str) -> Response:
        key = selectors.key_owned(member=request.user, key_id=key_id)
        data = parse_input(self.InputSerializer, request)
        with transaction.atomic():  # a refused expiry leaves the name as it was
            if "name" in data:
                key = services.api_key_rename(key=key, name=data["name"], actor=request.user)
            if "expires_at" in data:
                key = services.api_key_set_expiry(key=key, expires_at=data["expires_at"], actor=request.user)
        return Response(KeyOutput(key).data)

    @extend_schema(responses={204: None})
    def delete(self, request: MemberAPIRequest, key_id: str) -> Response:
        key = selectors.key_owned(member=request.user, key_id=key_id)
        services.api_key_revoke(key=key, actor=request.user, now=timezone.now())
        return Response(status=status.HTTP_204_NO_CONTENT)


class KeyRotate(MemberAPIView):
    @extend_schema(request=None, responses=KeyWithPlaintextOutput)
    def post(self, request: MemberAPIRequest, key_id: str) -> Response:
        key = selectors.key_owned(member=request.user, key_id=key_id)
        key, plaintext = services.api_key_rotate(key=key, actor=request.user)
        return Response({**KeyOutput(key).data, "key": plaintext})
