"""Reads for the admin API: JSON shapes, keyset pages and usage reports."""

import base64
import datetime as dt
import uuid
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db.models import Count, Q, Sum
from django.http import Http404

from allocations.exceptions import BadRequest
from allocations.models import Allocation, ApiKey, AuditEvent, CatalogModel, Member, Provider

from . import selectors
from .models import CallRecord, PriceVersion
from .periods import billing_tz, period_bounds
from .pricing import NANO, ZERO

MAX_LIMIT = 200


def money(value) -> str | None:
    return None if value is None else f"{Decimal(value).quantize(NANO):f}"


def iso(value) -> str | None:
    return None if value is None else value.isoformat()


def get_or_404(queryset, pk):
    try:
        return queryset.get(pk=uuid.UUID(str(pk)))
    except (ValueError, ValidationError, queryset.model.DoesNotExist):
        raise Http404 from None


# --- keyset pages (newest first, no COUNT) -------------------------------------------------------------


def _cursor_encode(when: dt.datetime, pk) -> str:
    return base64.urlsafe_b64encode(f"{when.isoformat()}|{pk}".encode()).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, pk = raw.split("|", 1)
        return dt.datetime.fromisoformat(when), pk
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("invalid cursor", fields={"cursor": ["Invalid cursor."]}) from None


def parse_limit(value, default: int = 50) -> int:
    if value in (None, ""):
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest("invalid limit", fields={"limit": [f"A whole number from 1 to {MAX_LIMIT}."]}) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest("invalid limit", fields={"limit": [f"A whole number from 1 to {MAX_LIMIT}."]})
    return limit


def page(queryset, *, time_field: str, cursor: str | None, limit: int):
    """Returns (rows, next_cursor). Ordered by (time_field, pk) descending."""
    queryset = queryset.order_by(f"-{time_field}", "-pk")
    if cursor:
        when, pk = _cursor_decode(cursor)
        try:
            queryset = queryset.filter(Q(**{f"{time_field}__lt": when}) | Q(**{time_field: when, "pk__lt": pk}))
        except (ValueError, TypeError, ValidationError):
            raise BadRequest("invalid cursor", fields={"cursor": ["Invalid cursor."]}) from None
    rows = list(queryset[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], _cursor_encode(getattr(last, time_field), last.pk)


# --- JSON shapes ---------------------------------------------------------------------------------------


def member_json(member: Member) -> dict:
    return {
        "id": str(member.pk),
        "username": member.username,
        "email": member.email,
        "is_active": member.is_active,
        "is_staff": member.is_staff,
        "date_joined": iso(member.date_joined),
    }


def provider_json(provider: Provider) -> dict:
    return {
        "id": str(provider.pk),
        "name": provider.name,
        "kind": provider.kind,
        "kind_label": provider.get_kind_display(),
        "base_url": provider.base_url,
        "api_version": provider.api_version,
        "status": provider.status,
        "fingerprint": provider.key_fingerprint,
        "created_at": iso(provider.created_at),
    }


def model_json(model: CatalogModel) -> dict:
    return {
        "id": str(model.pk),
        "slug": model.slug,
        "provider": model.provider.name,
        "provider_id": str(model.provider_id),
        "provider_kind": model.provider.kind,
        "upstream_name": model.upstream_name,
        "kind": model.kind,
        "display_name": model.display_name,
        "is_active": model.is_active,
        **{name: getattr(model, name) for name in CatalogModel.LIMIT_FIELDS},
        "created_at": iso(model.created_at),
    }


def price_json(price: PriceVersion) -> dict:
    rates = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m", "audio_output_per_1m")
    return {
        "id": str(price.pk),
        "model": price.model.slug,
        "effective_from": iso(price.effective_from),
        **{f: money(getattr(price, f)) for f in rates},
        "unit": price.unit or None,
        "price_per_unit": money(price.price_per_unit),
        "created_at": iso(price.created_at),
    }


def allocations_json(allocations, *, now=None) -> list[dict]:
    """Usage for the whole list in one counter query, key prefixes in one more."""
    allocations = list(allocations)
    usage = selectors.usage_this_month([a.pk for a in allocations], now=now)
    prefixes: dict = {}
    for allocation_id, prefix in (
        ApiKey.objects.live().filter(scopes__allocation__in=allocations).values_list("scopes__allocation", "prefix")
    ):
        prefixes.setdefault(allocation_id, []).append(prefix)
    return [_allocation_json(a, *usage[a.pk], sorted(prefixes.get(a.pk, []))) for a in allocations]


def _allocation_json(a: Allocation, tokens_used: int, cost_used, key_prefixes) -> dict:
    return {
        "id": str(a.pk),
        "member": str(a.member_id),
        "member_username": a.member.username,
        "model": a.model.slug,
        "display_name": a.display_name,
        "status": a.status,
        "paused_by": a.paused_by or None,
        "status_reason": a.status_reason,
        "quota_tokens_per_month": a.quota_tokens_per_month,
        "tokens_used_this_month": tokens_used,
        "quota_cost_usd_per_month": money(a.quota_cost_usd_per_month),
        "cost_used_this_month": money(cost_used),
        "near_cap": selectors.near_cap(
            tokens_used=tokens_used,
            token_cap=a.quota_tokens_per_month,
            cost_used=cost_used,
            cost_cap=a.quota_cost_usd_per_month,
        ),
        "is_service_allocation": a.is_service_allocation,
        "quota_locked": a.quota_locked,
        **{name: getattr(a, name) for name in Allocation.LIMIT_FIELDS},
        "note": a.note,
        "key_prefixes": key_prefixes,
        "created_at": iso(a.created_at),
        "updated_at": iso(a.updated_at),
    }


def allocation_json(allocation: Allocation) -> dict:
    return allocations_json([allocation])[0]


def audit_json(event: AuditEvent) -> dict:
    return {
        "id": str(event.pk),
        "action": event.action,
        "actor": event.actor_label,
        "actor_id": None if event.actor_id is None else str(event.actor_id),
        "target_type": event.target_type,
        "target_id": event.target_id,
        "before": event.before,
        "after": event.after,
        "source_ip": event.source_ip,
        "request_id": event.request_id,
        "created_at": iso(event.created_at),
    }


# --- usage report ---------------------------------------------------------------------------------------

GROUPS = {
    "member": {"member_id": "member_id", "member": "member__username"},
    "allocation": {"allocation_id": "allocation_id", "member": "member__username", "model": "model__slug"},
    "model": {"model_id": "model_id", "model": "model__slug"},
}
USAGE_COLUMNS = ("calls", "unpriced_calls", "input_tokens", "output_tokens", "total_tokens", "cost_usd")


def _parse_bound(name: str, value: str | None, *, end: bool):
    if not value:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            # A date means the whole day in the billing timezone: `to` includes it.
            return dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time.min, tzinfo=billing_tz())
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"invalid {name}", fields={name: ["A date (YYYY-MM-DD) or an ISO 8601 datetime."]}) from None
    return when if when.tzinfo else when.replace(tzinfo=billing_tz())


