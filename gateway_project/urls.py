from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from backoffice.admin import member_page, overview

urlpatterns = [
    # Staff pages beside the admin's own: the spend overview and the member pages.
    path("admin/", include(overview.urls() + member_page.urls())),
    path("admin/", admin.site.urls),
    path("accounts/", include("portal.auth_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/admin/", include("backoffice.api.urls")),
    path("api/me/", include("portal.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file: no inline script under the CSP.
    path("api/schema/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("portal/", include("portal.urls")),
    path("oauth/", include("portal.oauth_urls")),
    path("install/", include("portal.install_urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("v1/", include("proxy.urls")),
    path("", include("portal.root_urls")),
]
