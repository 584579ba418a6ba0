"""The cap rule and the near-cap rule (SPEC 5), each defined once here and used by every surface:
the ledger's SQL guard and its cap check, the realtime watch, the portal cards, the admin list and
filter, the overview and the spend alerts.

- Cap: work is admitted only while used + reserved < cap. A cap of 0 blocks at once; None is no
  cap. A cost cap holds unpriced calls only when it is 0 (they cost nothing that could count).
- Near cap: used ≥ GATEWAY_NEAR_CAP_RATIO × cap (so a cap of 0 is always near).
The SQL guard and the queryset filter are written from the same expressions as the Python checks,
and a test holds each pair to the same answers.
"""

from decimal import Decimal
from typing import TypeAlias

from django.conf import settings
from django.db.models import DecimalField, ExpressionWrapper, F, Q, Value

TOKENS, COST = "tokens", "cost"
_RATIO_FIELD = DecimalField(max_digits=40, decimal_places=9)


# A token count or a USD amount.
Amount: TypeAlias = int | Decimal


# --- the cap rule ----------------------------------------------------------------------------------


def cost_cap_in_force(cost_cap: Decimal | None, *, priced: bool) -> Decimal | None:
    """The cost cap that holds a call: the allocation's when the call is priced, else only a 0."""
    return cost_cap if cost_cap is not None and (priced or cost_cap == 0) else None


def cap_hit(*, used: Amount, cap: Amount | None, reserved: Amount = 0) -> bool:
    """True when `cap` admits nothing more: used + reserved ≥ cap (None: no cap)."""
    return cap is not None and used + reserved >= cap


def caps_hit(
    *,
    tokens_used: int,
    token_cap: int | None,
    cost_used: Decimal | int,
    cost_cap: Decimal | None,
    priced: bool,
    tokens_reserved: int = 0,
    cost_reserved: Decimal | int = 0,
) -> str | None:
    """Which cap (TOKENS, then COST) admits nothing more, or None."""
    if cap_hit(used=tokens_used, reserved=tokens_reserved, cap=token_cap):
        return TOKENS
    if cap_hit(used=cost_used, reserved=cost_reserved, cap=cost_cap_in_force(cost_cap, priced=priced)):
        return COST
    return None


def guard_sql(*, token_cap: int | None, cost_cap: Decimal | None, priced: bool) -> tuple[str, list]:
    """The cap rule on a counter row as SQL (`AND used < cap - reserved` per cap that holds),
    for the admission's conditional UPDATE."""
    sql = ""
    params: list[Amount] = []
    if token_cap is not None:
        sql += " AND tokens_used < %s - tokens_reserved"
        params.append(token_cap)
    cost_cap = cost_cap_in_force(cost_cap, priced=priced)
    if cost_cap is not None:
        sql += " AND cost_used < %s - cost_reserved"
        params.append(cost_cap)
    return sql, params


# --- the near-cap rule -------------------------------------------------------------------------------


def near_cap_ratio() -> Decimal:
    return Decimal(settings.GATEWAY_NEAR_CAP_RATIO)


def near_cap(*, used: Amount, cap: Amount | None, ratio: Decimal | None = None) -> bool:
    """used ≥ ratio × cap (GATEWAY_NEAR_CAP_RATIO unless told; a ratio of 1: at or over the cap)."""
    ratio = near_cap_ratio() if ratio is None else ratio
    return cap is not None and Decimal(used) >= ratio * cap


def near_cap_q(*, used: str, cap: str, ratio: Decimal | None = None) -> Q:
    """near_cap as a queryset filter over the fields `used` and `cap` (lookups allowed)."""
    ratio = near_cap_ratio() if ratio is None else ratio
    share = ExpressionWrapper(F(cap) * Value(ratio), output_field=_RATIO_FIELD)
    return Q(**{f"{cap}__isnull": False, f"{used}__gte": share})
