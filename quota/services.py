"""Writes of the quota side besides the ledger (quota.ledger: admission and settlement): prices
and the reconciliation of the counters with the call records."""

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from allocations.audit import Actor, audit_record
from allocations.cost_options import BUILTIN_TOOLS, SERVICE_TIERS
from allocations.exceptions import BadRequest
from allocations.models import CatalogModel
from lib.bounded import BoundedCache
from lib.cache import bump_auth_generation

from .ledger.sync import counter_for
from .models import PriceUnit, PriceVersion, UsageCounter
from .periods import period_bounds, period_start_date
from .pricing import ZERO
from .rollups import usage_sums

# --- prices --------------------------------------------------------------------------------------


def price_in_force(*, model_id: uuid.UUID | str, at: dt.datetime) -> PriceVersion | None:
    return PriceVersion.objects.in_force(model=model_id, at=at)


_price_cache: BoundedCache = BoundedCache(10_000)  # model id -> (auth generation, newest versions)


def price_in_force_cached(*, model_id: uuid.UUID | str, at: dt.datetime, generation: int) -> PriceVersion | None:
    """price_in_force from a per-process cache keyed by the auth generation, which every price
    change bumps (price_version_add). Versions are append-only, so the newest 50 cover `at`≈now."""
    entry = _price_cache.get(model_id)
    if entry is None or entry[0] != generation:
        found = PriceVersion.objects.filter(model=model_id)  # type: ignore[misc]  # the id or its text
        versions = list(found.order_by("-effective_from", "-id")[:50])
        entry = _price_cache[model_id] = (generation, versions)
    return _in_force(entry[1], at)


def _in_force(versions: list[PriceVersion], at: dt.datetime) -> PriceVersion | None:
    # newest first; a loop, not next(generator): no GeneratorExit thrown to close it on every call
    for version in versions:
        if version.effective_from <= at:
            return version
    return None


def price_cached(*, model_id: uuid.UUID | str, at: dt.datetime, generation: int) -> tuple[bool, PriceVersion | None]:
    """(found, price) from price_in_force_cached's cache only, without a query (the event loop)."""
    entry = _price_cache.get(model_id)
    if entry is None or entry[0] != generation:
        return False, None
    return True, _in_force(entry[1], at)


PRICE_FIELDS = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "audio_input_per_1m", "audio_output_per_1m")


