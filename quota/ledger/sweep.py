"""Reservations whose call never settled (its process died), and the settlement's JSON form shared
by the sweeper (a realtime session's reservation context) and the spool."""

import datetime as dt
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from ..models import CallRecord, CloseReason, Outcome, PriceVersion, Reservation
from ..pricing import Usage
from .statements import Admission
from .sync import release, settle


def settlement_from_json(*, record: dict, usage: dict | None, price_id) -> tuple[dict, Usage, PriceVersion | None]:
    """The settle arguments back from their JSON form (a spooled settlement, a reservation's
    context): aware datetimes, Decimal quantity, the price version by id."""
    record = dict(record)
    for name in ("started_at", "finished_at"):
        if record.get(name):
            record[name] = dt.datetime.fromisoformat(record[name])
    fields = dict(usage or {})
    if fields.get("quantity") is not None:
        fields["quantity"] = Decimal(fields["quantity"])
    price = PriceVersion.objects.filter(pk=price_id).first() if price_id else None
    return record, Usage(**fields), price


def _settle_from_context(*, admission: Admission, context: dict, now: dt.datetime) -> CallRecord:
    record, usage, price = settlement_from_json(
        record=context["record"], usage=context.get("usage"), price_id=context.get("price_id")
    )
    record.update(outcome=Outcome.GATEWAY_ERROR, close_reason=CloseReason.SHUTDOWN, error_code="worker_lost")
    return settle(admission=admission, record=record, usage=usage, price=price, now=now)


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
            if row.context.get("record"):
                # A realtime session whose worker died: bill what it had accrued, exactly once
                # (the row lock excludes the session's own settlement, which checks the row too).
                _settle_from_context(admission=admission, context=row.context, now=now)
            else:
                release(admission=admission)
            released += 1
    return released
