"""What every admin API view shares: who may call it, what it speaks, and how a list pages."""

from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from allocations.pages import keyset_page, parse_limit


class IsStaff(BasePermission):
    """Staff = admin (SPEC section 2): every active staff member may use the whole admin API."""

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class AdminAPIView(APIView):
    permission_classes = [IsStaff]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]


def list_response(request, queryset, to_json, *, time_field: str = "created_at") -> Response:
    params = request.query_params
    rows, next_cursor = keyset_page(
        queryset, time_field=time_field, cursor=params.get("cursor"), limit=parse_limit(params.get("limit"))
    )
    return Response({"results": to_json(rows), "next": next_cursor})
