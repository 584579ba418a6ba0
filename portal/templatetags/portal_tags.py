"""Display helpers: USD with enough decimals for small spends, localised; prices; percentages."""

from decimal import Decimal

from django import template
from django.utils.formats import number_format
from django.utils.translation import gettext as _

from quota import display
from quota.models import PriceVersion

register = template.Library()


@register.filter
def usd(value: Decimal | None) -> str:
    """$1,234.50, $0.0523, $0.000123, or "unpriced" for None (quota.display.usd)."""
    return display.usd(value)


@register.filter
def tokens(value: int | None) -> str:
    return number_format(int(value or 0), use_l10n=True, force_grouping=True)


@register.filter
def quantity(value: Decimal | int | str | None) -> str:
    if value is None:
        return ""
    amount = Decimal(str(value)).normalize()
    places = max(0, -display.exponent(amount))
    return number_format(amount, decimal_pos=places, use_l10n=True, force_grouping=True)


@register.simple_tag
def price_parts(price: PriceVersion | None) -> list[str]:
    """The price in force as short localised phrases; an empty list means unpriced."""
    if price is None:
        return []
    if price.unit:
        labels = {
            "image": _("%(amount)s per image"),
            "page": _("%(amount)s per page"),
            "second": _("%(amount)s per second"),
            "minute": _("%(amount)s per minute"),
            "character": _("%(amount)s per character"),
            "query": _("%(amount)s per query"),
            "request": _("%(amount)s per request"),
        }
        label = labels.get(price.unit, _("%(amount)s per unit"))
        return [label % {"amount": usd(price.price_per_unit)}]
    rates = [
        (price.input_per_1m, _("input %(amount)s / 1M tokens")),
        (price.cached_input_per_1m, _("cached input %(amount)s / 1M tokens")),
        (price.output_per_1m, _("output %(amount)s / 1M tokens")),
        (price.audio_input_per_1m, _("audio input %(amount)s / 1M tokens")),
        (price.audio_output_per_1m, _("audio output %(amount)s / 1M tokens")),
    ]
    return [label % {"amount": usd(rate)} for rate, label in rates if rate is not None]


@register.simple_tag
def outcome_label(outcome: str) -> str:
    return display.outcome_label(outcome)


@register.simple_tag
def status_label(status: str) -> str:
    labels = {
        "active": _("Active"),
        "paused": _("Paused"),
        "quarantined": _("Quarantined"),
        "revoked": _("Revoked"),
    }
    return labels.get(status, status)
