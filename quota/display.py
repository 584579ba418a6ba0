"""Money for people: the portal's and the admin's one rule, so a non-zero amount never shows as
$0.00 ($0.0115, $0.000123, "< $0.000001"), and "unpriced" is never $0. Amounts of a dollar or more
have cents; smaller ones three significant digits (at most six decimals). The symbol is the
language's: "$" in English, "US$" in Traditional Chinese (static/backoffice/money.js draws the
charts by the same rule)."""

from decimal import ROUND_HALF_UP, Decimal

from django.utils.formats import number_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext

SMALLEST = Decimal("0.000001")


SIGNIFICANT = 3


def _places(amount: Decimal) -> int:
    magnitude = abs(amount)
    if magnitude >= 1 or magnitude == 0:
        return 2
    return min(6, SIGNIFICANT - 1 - magnitude.adjusted())


def symbol() -> str:
    """The dollar sign of the active language."""
    return pgettext("currency symbol of the US dollar", "$")


def exponent(amount: Decimal) -> int:
    """The decimal exponent of a finite amount (NaN and infinities have a letter instead)."""
    found = amount.as_tuple().exponent
    if not isinstance(found, int):
        raise ValueError(f"not a finite amount: {amount}")
    return found


def usd(value: Decimal | int | float | str | None) -> str:
    """$1,234.50, $0.0523, $0.000123, or "unpriced" for None (never $0 for an unpriced amount)."""
    if value is None or value == "":
        return _("unpriced")
    amount = Decimal(str(value))
    if 0 < amount < SMALLEST:
        return "< " + symbol() + number_format(SMALLEST, decimal_pos=6, use_l10n=True)
    places = _places(amount)
    rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    shown = max(2, min(places, -exponent(rounded.normalize())))
    return symbol() + number_format(rounded, decimal_pos=shown, use_l10n=True, force_grouping=True)


OUTCOME_LABELS = {
    "success": gettext_lazy("success"),
    "client_cancelled": gettext_lazy("client cancelled"),
    "upstream_error": gettext_lazy("upstream error"),
    "gateway_error": gettext_lazy("gateway error"),
    "rejected_unauthenticated": gettext_lazy("rejected: unauthenticated"),
    "rejected_bad_request": gettext_lazy("rejected: bad request"),
    "rejected_model_mismatch": gettext_lazy("rejected: model not in key scope"),
    "rejected_revoked": gettext_lazy("rejected: revoked"),
    "rejected_paused": gettext_lazy("rejected: paused"),
    "rejected_quarantined": gettext_lazy("rejected: quarantined"),
    "rejected_quota_exceeded": gettext_lazy("rejected: token quota reached"),
    "rejected_cost_quota_exceeded": gettext_lazy("rejected: cost cap reached"),
    "rejected_quota_busy": gettext_lazy("rejected: quota busy"),
    "rejected_model_kind": gettext_lazy("rejected: wrong endpoint for model"),
}


def outcome_label(outcome: str) -> str:
    """A call's outcome in words, in the active language (the code itself when it has none)."""
    return str(OUTCOME_LABELS.get(outcome, outcome))
