"""Session lifetime (idle timeout by the session cookie's age, renewed on every request, and an
absolute limit counted from the sign-in) and the pages' Content-Security-Policy."""

import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

from .sign_in_audit import SIGNED_IN_AT


class SessionLifetimeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        signed_in_at = request.session.get(SIGNED_IN_AT)
        if signed_in_at is not None and time.time() - signed_in_at > settings.GATEWAY_SESSION_MAX_AGE_H * 3600:
            logout(request)
        return self.get_response(request)


# Pages load scripts, styles, images and fonts from the gateway itself only, and no inline script
# or style at all: an injected <script> or style attribute does nothing. The API docs page
# (drf-spectacular's Swagger UI) keeps one inline <style> block of its own, so styles alone are
# relaxed there.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
API_DOCS_POLICY = CONTENT_SECURITY_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
API_DOCS_PATH = "/api/schema/docs/"


class ContentSecurityPolicyMiddleware:
    """Sends the Content-Security-Policy header on every response Django renders (portal, admin,
    the JSON APIs); `/v1` never passes through Django's middleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            docs = request.path_info.startswith(API_DOCS_PATH)
            response["Content-Security-Policy"] = API_DOCS_POLICY if docs else CONTENT_SECURITY_POLICY
        return response
