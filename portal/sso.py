"""Single sign-on through any OpenID Connect provider, on mozilla-django-oidc.

Everything comes from the `GATEWAY_OIDC_*` settings; the provider's endpoints are read from its
discovery document (`<issuer>/.well-known/openid-configuration`) when a sign-in needs them and
kept for an hour, so no request of a signed-in member waits on the identity provider.

Who gets in: a verified email (the `email_verified` claim true) in one of the allowed domains.
An identity is remembered by its `sub` (Member.sso_subject) and matched on it afterwards. At an
identity's first sign-in an existing member with that email is linked only when the account is
neither staff nor superuser and not linked to another identity; an admin account is linked by a
superuser in admin (the refused sign-in's audit event names the `sub` to enter), or by its member:
signed in with the password, they confirm at /accounts/sso/link/ and sign in at the IdP, which
links that identity to the signed-in account (both credentials proven). Otherwise a new
member is created with the case-folded email as username and email. A disabled member is refused.
With GATEWAY_OIDC_STAFF_GROUPS set, every sign-in sets the staff flag from the `groups` claim, both
ways; a superuser's roles are never changed by single sign-on.
"""

import logging
import threading
import time
from typing import Any, NoReturn

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from allocations.audit import NamedActor, audit_record
from allocations.exceptions import GatewayError
from allocations.models import Member
from allocations.requests import MemberRequest
from allocations.services import member_create, member_link_sso, member_set_roles

log = logging.getLogger(__name__)

# Audit events of members created or promoted on first sign-in name "sso" as their actor.
SSO_ACTOR = NamedActor(username="sso")
REFUSED_KEY = "sso_refused"
LINK_KEY = "sso_link_member"  # the session's confirmed request to link the signed-in member
DISCOVERY_TTL_S = 3600

_ENDPOINTS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_discovery: dict = {}
_discovery_lock = threading.Lock()


def sso_enabled() -> bool:
    return bool(settings.GATEWAY_OIDC_ISSUER)


