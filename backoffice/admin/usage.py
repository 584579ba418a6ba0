"""Django admin for what needs usage figures or prices: allocations, price versions, call records.

Writes go through allocations.services / quota.services (audited); usage comes from the counters
through quota.selectors, one query per page.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import DecimalField, Model, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from allocations import services
from allocations.exceptions import BadRequest, GatewayError
from allocations.models import Allocation, ProviderKind
from quota import selectors
from quota.billing import caps
from quota.models import PriceVersion, UsageCounter
from quota.periods import period_start_date
from quota.services import IMAGE_PRICES_HELP, OPTION_PRICE_FIELDS, price_version_add, price_version_clean

from . import marks
from .base import StaffAdmin, confirmed_or_page, form_errors_from, simulated_badge
from .filters import (
    titled,
)

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django.utils.datastructures import _ListOrTuple


# --- allocations -----------------------------------------------------------------------------------


class AllocationForm(forms.ModelForm):
    # CharFields so that every bad input reaches the service's own validation and message.
    quota_tokens_per_month = forms.CharField(
        required=False, label=_("Token quota per month"), help_text=_("Whole tokens ≥ 0; blank = unlimited.")
    )
    quota_cost_usd_per_month = forms.CharField(
        required=False, label=_("Cost cap (USD / month)"), help_text=_("USD ≥ 0; blank = no cap; 0 blocks at once.")
    )

    class Meta:
        model = Allocation
        fields = (
            "member",
            "model",
            "display_name",
            "quota_tokens_per_month",
            "quota_cost_usd_per_month",
            "is_service_allocation",
            "rpm_limit",
            "tpm_limit",
            "max_parallel",
            "quota_locked",
            "note",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The initial values as the text fields show them, so that an untouched field is not
        # "changed" (500 vs "500") in the change message.
        cap = self.initial.get("quota_cost_usd_per_month")
        if isinstance(cap, Decimal):
            self.initial["quota_cost_usd_per_month"] = f"{cap.normalize():f}"
        tokens = self.initial.get("quota_tokens_per_month")
        if isinstance(tokens, int):
            self.initial["quota_tokens_per_month"] = str(tokens)

    def clean_quota_tokens_per_month(self) -> int | None:
        try:
            return services.validate_token_quota(self.cleaned_data.get("quota_tokens_per_month", "").strip())
        except BadRequest as exc:
            raise forms.ValidationError(exc.fields["quota_tokens_per_month"]) from None  # type: ignore[index]  # named

    def clean_quota_cost_usd_per_month(self) -> Decimal | None:
        try:
            return services.validate_cost_cap(self.cleaned_data.get("quota_cost_usd_per_month", "").strip())
        except BadRequest as exc:
            raise forms.ValidationError(exc.fields["quota_cost_usd_per_month"]) from None  # type: ignore[index]  # named


class UsageChangeList(ChangeList):
    """Attaches this month's usage to the page's allocations: one counter query per page."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        usage = selectors.usage_this_month([a.pk for a in self.result_list])
        for allocation in self.result_list:
            allocation.usage_tokens, allocation.usage_cost = usage[allocation.pk]


def _usage(obj: Any) -> tuple[int, Decimal]:  # an allocation, with this month's usage attached
    if not hasattr(obj, "usage_tokens"):
        obj.usage_tokens, obj.usage_cost = selectors.usage_this_month([obj.pk])[obj.pk]
    return obj.usage_tokens, obj.usage_cost


def _state(obj: Any) -> str:
    tokens, cost = _usage(obj)
    return marks.cap_state(
        tokens_used=tokens,
        token_cap=obj.quota_tokens_per_month,
        cost_used=cost,
        cost_cap=obj.quota_cost_usd_per_month,
    )


