"""DRF authentication by admin bearer token (made by `manage.py create_admin_token`)."""

from rest_framework import authentication, exceptions

from .models import AdminToken, ApiKey


class AdminTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword or not token.strip():
            raise exceptions.AuthenticationFailed("malformed Authorization header")
        row = (
            AdminToken.objects.select_related("user")
            .filter(token_hash=ApiKey.hash(token.strip()), revoked_at__isnull=True)
            .first()
        )
        if row is None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("invalid token")
        return row.user, row

    def authenticate_header(self, request):
        return self.keyword
