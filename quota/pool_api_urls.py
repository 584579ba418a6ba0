"""Included at "api/admin/" before allocations.api_urls: /api/admin/pool, …/pool/preview, …/pool/rebalance."""

from django.urls import path

from . import pool_api

urlpatterns = [
    path("pool", pool_api.PoolView.as_view(), name="admin-pool"),
    path("pool/preview", pool_api.PoolPreviewView.as_view(), name="admin-pool-preview"),
    path("pool/rebalance", pool_api.PoolRebalanceView.as_view(), name="admin-pool-rebalance"),
]
