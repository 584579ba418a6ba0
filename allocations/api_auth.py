"""DRF authentication by admin bearer token (made by `manage.py create_admin_token` or in admin)."""

import datetime as dt
from typing import TYPE_CHECKING

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from .models import AdminToken, ApiKey, Member

if TYPE_CHECKING:
    from drf_spectacular.openapi import AutoSchema

# A token's last use is written at most this often, so a busy script costs no write per call.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class AdminTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Member, AdminToken] | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword or not token.strip():
            raise exceptions.AuthenticationFailed("malformed Authorization header")
        now = timezone.now()
        row = (
            AdminToken.objects.usable(now).select_related("user").filter(token_hash=ApiKey.hash(token.strip())).first()
        )
        if row is None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked token")
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            AdminToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.user, row

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class AdminTokenScheme(OpenApiAuthenticationExtension):
    target_class = "allocations.api_auth.AdminTokenAuthentication"
    name = "adminToken"

    def get_security_definition(self, auto_schema: "AutoSchema") -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An admin token from `create_admin_token`."}
