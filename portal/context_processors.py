from typing import Any

from django.conf import settings
from django.http import HttpRequest


def portal(request: HttpRequest) -> dict[str, Any]:
    return {
        "billing_tz": settings.GATEWAY_BILLING_TIMEZONE,
        "sso_label": settings.GATEWAY_OIDC_LABEL if settings.GATEWAY_OIDC_ISSUER else "",
        "password_login": settings.GATEWAY_PASSWORD_LOGIN,
    }
