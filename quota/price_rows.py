"""One price row as the admin API and `load_prices` take it (SPEC section 8 `prices` body)."""

import datetime as dt

from allocations.audit import Actor
from allocations.exceptions import BadRequest
from allocations.models import CatalogModel

from .models import PriceVersion
from .services import OPTION_PRICE_FIELDS, PRICE_FIELDS, price_version_add, price_version_clean

PRICE_BODY = {"model", "effective_from", "unit", "price_per_unit", "image_prices", *PRICE_FIELDS, *OPTION_PRICE_FIELDS}


def parse_effective_from(value: object) -> dt.datetime | None:
    """ISO 8601 (a date means midnight); naive values are UTC."""
    if value in (None, ""):
        return None
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest("invalid effective_from", fields={"effective_from": ["An ISO 8601 datetime."]}) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def model_by_slug(slug: object) -> CatalogModel:
    model = CatalogModel.objects.filter(slug=slug).first() if isinstance(slug, str) else None
    if model is None:
        raise BadRequest("no such model", fields={"model": ["No model with that slug."]})
    return model


def price_row_parse(data: object) -> dict:
    """Validates a row completely without writing; returns price_version_add's keyword arguments."""
    if not isinstance(data, dict):
        raise BadRequest("a price row must be an object")
    unknown = sorted(set(data) - PRICE_BODY)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}", fields={n: ["Unknown field."] for n in unknown})
    rates = {f: data.get(f) for f in (*PRICE_FIELDS, *OPTION_PRICE_FIELDS, "image_prices")}
    unit, per_unit, clean = price_version_clean(
        unit=data.get("unit") or "", price_per_unit=data.get("price_per_unit"), **rates
    )
    return {
        "model": model_by_slug(data.get("model")),
        "effective_from": parse_effective_from(data.get("effective_from")),
        "unit": unit,
        "price_per_unit": per_unit,
        **clean,
    }


def price_row_add(data: object, *, actor: Actor = None) -> PriceVersion:
    return price_version_add(**price_row_parse(data), actor=actor)
