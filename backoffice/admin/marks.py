"""How a list or page marks an allocation against its caps: over the cap (calls are refused) and
near it (at or past the near-cap share) look different, in words as well as in colour."""

from decimal import Decimal

from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import pgettext_lazy

from allocations.models import Allocation, Member
from quota import display
from quota.selectors import near_cap

OVER, NEAR, CLEAR = "over", "near", ""
STATUS_LABELS: dict[str, object] = {
    Allocation.Status.ACTIVE: pgettext_lazy("allocation status", "active"),
    Allocation.Status.PAUSED: pgettext_lazy("allocation status", "paused"),
    Allocation.Status.QUARANTINED: pgettext_lazy("allocation status", "quarantined"),
    Allocation.Status.REVOKED: pgettext_lazy("allocation status", "revoked"),
}


def reached(used: Decimal | int, cap: Decimal | int | None) -> bool:
    """A cap is reached when the use is at or past it (a cap of 0 is reached at once)."""
    return cap is not None and Decimal(used) >= cap


def cap_state(*, tokens_used: int, token_cap: int | None, cost_used: Decimal, cost_cap: Decimal | int | None) -> str:
    """OVER when either cap is reached (the gateway refuses calls), NEAR past the near-cap share."""
    if reached(tokens_used, token_cap) or reached(cost_used, cost_cap):
        return OVER
    near = near_cap(tokens_used=tokens_used, token_cap=token_cap, cost_used=cost_used, cost_cap=cost_cap)
    return NEAR if near else CLEAR


def one_cap_state(used: Decimal | int, cap: Decimal | int | None) -> str:
    """The state against one cap (the other taken as absent)."""
    return cap_state(tokens_used=0, token_cap=None, cost_used=Decimal(used), cost_cap=cap)


def share(used: Decimal | int, cap: Decimal | int | None) -> str:
    """The share of a cap as it is (115 %, not capped at 100 %); empty without a cap."""
    if cap is None:
        return ""
    if cap == 0:
        return _("cap 0: blocked")
    return f"{Decimal(used) * 100 / Decimal(cap):.0f} %"


def money(value: Decimal | int | None) -> str:
    return display.usd(value) if value is not None else "—"


def figure(used_text: str, cap_text: str, percent: str, state: str) -> SafeString:
    """'used / cap (percent)', marked: over the cap in red with words, near it in amber."""
    text = f"{used_text} / {cap_text}" + (f" ({percent})" if percent else "")
    if state == OVER:
        return format_html('<span class="cap-mark cap-over">{} <strong>{}</strong></span>', text, _("over cap"))
    if state == NEAR:
        return format_html('<span class="cap-mark cap-near">{} <span>{}</span></span>', text, _("near cap"))
    return format_html("{}", text)


def status_text(allocation: Allocation, state: str) -> SafeString:
    """The allocation's status, and "blocked" when it is active but a cap is reached."""
    label = STATUS_LABELS.get(allocation.status, allocation.status)
    if allocation.status == Allocation.Status.PAUSED and allocation.paused_by:
        return format_html("{} {}", label, _("by %(who)s") % {"who": allocation.paused_by})
    if allocation.status == Allocation.Status.ACTIVE and state == OVER:
        return format_html('<strong class="cap-mark cap-over">{}</strong>', _("blocked: over cap"))
    return format_html("{}", label)


def member_link(member: Member | None, text: str | None = None) -> SafeString:
    """A link to the staff page of one member (allocations, keys, calls on one page)."""
    if member is None:
        return format_html("{}", "—")
    return format_html('<a href="{}">{}</a>', reverse("admin_member_page", args=[member.pk]), text or member)
