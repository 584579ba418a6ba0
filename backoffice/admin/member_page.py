"""Staff pages for one member: their allocations with this month's spend, live keys and recent
calls on one page, a password reset, and a member created together with a first allocation.

Every write goes through allocations.services (audited), as in the change forms.
"""

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from allocations import services
from allocations.exceptions import GatewayError
from allocations.members import may_change_member
from allocations.models import Allocation, ApiKey, CatalogModel, Member
from quota import selectors
from quota.models import CallRecord
from quota.periods import period_bounds
from quota.pricing import ZERO
from quota.rollups import usage_sums

from . import marks
from .base import form_errors_from

RECENT_CALLS = 25


class PasswordResetForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput, strip=False, label=gettext_lazy("New password"))
    again = forms.CharField(widget=forms.PasswordInput, strip=False, label=gettext_lazy("New password again"))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Django's clean() returns cleaned_data
        if data.get("password") and data.get("password") != data.get("again"):
            self.add_error("again", _("The two passwords differ."))
        elif data.get("password"):
            try:
                validate_password(data["password"])
            except ValidationError as error:
                self.add_error("password", error)
        return data


class MemberWithAllocationForm(forms.Form):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)
    password = forms.CharField(
        widget=forms.PasswordInput, strip=False, required=False, help_text="Blank: no password sign-in."
    )
    model = forms.ModelChoiceField(queryset=CatalogModel.objects.filter(is_active=True).order_by("slug"))
    quota_cost_usd_per_month = forms.CharField(
        required=False,
        label=gettext_lazy("Cost cap (USD / month)"),
        help_text=gettext_lazy("USD ≥ 0; blank = no cap; 0 blocks at once."),
    )
    quota_tokens_per_month = forms.CharField(
        required=False,
        label=gettext_lazy("Token quota per month"),
        help_text=gettext_lazy("Whole tokens ≥ 0; blank = unlimited."),
    )

    def clean_password(self) -> str | None:
        if self.cleaned_data.get("password"):
            validate_password(self.cleaned_data["password"])
        return self.cleaned_data.get("password")


def _allocation_rows(member: Member, now: datetime) -> list[dict]:
    allocations = list(Allocation.objects.filter(member=member).select_related("model").order_by("created_at"))
    usage = selectors.usage_this_month([a.pk for a in allocations], now=now)
    rows = []
    for a in allocations:
        tokens, cost = usage[a.pk]
        state = marks.cap_state(
            tokens_used=tokens, token_cap=a.quota_tokens_per_month, cost_used=cost, cost_cap=a.quota_cost_usd_per_month
        )
        rows.append(
            {
                "allocation": a,
                "state": state,
                "status": marks.status_text(a, state),
                "spend": _figure(marks.money(cost), a.quota_cost_usd_per_month, cost, _("no cap")),
                "tokens": _figure(f"{tokens:,}", a.quota_tokens_per_month, tokens, _("unlimited")),
            }
        )
    return rows


def _figure(used_text: str, cap: Decimal | int | None, used: Decimal | int, no_cap: str) -> SafeString:
    if cap is None:
        return marks.figure(used_text, no_cap, "", marks.CLEAR)
    cap_text = marks.money(cap) if isinstance(used, Decimal) else f"{cap:,}"
    return marks.figure(used_text, cap_text, marks.share(used, cap), marks.one_cap_state(used, cap))


def _keys_with_spend(member: Member, now: datetime) -> list:
    """The member's live keys, each with `spend_this_month` from this month's priced calls (their
    daily rollups, keyed by API key: quota.rollups)."""
    keys = list(ApiKey.objects.live().filter(member=member).prefetch_related("scopes__allocation__model"))
    start, end = period_bounds(now)
    spend = {
        row["api_key_id"]: row["cost_usd"]
        for row in usage_sums(start=start, end=end, keys=("api_key_id",), where=Q(member=member, api_key__in=keys))
    }
    for key in keys:
        key.spend_this_month = spend.get(key.pk) or ZERO  # type: ignore[attr-defined]  # for the page
    return keys


def member_page_view(request: HttpRequest, member_id: uuid.UUID) -> HttpResponse:
    member = get_object_or_404(Member, pk=member_id)
    form = PasswordResetForm(request.POST or None)
    may_reset = may_change_member(member=member, actor=request.user)
    if request.method == "POST" and not may_reset:
        messages.error(request, _("Only a superuser may reset a superuser's password."))
    elif request.method == "POST" and form.is_valid():
        services.member_set_password(member=member, password=form.cleaned_data["password"], actor=request.user)
        messages.success(request, _("Password of %(name)s reset.") % {"name": member.username})
        return redirect("admin_member_page", member_id=member.pk)
    now = timezone.now()
    context = {
        **admin.site.each_context(request),
        "title": _("Member %(name)s") % {"name": member.username},
        "member": member,
        "allocation_rows": _allocation_rows(member, now),
        "keys": _keys_with_spend(member, now),
        "calls": CallRecord.objects.filter(member=member)
        .select_related("model", "allocation")
        .order_by("-started_at", "-id")[:RECENT_CALLS],
        "resets_on": period_bounds(now)[1].date(),
        "form": form,
        "may_reset": may_reset,
    }
    return TemplateResponse(request, "admin/member_page.html", context)


def member_create_view(request: HttpRequest) -> HttpResponse:
    form = MemberWithAllocationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            with transaction.atomic():  # both or neither
                member = services.member_create(
                    username=data["username"],
                    email=data["email"],
                    password=data["password"] or None,
                    actor=request.user,
                )
                _, _, plaintext = services.allocation_create(
                    member=member,
                    model=data["model"],
                    quota_cost_usd_per_month=data["quota_cost_usd_per_month"].strip(),
                    quota_tokens_per_month=data["quota_tokens_per_month"].strip(),
                    actor=request.user,
                )
        except GatewayError as exc:
            form_errors_from(exc, form)
        else:
            messages.warning(request, f"Default API key of {member.username} (shown once, copy it now): {plaintext}")
            return redirect("admin_member_page", member_id=member.pk)
    context = {**admin.site.each_context(request), "title": "Add a member with a first allocation", "form": form}
    return TemplateResponse(request, "admin/member_create.html", context)


def urls() -> list:
    return [
        path("members/new/", admin.site.admin_view(member_create_view), name="admin_member_create"),
        path("members/<uuid:member_id>/", admin.site.admin_view(member_page_view), name="admin_member_page"),
    ]
