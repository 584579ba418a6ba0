"""Admin API: usage reports (JSON or CSV) and the audit trail."""

import csv
import io
from collections.abc import Mapping
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from allocations.models import AuditEvent
from allocations.requests import MemberAPIRequest
from lib.serializers import MoneyField, UnderscoreNamesMixin

from . import selectors as sel
from .base import PAGE_PARAMETERS, AdminAPIView, list_response
from .serializers import AuditOutput, page_of


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        view = (renderer_context or {}).get("view")
        columns = getattr(view, "csv_columns", None) or sorted({k for row in data.get("results", []) for k in row})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in data.get("results", []):
            writer.writerow({k: _csv_safe(row.get(k)) for k in columns})
        # The byte-order mark makes spreadsheet tools read the file as UTF-8 (zh-Hant names).
        return ("\ufeff" + out.getvalue()).encode(self.charset)


def _csv_safe(value: object) -> object:
    # Spreadsheets run cells that start with these as formulas (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


class UsageRow(serializers.Serializer):
    member_id = serializers.CharField(required=False, allow_null=True)
    member = serializers.CharField(required=False, allow_null=True)
    allocation_id = serializers.CharField(required=False, allow_null=True)
    model_id = serializers.CharField(required=False, allow_null=True)
    model = serializers.CharField(required=False, allow_null=True)
    calls = serializers.IntegerField()
    unpriced_calls = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = MoneyField(allow_null=True, help_text="null when every call that carried usage was unpriced")


class UsageReportOutput(UnderscoreNamesMixin, serializers.Serializer):
    """Usage in [from, to), grouped by member, allocation or model."""

    group_by = serializers.ChoiceField(choices=list(sel.GROUPS))
    from_ = serializers.DateTimeField()
    to = serializers.DateTimeField()
    results = UsageRow(many=True)


class UsageReport(AdminAPIView):
    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", str, enum=list(sel.GROUPS), description="Default member."),
            OpenApiParameter("from", str, description="A date (YYYY-MM-DD) or ISO 8601; default this month."),
            OpenApiParameter("to", str, description="A date (inclusive) or ISO 8601 (exclusive)."),
            OpenApiParameter("format", str, enum=["json", "csv"]),
        ],
        responses={(200, "application/json"): UsageReportOutput, (200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request: MemberAPIRequest) -> Response:
        params = request.query_params
        group_by = params.get("group_by") or "member"
        start, end = sel.usage_range(start=params.get("from"), end=params.get("to"), now=timezone.now())
        results = sel.usage_report(group_by=group_by, start=start, end=end)
        self.csv_columns = sel.usage_columns(group_by)
        return Response({"group_by": group_by, "from": start.isoformat(), "to": end.isoformat(), "results": results})

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        if response.status_code >= 400:  # errors keep the JSON envelope whatever the format asked for
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        elif isinstance(getattr(request, "accepted_renderer", None), CSVRenderer):
            group_by = response.data.get("group_by", "usage")
            response["Content-Disposition"] = f'attachment; filename="usage-by-{group_by}.csv"'
        return super().finalize_response(request, response, *args, **kwargs)


class AuditList(AdminAPIView):
    @extend_schema(
        parameters=[*PAGE_PARAMETERS, *(OpenApiParameter(n, str) for n in ("action", "target_type", "target_id"))],
        responses=page_of(AuditOutput, "AuditPage"),
    )
    def get(self, request: MemberAPIRequest) -> Response:
        queryset = AuditEvent.objects.all()
        for name in ("action", "target_type", "target_id"):
            if request.query_params.get(name):
                queryset = queryset.filter(**{name: request.query_params[name]})
        return list_response(request, queryset, AuditOutput)
