"""The member API (`/api/me/`, SPEC section 7): session auth with CSRF, the shared error envelope.

Every object is looked up through the member's own rows, so another member's id answers 404
for every endpoint and verb.
"""

from django.http import Http404
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from allocations import services
from allocations.exceptions import BadRequest, ScopeForbidden
from allocations.models import Allocation

from . import cards, selectors

MAX_CALLS_LIMIT = 200


class MemberAPIView(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]


def _only_fields(data, allowed: set[str]) -> dict:
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}", fields={name: ["Unknown field."] for name in unknown})
    return data


def _name(data) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100:
        raise BadRequest("name must be a string of 1 to 100 characters", fields={"name": ["1 to 100 characters."]})
    return name


def _expires_at(data):
    """An aware ISO 8601 date-time, or None (never expires)."""
    value = data.get("expires_at")
    if value is None:
        return None
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is None or timezone.is_naive(parsed):
        raise BadRequest(
            "expires_at must be an ISO 8601 date-time with a time zone, or null",
            fields={"expires_at": ["An ISO 8601 date-time with a time zone, or null."]},
        )
    return parsed


def _card(member, allocation) -> dict:
    return cards.allocation_card_json(cards.allocation_cards(member=member, allocations=[allocation])[0])


class AllocationList(MemberAPIView):
    def get(self, request):
        found = cards.allocation_cards(member=request.user)
        return Response({"results": [cards.allocation_card_json(c) for c in found]})


class AllocationDetail(MemberAPIView):
    def get(self, request, allocation_id):
        allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
        return Response(_card(request.user, allocation))


class AllocationPause(MemberAPIView):
    def post(self, request, allocation_id):
        allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
        services.allocation_pause(allocation=allocation, by=Allocation.PausedBy.MEMBER, actor=request.user)
        return Response(_card(request.user, allocation))


class AllocationResume(MemberAPIView):
    def post(self, request, allocation_id):
        allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
        services.allocation_resume(allocation=allocation, by=Allocation.PausedBy.MEMBER, actor=request.user)
        return Response(_card(request.user, allocation))


def _allocation_filter(member, value):
    if not value:
        return None
    selectors.parse_uuid(value, field_name="allocation")
    return selectors.allocation_owned(member=member, allocation_id=value)


class Usage(MemberAPIView):
    def get(self, request):
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


def _limit(value) -> int:
    if value in (None, ""):
        return 50
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_CALLS_LIMIT:
        raise BadRequest("limit is out of range", fields={"limit": [f"A whole number from 1 to {MAX_CALLS_LIMIT}."]})
    return limit


class Calls(MemberAPIView):
    def get(self, request):
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
            limit=_limit(params.get("limit")),
        )
        return Response({"results": [selectors.call_json(r) for r in records], "next": next_cursor})


def _owned_allocations(member, ids) -> list[Allocation]:
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise BadRequest("allocations must be a non-empty list of ids", fields={"allocations": ["A list of ids."]})
    unique = list(dict.fromkeys(ids))
    for i in unique:
        selectors.parse_uuid(i, field_name="allocations")
    # An id that is not the member's own is "not found", exactly as if it did not exist.
    return [selectors.allocation_owned(member=member, allocation_id=i) for i in unique]


class KeyList(MemberAPIView):
    def get(self, request):
        return Response({"results": [selectors.key_json(k) for k in selectors.keys_of(member=request.user)]})

    def post(self, request):
        data = _only_fields(request.data, {"name", "allocations", "expires_at"})
        name = _name(data)
        allocations = _owned_allocations(request.user, data.get("allocations"))
        try:
            key, plaintext = services.api_key_create(
                member=request.user,
                name=name,
                allocations=allocations,
                expires_at=_expires_at(data),
                actor=request.user,
            )
        except ScopeForbidden:  # pragma: no cover - _owned_allocations already 404s
            raise Http404 from None
        return Response({**selectors.key_json(key), "key": plaintext}, status=status.HTTP_201_CREATED)


class KeyDetail(MemberAPIView):
    def get(self, request, key_id):
        return Response(selectors.key_json(selectors.key_owned(member=request.user, key_id=key_id)))

    def patch(self, request, key_id):
        key = selectors.key_owned(member=request.user, key_id=key_id)
        data = _only_fields(request.data, {"name", "expires_at"})
        if "name" in data or "expires_at" not in data:
            key = services.api_key_rename(key=key, name=_name(data), actor=request.user)
        if "expires_at" in data:
            key = services.api_key_set_expiry(key=key, expires_at=_expires_at(data), actor=request.user)
        return Response(selectors.key_json(key))

    def delete(self, request, key_id):
        key = selectors.key_owned(member=request.user, key_id=key_id)
        services.api_key_revoke(key=key, actor=request.user, now=timezone.now())
        return Response(status=status.HTTP_204_NO_CONTENT)


class KeyRotate(MemberAPIView):
    def post(self, request, key_id):
        key = selectors.key_owned(member=request.user, key_id=key_id)
        key, plaintext = services.api_key_rotate(key=key, actor=request.user)
        return Response({**selectors.key_json(key), "key": plaintext})