class UsageFilter(admin.SimpleListFilter):
    """Near or over a cap this month, from the counters (one query with subqueries)."""

    title = _("this month's usage")
    parameter_name = "usage"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, Any]]:
        near = gettext("near a cap (≥ %(share)s)") % {"share": f"{caps.near_cap_ratio():.0%}"}
        return [("near", near), ("over", gettext("at or over a cap"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in ("near", "over"):
            return queryset
        ratio = caps.near_cap_ratio() if self.value() == "near" else Decimal(1)
        counters = UsageCounter.objects.filter(
            allocation=OuterRef("pk"), period_start=period_start_date(timezone.now())
        )
        money = DecimalField(max_digits=40, decimal_places=9)
        queryset = queryset.annotate(
            used_tokens=Coalesce(Subquery(counters.values("tokens_used")[:1]), Value(0)),
            used_cost=Coalesce(Subquery(counters.values("cost_used")[:1]), Value(Decimal(0)), output_field=money),
        )
        return queryset.filter(
            caps.near_cap_q(used="used_tokens", cap="quota_tokens_per_month", ratio=ratio)
            | caps.near_cap_q(used="used_cost", cap="quota_cost_usd_per_month", ratio=ratio)
        )


@admin.register(Allocation)
class AllocationAdmin(StaffAdmin):
    form = AllocationForm
    list_display = ("display_name", "member_link", "model_label", "status_label", "spend", "tokens")
    list_filter = (
        UsageFilter,
        "status",
        ("model__kind", titled(_("model kind"))),
        "is_service_allocation",
        "quota_locked",
        ("model__provider__kind", titled(_("provider kind"))),
        "model",
    )
    search_fields = ("display_name", "member__username", "member__email", "model__slug", "=id")
    list_select_related = ("member", "model", "model__provider")
    readonly_fields = ("status", "paused_by", "status_reason", "usage_summary", "created_at", "updated_at")
    actions = ("pause", "resume", "revoke", "unquarantine", "rotate_default_key")

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return UsageChangeList

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> _ListOrTuple[str]:
        return ("member", "model", *self.readonly_fields) if obj else ()

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> _FieldGroups:
        fields: list[Any] = list(AllocationForm.Meta.fields)
        if obj is None:
            fields.remove("quota_locked")
            fields.remove("note")
            return fields
        return [*fields, "status", "paused_by", "status_reason", "usage_summary", "created_at", "updated_at"]

    @admin.display(description=_("model"), ordering="model__slug")
    def model_label(self, obj: Allocation) -> str:
        badge = simulated_badge(obj.model.provider.kind) if obj.model.provider.kind == ProviderKind.SIMULATED else ""
        return format_html("{} {}", obj.model.slug, badge)

    @admin.display(description=_("member"), ordering="member__username")
    def member_link(self, obj: Allocation) -> str:
        return marks.member_link(obj.member)

    @admin.display(description=_("status"), ordering="status")
    def status_label(self, obj: Allocation) -> str:
        return marks.status_text(obj, _state(obj))

    @admin.display(description=_("tokens used / quota"))
    def tokens(self, obj: Allocation) -> str:
        used, _cost = _usage(obj)
        cap = obj.quota_tokens_per_month
        cap_text = gettext("unlimited") if cap is None else f"{cap:,}"
        return marks.figure(f"{used:,}", cap_text, marks.share(used, cap), marks.one_cap_state(used, cap))

    @admin.display(description=_("spend / cap this month"))
    def spend(self, obj: Allocation) -> str:
        _tokens, cost = _usage(obj)
        cap = obj.quota_cost_usd_per_month
        cap_text = gettext("no cap") if cap is None else marks.money(cap)
        return marks.figure(marks.money(cost), cap_text, marks.share(cost, cap), marks.one_cap_state(cost, cap))

    @admin.display(description=_("this month"))
    def usage_summary(self, obj: Allocation) -> str:
        return format_html("{}: {}; {}: {}", gettext("tokens"), self.tokens(obj), gettext("spend"), self.spend(obj))

    # --- writes: only through the services ---

    def save_model(
        self, request: HttpRequest, obj: Allocation, form: forms.ModelForm[Allocation], change: bool
    ) -> None:
        data = form.cleaned_data
        if change:
            fresh = Allocation.objects.get(pk=obj.pk)
            changes = {f: data[f] for f in form.changed_data if f in services.UPDATABLE_FIELDS}
            services.allocation_update(allocation=fresh, changes=changes, actor=request.user)
            return
        allocation, key, plaintext = services.allocation_create(
            member=data["member"],
            model=data["model"],
            display_name=data.get("display_name", ""),
            quota_tokens_per_month=data.get("quota_tokens_per_month"),
            quota_cost_usd_per_month=data.get("quota_cost_usd_per_month"),
            is_service_allocation=data.get("is_service_allocation", False),
            limits={f: data.get(f) for f in Allocation.LIMIT_FIELDS},
            actor=request.user,
        )
        obj.pk, obj._state.adding = allocation.pk, False
        self.message_user(
            request, f"Default API key for {allocation} (shown once, copy it now): {plaintext}", messages.WARNING
        )

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # revoke instead: call records point at allocations

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Allocation], verb: str, call: Callable[[Allocation], object]
    ) -> None:
        done = 0
        for allocation in queryset.select_related("member", "model"):
            try:
                call(allocation)
                done += 1
            except GatewayError as exc:
                self.message_user(request, f"{allocation}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"{done} allocation(s) {verb}.", messages.SUCCESS)

    @admin.action(description=_("Pause selected allocations"), permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Allocation]) -> None:
        self._each(request, queryset, "paused", lambda a: services.allocation_pause(allocation=a, actor=request.user))

    @admin.action(description=_("Resume selected allocations"), permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Allocation]) -> None:
        self._each(request, queryset, "resumed", lambda a: services.allocation_resume(allocation=a, actor=request.user))

    @admin.action(description=_("Revoke selected allocations (final)"), permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Allocation]) -> HttpResponse | None:
        page = confirmed_or_page(self, request, queryset, action="revoke", what="allocation(s)")
        if page is not None:
            return page
        self._each(request, queryset, "revoked", lambda a: services.allocation_revoke(allocation=a, actor=request.user))
        return None

    @admin.action(description=_("Unquarantine selected allocations"), permissions=["change"])
    def unquarantine(self, request: HttpRequest, queryset: QuerySet[Allocation]) -> None:
        self._each(
            request,
            queryset,
            "unquarantined",
            lambda a: services.allocation_unquarantine(allocation=a, actor=request.user),
        )

    @admin.action(description=_("Rotate default key of selected allocations"), permissions=["change"])
    def rotate_default_key(self, request: HttpRequest, queryset: QuerySet[Allocation]) -> None:
        def rotate(allocation: Allocation) -> None:
            _, plaintext = services.allocation_rotate_default_key(allocation=allocation, actor=request.user)
            self.message_user(request, f"New default key for {allocation} (shown once): {plaintext}", messages.WARNING)

        self._each(request, queryset, "given a new default key", rotate)


