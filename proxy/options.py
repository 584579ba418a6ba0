"""Request options that cost more than the tokens: let through only when priced (SPEC 4).

`service_tier` other than default/auto (priority costs a multiple of the default price, flex a
fraction), Responses built-in tools (web and file search, code interpreter, image generation,
computer use, MCP, shell: billed per call on top of tokens), chat `web_search_options` (billed per
search) and `background` responses pass only when the model's admin switch allows the option
(`CatalogModel.allowed_options`) AND the price version in force prices it (a tier multiplier, a
per-call tool price; background costs tokens only but needs a price in force and `stream: true`).
Anything else is refused with 400 `bad_request` naming the field, before admission and before
anything goes upstream. The names are allocations.cost_options'; the billing rules are
quota.pricing's and docs/DECISIONS.md's.

Two steps: `body_error` (the body alone, with the other body checks: unknown tool types and
service tiers, `conversation`) and `option_error` (the model's switch and price, in the preflight
once the model and its price are resolved). `facts` hands quota.billing what the request adds to
its bill (the tier, the declared tools, chat web search); quota turns them into money.
"""

from allocations.cost_options import (
    BACKGROUND,
    FREE_TIERS,
    OPTION_LABELS,
    SERVICE_TIERS,
    TOOL_CALL_ITEMS,
    WEB_SEARCH_OPTIONS,
)
from allocations.exceptions import BadRequest
from quota.billing.bill import NO_FACTS, RequestFacts

TOKEN_ONLY_TOOLS = ("function", "custom")
CHAT, RESPONSES = "chat.completions", "responses"
METERED_ENDPOINTS = (CHAT, RESPONSES)


def _refuse(field: str, message: str) -> BadRequest:
    """400 naming the field: in `fields`, and at the head of the message unless it starts with it."""
    return BadRequest(message if message.startswith(field) else f"{field}: {message}", fields={field: [message]})


def _tool_types(body: dict) -> list:
    tools = body.get("tools")
    return [tool.get("type") if isinstance(tool, dict) else None for tool in tools] if isinstance(tools, list) else []


def body_error(endpoint_name: str, body: dict) -> BadRequest | None:
    """What the body alone refuses: a tier or tool type the gateway cannot meter (a new built-in
    tool cannot slip through unmetered), `conversation` (the gateway does not relay
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
    builtin = TOOL_CALL_ITEMS if endpoint_name == RESPONSES else {}
    for kind in _tool_types(body):
        if kind not in TOKEN_ONLY_TOOLS and kind not in builtin:
            return _refuse("tools", f"the tool type {str(kind)[:40]!r} is billed per call and is not metered here.")
    return None


def requested(endpoint_name: str, body: dict) -> list[tuple[str, str]]:
    """(field, option name) of each cost-bearing option the request uses, in the body's order."""
    if endpoint_name not in METERED_ENDPOINTS:
        return []
    found = []
    tier = body.get("service_tier")
    if tier in SERVICE_TIERS:
        found.append(("service_tier", f"service_tier:{tier}"))
    if endpoint_name == CHAT and body.get("web_search_options") is not None:
        found.append(("web_search_options", WEB_SEARCH_OPTIONS))
    if endpoint_name == RESPONSES:
        if body.get("background") not in (None, False):
            found.append(("background", BACKGROUND))
        found += [("tools", kind) for kind in dict.fromkeys(_tool_types(body)) if kind in TOOL_CALL_ITEMS]
    return found


def _price_of(price, option: str) -> tuple[bool, str]:
    """(whether the price version prices the option, what its price is called in a refusal)."""
    if option.startswith("service_tier:"):
        tier = option.split(":", 1)[1]
        return price.tier_multiplier(tier) is not None, f"'{tier}' service tier multiplier"
    tool = "web_search" if option == WEB_SEARCH_OPTIONS else option
    return price.tool_call_price(tool) is not None, f"'{tool}' tool-call price"


def option_error(*, allowed: frozenset[str], price, endpoint_name: str, body: dict, stream: bool) -> BadRequest | None:
    """The model's switch and price: each option passes only when the model allows it and the
    price version in force prices it. None when every option passes (or none is used)."""
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
        priced, name = _price_of(price, option)
        if not priced:
            return _refuse(field, f"{label} is enabled but the model's price has no {name}.")
    return None


def answer_read_whole(endpoint_name: str, body: dict | None, price) -> bool:
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
    declared = [kind for kind in _tool_types(body) if kind in TOOL_CALL_ITEMS] if endpoint_name == RESPONSES else []
    return RequestFacts(
        requested_tier=tier if tier in SERVICE_TIERS else "",
        declared_tools=tuple(dict.fromkeys(declared)),
        web_search=endpoint_name == CHAT and body.get("web_search_options") is not None,
    )