def usage_range(*, start: str | None, end: str | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Defaults to the current billing month; a date `to` is inclusive, a datetime `to` exclusive."""
    month_start, month_end = period_bounds(now)
    lo = _parse_bound("from", start, end=False) or month_start
    hi = _parse_bound("to", end, end=True) or month_end
    if hi <= lo:
        raise BadRequest("`to` must be after `from`", fields={"to": ["Must be after from."]})
    return lo, hi


def usage_report(*, group_by: str, start: dt.datetime, end: dt.datetime) -> list[dict]:
    if group_by not in GROUPS:
        raise BadRequest("invalid group_by", fields={"group_by": [f"One of: {', '.join(GROUPS)}."]})
    keys = GROUPS[group_by]
    rows = (
        CallRecord.objects.in_period(start, end)
        .exclude(**{f"{next(iter(keys.values()))}__isnull": True})
        .values(*keys.values())
        .annotate(
            n_calls=Count("id"),
            n_unpriced=Count(
                "id", filter=Q(priced=False) & (Q(input_tokens__gt=0) | Q(output_tokens__gt=0) | Q(quantity__gt=0))
            ),
            sum_input=Sum("input_tokens"),
            sum_output=Sum("output_tokens"),
            sum_cost=Sum("cost_usd"),
        )
        .order_by(*keys.values())
    )
    out = []
    for row in rows:
        item: dict[str, object] = {name: None if row[src] is None else str(row[src]) for name, src in keys.items()}
        tokens_in, tokens_out = row["sum_input"] or 0, row["sum_output"] or 0
        item.update(
            calls=row["n_calls"],
            unpriced_calls=row["n_unpriced"],
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            total_tokens=tokens_in + tokens_out,
            cost_usd=money(row["sum_cost"] or ZERO),
        )
        out.append(item)
    return out


def usage_columns(group_by: str) -> list[str]:
    return [*GROUPS.get(group_by, {}), *USAGE_COLUMNS]