def _price_decimal(name: str, value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise BadRequest(f"{name} is not a number", fields={name: ["Enter a decimal number ≥ 0."]}) from None
    if isinstance(value, bool) or not amount.is_finite() or amount < 0 or amount >= Decimal("1e15"):
        raise BadRequest(f"{name} is out of range", fields={name: ["Enter a decimal number ≥ 0."]})
    return amount


OPTION_PRICE_FIELDS = ("service_tier_multipliers", "tool_call_prices")


def _option_prices(name: str, value: object, names: tuple[str, ...], what: str) -> dict[str, str]:
    """A {name: decimal ≥ 0} object of a price version (tier multipliers, tool-call prices) as
    Decimal strings, names from allocations.cost_options; else BadRequest naming the field."""
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be an object", fields={name: [f"An object of {what} → decimal ≥ 0."]})
    unknown = sorted(str(k)[:40] for k in value if k not in names)
    if unknown:
        raise BadRequest(
            f"unknown {what}(s) in {name}: {', '.join(unknown[:5])}",
            fields={name: [f"Unknown {what}(s): {', '.join(unknown[:5])}. One of: {', '.join(names)}."]},
        )
    clean = {}
    for key in sorted(value):
        try:
            amount = _price_decimal(name, value[key])
        except BadRequest:
            raise BadRequest(
                f"{name}.{key} is not a decimal ≥ 0", fields={name: [f"{key}: enter a decimal number ≥ 0."]}
            ) from None
        if amount is None:
            raise BadRequest(f"{name}.{key} is empty", fields={name: [f"{key}: enter a decimal number ≥ 0."]})
        clean[key] = str(amount)
    return clean


IMAGE_VARIANT = re.compile(r"(?:[1-9][0-9]{1,4}x[1-9][0-9]{1,4}|auto)/[a-z]{1,20}")


def _image_prices(value: object, unit: str) -> dict[str, str]:
    """`image_prices` ({"<size>/<quality>": decimal ≥ 0}, unit "image" only) as Decimal strings."""
    if value is None or value == "" or value == {}:
        return {}
    if unit != "image":
        raise BadRequest("image_prices go with unit image", fields={"image_prices": ["Only with unit image."]})
    if not isinstance(value, dict):
        raise BadRequest("image_prices must be an object", fields={"image_prices": [IMAGE_PRICES_HELP]})
    bad = sorted(str(k)[:40] for k in value if not isinstance(k, str) or not IMAGE_VARIANT.fullmatch(k))
    if bad:
        raise BadRequest(
            f"image_prices keys must read <size>/<quality>: {', '.join(bad[:5])}",
            fields={"image_prices": [f"Not <size>/<quality>: {', '.join(bad[:5])}. {IMAGE_PRICES_HELP}"]},
        )
    return _option_prices("image_prices", value, tuple(value), "image size/quality")


IMAGE_PRICES_HELP = 'USD per image by "<size>/<quality>", e.g. {"1024x1024/standard": "0.04", "1024x1792/hd": "0.12"}.'


def price_version_clean(
    *,
    unit: str = "",
    price_per_unit: object = None,
    service_tier_multipliers: object = None,
    tool_call_prices: object = None,
    image_prices: object = None,
    **rates: Any,
) -> tuple[str, Decimal | None, dict]:
    """Validates a price row without writing: returns (unit, price_per_unit, the token rates, the
    option prices and the image prices) or raises BadRequest."""
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
    options = {
        "service_tier_multipliers": _option_prices(
            "service_tier_multipliers", service_tier_multipliers, SERVICE_TIERS, "service tier"
        ),
        "tool_call_prices": _option_prices("tool_call_prices", tool_call_prices, BUILTIN_TOOLS, "tool"),
    }
    for name, value in options.items():
        if unit and value:
            raise BadRequest(f"{name} go with token rates only", fields={name: ["Only with token rates, not a unit."]})
    return unit, per_unit, {**clean, **options, "image_prices": _image_prices(image_prices, unit)}


def price_version_add(
    *,
    model: CatalogModel,
    effective_from: dt.datetime | None = None,
    unit: str = "",
    price_per_unit: object = None,
    actor: Actor = None,
    **rates: Any,
) -> PriceVersion:
    """Appends a price version. Either token rates per 1M (with optional service tier multipliers
    and tool-call prices) or a unit price, never both."""
    unit, per_unit, clean = price_version_clean(unit=unit, price_per_unit=price_per_unit, **rates)
    with transaction.atomic():
        version = PriceVersion.objects.create(
            model=model, effective_from=effective_from or timezone.now(), unit=unit, price_per_unit=per_unit, **clean
        )
        after = {
            "model": model.slug,
            "effective_from": version.effective_from.isoformat(),
            "unit": unit,
            "price_per_unit": None if per_unit is None else str(per_unit),
            **{k: None if v is None else str(v) for k, v in clean.items() if k in PRICE_FIELDS},
            **{k: clean[k] for k in OPTION_PRICE_FIELDS},
            "image_prices": clean["image_prices"],
        }
        audit_record(actor=actor, action="price_version_added", target=version, after=after)
        bump_auth_generation()
    return version


# --- housekeeping --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    allocation_id: uuid.UUID
    period_start: dt.date
    counter_tokens: int
    record_tokens: int
    counter_cost: Decimal
    record_cost: Decimal


def usage_reconcile(*, now: dt.datetime | None = None, fix: bool = False, actor: Actor = None) -> list[Drift]:
    """Compares this period's counters with the sum of its call records (their daily rollups);
    optionally rewrites them."""
    now = now or timezone.now()
    start, end = period_bounds(now)
    period = period_start_date(now)
    sums = {
        row["allocation_id"]: {"tokens": row["input_tokens"] + row["output_tokens"], "cost": row["cost_usd"]}
        for row in usage_sums(start=start, end=end, keys=("allocation_id",), where=Q(allocation__isnull=False))
    }
    counters = {c.allocation_id: c for c in UsageCounter.objects.filter(period_start=period)}
    drifts = []
    for allocation_id in set(sums) | set(counters):
        counter = counters.get(allocation_id)
        rec: Mapping[str, Any] = sums.get(allocation_id, {})
        rec_tokens, rec_cost = rec.get("tokens") or 0, rec.get("cost") or ZERO
        c_tokens = counter.tokens_used if counter else 0
        c_cost = counter.cost_used if counter else ZERO
        if (c_tokens, c_cost) != (rec_tokens, rec_cost):
            drifts.append(Drift(allocation_id, period, c_tokens, rec_tokens, c_cost, rec_cost))
    if fix:
        for d in drifts:
            with transaction.atomic():
                counter = counter_for(allocation_id=d.allocation_id, period_start=period)
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