def discovery() -> dict:
    """The provider's discovery document, fetched at most once an hour per process."""
    issuer = settings.GATEWAY_OIDC_ISSUER.rstrip("/")
    with _discovery_lock:
        cached = _discovery.get(issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        response = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        document = response.json()
        _discovery[issuer] = (time.monotonic() + DISCOVERY_TTL_S, document)
        return document


def oidc_setting(attr: str, *default: Any) -> Any:
    """mozilla-django-oidc's settings, answered from the gateway's own."""
    if attr in _ENDPOINTS:
        return discovery()[_ENDPOINTS[attr]]
    scopes = "openid email profile" + (" groups" if settings.GATEWAY_OIDC_STAFF_GROUPS else "")
    derived = {
        "OIDC_RP_CLIENT_ID": settings.GATEWAY_OIDC_CLIENT_ID,
        "OIDC_RP_CLIENT_SECRET": settings.GATEWAY_OIDC_CLIENT_SECRET,
        "OIDC_RP_SIGN_ALGO": "RS256",
        "OIDC_RP_IDP_SIGN_KEY": None,
        "OIDC_RP_SCOPES": scopes,
        "OIDC_USE_PKCE": True,
        "OIDC_TIMEOUT": 10,
        "LOGIN_REDIRECT_URL": "/portal/",
        "LOGIN_REDIRECT_URL_FAILURE": "/accounts/sso/refused/",
    }
    if attr in derived:
        return derived[attr]
    return import_from_settings(attr, *default)


def _endpoint(attr: str) -> property:
    return property(lambda self: oidc_setting(attr))


def _email_domain(email: str) -> str:
    return email.rpartition("@")[2]


class GatewayOIDCBackend(OIDCAuthenticationBackend):
    """Signs members in from the provider's verified claims; every refusal says why and is audited."""

    get_settings = staticmethod(oidc_setting)
    OIDC_OP_TOKEN_ENDPOINT = _endpoint("OIDC_OP_TOKEN_ENDPOINT")
    OIDC_OP_USER_ENDPOINT = _endpoint("OIDC_OP_USER_ENDPOINT")
    OIDC_OP_JWKS_ENDPOINT = _endpoint("OIDC_OP_JWKS_ENDPOINT")
    OIDC_RP_CLIENT_ID = _endpoint("OIDC_RP_CLIENT_ID")
    OIDC_RP_CLIENT_SECRET = _endpoint("OIDC_RP_CLIENT_SECRET")
    OIDC_RP_SIGN_ALGO = _endpoint("OIDC_RP_SIGN_ALGO")
    OIDC_RP_IDP_SIGN_KEY = _endpoint("OIDC_RP_IDP_SIGN_KEY")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django builds a backend for every request of a signed-in member (get_user): the
        # provider's endpoints are looked up only when a sign-in uses them (the properties above).
        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Member | None:
        if not sso_enabled() or request is None or "code" not in request.GET:
            return None
        return super().authenticate(request, **kwargs)

    def get_user(self, user_id: object) -> Member | None:
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    def refuse(self, reason: str, *, email: str = "", subject: str = "") -> NoReturn:
        self.request.session[REFUSED_KEY] = reason
        audit_record(
            actor=None,
            action="login_failed",
            target=None,
            target_type="member",
            target_id=(email or "unknown")[:64],
            after={"method": "sso", "reason": reason, **({"sso_subject": subject} if subject else {})},
        )
        raise SuspiciousOperation(reason)

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        claims = super().get_userinfo(access_token, id_token, payload)
        if not claims.get("sub") or str(claims["sub"]) != str(payload.get("sub")):
            self.refuse(_("Your identity provider's answers do not agree. Try again."))
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        email = (claims.get("email") or "").strip().casefold()
        if not email:
            self.refuse(_("Your identity provider did not share an email address."))
        if claims.get("email_verified") not in (True, "true", "True"):
            self.refuse(
                _("Your email address %(email)s is not verified by your identity provider.") % {"email": email},
                email=email,
            )
        allowed = [d.casefold().lstrip("@") for d in settings.GATEWAY_OIDC_ALLOWED_DOMAINS]
        if allowed and _email_domain(email) not in allowed:
            self.refuse(
                _("Accounts of %(domain)s cannot sign in here. Use your organisation's account.")
                % {"domain": _email_domain(email)},
                email=email,
            )
        return True

    def filter_users_by_claims(self, claims: dict[str, Any]) -> list[Member]:
        subject = str(claims["sub"])
        linked = list(Member.objects.filter(sso_subject=subject))
        linking = self._confirmed_link()
        if linking is not None:
            return [self._link_own(linking, subject, linked, claims)]
        if linked:
            return linked
        email = claims["email"].strip().casefold()
        found = list(Member.objects.filter(email=email))
        if len(found) > 1:
            self.refuse(_("Several accounts use %(email)s: ask an admin.") % {"email": email}, email=email)
        if found and found[0].sso_subject:
            self.refuse(_("Your account is linked to another identity of your provider: ask an admin."), email=email)
        if found and (found[0].is_staff or found[0].is_superuser):
            self.refuse(
                _(
                    "Your account has admin rights: sign in with your password and link single sign-on at "
                    "/accounts/sso/link/, or ask a superuser to link it."
                ),
                email=email,
                subject=subject,
            )
        return found

    def _confirmed_link(self) -> Member | None:
        """The signed-in member who confirmed linking their account at /accounts/sso/link/."""
        wanted = self.request.session.pop(LINK_KEY, None)
        user = getattr(self.request, "user", None)
        if wanted and user is not None and user.is_authenticated and str(user.pk) == wanted:
            return user
        return None

    def _link_own(self, member: Member, subject: str, linked: list[Member], claims: dict[str, Any]) -> Member:
        email = claims["email"].strip().casefold()
        if linked and linked[0].pk != member.pk:
            self.refuse(_("This identity is already linked to another account: ask an admin."), email=email)
        if member.sso_subject and member.sso_subject != subject:
            self.refuse(_("Your account is linked to another identity of your provider: ask an admin."), email=email)
        return member_link_sso(member=member, subject=subject, actor=member)

    def create_user(self, claims: dict[str, Any]) -> Member:
        email = claims["email"].strip().casefold()
        try:
            member = member_create(username=email, email=email, actor=SSO_ACTOR)
        except GatewayError:
            self.refuse(
                _("A member named %(email)s already exists with another email address: ask an admin.")
                % {"email": email},
                email=email,
            )
        return self.update_user(member, claims)

    def update_user(self, user: Member, claims: dict[str, Any]) -> Member:
        if not user.is_active:
            self.refuse(_("Your account is disabled. Ask an admin."), email=user.email)
        if user.sso_subject is None and claims.get("sub"):
            user = member_link_sso(member=user, subject=str(claims["sub"]), actor=SSO_ACTOR)
        return self._staff_from_groups(user, claims)

    @staticmethod
    def _staff_from_groups(user: Member, claims: dict[str, Any]) -> Member:
        staff_groups = set(settings.GATEWAY_OIDC_STAFF_GROUPS)
        if not staff_groups or user.is_superuser:
            return user
        groups = claims.get("groups") or []
        if isinstance(groups, str):  # some providers send a single group as a string
            groups = [groups]
        names = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
        wanted = bool(staff_groups.intersection(names))
        if user.is_staff == wanted:
            return user
        try:
            return member_set_roles(member=user, is_staff=wanted, is_superuser=False, actor=SSO_ACTOR)
        except GatewayError as exc:  # the last active admin keeps staff until another admin exists
            log.warning("sso: staff flag of %s left as it is: %s", user.username, exc.message)
            return user


class _SSOOnly:
    get_settings = staticmethod(oidc_setting)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not sso_enabled():
            raise Http404("single sign-on is not configured")
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]  # the view class mixed in after


class SSOLoginView(_SSOOnly, OIDCAuthenticationRequestView):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The base class reads the endpoints in __init__; here they are read when a sign-in starts.
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)

    @property
    def OIDC_OP_AUTH_ENDPOINT(self) -> str:  # noqa: N802 (the base class's attribute name)
        return oidc_setting("OIDC_OP_AUTHORIZATION_ENDPOINT")

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:  # noqa: N802
        return oidc_setting("OIDC_RP_CLIENT_ID")


class SSOCallbackView(_SSOOnly, OIDCAuthenticationCallbackView):
    pass


@login_required
def sso_link(request: MemberRequest) -> HttpResponse:
    """A member signed in with the password confirms linking their account to their identity at
    the identity provider; the sign-in there that follows links it (GatewayOIDCBackend)."""
    if not sso_enabled():
        raise Http404("single sign-on is not configured")
    confirmed = request.method == "POST"
    if confirmed:
        request.session[LINK_KEY] = str(request.user.pk)
    # The way on to the provider is a link, not this form's redirect: the Content-Security-Policy's
    # form-action lets a form lead to the gateway only.
    context = {"linked": bool(request.user.sso_subject), "confirmed": confirmed}
    return render(request, "registration/sso_link.html", context)


def sso_refused(request: HttpRequest) -> HttpResponse:
    reason = request.session.pop(REFUSED_KEY, "") or _("Single sign-on did not complete. Try again.")
    return render(request, "registration/sso_refused.html", {"reason": reason}, status=403)
