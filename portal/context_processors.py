from django.conf import settings


def portal(request):
    return {"billing_tz": settings.GATEWAY_BILLING_TIMEZONE}
