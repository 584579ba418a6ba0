"""Portal pages. Each view parses input, calls one selector or service, and renders."""

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import get_language
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from allocations import services
from allocations.exceptions import GatewayError
from allocations.login_limits import RateLimitedAuthenticationForm, RateLimitedPasswordResetForm
from allocations.models import Allocation, ApiKey
from allocations.requests import MemberRequest
from notifications import services as notifications
from quota.periods import billing_tz

from . import cards, selectors
from .forms import AlertPreferenceForm, KeyCreateForm, KeyRenameForm

CALLS_PER_PAGE = 50


class LoginView(auth_views.LoginView):
    form_class = RateLimitedAuthenticationForm
    redirect_authenticated_user = True

    def form_valid(self, form: RateLimitedAuthenticationForm) -> HttpResponse:  # type: ignore[override]  # form_class
        response = super().form_valid(form)
        notifications.alert_language_remember(member=form.get_user(), language=get_language())
        return response

    def form_invalid(self, form: RateLimitedAuthenticationForm) -> HttpResponse:  # type: ignore[override]  # form_class
        response = super().form_invalid(form)
        if form.rate_limited:
            response.status_code = 429
        return response


class PasswordResetView(auth_views.PasswordResetView):
    form_class = RateLimitedPasswordResetForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}

    def form_invalid(self, form: RateLimitedPasswordResetForm) -> HttpResponse:  # type: ignore[override]  # form_class
        response = super().form_invalid(form)
        if form.rate_limited:
            response.status_code = 429
        return response


@login_required
def dashboard(request: MemberRequest) -> HttpResponse:
    found = cards.allocation_cards(member=request.user)
    revoked = [c for c in found if c.allocation.status == Allocation.Status.REVOKED]
    context = {
        "cards": [c for c in found if c.allocation.status != Allocation.Status.REVOKED],
        "revoked_cards": revoked,
        "group_cards": cards.group_cards(member=request.user),
        "near_cap_percent": int(settings.GATEWAY_NEAR_CAP_RATIO * 100),
    }
    return render(request, "portal/dashboard.html", context)


NEW_KEY_SESSION = "portal_new_key"


def _show_once(request: MemberRequest, *, key: ApiKey, plaintext: str) -> HttpResponse:
    """Post/redirect/get: the new plaintext waits in the session for the one page that shows it,
    so reloading that page repeats nothing (no second key, no second rotation)."""
    request.session[NEW_KEY_SESSION] = {"key_id": str(key.pk), "plaintext": plaintext}
    response = redirect("portal:keys")
    response.status_code = 303  # See Other: the browser GETs the page; a reload repeats the GET
    return response


def _keys_page(request: MemberRequest, *, form: KeyCreateForm | None = None, status: int = 200) -> HttpResponse:
    keys = selectors.keys_of(member=request.user)
    waiting = request.session.pop(NEW_KEY_SESSION, None) if form is None else None
    new_key = next((k for k in keys if waiting and str(k.pk) == waiting["key_id"]), None)
    plaintext = waiting["plaintext"] if new_key is not None and waiting else None
    context = {
        "keys": keys,
        "form": form or KeyCreateForm(member=request.user),
        "plaintext": plaintext,
        "new_key": new_key,
        "now": timezone.now(),
    }
    response = render(request, "portal/keys.html", context, status=status)
    if plaintext:
        response["Cache-Control"] = "no-store"
    return response


@never_cache
@login_required
def keys(request: MemberRequest) -> HttpResponse:
    if request.method != "POST":
        return _keys_page(request)
    form = KeyCreateForm(request.POST, member=request.user)
    if not form.is_valid():
        return _keys_page(request, form=form, status=400)
    try:
        key, plaintext = services.api_key_create(
            member=request.user,
            name=form.cleaned_data["name"],
            allocations=form.cleaned_data["allocations"],
            expires_at=form.cleaned_data.get("expires_at"),
            actor=request.user,
        )
    except GatewayError as exc:
        form.add_error("allocations", _scope_message(exc))
        return _keys_page(request, form=form, status=400)
    return _show_once(request, key=key, plaintext=plaintext)


def _scope_message(exc: GatewayError) -> str:
    if exc.code == "scope_conflict":
        return _("A key may hold at most one allocation per model.")
    if exc.code == "bad_request":
        return _("A revoked allocation cannot be added to a key.")
    return _("That allocation cannot be added to a key.")


@require_POST
@login_required
def key_rename(request: MemberRequest, key_id: str) -> HttpResponse:
    key = selectors.key_owned(member=request.user, key_id=key_id)
    form = KeyRenameForm(request.POST)
    if form.is_valid():
        services.api_key_rename(key=key, name=form.cleaned_data["name"], actor=request.user)
        messages.success(request, _("Key renamed to “%(name)s”.") % {"name": key.name})
    else:
        messages.error(request, _("Enter a name of at most 100 characters."))
    return redirect("portal:keys")


@never_cache
@require_POST
@login_required
def key_rotate(request: MemberRequest, key_id: str) -> HttpResponse:
    key = selectors.key_owned(member=request.user, key_id=key_id)
    key, plaintext = services.api_key_rotate(key=key, actor=request.user)
    return _show_once(request, key=key, plaintext=plaintext)


