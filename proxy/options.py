"""Request options that cost more than the tokens the meter counts, refused before admission.

`service_tier` other than default/auto (priority costs a multiple of the default price, flex a
fraction, scale is billed by the reserved unit), Responses built-in tools (web and file search,
code interpreter, image generation, computer use, MCP, shell: billed per call or per session on top
of tokens), chat `web_search_options` (billed per search) and `background` responses (their usage
arrives on a later GET the gateway does not relay) would reach the provider unmetered. Until price
versions can price them, they are refused with 400 `bad_request` naming the field
(docs/DECISIONS.md). Function and custom tools cost tokens only and pass.
"""

from allocations.exceptions import BadRequest

FREE_TIERS = (None, "auto", "default")
TOKEN_ONLY_TOOLS = ("function", "custom")
METERED_ENDPOINTS = ("chat.completions", "responses")


def _refuse(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", fields={field: [message]})


def cost_option_error(endpoint_name: str, body: dict) -> BadRequest | None:
    if endpoint_name not in METERED_ENDPOINTS:
        return None
    tier = body.get("service_tier")
    if tier not in FREE_TIERS:
        return _refuse("service_tier", f"service tier {str(tier)[:40]!r} is not metered here; use 'auto' or 'default'.")
    if endpoint_name == "chat.completions" and body.get("web_search_options") is not None:
        return _refuse("web_search_options", "web search is billed per call and is not metered here.")
    if endpoint_name == "responses" and body.get("background") not in (None, False):
        return _refuse("background", "background responses are not metered here; call without background.")
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in TOKEN_ONLY_TOOLS:
            return _refuse("tools", f"the built-in tool {str(kind)[:40]!r} is billed per call and is not metered here.")
    return None
