"""/v1 routes, generated from the endpoint registry. Served by proxy.handler (no middleware)."""

from django.urls import path, re_path

from . import views
from .registry import ENDPOINTS

urlpatterns = [
    *(path(e.path, views.relay_call, {"endpoint": e.name}) for e in ENDPOINTS.values()),
    path("models", views.models_list),
    path("models/<path:model_id>", views.models_retrieve),
    re_path(r"^(?P<rest>.*)$", views.not_found),
]
