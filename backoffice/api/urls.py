"""/api/admin/… (SPEC section 8): members, tokens, providers, models, prices, allocations, usage, audit, pool."""

from django.urls import path

from . import allocations, catalog, deployments, groups, members, pool, reports, selfservice

urlpatterns = [
    path("pool", pool.PoolView.as_view(), name="admin-pool"),
    path("pool/preview", pool.PoolPreviewView.as_view(), name="admin-pool-preview"),
    path("pool/rebalance", pool.PoolRebalanceView.as_view(), name="admin-pool-rebalance"),
    path("members", members.MemberList.as_view(), name="admin-api-members"),
    path("members/<str:member_id>", members.MemberDetail.as_view(), name="admin-api-member"),
    path("members/<str:member_id>/invitation", members.MemberInvitation.as_view(), name="admin-api-member-invitation"),
    path(
        "members/<str:member_id>/reclaim-locks/<path:model>/unlock",
        selfservice.ReclaimUnlock.as_view(),
        name="admin-api-member-reclaim-unlock",
    ),
    path("keys/<str:key_id>", selfservice.KeyScopeDetail.as_view(), name="admin-api-key"),
    path("members/<str:member_id>/access", groups.MemberAccess.as_view(), name="admin-api-member-access"),
    path("groups", groups.GroupList.as_view(), name="admin-api-groups"),
    path("groups/<str:group_id>", groups.GroupDetail.as_view(), name="admin-api-group"),
    path("groups/<str:group_id>/members", groups.GroupMembers.as_view(), name="admin-api-group-members"),
    path("group-rules", groups.GroupRuleList.as_view(), name="admin-api-group-rules"),
    path("group-rules/test", groups.GroupRuleTest.as_view(), name="admin-api-group-rules-test"),
    path("group-rules/<str:rule_id>", groups.GroupRuleDetail.as_view(), name="admin-api-group-rule"),
    path("tokens", members.AdminTokenList.as_view(), name="admin-api-tokens"),
    path("tokens/<str:token_id>", members.AdminTokenDetail.as_view(), name="admin-api-token"),
    path("providers", catalog.ProviderList.as_view(), name="admin-api-providers"),
    path("providers/<str:provider_id>/test", deployments.ProviderTest.as_view(), name="admin-api-provider-test"),
    path("models", catalog.ModelList.as_view(), name="admin-api-models"),
    path("models/<str:model_id>", catalog.ModelDetail.as_view(), name="admin-api-model"),
    path("models/<str:model_id>/deployments", deployments.DeploymentList.as_view(), name="admin-api-deployments"),
    path(
        "models/<str:model_id>/deployments/<str:deployment_id>",
        deployments.DeploymentDetail.as_view(),
        name="admin-api-deployment",
    ),
    path("models/<str:model_id>/access", groups.ModelAccess.as_view(), name="admin-api-model-access"),
    path("prices", catalog.PriceList.as_view(), name="admin-api-prices"),
    path("allocations", allocations.AllocationList.as_view(), name="admin-api-allocations"),
    path("allocations/<str:allocation_id>", allocations.AllocationDetail.as_view(), name="admin-api-allocation"),
    path(
        "allocations/<str:allocation_id>/<str:action>",
        allocations.AllocationAction.as_view(),
        name="admin-api-allocation-action",
    ),
    path("usage", reports.UsageReport.as_view(), name="admin-api-usage"),
    path("audit", reports.AuditList.as_view(), name="admin-api-audit"),
]
