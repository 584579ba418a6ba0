"""Writes of the quota side: admission (reservations), settlement (call record + counters), prices,
the reservation sweeper and reconciliation.

Each accounting step is one short transaction with conditional UPDATEs, so limits hold across any
number of processes sharing PostgreSQL; nothing here is ever called while an upstream call is open.
"""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Sum, Value
from django.utils import timezone

from allocations.audit import audit_record
from allocations.cache import bump_auth_generation
from allocations.exceptions import BadRequest

from .exceptions import CostQuotaExceeded, QuotaBusy, QuotaExceeded
from .models import CallRecord, PriceUnit, PriceVersion, Reservation, UsageCounter
from .periods import period_bounds, period_start_date
from .pricing import ZERO, Usage, cost_for


@dataclass(frozen=True)
class Admission:
    reservation_id: object
    counter_id: int
    tokens: int
    cost: Decimal


def _counter_for(*, allocation_id, period_start) -> UsageCounter:
    UsageCounter.objects.bulk_create(
        [UsageCounter(allocation_id=allocation_id, period_start=period_start)], ignore_conflicts=True
    )
    return UsageCounter.objects.get(allocation_id=allocation_id, period_start=period_start)


def _cap_error(*, counter: UsageCounter, token_cap, cost_cap, priced: bool) -> Exception | None:
    if token_cap is not None and counter.tokens_used >= token_cap:
        return QuotaExceeded(f"monthly token quota reached: {counter.tokens_used} / {token_cap} tokens")
    if cost_cap is not None and (cost_cap == 0 or priced) and counter.cost_used >= cost_cap:
        return CostQuotaExceeded(
            f"monthly cost cap reached: ${counter.cost_used.normalize():f} / ${cost_cap.normalize():f}"
        )
    return None


