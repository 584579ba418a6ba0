"""Money for people: the portal's and the admin's one rule, so a non-zero amount never shows as
$0.00 ($0.0115, $0.000123, "< $0.000001"), and "unpriced" is never $0."""

from decimal import ROUND_HALF_UP, Decimal

from django.utils.formats import number_format
from django.utils.translation import gettext as _

SMALLEST = Decimal("0.000001")


def _places(amount: Decimal) -> int:
    magnitude = abs(amount)
    if magnitude >= 1 or magnitude == 0:
        return 2
    return 4 if magnitude >= Decimal("0.01") else 6


def exponent(amount: Decimal) -> int:
    """The decimal exponent of a finite amount (NaN and infinities have a letter instead)."""
    found = amount.as_tuple().exponent
    if not isinstance(found, int):
        raise ValueError(f"not a finite amount: {amount}")
    return found


def usd(value) -> str:
    """$1,234.50, $0.0523, $0.000123, or "unpriced" for None (never $0 for an unpriced amount)."""
    if value is None or value == "":
        return _("unpriced")
    amount = Decimal(str(value))
    if 0 < amount < SMALLEST:
        return "< $" + number_format(SMALLEST, decimal_pos=6, use_l10n=True)
    places = _places(amount)
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    shown = max(2, min(places, -exponent(rounded.normalize())))
    return "$" + number_format(rounded, decimal_pos=shown, use_l10n=True, force_grouping=True)