@require_POST
@login_required
def key_revoke(request: MemberRequest, key_id: str) -> HttpResponse:
    key = selectors.key_owned(member=request.user, key_id=key_id)
    services.api_key_revoke(key=key, actor=request.user)
    messages.success(request, _("Key “%(name)s” revoked. It stops working at once.") % {"name": key.name})
    return redirect("portal:keys")


@require_POST
@login_required
def allocation_pause(request: MemberRequest, allocation_id: str) -> HttpResponse:
    allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
    try:
        services.allocation_pause(allocation=allocation, by=Allocation.PausedBy.MEMBER, actor=request.user)
        messages.success(request, _("%(name)s is paused. Calls are refused until you resume it.") % _name(allocation))
    except GatewayError:
        messages.error(request, _("Only an active allocation can be paused."))
    return redirect("portal:dashboard")


@require_POST
@login_required
def allocation_resume(request: MemberRequest, allocation_id: str) -> HttpResponse:
    allocation = selectors.allocation_owned(member=request.user, allocation_id=allocation_id)
    try:
        services.allocation_resume(allocation=allocation, by=Allocation.PausedBy.MEMBER, actor=request.user)
        messages.success(request, _("%(name)s is active again.") % _name(allocation))
    except GatewayError as exc:
        if exc.code == "forbidden":
            messages.error(request, _("An admin paused this allocation; only an admin can resume it."))
        else:
            messages.error(request, _("Only a paused allocation can be resumed."))
    return redirect("portal:dashboard")


def _name(allocation: Allocation) -> dict:
    return {"name": allocation.display_name or allocation.model.slug}


@login_required
def usage(request: MemberRequest) -> HttpResponse:
    now = timezone.now()
    period = selectors.period_of_month(request.GET.get("period"), now)
    allocation = None
    if request.GET.get("allocation"):
        allocation = selectors.allocation_owned(member=request.user, allocation_id=request.GET["allocation"])
    try:
        calls, next_cursor = selectors.calls_page(
            member=request.user,
            allocation=allocation,
            period=period,
            cursor=request.GET.get("cursor") or None,
            limit=CALLS_PER_PAGE,
        )
    except GatewayError:
        return redirect(f"{request.path}?period={period.first_day:%Y-%m}")
    by_model = selectors.usage_grouped(member=request.user, period=period, group_by="model", allocation=allocation)
    series = selectors.usage_daily_series(member=request.user, period=period, allocation=allocation)
    context = {
        "period": period,
        "months": selectors.recent_months(now),
        "selected_month": period.first_day,
        "series": series,
        "has_spend": any(Decimal(row["cost_usd"]) for row in series),
        "cost_cap": selectors.cost_cap_of(member=request.user, allocation=allocation),
        "chart_labels": {
            "daily": _("Spend per day (USD)"),
            "cumulative": _("Spend so far (USD)"),
            "cap": _("Cost cap (USD)"),
            "by_model": _("Spend by model (USD)"),
            "daily_axis": _("Per day (USD)"),
            "total_axis": _("So far this month (USD)"),
            "today": timezone.localdate(now, billing_tz()).isoformat(),
            "locale": get_language(),
        },
        "by_model": by_model,
        "calls": calls,
        "next_cursor": next_cursor,
        "cursor": request.GET.get("cursor") or "",
        "allocation": allocation,
        "allocations": Allocation.objects.owned_by(request.user).select_related("model").order_by("created_at"),
    }
    return render(request, "portal/usage.html", context)


@login_required
def how_to_call(request: MemberRequest) -> HttpResponse:
    allocations = list(
        Allocation.objects.owned_by(request.user)
        .exclude(status=Allocation.Status.REVOKED)
        .select_related("model")
        .order_by("created_at", "id")
    )
    kinds: dict[str, str] = {}
    for a in allocations:
        kinds.setdefault(a.model.kind, a.model.slug)
    context = {
        "base_url": request.build_absolute_uri("/v1"),
        "ws_url": request.build_absolute_uri("/v1/realtime").replace("http", "ws", 1),
        "allocations": allocations,
        "kinds": kinds,
        "model": kinds.get("chat") or (allocations[0].model.slug if allocations else "openai/gpt-4o-mini"),
        "realtime_model": kinds.get("realtime", "openai/gpt-4o-realtime-preview"),
        "has_realtime": "realtime" in kinds,
    }
    return render(request, "portal/how_to_call.html", context)


@login_required
def alerts(request: MemberRequest) -> HttpResponse:
    """The member's spend alert choices; mails are written in the language this page was saved in."""
    preference = notifications.alert_preference_of(member=request.user)
    form = AlertPreferenceForm(
        request.POST or None, initial={"near_cap": preference.near_cap, "cap_reached": preference.cap_reached}
    )
    if request.method == "POST" and form.is_valid():
        notifications.alert_preference_update(member=request.user, language=get_language(), **form.cleaned_data)
        messages.success(request, _("Alert settings saved."))
        return redirect("portal:alerts")
    return render(
        request, "portal/alerts.html", {"form": form, "near_cap_percent": int(settings.GATEWAY_NEAR_CAP_RATIO * 100)}
    )
