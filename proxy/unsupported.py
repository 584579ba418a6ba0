"""Unsupported request parameters, for models that drop them (`drop_unsupported_params`): when the
upstream answers 400 naming a top-level parameter of the request as one it does not support, the
call goes once more to the same deployment without it, and the answer names what was dropped in
DROPPED_HEADER. The first answer carried no usage, so the call is still billed once, from the
attempt that served it.

The parameter is read from the error's `param` (OpenAI's `unsupported_parameter` and
`unsupported_value` errors) or from its message (`Unsupported parameter: 'x'`, Azure's
`Unrecognized request argument supplied: x`). What carries the request itself is never dropped."""

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .accounting import Call
    from .upstream import AnyReply

DROPPED_HEADER = "x-gateway-dropped-params"
CODES = {"unsupported_parameter", "unsupported_value"}
KEPT = {"model", "messages", "input", "prompt", "stream", "stream_options"}
NAMED = re.compile(r"(?:Unsupported (?:parameter|value): '(\w+)'|Unrecognized request argument supplied: (\w+))")


def named_parameter(raw: bytes) -> str | None:
    """The parameter a 400's error body names as unsupported, or None."""
    try:
        error = json.loads(raw[:8000]).get("error")
    except (ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(error, dict):
        return None
    param, code, message = error.get("param"), error.get("code"), str(error.get("message") or "")
    if isinstance(param, str) and code in CODES:
        return param
    found = NAMED.search(message)
    return (found.group(1) or found.group(2)) if found else None


async def droppable(call: "Call", reply: "AnyReply") -> str | None:
    """The parameter to send the call again without, or None (the 400 is then relayed: its body
    stays readable, as aiohttp keeps what it read). JSON requests only: an upload is not rebuilt."""
    entry, sent = call.entry, call.outgoing
    if entry is None or not entry.drop_unsupported_params or call.dropped or not isinstance(sent, dict):
        return None
    if call.sent is None or not isinstance(call.sent.payload, bytes):
        return None
    try:
        param = named_parameter(await reply.read())
    except Exception:  # noqa: BLE001 - an unreadable error body is relayed as it is
        return None
    return param if param in sent and param not in KEPT else None
