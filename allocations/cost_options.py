"""The request options that cost more than tokens, named once: the values of a catalogue model's
`allowed_options` switch, the tiers a price version may multiply and the tools it may price per call,
and the tools judged by who runs them (client tools pass; built-ins are priced or removed).

A model allows an option by listing its name; the proxy lets the option through only when the
model allows it and the price version in force prices it (quota.options, docs/DECISIONS.md).
"""

import re
from typing import Any

from .exceptions import BadRequest

# Service tiers billed differently from the default (auto and default cost the token price).
SERVICE_TIERS = ("flex", "priority", "scale")
FREE_TIERS = ("auto", "default")

# Tools the client executes (the model only asks for a call; the client runs it and sends the
# output back): they cost the tokens of their declaration and call, nothing more. A `namespace` is
# a named group of tools, judged by what it holds.
CLIENT_TOOLS = frozenset(("function", "custom", "local_shell", "apply_patch"))
NAMESPACE = "namespace"

# Responses API built-in tools the provider executes and bills per call (or per session) on top of
# tokens, by `type`, with the output item type each call of the tool appears as in an answer.
TOOL_CALL_ITEMS = {
    "web_search": "web_search_call",
    "web_search_preview": "web_search_call",
    "file_search": "file_search_call",
    "code_interpreter": "code_interpreter_call",
    "image_generation": "image_generation_call",
    "computer_use_preview": "computer_call",
    "mcp": "mcp_call",
    "shell": "shell_call",
}
BUILTIN_TOOLS = tuple(TOOL_CALL_ITEMS)
CALL_ITEM_TYPES = frozenset(TOOL_CALL_ITEMS.values())

# The switch's vocabulary: one name per option a model may allow.
TIER_OPTIONS = tuple(f"service_tier:{tier}" for tier in SERVICE_TIERS)
WEB_SEARCH_OPTIONS = "web_search_options"  # chat completions; priced by the `web_search` tool price
BACKGROUND = "background"  # Responses API, streamed only
ALLOWED_OPTIONS = (*TIER_OPTIONS, WEB_SEARCH_OPTIONS, *BUILTIN_TOOLS, BACKGROUND)

OPTION_LABELS = {
    **{f"service_tier:{tier}": f"service_tier {tier}" for tier in SERVICE_TIERS},
    WEB_SEARCH_OPTIONS: "chat web_search_options",
    **{tool: f"tool {tool}" for tool in BUILTIN_TOOLS},
    BACKGROUND: "background (streamed only)",
}


def allowed_options_clean(value: Any, *, field: str = "allowed_options") -> list[str]:
    """A model's allowed options: a list of names from ALLOWED_OPTIONS, returned sorted and unique
    (so that a change is audited only when the set changes). Else BadRequest naming the field."""
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{field} must be a list of option names", fields={field: ["A list of option names."]})
    unknown = sorted(set(value) - set(ALLOWED_OPTIONS))
    if unknown:
        names = ", ".join(repr(u[:40]) for u in unknown[:5])
        known = ", ".join(ALLOWED_OPTIONS)
        raise BadRequest(
            f"unknown option(s) in {field}: {names}", fields={field: [f"Unknown option(s): {names}. One of: {known}."]}
        )
    return sorted(set(value))


# What a model does with a built-in tool it does not allow and price: take it out of the request
# (the default: agent clients declare a web search on every turn) or refuse the call with 400.
UNPRICED_REMOVE, UNPRICED_REFUSE = "remove", "refuse"
UNPRICED_TOOLS = (UNPRICED_REMOVE, UNPRICED_REFUSE)
TOOL_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def unpriced_tools_clean(value: Any, *, field: str = "unpriced_tools") -> str:
    if value not in UNPRICED_TOOLS:
        raise BadRequest(f"{field} must be 'remove' or 'refuse'", fields={field: ["One of: remove, refuse."]})
    return value


def extra_client_tools_clean(value: Any, *, field: str = "extra_client_tools") -> list[str]:
    """Tool types, beyond the known client tools, that a model lets through as executed by the
    client: a list of lower-case type names, returned sorted and unique. A built-in tool is never
    one (it would reach the provider unmetered), nor a type that passes anyway. Else BadRequest."""
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{field} must be a list of tool types", fields={field: ["A list of tool types."]})
    for kind in value:
        problem = ""
        if not TOOL_TYPE.fullmatch(kind):
            problem = "is not a tool type (lower-case letters, digits, '_', '.', '-'; at most 64)"
        elif kind in TOOL_CALL_ITEMS:
            problem = "is a built-in tool the provider bills per call: allow and price it instead"
        elif kind in CLIENT_TOOLS or kind == NAMESPACE:
            problem = "passes anyway"
        if problem:
            message = f"{kind[:40]!r} {problem}."
            raise BadRequest(f"{field}: {message}", fields={field: [message]})
    return sorted(set(value))
