"""Tools judged by who runs them (SPEC 4).

A tool the client executes (allocations.cost_options.CLIENT_TOOLS, and the types an admin allows
for the model as client tools) costs only the tokens of its declaration and calls: it passes as it
is. A `namespace` groups tools under a name and is judged by what it holds (a built-in tool inside
one is judged like the same tool declared alone). A built-in tool the provider executes and bills
per call passes when the model allows it and the price in force prices it; otherwise it is removed
from the request before it goes upstream (the answer names it in `x-gateway-removed-tools`) or,
when the model's `unpriced_tools` is `refuse`, the call is refused with 400 naming it. Chat
completions meter no built-in tool call, so there a built-in tool is never priced; chat web search
(`web_search_options`, priced by the `web_search` tool price) follows the same rule. A tool type the
gateway does not know is refused with 400 naming it unless the model lets it through.

`tool_choice` after a removal: forcing a removed tool (`{"type": "web_search"}`) is refused with
400 naming `tool_choice` (the client asked for that tool and would silently not get it); an
`allowed_tools` list loses the removed types (400 when none is left); `required` with no tool left
is refused the same way. Anything else in the body is left as it came.
"""

from dataclasses import dataclass
from typing import Any

from allocations.cost_options import CLIENT_TOOLS, NAMESPACE, OPTION_LABELS, TOOL_CALL_ITEMS, WEB_SEARCH_OPTIONS
from allocations.exceptions import BadRequest

REMOVED_HEADER = "x-gateway-removed-tools"


def refusal(field: str, message: str) -> BadRequest:
    """400 naming the field: in `fields`, and at the head of the message unless it starts with it."""
    return BadRequest(message if message.startswith(field) else f"{field}: {message}", fields={field: [message]})


@dataclass(frozen=True)
class Rules:
    """What a model lets through: its switch, its extra client tool types, what it does with an
    unpriced built-in tool, its price in force, and whether the endpoint meters built-in tools."""

    allowed: frozenset[str]
    extra_client: frozenset[str]
    refuse_unpriced: bool
    price: Any  # the price version in force (quota.models.PriceVersion) or None
    meters_builtins: bool

    def unpriced(self, option: str) -> str:
        """Why the built-in tool (or chat web search) cannot pass priced; "" when it can."""
        label = OPTION_LABELS[option]
        if not self.meters_builtins and option != WEB_SEARCH_OPTIONS:
            return f"{label} is billed per call and is not metered on this endpoint."
        if option not in self.allowed:
            return f"{label} is not enabled for this model."
        price = self.price
        if price is None or price.unit:
            return f"{label} is enabled but the model has no token price in force."
        tool = "web_search" if option == WEB_SEARCH_OPTIONS else option
        if price.tool_call_price(tool) is None:
            return f"{label} is enabled but the model's price has no '{tool}' tool-call price."
        return ""


def client_only(tools: object, extra: frozenset[str]) -> bool:
    """Whether `tools` is a list of client tools only (the common case, judged without more ado)."""
    if not isinstance(tools, list):
        return True  # not a tool list: relayed as it came, for the upstream to refuse
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or (kind not in CLIENT_TOOLS and kind not in extra):
            return False
    return True


def judge_tools(tools: list, rules: Rules, removed: list[str]) -> list | None:
    """The tools to send when some were removed (their names appended to `removed`), else None
    (send them as they came). Raises the refusal."""
    kept: list | None = None
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            raise refusal("tools", "each tool must be an object with a string 'type'.")
        if kind in CLIENT_TOOLS or kind in rules.extra_client:
            keep = tool
        elif kind == NAMESPACE:
            keep = _namespace(tool, rules, removed)
        elif kind in TOOL_CALL_ITEMS:
            keep = _builtin(tool, kind, rules, removed)
        else:
            raise refusal(
                "tools",
                f"the tool type {kind[:40]!r} is not known to the gateway (it could be billed per call); "
                "an admin may allow it for this model as a client tool.",
            )
        if keep is not tool and kept is None:
            kept = tools[:index]
        if kept is not None and keep is not None:
            kept.append(keep)
    return kept


def _builtin(tool: dict, kind: str, rules: Rules, removed: list[str]) -> dict | None:
    why = rules.unpriced(kind)
    if not why:
        return tool
    if rules.refuse_unpriced:
        raise refusal("tools", why)
    if kind not in removed:
        removed.append(kind)
    return None


def _namespace(tool: dict, rules: Rules, removed: list[str]) -> dict | None:
    """A group judged by what it holds; dropped when a removal leaves it empty."""
    inner = tool.get("tools")
    if not isinstance(inner, list):
        return tool
    kept = judge_tools(inner, rules, removed)
    if kept is None:
        return tool
    return {**tool, "tools": kept} if kept else None


def judge_choice(choice: Any, tools: list, removed: list[str]) -> Any:
    """`tool_choice` once `removed` tools are gone (`tools`: those left): the value to send, or raises."""
    if isinstance(choice, dict):
        forced = choice.get("type")
        if forced in removed:
            raise refusal(
                "tool_choice",
                f"tool_choice forces the tool {forced!r}, which this model does not allow and price "
                "(it was removed from the request).",
            )
        listed = choice.get("tools")
        if forced == "allowed_tools" and isinstance(listed, list):
            left = [t for t in listed if not (isinstance(t, dict) and t.get("type") in removed)]
            if not left:
                raise refusal("tool_choice", "tool_choice allows only tools this model does not allow and price.")
            return choice if len(left) == len(listed) else {**choice, "tools": left}
    if choice == "required" and not tools:
        raise refusal("tool_choice", "tool_choice requires a tool call but every tool declared was removed.")
    return choice


def judge_body(body: dict, rules: Rules) -> tuple[dict, tuple[str, ...]]:
    """(the body to send upstream, the removed tool names): the body itself when nothing is removed,
    else a shallow copy with the judged `tools`, `tool_choice` and `web_search_options`."""
    removed: list[str] = []
    tools = body.get("tools")
    kept = judge_tools(tools, rules, removed) if isinstance(tools, list) and tools else None
    search = body.get("web_search_options") is not None and rules.unpriced(WEB_SEARCH_OPTIONS)
    if search and rules.refuse_unpriced:
        raise refusal("web_search_options", search)
    if kept is None and not search:
        return body, ()
    sent = dict(body)
    if kept is not None:
        sent["tools"] = kept
        if "tool_choice" in sent:
            sent["tool_choice"] = judge_choice(sent["tool_choice"], kept, removed)
    if search:
        del sent["web_search_options"]
        removed.append(WEB_SEARCH_OPTIONS)
    return sent, tuple(removed)


def declared_builtins(body: dict) -> list[str]:
    """The built-in tool types a body declares, those inside namespaces included, in order."""
    found: list[str] = []
    stack = [body.get("tools")]
    while stack:
        tools = stack.pop()
        for tool in tools if isinstance(tools, list) else ():
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == NAMESPACE:
                stack.append(tool.get("tools"))
            elif isinstance(kind, str) and kind in TOOL_CALL_ITEMS:
                found.append(kind)
    return found
