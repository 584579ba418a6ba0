"""The staff spend overview (/admin/overview/) and its one-step "raise cap".

Reads come from quota.overview (bounded aggregates); the cap change goes through
allocations.services.allocation_update, the same service and audit events as the change form.
"""

import datetime as dt
import math
import uuid
from datetime import datetime
from decimal import Decimal

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy
from django.views.decorators.http import require_POST

from allocations import services
from allocations.exceptions import GatewayError
from allocations.models import Allocation
from quota import display, overview
from quota.group_budgets import spend_by_group_this_month
from quota.models import Outcome
from quota.periods import billing_tz, period_bounds, period_start_date
from quota.pricing import ZERO

from . import marks, spend

REFUSAL_LABELS: dict[str, object] = {
    Outcome.REJECTED_COST_QUOTA_EXCEEDED: gettext_lazy("cost cap reached"),
    Outcome.REJECTED_QUOTA_EXCEEDED: gettext_lazy("token quota reached"),
    Outcome.REJECTED_QUOTA_BUSY: gettext_lazy("quota busy (held by calls in flight)"),
    Outcome.REJECTED_PAUSED: gettext_lazy("allocation paused"),
    Outcome.REJECTED_QUARANTINED: gettext_lazy("allocation quarantined"),
    Outcome.REJECTED_REVOKED: gettext_lazy("allocation revoked"),
    Outcome.REJECTED_UNAUTHENTICATED: gettext_lazy("bad or missing key"),
    Outcome.REJECTED_MODEL_MISMATCH: gettext_lazy("model not in the key's scope"),
    Outcome.REJECTED_BAD_REQUEST: gettext_lazy("bad request"),
    Outcome.REJECTED_MODEL_KIND: gettext_lazy("wrong endpoint for the model"),
}


def suggested_cap(cap: Decimal, used: Decimal) -> Decimal:
    """Half again the larger of cap and spend, rounded up to two significant digits ($0.002 gives
    $0.003, $7.50 gives $12); $1 when both are zero."""
    target = max(cap, used) * Decimal("1.5")
    if target <= 0:
        return Decimal(1)
    step = Decimal(1).scaleb(target.adjusted() - 1)  # the second significant digit's place value
    return (Decimal(math.ceil(target / step)) * step).normalize()


def _chart(names: list[str], rows: list[dict], step: str) -> dict:
    """Chart.js data; the running total stops now (null draws no line over what is to come)."""
    local = [r["at"].astimezone(billing_tz()) for r in rows]
    return {
        "days": [f"{at:%m-%d %H:00}" if step == "hour" else f"{at:%m-%d}" for at in local],
        "series": [{"name": n, "values": [str(r["amounts"][i]) for r in rows]} for i, n in enumerate(names)],
        "cumulative": [None if r["cumulative"] is None else str(r["cumulative"]) for r in rows],
        "axis_daily": gettext("Per hour (USD)") if step == "hour" else gettext("Per day (USD)"),
        "axis_total": gettext("So far (USD)"),
        "total_label": gettext("spend so far"),
    }


def _near_rows(period_start: dt.date, resets_on: dt.date) -> list[dict]:
    rows = []
    for counter in overview.near_cap_counters(period_start=period_start):
        a = counter.allocation
        cap = a.quota_cost_usd_per_month
        rows.append(
            {
                "allocation": a,
                "counter": counter,
                "cost_percent": None if not cap else int(counter.cost_used * 100 / cap),
                "token_percent": None
                if not a.quota_tokens_per_month
                else int(counter.tokens_used * 100 / a.quota_tokens_per_month),
                "state": marks.cap_state(
                    tokens_used=counter.tokens_used,
                    token_cap=a.quota_tokens_per_month,
                    cost_used=counter.cost_used,
                    cost_cap=cap,
                ),
                "resets_on": resets_on,
                "suggested": None if cap is None else f"{suggested_cap(cap, counter.cost_used):f}",
            }
        )
    return rows


