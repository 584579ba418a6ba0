"""Reservations whose call never settled (its process died), settled as lost calls from what their
context stored at admission; and the settlement's JSON form shared by the contexts and the spool."""

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from lib.isotime import iso_text

from ..models import CallRecord, CloseReason, Outcome, PriceVersion, Reservation
from ..pricing import Usage
from .statements import Admission
from .sync import release, settle


def settlement_from_json(
    *, record: dict, usage: dict | None, price_id: int | None
) -> tuple[dict, Usage, PriceVersion | None]:
    """The settle arguments back from their JSON form (a spooled settlement, a reservation's
    context): aware datetimes, Decimal quantity, the price version by id."""
    record = dict(record)
    for name in ("started_at", "finished_at"):
        if record.get(name):
            record[name] = dt.datetime.fromisoformat(record[name])
    fields = dict(usage or {})
    if fields.get("quantity") is not None:
        fields["quantity"] = Decimal(fields["quantity"])
    if fields.get("tool_calls"):
        fields["tool_calls"] = tuple((str(tool), int(count)) for tool, count in fields["tool_calls"])
    price = PriceVersion.objects.filter(pk=price_id).first() if price_id else None
    return record, Usage(**fields), price


# Each Usage field and its default (MISSING, never equal to a value, when it has none): a context
# leaves the defaults out and Usage(**fields) puts them back.
_USAGE_DEFAULTS = tuple((f.name, f.default) for f in dataclasses.fields(Usage))


def lost_context(*, record: dict, usage: Usage, price: PriceVersion | None, estimated: bool = False) -> dict:
    """A reservation's context: what `reservations_settle_lost` bills if its holder dies (the
    record's identifying fields, the usage so far or estimated, the price), as JSON. It is written
    with every admission and read only after a lost process, so it holds only what differs from
    the defaults: the usage fields set (an estimate: two or three of thirteen). `estimated`: the
    usage as `dataclasses.replace(usage, estimated=True)` would give it, without making that copy."""
    plain = {k: iso_text(v) if isinstance(v, dt.datetime) else v for k, v in record.items()}
    state = usage.__dict__
    if estimated:
        state = {**state, "estimated": True}
    fields = {k: state[k] for k, default in _USAGE_DEFAULTS if state[k] != default}
    quantity = fields.get("quantity")
    if quantity is not None:
        fields["quantity"] = str(quantity)  # exact digits
    return {"record": plain, "usage": fields, "price_id": price.pk if price is not None else None}


def _settle_from_context(*, admission: Admission, context: dict, now: dt.datetime) -> CallRecord | None:
    record, usage, price = settlement_from_json(
        record=context["record"], usage=context.get("usage"), price_id=context.get("price_id")
    )
    record.update(
        outcome=Outcome.GATEWAY_ERROR,
        error_code="worker_lost",
        error_message="the gateway process serving this call stopped before the call was settled",
    )
    if record.get("endpoint") == "realtime":
        record["close_reason"] = CloseReason.SHUTDOWN
    return settle(admission=admission, record=record, usage=usage, price=price, now=now)


def reservations_sweep(*, now: dt.datetime | None = None) -> int:
    """Settles the reservations whose lease ran out (their process died) as lost calls. Safe to run
    concurrently, and beside the calls' own late settlements."""
    now = now or timezone.now()
    expired = Reservation.objects.filter(expires_at__lt=now).values_list("pk", flat=True)[:1000]
    return reservations_settle_lost(reservation_ids=list(expired), now=now)


def reservations_settle_lost(*, reservation_ids: Iterable[uuid.UUID], now: dt.datetime | None = None) -> int:
    """Settles these reservations as calls whose process was lost: each becomes its call's record
    (`gateway_error`, error code `worker_lost`, billed at what its context says: the admission's
    estimate for a proxied call, the usage accrued so far for a realtime session), exactly once.
    The row lock orders this against the call's own settlement, which writes nothing once its
    reservation is gone. Reservations held by a settlement at this moment are skipped (it is
    settling them); one without a context is only released."""
    now = now or timezone.now()
    settled = 0
    for reservation_id in reservation_ids:
        with transaction.atomic():
            row = Reservation.objects.select_for_update(skip_locked=True).filter(pk=reservation_id).first()
            if row is None:
                continue
            admission = Admission(
                row.pk,
                row.counter_id,
                row.tokens,
                row.cost,
                tuple(str(g) for g in row.group_ids),
                tuple(row.group_counter_ids),
            )
            if row.context.get("record"):
                _settle_from_context(admission=admission, context=row.context, now=now)
            else:
                release(admission=admission)
            settled += 1
    return settled
