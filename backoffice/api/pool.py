"""Admin API for the adaptive pool: GET/PATCH /api/admin/pool, GET /api/admin/pool/preview,
POST /api/admin/pool/rebalance. Staff only (anonymous → 401, non-staff → 403)."""

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from allocations.exceptions import BadRequest
from allocations.requests import MemberAPIRequest
from lib.serializers import QueryCheckedAPIView
from quota.pool import (
    PoolState,
    RebalanceRefused,
    Share,
    log_describe,
    pool_config_update,
    pool_overview,
    pool_plan,
    pool_rebalance,
    pool_state,
)
from quota.pool_models import RebalanceLog

from .base import IsStaff


class PoolView(QueryCheckedAPIView):
    permission_classes = [IsStaff]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: MemberAPIRequest) -> Response:
        return Response(pool_overview())

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        responses=OpenApiTypes.OBJECT,
        description="Any of `total_tokens_per_month`, `floor_per_allocation`.",
    )
    def patch(self, request: MemberAPIRequest) -> Response:
        if not isinstance(request.data, dict):
            raise BadRequest("expected a JSON object")
        pool_config_update(changes=dict(request.data), actor=request.user)
        return Response(pool_overview())


def _plan_body(state: PoolState, shares: list[Share]) -> dict:
    members = {a.pk: a for a in state.members}
    return {
        "allocations": [
            {
                "id": str(s.allocation_id),
                "member": members[s.allocation_id].member.username,
                "model": members[s.allocation_id].model.slug,
                "usage": s.usage,
                "quota_before": members[s.allocation_id].quota_tokens_per_month,
                "quota_after": s.quota,
                "reason": s.reason,
            }
            for s in shares
        ]
    }


class PoolPreviewView(QueryCheckedAPIView):
    permission_classes = [IsStaff]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: MemberAPIRequest) -> Response:
        state = pool_state(now=timezone.now())
        try:
            shares = pool_plan(state)
        except RebalanceRefused as exc:
            return Response({**pool_overview(), "refused": exc.message, "allocations": []})
        return Response({**pool_overview(), "refused": None, **_plan_body(state, shares)})


class PoolRebalanceView(QueryCheckedAPIView):
    permission_classes = [IsStaff]

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request: MemberAPIRequest) -> Response:
        result = pool_rebalance(trigger=RebalanceLog.Trigger.API, actor=request.user)
        if result.refused:
            raise RebalanceRefused(result.refused)
        assert result.log is not None, "a rebalance that was not refused has its log"
        entries = result.log.entries.select_related("allocation").order_by("allocation_id")
        body = log_describe(result.log)
        body["allocations"] = [
            {
                "id": str(e.allocation_id),
                "usage": e.usage,
                "quota_before": e.quota_before,
                "quota_after": e.quota_after,
                "reason": e.reason,
                "applied": e.applied,
            }
            for e in entries
        ]
        return Response(body)
