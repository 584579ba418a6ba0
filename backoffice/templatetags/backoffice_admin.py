"""Admin display helpers: a share of a cap as it is (115 %, not capped at 100 %)."""

from decimal import Decimal

from django import template

register = template.Library()


@register.simple_tag
def percent(used: Decimal | int, cap: Decimal | int | None) -> str:
    if cap is None:
        return ""
    if cap == 0:
        return "cap 0: blocked"
    return f"{Decimal(used) * 100 / Decimal(cap):.0f} %"
