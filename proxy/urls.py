"""/v1 routes, generated from the endpoint registry. Served by proxy.handler (no middleware), which
also sends the views' whole answers (lib.asgi.Whole, not an HttpResponse: hence the casts)."""

from typing import Any, cast

from django.urls import path, re_path

from . import views
from .registry import ENDPOINTS

relay_call, models_list, models_retrieve, not_found = (
    cast(Any, view) for view in (views.relay_call, views.models_list, views.models_retrieve, views.not_found)
)

urlpatterns = [
    *(path(e.path, relay_call, {"endpoint": e.name}) for e in ENDPOINTS.values()),
    path("models", models_list),
    path("models/<path:model_id>", models_retrieve),
    re_path(r"^(?P<rest>.*)$", not_found),
]
