from typing import Any

from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView


class FaviconView(RedirectView):
    """/favicon.ico, asked for by browsers on every page without an icon link (admin, API, errors)."""

    permanent = True

    def get_redirect_url(self, *args: Any, **kwargs: Any) -> str:
        return static("favicon.svg")


urlpatterns = [
    path("", RedirectView.as_view(url="/portal/", permanent=False)),
    path("favicon.ico", FaviconView.as_view()),
]
