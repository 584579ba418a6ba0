"""What every admin API view shares: who may call it, what it speaks, how a list pages, and how
a list or detail is looked up by a public reference."""

import contextlib
import uuid
from collections.abc import Callable
from typing import TypeVar

from django.db.models import Manager, Model, QuerySet
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocations.exceptions import BadRequest
from allocations.models import Member, Provider
from lib.json_depth import DepthLimitedJSONParser
from lib.pages import keyset_page, parse_limit
from lib.serializers import QueryCheckedAPIView

_M = TypeVar("_M", bound=Model)

PAGE_PARAMETERS = [
    OpenApiParameter("cursor", str, description="The `next` of the previous page."),
    OpenApiParameter("limit", int, description="1 to 200, default 50."),
]


class IsStaff(BasePermission):
    """Staff = admin (SPEC section 2): every active staff member may use the whole admin API."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class AdminAPIView(QueryCheckedAPIView):
    permission_classes = [IsStaff]
    renderer_classes = [JSONRenderer]
    parser_classes = [DepthLimitedJSONParser]


def list_response(
    request: Request,
    queryset: QuerySet[_M],
    output: type[serializers.BaseSerializer],
    *,
    time_field: str = "created_at",
    prepare: Callable[[list[_M]], list[_M]] | None = None,
) -> Response:
    """A keyset page (newest first, never counted) rendered by the `output` serializer."""
    params = request.query_params
    rows, next_cursor = keyset_page(
        queryset, time_field=time_field, cursor=params.get("cursor"), limit=parse_limit(params.get("limit"))
    )
    if prepare is not None:
        rows = prepare(rows)
    return Response({"results": output(rows, many=True).data, "next": next_cursor})


def _by_name_or_id(queryset: QuerySet[_M] | Manager[_M], field: str, ref: str) -> _M | None:
    found = queryset.filter(**{field: ref}).first()
    if found is None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            found = queryset.filter(pk=uuid.UUID(ref)).first()
    return found


def member_by(ref: object) -> Member:
    """A member by case-folded username or by id; 400 naming `member` when there is none."""
    member = _by_name_or_id(Member.objects, "username", ref.strip().casefold()) if isinstance(ref, str) else None
    if member is None:
        raise BadRequest("no such member", fields={"member": ["No member with that username or id."]})
    return member


def provider_by(ref: object) -> Provider:
    provider = _by_name_or_id(Provider.objects, "name", ref) if isinstance(ref, str) else None
    if provider is None:
        raise BadRequest("no such provider", fields={"provider": ["No provider with that name or id."]})
    return provider