# --- prices ---------------------------------------------------------------------------------------------


class PriceVersionForm(forms.ModelForm):
    class Meta:
        model = PriceVersion
        fields = (
            "model",
            "effective_from",
            "input_per_1m",
            "cached_input_per_1m",
            "output_per_1m",
            "audio_input_per_1m",
            "audio_output_per_1m",
            "unit",
            "price_per_unit",
            "service_tier_multipliers",
            "tool_call_prices",
            "image_prices",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "effective_from" in self.fields:  # absent on the read-only view of an existing version
            self.fields["effective_from"].required = False
            self.fields["effective_from"].help_text = "Blank: now. Versions are append-only."
        if "service_tier_multipliers" in self.fields:
            self.fields["service_tier_multipliers"].help_text = (
                'Token cost multiplier per service tier, e.g. {"priority": "2", "flex": "0.5"}; a tier '
                "without one is refused."
            )
            self.fields["tool_call_prices"].help_text = (
                'USD per call of each built-in tool, e.g. {"web_search": "0.01"}; chat web_search_options '
                "uses the web_search price (one search per request); a tool without one is refused."
            )
            self.fields["image_prices"].help_text = f"Unit image only. {IMAGE_PRICES_HELP} Others: price per unit."

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        assert data is not None  # Django's clean() returns cleaned_data
        if not data.get("effective_from") and "effective_from" not in self.errors:
            data["effective_from"] = timezone.now()
        rates = {f: data.get(f) for f in self.Meta.fields[2:7]}
        options = {f: data.get(f) for f in (*OPTION_PRICE_FIELDS, "image_prices")}
        try:
            price_version_clean(
                unit=data.get("unit") or "", price_per_unit=data.get("price_per_unit"), **options, **rates
            )
        except BadRequest as exc:
            form_errors_from(exc, self)
        return data


@admin.register(PriceVersion)
class PriceVersionAdmin(StaffAdmin):
    form = PriceVersionForm
    list_display = ("model", "effective_from", "input_per_1m", "cached_input_per_1m", "output_per_1m", "unit_price")
    list_filter = ("unit", "model")
    search_fields = ("model__slug",)
    list_select_related = ("model",)
    ordering = ("-effective_from", "-id")

    @admin.display(description=_("unit price"))
    def unit_price(self, obj: PriceVersion) -> str:
        return f"{obj.price_per_unit} / {obj.unit}" if obj.unit else ""

    def save_model(
        self, request: HttpRequest, obj: PriceVersion, form: forms.ModelForm[PriceVersion], change: bool
    ) -> None:
        data = form.cleaned_data
        version = price_version_add(
            model=data["model"],
            effective_from=data.get("effective_from"),
            unit=data.get("unit") or "",
            price_per_unit=data.get("price_per_unit"),
            actor=request.user,
            **{f: data.get(f) for f in PriceVersionForm.Meta.fields[2:7]},
            **{f: data.get(f) for f in (*OPTION_PRICE_FIELDS, "image_prices")},
        )
        obj.pk, obj._state.adding = version.pk, False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # append-only: add a new version instead

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