def call_admit(
    *,
    allocation_id,
    token_cap: int | None,
    cost_cap: Decimal | None,
    est_tokens: int,
    est_cost: Decimal | None,
    request_id: str,
    now: dt.datetime,
    ttl_s: float | None = None,
) -> Admission:
    """Checks both caps and holds a reservation, in one transaction.

    Admitted only while used + reserved < cap (SPEC 5). `est_cost=None` means the model is unpriced:
    such calls are held only by a cap of exactly 0.
    """
    priced = est_cost is not None
    est_cost = est_cost or ZERO
    with transaction.atomic():
        counter = _counter_for(allocation_id=allocation_id, period_start=period_start_date(now))
        error = _cap_error(counter=counter, token_cap=token_cap, cost_cap=cost_cap, priced=priced)
        if error:
            raise error
        guard = Q(pk=counter.pk)
        if token_cap is not None:
            guard &= Q(tokens_used__lt=Value(token_cap) - F("tokens_reserved"))
        if cost_cap is not None and (priced or cost_cap == 0):
            guard &= Q(cost_used__lt=Value(cost_cap) - F("cost_reserved"))
        admitted = UsageCounter.objects.filter(guard).update(
            tokens_reserved=F("tokens_reserved") + est_tokens, cost_reserved=F("cost_reserved") + est_cost
        )
        if not admitted:
            raise QuotaBusy("the allocation's remaining quota is held by calls in flight; retry shortly")
        ttl = ttl_s if ttl_s is not None else settings.GATEWAY_UPSTREAM_TIMEOUT_S + 60
        reservation = Reservation.objects.create(
            counter_id=counter.pk,
            request_id=request_id,
            tokens=est_tokens,
            cost=est_cost,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    return Admission(reservation_id=reservation.pk, counter_id=counter.pk, tokens=est_tokens, cost=est_cost)


def reservation_adjust(*, admission: Admission, tokens: int, cost: Decimal) -> Admission:
    """Moves a live reservation to new totals (realtime sessions grow theirs as usage accrues)."""
    with transaction.atomic():
        moved = Reservation.objects.filter(pk=admission.reservation_id).update(tokens=tokens, cost=cost)
        if moved:
            UsageCounter.objects.filter(pk=admission.counter_id).update(
                tokens_reserved=F("tokens_reserved") + (tokens - admission.tokens),
                cost_reserved=F("cost_reserved") + (cost - admission.cost),
            )
    return Admission(admission.reservation_id, admission.counter_id, tokens, cost)


def _release(admission: Admission | None) -> None:
    if admission is None:
        return
    # Deleting the row is what makes release happen exactly once: the sweeper may have taken it.
    deleted, _ = Reservation.objects.filter(pk=admission.reservation_id).delete()
    if deleted:
        UsageCounter.objects.filter(pk=admission.counter_id).update(
            tokens_reserved=F("tokens_reserved") - admission.tokens,
            cost_reserved=F("cost_reserved") - admission.cost,
        )


def price_in_force(*, model_id, at: dt.datetime) -> PriceVersion | None:
    return PriceVersion.objects.in_force(model=model_id, at=at)


def call_settle(
    *,
    admission: Admission | None,
    record: dict,
    usage: Usage,
    price: PriceVersion | None,
    now: dt.datetime | None = None,
) -> CallRecord:
    """Writes the call record, moves the usage into the counters and releases the reservation,
    all in one transaction. `record` holds the CallRecord's identifying fields."""
    now = now or timezone.now()
    cost = cost_for(price, usage)
    row = CallRecord(
        **record,
        finished_at=record.get("finished_at") or now,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        audio_input_tokens=usage.audio_input_tokens,
        audio_output_tokens=usage.audio_output_tokens,
        quantity=usage.quantity,
        unit=usage.unit,
        estimated=usage.estimated,
        cost_usd=cost,
        priced=cost is not None,
        price_version=price if cost is not None else None,
    )
    carries_usage = usage.has_tokens or cost
    with transaction.atomic():
        row.save(force_insert=True)
        _release(admission)
        if row.allocation_id and (carries_usage or admission is not None):
            counter_id = (
                admission.counter_id
                if admission is not None
                else _counter_for(allocation_id=row.allocation_id, period_start=period_start_date(row.started_at)).pk
            )
            UsageCounter.objects.filter(pk=counter_id).update(
                tokens_used=F("tokens_used") + usage.total_tokens,
                cost_used=F("cost_used") + (cost or ZERO),
                calls=F("calls") + 1,
            )
    return row


def call_record_reject(*, record: dict, now: dt.datetime | None = None) -> CallRecord:
    """A rejected call: recorded, carries no usage, touches no counter."""
    now = now or timezone.now()
    return CallRecord.objects.create(**record, finished_at=record.get("finished_at") or now)


# --- prices --------------------------------------------------------------------------------------

PRICE_FIELDS = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m", "audio_output_per_1m")


def _price_decimal(name: str, value) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise BadRequest(f"{name} is not a number", fields={name: ["Enter a decimal number ≥ 0."]}) from None
    if isinstance(value, bool) or not amount.is_finite() or amount < 0 or amount >= Decimal("1e15"):
        raise BadRequest(f"{name} is out of range", fields={name: ["Enter a decimal number ≥ 0."]})
    return amount


def price_version_add(*, model, effective_from=None, unit: str = "", price_per_unit=None, actor=None, **rates):
    """Appends a price version. Either token rates per 1M or a unit price, never both."""
    unknown = set(rates) - set(PRICE_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown fields: {', '.join(sorted(unknown))}", fields={n: ["Unknown field."] for n in sorted(unknown)}
        )
    clean = {name: _price_decimal(name, rates.get(name)) for name in PRICE_FIELDS}
    per_unit = _price_decimal("price_per_unit", price_per_unit)
    unit = unit or ""
    if unit and unit not in PriceUnit.values:
        raise BadRequest("unknown unit", fields={"unit": [f"One of: {', '.join(PriceUnit.values)}."]})
    if unit and (per_unit is None or any(v is not None for v in clean.values())):
        raise BadRequest(
            "a unit price needs price_per_unit and no token rates",
            fields={"price_per_unit": ["Required with unit; token rates must be empty."]},
        )
    if not unit and (per_unit is not None or all(v is None for v in clean.values())):
        raise BadRequest(
            "give token rates per 1M, or a unit with price_per_unit", fields={"unit": ["Required with price_per_unit."]}
        )
    with transaction.atomic():
        version = PriceVersion.objects.create(
            model=model, effective_from=effective_from or timezone.now(), unit=unit, price_per_unit=per_unit, **clean
        )
        after = {
            "model": model.slug,
            "effective_from": version.effective_from.isoformat(),
            "unit": unit,
            "price_per_unit": None if per_unit is None else str(per_unit),
            **{k: None if v is None else str(v) for k, v in clean.items()},
        }
        audit_record(actor=actor, action="price_version_added", target=version, after=after)
    bump_auth_generation()
    return version


# --- housekeeping --------------------------------------------------------------------------------


def reservations_sweep(*, now: dt.datetime | None = None) -> int:
    """Releases reservations whose call never settled (its worker died). Safe to run concurrently."""
    now = now or timezone.now()
    released = 0
    for reservation in Reservation.objects.filter(expires_at__lt=now).only("pk")[:1000]:
        with transaction.atomic():
            row = Reservation.objects.select_for_update(skip_locked=True).filter(pk=reservation.pk).first()
            if row is None:
                continue
            admission = Admission(row.pk, row.counter_id, row.tokens, row.cost)
            _release(admission)
            released += 1
    return released


@dataclass(frozen=True)
class Drift:
    allocation_id: object
    period_start: dt.date
    counter_tokens: int
    record_tokens: int
    counter_cost: Decimal
    record_cost: Decimal


def usage_reconcile(*, now: dt.datetime | None = None, fix: bool = False, actor=None) -> list[Drift]:
    """Compares this period's counters with the sum of the call records; optionally rewrites them."""
    now = now or timezone.now()
    start, end = period_bounds(now)
    period = period_start_date(now)
    sums = {
        row["allocation_id"]: row
        for row in CallRecord.objects.in_period(start, end)
        .filter(allocation__isnull=False)
        .values("allocation_id")
        .annotate(tokens=Sum(F("input_tokens") + F("output_tokens")), cost=Sum("cost_usd"))
    }
    counters = {c.allocation_id: c for c in UsageCounter.objects.filter(period_start=period)}
    drifts = []
    for allocation_id in set(sums) | set(counters):
        counter = counters.get(allocation_id)
        rec = sums.get(allocation_id, {})
        rec_tokens, rec_cost = rec.get("tokens") or 0, rec.get("cost") or ZERO
        c_tokens = counter.tokens_used if counter else 0
        c_cost = counter.cost_used if counter else ZERO
        if (c_tokens, c_cost) != (rec_tokens, rec_cost):
            drifts.append(Drift(allocation_id, period, c_tokens, rec_tokens, c_cost, rec_cost))
    if fix:
        for d in drifts:
            with transaction.atomic():
                counter = _counter_for(allocation_id=d.allocation_id, period_start=period)
                UsageCounter.objects.filter(pk=counter.pk).update(tokens_used=d.record_tokens, cost_used=d.record_cost)
                audit_record(
                    actor=actor,
                    action="usage_reconciled",
                    target=counter,
                    target_type="allocation",
                    target_id=str(d.allocation_id),
                    before={"tokens": d.counter_tokens, "cost": str(d.counter_cost)},
                    after={"tokens": d.record_tokens, "cost": str(d.record_cost)},
                )
    return drifts
