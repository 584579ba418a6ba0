"""Sign-in (the portal's and Django admin's): Django's auth forms behind one failed-login limit per
username and per client IP, the same counters for both login pages; and the password reset form
behind a limit of requests per target address and per client IP.

Counts live in the shared Django cache (Redis in production and tests), so the limits hold across
processes. While either counter is at its limit the form refuses before checking the password,
so a correct guess during a lockout teaches an attacker nothing. Every refusal of a password
sign-in reads the same whatever the password was, so the form is no oracle for one.
"""

import hashlib
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from allocations.models import Member
from lib.http import client_ip

MAX_FAILURES_PER_USERNAME = 5
MAX_FAILURES_PER_IP = 20
WINDOW_S = 15 * 60
# Password reset mails: requests per target address and per client IP in RESET_WINDOW_S.
MAX_RESETS_PER_EMAIL = 3
MAX_RESETS_PER_IP = 10
RESET_WINDOW_S = 60 * 60


def _limits() -> tuple[int, int, int]:
    return (
        getattr(settings, "PORTAL_LOGIN_MAX_FAILURES_PER_USERNAME", MAX_FAILURES_PER_USERNAME),
        getattr(settings, "PORTAL_LOGIN_MAX_FAILURES_PER_IP", MAX_FAILURES_PER_IP),
        getattr(settings, "PORTAL_LOGIN_WINDOW_S", WINDOW_S),
    )


def _keys(username: str, ip: str, kind: str = "login-fail") -> tuple[str, str]:
    digest = hashlib.sha256((username or "").strip().casefold().encode()).hexdigest()[:32]
    return f"portal:{kind}:user:{digest}", f"portal:{kind}:ip:{ip}"


def _count(keys: Iterable[str], window: int) -> None:
    for key in keys:
        # add() starts the window only on the first count; incr() is atomic in Redis.
        cache.add(key, 0, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)


def login_locked(*, username: str, ip: str) -> bool:
    per_user, per_ip, _ = _limits()
    user_key, ip_key = _keys(username, ip)
    counts = cache.get_many([user_key, ip_key])
    return counts.get(user_key, 0) >= per_user or counts.get(ip_key, 0) >= per_ip


def login_failed(*, username: str, ip: str) -> None:
    _count(_keys(username, ip), _limits()[2])


def password_reset_allowed(*, email: str, ip: str) -> bool:
    """Counts a reset request for `email` from `ip`; False once either is past its limit. Every
    request counts, for a known address or not, so the answer says nothing about who exists."""
    per_email = getattr(settings, "PORTAL_RESET_MAX_PER_EMAIL", MAX_RESETS_PER_EMAIL)
    per_ip = getattr(settings, "PORTAL_RESET_MAX_PER_IP", MAX_RESETS_PER_IP)
    keys = _keys(email, ip, kind="reset")
    counts = cache.get_many(list(keys))
    if counts.get(keys[0], 0) >= per_email or counts.get(keys[1], 0) >= per_ip:
        return False
    _count(keys, getattr(settings, "PORTAL_RESET_WINDOW_S", RESET_WINDOW_S))
    return True


def login_succeeded(*, username: str) -> None:
    cache.delete(_keys(username, "")[0])


class RateLimitedAuthenticationForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        # One message for unknown user, wrong password and disabled member alike.
        "invalid_login": _("Enter a correct username and password."),
        "invalid_login_staff": _(
            "Enter a correct username and password of a staff account: members use single sign-on."
        ),
        "rate_limited": _("Too many failed sign-in attempts. Wait a few minutes and try again."),
        "password_off": _("Password sign-in is switched off here: use single sign-on."),
    }

    rate_limited = False

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        ip = (client_ip(self.request) if self.request is not None else None) or "unknown"
        if sign_in_mode() == "off":  # refused before any password is checked
            raise ValidationError(self.error_messages["password_off"], code="password_off")
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

    def confirm_login_allowed(self, user: Member) -> None:
        super().confirm_login_allowed(user)
        if not password_login_allowed(user):  # the same refusal as a wrong password's
            raise self.get_invalid_login_error()

    def get_invalid_login_error(self) -> ValidationError:
        if sign_in_mode() == "staff":
            return ValidationError(self.error_messages["invalid_login_staff"], code="invalid_login")
        return super().get_invalid_login_error()


class RateLimitedPasswordResetForm(PasswordResetForm):
    """Django's reset form; past a limit (per target address, per client IP) no mail is sent and
    the form says to wait."""

    rate_limited = False

    def __init__(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request

    def clean_email(self) -> str:
        email = self.cleaned_data["email"]
        ip = (client_ip(self.request) if self.request is not None else None) or "unknown"
        if not password_reset_allowed(email=email, ip=ip):
            self.rate_limited = True
            raise ValidationError(
                _("Too many password reset requests. Wait an hour and try again."), code="rate_limited"
            )
        return email


def sign_in_mode() -> str:
    """GATEWAY_PASSWORD_LOGIN: `all`, `staff` (members sign in with single sign-on) or `off`."""
    return settings.GATEWAY_PASSWORD_LOGIN


def password_login_allowed(user: Member) -> bool:
    mode = sign_in_mode()
    return mode == "all" or (mode == "staff" and user.is_staff)
