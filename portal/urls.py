from django.urls import path

from . import device, selfservice, views

app_name = "portal"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("keys/", views.keys, name="keys"),
    path("keys/<str:key_id>/rename/", views.key_rename, name="key_rename"),
    path("keys/<str:key_id>/rotate/", views.key_rotate, name="key_rotate"),
    path("keys/<str:key_id>/revoke/", views.key_revoke, name="key_revoke"),
    path("allocations/<str:allocation_id>/pause/", views.allocation_pause, name="allocation_pause"),
    path("allocations/<str:allocation_id>/resume/", views.allocation_resume, name="allocation_resume"),
    path("usage/", views.usage, name="usage"),
    path("alerts/", views.alerts, name="alerts"),
    path("device/", device.device_page, name="device"),
    path("catalogue/", selfservice.catalogue_page, name="catalogue"),
    path("catalogue/claim/", selfservice.catalogue_claim, name="catalogue_claim"),
    path("how-to-call/", views.how_to_call, name="how_to_call"),
]
