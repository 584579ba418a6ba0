"""/api/admin/… (SPEC section 8). `pool…` paths are routed by quota.pool_api_urls."""

from django.urls import path

from . import admin_api as api

urlpatterns = [
    path("members", api.MemberList.as_view(), name="admin-api-members"),
    path("members/<str:member_id>", api.MemberDetail.as_view(), name="admin-api-member"),
    path("providers", api.ProviderList.as_view(), name="admin-api-providers"),
    path("models", api.ModelList.as_view(), name="admin-api-models"),
    path("models/<str:model_id>", api.ModelDetail.as_view(), name="admin-api-model"),
    path("prices", api.PriceList.as_view(), name="admin-api-prices"),
    path("allocations", api.AllocationList.as_view(), name="admin-api-allocations"),
    path("allocations/<str:allocation_id>", api.AllocationDetail.as_view(), name="admin-api-allocation"),
    path(
        "allocations/<str:allocation_id>/<str:action>",
        api.AllocationAction.as_view(),
        name="admin-api-allocation-action",
    ),
    path("usage", api.UsageReport.as_view(), name="admin-api-usage"),
    path("audit", api.AuditList.as_view(), name="admin-api-audit"),
]
