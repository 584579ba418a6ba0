"""Portal login: Django's auth form behind a failed-login limit per username and per client IP.

Failures are counted in the shared Django cache (Redis in production and tests), so the limit
holds across processes. While either counter is at its limit the form refuses before checking
the password, so a correct guess during a lockout teaches an attacker nothing.
"""

import hashlib

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from allocations.auth_failures import client_address

MAX_FAILURES_PER_USERNAME = 5
MAX_FAILURES_PER_IP = 20
WINDOW_S = 15 * 60


def client_ip(request) -> str:
    return client_address(
        remote=request.META.get("REMOTE_ADDR", ""), forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", "")
    )


def _limits() -> tuple[int, int, int]:
    return (
        getattr(settings, "PORTAL_LOGIN_MAX_FAILURES_PER_USERNAME", MAX_FAILURES_PER_USERNAME),
        getattr(settings, "PORTAL_LOGIN_MAX_FAILURES_PER_IP", MAX_FAILURES_PER_IP),
        getattr(settings, "PORTAL_LOGIN_WINDOW_S", WINDOW_S),
    )


def _keys(username: str, ip: str) -> tuple[str, str]:
    digest = hashlib.sha256((username or "").strip().casefold().encode()).hexdigest()[:32]
    return f"portal:login-fail:user:{digest}", f"portal:login-fail:ip:{ip}"


def login_locked(*, username: str, ip: str) -> bool:
    per_user, per_ip, _ = _limits()
    user_key, ip_key = _keys(username, ip)
    counts = cache.get_many([user_key, ip_key])
    return counts.get(user_key, 0) >= per_user or counts.get(ip_key, 0) >= per_ip


def login_failed(*, username: str, ip: str) -> None:
    _, _, window = _limits()
    for key in _keys(username, ip):
        # add() starts the window only on the first failure; incr() is atomic in Redis.
        cache.add(key, 0, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)


def login_succeeded(*, username: str) -> None:
    cache.delete(_keys(username, "")[0])


class RateLimitedAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        # One message for unknown user, wrong password and disabled member alike.
        "invalid_login": _("Enter a correct username and password."),
        "rate_limited": _("Too many failed sign-in attempts. Wait a few minutes and try again."),
        "password_off": _("Password sign-in is switched off here: use single sign-on."),
    }

    rate_limited = False

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request) if self.request is not None else "unknown"
        if login_locked(username=username, ip=ip):
            self.rate_limited = True
            raise ValidationError(self.error_messages["rate_limited"], code="rate_limited")
        try:
            cleaned = super().clean()
        except ValidationError:
            login_failed(username=username, ip=ip)
            raise
        login_succeeded(username=username)
        return cleaned

    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        if not password_login_allowed(user):
            raise ValidationError(self.error_messages["password_off"], code="password_off")


def password_login_allowed(user) -> bool:
    """GATEWAY_PASSWORD_LOGIN: `all`, `staff` (members sign in with single sign-on) or `off`."""
    mode = settings.GATEWAY_PASSWORD_LOGIN
    return mode == "all" or (mode == "staff" and user.is_staff)
