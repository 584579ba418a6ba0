"""Session lifetime: idle timeout by the session cookie's age (renewed on every request), and an
absolute limit counted from the sign-in."""

import time

from django.conf import settings
from django.contrib.auth import logout

from .sign_in_audit import SIGNED_IN_AT


class SessionLifetimeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        signed_in_at = request.session.get(SIGNED_IN_AT)
        if signed_in_at is not None and time.time() - signed_in_at > settings.GATEWAY_SESSION_MAX_AGE_H * 3600:
            logout(request)
        return self.get_response(request)
