"""Request options that cost more than the tokens: let through only when priced (SPEC 4).

`service_tier` other than default/auto (priority costs a multiple of the default price, flex a
fraction) and `background` responses pass only when the model's admin switch allows the option
(`CatalogModel.allowed_options`) AND the price version in force prices it (a tier multiplier;
background costs tokens only but needs a price in force and `stream: true`); anything else is
refused with 400 `bad_request` naming the field, before admission and before anything goes
upstream. Tools are judged by who runs them (quota.tools): client tools pass, a built-in tool the
provider bills per call (and chat `web_search_options`) passes allowed and priced (a per-call tool
price), else it is removed from the request or refused as the model says. The names are
allocations.cost_options'; the billing rules are quota.pricing's and docs/DECISIONS.md's.

Two steps: `body_error` (the body alone, with the other body checks: unknown service tiers,
`conversation`, `prompt`) and `judge` (the model's switch, tool rules and price, in the preflight
once the model and its price are resolved: a refusal, or the body to send and what was removed).
`facts` hands quota.billing what the request adds to its bill (the tier, the declared tools, chat
web search); quota turns them into money.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from allocations.access import ScopedAllocation
from allocations.cost_options import BACKGROUND, FREE_TIERS, OPTION_LABELS, SERVICE_TIERS
from allocations.exceptions import BadRequest
from quota.billing.bill import NO_FACTS, RequestFacts

from .tools import Rules, client_only, declared_builtins, judge_body
from .tools import refusal as _refuse

if TYPE_CHECKING:
    from quota.models import PriceVersion

CHAT, RESPONSES = "chat.completions", "responses"
METERED_ENDPOINTS = (CHAT, RESPONSES)


def body_error(endpoint_name: str, body: dict) -> BadRequest | None:
    """What the body alone refuses: a service tier the gateway cannot meter, `conversation` (the gateway does not relay
    /v1/conversations, so no member owns one made through it: members could otherwise read and
    extend conversations made with the organisation's key) and `prompt` (a stored prompt's tools
    are the provider's to know: one could call a built-in tool the price does not name)."""
    if endpoint_name not in METERED_ENDPOINTS:
        return None
    tier = body.get("service_tier")
    if tier is not None and tier not in FREE_TIERS and tier not in SERVICE_TIERS:
        return _refuse("service_tier", f"unknown service tier {str(tier)[:40]!r}; use 'auto' or 'default'.")
    if endpoint_name == RESPONSES and body.get("conversation") is not None:
        return _refuse(
            "conversation",
            "conversations are not relayed by this gateway; continue a response with previous_response_id instead.",
        )
    if endpoint_name == RESPONSES and body.get("prompt") is not None:
        return _refuse(
            "prompt",
            "stored prompts may declare built-in tools the gateway cannot see or price before the call; "
            "send the instructions and tools in the request instead.",
        )
    return None


def requested(endpoint_name: str, body: dict) -> list[tuple[str, str]]:
    """(field, option name) of each cost-bearing option besides tools the request uses."""
    found = []
    tier = body.get("service_tier")
    if tier in SERVICE_TIERS:
        found.append(("service_tier", f"service_tier:{tier}"))
    if endpoint_name == RESPONSES and body.get("background") not in (None, False):
        found.append(("background", BACKGROUND))
    return found


@dataclass(frozen=True)
class Verdict:
    """The preflight's judgement of a request's options: a refusal, or the tools removed and the
    body to send upstream instead of the client's (None: send the client's own)."""

    error: BadRequest | None = None
    body: dict | None = None
    removed: tuple[str, ...] = ()


PASSED = Verdict()


def judge(
    *, entry: ScopedAllocation, price: "PriceVersion | None", endpoint_name: str, body: dict, stream: bool
) -> Verdict:
    """The model's switch, tool rules and price against the request (`entry`: its ScopedAllocation)."""
    if endpoint_name not in METERED_ENDPOINTS:
        return PASSED
    error = option_error(
        allowed=entry.allowed_options, price=price, endpoint_name=endpoint_name, body=body, stream=stream
    )
    if error is not None:
        return Verdict(error=error)
    tools = body.get("tools")
    if body.get("web_search_options") is None and (not tools or client_only(tools, entry.extra_client_tools)):
        return PASSED
    rules = Rules(
        allowed=entry.allowed_options,
        extra_client=entry.extra_client_tools,
        refuse_unpriced=entry.refuse_unpriced_tools,
        price=price,
        meters_builtins=endpoint_name == RESPONSES,
    )
    try:
        sent, removed = judge_body(body, rules)
    except BadRequest as refused:
        return Verdict(error=refused)
    return Verdict(body=sent, removed=removed) if removed else PASSED


def option_error(
    *, allowed: frozenset[str], price: "PriceVersion | None", endpoint_name: str, body: dict, stream: bool
) -> BadRequest | None:
    """The model's switch and price for the service tier and background: each passes only when the
    model allows it and the price version in force prices it. None when both pass (or neither is used)."""
    for field, option in requested(endpoint_name, body):
        label = OPTION_LABELS[option]
        if option not in allowed:
            return _refuse(field, f"{label} is not enabled for this model.")
        if price is None or price.unit:
            return _refuse(field, f"{label} is enabled but the model has no token price in force.")
        if option == BACKGROUND:
            if not stream:
                return _refuse(
                    field,
                    "background responses are relayed only with stream: true (the gateway does not relay "
                    "GET /v1/responses/{id}, so a background response could never be fetched nor metered).",
                )
            continue
        tier = option.split(":", 1)[1]
        if price.tier_multiplier(tier) is None:
            return _refuse(field, f"{label} is enabled but the model's price has no '{tier}' service tier multiplier.")
    return None


def answer_read_whole(endpoint_name: str, body: dict | None, price: "PriceVersion | None") -> bool:
    """Whether a JSON answer must be parsed whole for its tier and tool calls. A chat answer can
    cost more than its usage only when the price multiplies a tier or the request asked for web
    search; otherwise only its top-level usage is read (meters.find_usage: no full parse of a long
    completion on every call). A Responses answer is read whole anyway, for its id."""
    if endpoint_name != CHAT:
        return True
    return bool(getattr(price, "service_tier_multipliers", None)) or (body or {}).get("web_search_options") is not None


def facts(endpoint_name: str, body: dict | None) -> RequestFacts:
    """What the request adds to its bill, for quota.billing: the tier it asked for that costs more
    than default, the built-in tools it declared (Responses), and chat web search."""
    if endpoint_name not in METERED_ENDPOINTS or body is None:
        return NO_FACTS
    tier = body.get("service_tier")
    if tier is None and body.get("tools") is None and body.get("web_search_options") is None:
        return NO_FACTS  # the common call: nothing beyond its tokens
    declared = declared_builtins(body) if endpoint_name == RESPONSES else []
    return RequestFacts(
        requested_tier=tier if tier in SERVICE_TIERS else "",
        declared_tools=tuple(dict.fromkeys(declared)),
        web_search=endpoint_name == CHAT and body.get("web_search_options") is not None,
    )