def _providers(figures: overview.MonthFigures) -> list[dict]:
    return [
        {"name": name, "calls": calls, "errors": figures.provider_errors.get(name, 0),
         "rate": Decimal(figures.provider_errors.get(name, 0) * 100) / calls}
        for name, calls in sorted(figures.provider_calls.items())
    ]  # fmt: skip


def overview_context(*, now: datetime, by: str, period: spend.Period) -> dict:
    start, end = period_bounds(now)
    period_start = period_start_date(now)
    figures = overview.month_figures(start=start, end=end, now=now, by="provider" if by == "provider" else "model")
    names, rows = spend.spend_rows(period=period, by=by, now=now)
    last_month, last_until = overview.last_month_same_point(now=now)
    caps, uncapped = overview.caps_total()
    return {
        "now": now,
        "by": by,
        "month_start": period_start,
        "figures": figures,
        "period": period,
        "series_names": names,
        "daily_rows": rows,
        "period_total": sum((r["total"] for r in rows), ZERO),
        "chart": _chart(names, rows, period.step),
        "caps_total": caps,
        "uncapped": uncapped,
        "cap_share": None if not caps else int(figures.total * 100 / caps),
        "last_month": last_month,
        "last_until": last_until,
        "change": None if not last_month else int((figures.total - last_month) * 100 / last_month),
        "top_members": overview.top_members(period_start=period_start),
        "top_allocations": overview.top_allocations(period_start=period_start),
        "group_rows": spend_by_group_this_month(now=now),
        "near_rows": _near_rows(period_start, end.date()),
        "refusals": [
            {"outcome": o, "label": REFUSAL_LABELS.get(o, o), "calls": n} for o, n in figures.refusals.items()
        ],
        "providers": _providers(figures),
        "unpriced_url": reverse("admin:quota_callrecord_changelist") + "?pricing=unpriced_period",
    }


def overview_view(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    requested = request.GET.get("by", "")
    by = requested if requested in spend.GROUPS else "model"
    try:
        period = spend.period_from(request.GET, now=now)
    except spend.PeriodError as exc:
        messages.error(request, str(exc))
        period = spend.period_from({}, now=now)
    if request.GET.get("export") == "csv":
        names, rows = spend.spend_rows(period=period, by=by, now=now)
        response = HttpResponse(spend.as_csv(names=names, rows=rows, step=period.step), content_type="text/csv")
        name = f"spend-by-{by}-{period.start:%Y-%m-%d}-{period.step}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
    context = {
        **admin.site.each_context(request),
        "title": gettext("Spend overview"),
        **overview_context(now=now, by=by, period=period),
        "query": request.GET.urlencode(),
    }
    return TemplateResponse(request, "admin/overview.html", context)


@require_POST
def raise_cap_view(request: HttpRequest, allocation_id: uuid.UUID) -> HttpResponse:
    allocation = get_object_or_404(Allocation.objects.select_related("model", "member"), pk=allocation_id)
    before = allocation.quota_cost_usd_per_month
    try:
        cap = services.validate_cost_cap(request.POST.get("quota_cost_usd_per_month", "").strip())
        if cap is None or (before is not None and cap <= before):
            above = gettext("enter a cap above the current %(cap)s") % {"cap": display.usd(before)}
            raise GatewayError(above if before is not None else gettext("enter a cap"))
        services.allocation_update(
            allocation=allocation,
            changes={"quota_cost_usd_per_month": cap},
            actor=request.user,
        )
    except GatewayError as exc:
        messages.error(request, f"{allocation}: {exc.message}")
    else:
        raised = gettext("Cost cap of %(allocation)s raised to %(cap)s.")
        messages.success(request, raised % {"allocation": allocation, "cap": display.usd(cap)})
    return redirect("admin_overview")


def urls() -> list:
    """The overview's URL patterns, mounted under /admin/ before the admin site's own."""
    return [
        path("overview/", admin.site.admin_view(overview_view), name="admin_overview"),
        path("overview/raise-cap/<uuid:allocation_id>/", admin.site.admin_view(raise_cap_view), name="admin_raise_cap"),
    ]
