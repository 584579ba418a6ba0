from django.contrib import admin
from django.urls import include, path

from quota import admin_members, admin_overview

urlpatterns = [
    # Staff pages beside the admin's own: the spend overview and the member pages.
    path("admin/", include(admin_overview.urls() + admin_members.urls())),
    path("admin/", admin.site.urls),
    path("accounts/", include("portal.auth_urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/admin/", include("quota.pool_api_urls")),  # /api/admin/pool*
    path("api/admin/", include("quota.admin_api_urls")),
    path("api/me/", include("portal.api_urls")),
    path("portal/", include("portal.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("v1/", include("proxy.urls")),
    path("", include("portal.root_urls")),
]
