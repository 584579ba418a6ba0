from django.conf import settings


def portal(request):
    return {
        "billing_tz": settings.GATEWAY_BILLING_TIMEZONE,
        "sso_label": settings.GATEWAY_OIDC_LABEL if settings.GATEWAY_OIDC_ISSUER else "",
        "password_login": settings.GATEWAY_PASSWORD_LOGIN,
    }
